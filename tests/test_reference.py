"""The options reference is read from the config dataclasses, and docs/options.md is what it reads now."""

from dataclasses import dataclass
from pathlib import Path

import yaml

from vaekit.config import load_config, to_dict
from vaekit.reference import field_docs, markdown, options, section_text

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class _Base:
    width: int = 3
    """How wide."""


@dataclass
class _Example(_Base):
    depth: int = 2
    """How deep: the string under a field
    is its meaning, on one line."""
    unexplained: str = "x"


def test_field_meanings_are_the_strings_under_the_fields_base_classes_included():
    assert field_docs(_Example) == {"width": "How wide.", "depth": "How deep: the string under a field is its meaning, "
                                                                    "on one line."}
    assert options(_Example, {"depth": 5}) == [("width", "3", "How wide."),
                                                ("depth", "5", "How deep: the string under a field is its meaning, "
                                                               "on one line."),
                                                ("unexplained", "x", "")]


def test_docs_options_md_is_current():
    """Regenerate with `vaekit list --markdown > docs/options.md`."""
    assert (ROOT / "docs" / "options.md").read_text() == markdown()


def test_a_listed_section_is_what_a_config_resolves_to():
    printed = yaml.safe_load(section_text("train"))["train"]
    assert printed == {k: list(v) if isinstance(v, tuple) else v for k, v in to_dict(load_config(None, []).train).items()}
    assert "# The global batch" in section_text("train")
    assert section_text("no-such-thing") is None
