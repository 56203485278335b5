"""The options reference: every key of a run config, its default and its meaning, read from the config
dataclasses themselves (a field's meaning is the string written under it), so the reference cannot drift
from the code. ``vaekit list train`` prints one section; ``vaekit list --markdown`` writes the whole of
docs/options.md (a test keeps that file current)."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
from functools import lru_cache
from typing import Any

import yaml

from vaekit.config import EvalConfig, ExploreConfig, RunConfig, TrainConfig
from vaekit.registry import DATASETS, LOSSES, MODELS

SECTIONS = {"train": TrainConfig, "eval": EvalConfig, "explore": ExploreConfig}
REGISTRIES = {"model": MODELS, "data": DATASETS, "loss": LOSSES}
REQUIRED = {"folder": ("path",), "folder-crops": ("path",), "hf": ("path",), "latents": ("path",)}
"""Keys without a usable default: a config naming the component must set them."""


@lru_cache(maxsize=None)
def field_docs(cls: type) -> dict[str, str]:
    """The string under each field of a dataclass (and of the dataclasses it derives from), one line each."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass) or klass is object:
            continue
        try:
            body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        except (OSError, TypeError):
            continue
        for statement, following in zip(body, body[1:]):
            if (isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name)
                    and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                    and isinstance(following.value.value, str)):
                docs[statement.target.id] = " ".join(following.value.value.split())
    return docs


def _default(field: dataclasses.Field, overrides: dict[str, Any]) -> str:
    if field.name in overrides:
        value = overrides[field.name]
    elif field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        value = None
    value = list(value) if isinstance(value, tuple) else value
    return yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix("...").strip()


def options(cls: type, overrides: dict[str, Any] | None = None,
            required: tuple[str, ...] = ()) -> list[tuple[str, str, str]]:
    """(key, default as YAML, meaning) of every field of ``cls``; ``overrides``: a preset's own defaults;
    ``required``: keys marked as such."""
    docs = field_docs(cls)
    return [(f.name, _default(f, overrides or {}),
             ("required. " if f.name in required else "") + docs.get(f.name, "")) for f in dataclasses.fields(cls)]


def top_level() -> list[tuple[str, str, str]]:
    """The keys of a run config outside its sections."""
    docs = field_docs(RunConfig)
    return [(f.name, _default(f, {}), docs.get(f.name, "")) for f in dataclasses.fields(RunConfig)
            if f.name in ("seed", "output_dir", "run_name")]


def first_sentence(obj: Any) -> str:
    """The first sentence of a docstring, as plain text."""
    text = " ".join((inspect.getdoc(obj) or "").split())
    text = text.replace("``", "`")
    end = text.find(". ")
    return text if end < 0 else text[: end + 1]


def _table(rows: list[tuple[str, str, str]], prefix: str) -> list[str]:
    lines = ["| key | default | meaning |", "| --- | --- | --- |"]
    for key, default, meaning in rows:
        lines.append(f"| `{prefix}{key}` | `{default}` | {meaning.replace('|', '/')} |")
    return lines


def markdown() -> str:
    """docs/options.md: every section and every registered component's keys."""
    lines = ["# Options", "",
             "Every key a run config takes (`configs/*.yaml`, or `key=value` on the command line), its default and",
             "its meaning. Generated from the config dataclasses by `vaekit list --markdown > docs/options.md`;",
             "`tests/test_reference.py` fails when this page is out of date. One section: `vaekit list train`,",
             "`vaekit list kl-f8`, ...", "", "## Top level", ""]
    lines += _table(top_level(), "")
    for section, cls in SECTIONS.items():
        lines += ["", f"## `{section}`", ""] + _table(options(cls), f"{section}.")
    for section, registry in REGISTRIES.items():
        lines += ["", f"## `{section}`: one section per `{section}.name`"]
        for name in registry.names():
            entry = registry.get(name)
            base = next((n for n in registry.names() if registry.get(n).obj is entry.obj
                         and not registry.get(n).defaults), name)
            lines += ["", f"### `{section}.name: {name}`", "", first_sentence(entry.obj)]
            if entry.defaults:
                lines += ["", f"A preset of `{base}`: its defaults below are the preset's."]
            if entry.config_cls is not None:
                lines += [""] + _table(options(entry.config_cls, entry.defaults, REQUIRED.get(name, ())),
                                       f"{section}.")
    return "\n".join(lines) + "\n"


def section_text(name: str) -> str | None:
    """`vaekit list NAME`: the keys of one config section (train, eval, explore) or registered component,
    with defaults and meanings, as commented YAML; None when nothing has that name."""
    if name in SECTIONS:
        rows, section, header = options(SECTIONS[name]), name, f"# {name}: every key, with its default"
    else:
        section = next((s for s, registry in REGISTRIES.items() if name in registry), None)
        if section is None:
            return None
        entry = REGISTRIES[section].get(name)
        rows = (options(entry.config_cls, entry.defaults, REQUIRED.get(name, ()))
                if entry.config_cls is not None else [])
        header = f"# {section}.name={name}: {first_sentence(entry.obj)}"
    lines = [header, f"{section}:"] + ([f"  name: {name}"] if section in REGISTRIES else [])
    for key, default, meaning in rows:
        lines.append(f"  {key}: {default}" + (f"  # {meaning.rstrip('. ')}" if meaning else ""))
    return "\n".join(lines)
