"""HTML reports from a Jinja2 template; figures are embedded (data URIs), so the file opens from disk
anywhere, and each links to its PNG/GIF beside the report."""

from __future__ import annotations

import base64
import mimetypes
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vaekit.io.atomic import write_text


@dataclass
class Figure:
    name: str
    path: str
    """Relative to the report."""
    title: str
    caption: str


def table_cell(value) -> str:
    """A value as a table shows it: "n/a" for None, 4 significant digits, a shape as 4×32×32."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "×".join(map(str, value))
    return str(value)


def _data_uri(path: Path) -> str:
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def render(template: str, out: str | Path, figures: list[Figure], **context: Any) -> Path:
    """Render ``templates/<template>`` to ``out``; figure paths are relative to ``out``'s folder."""
    import jinja2

    from vaekit.version import __version__

    out = Path(out)
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("vaekit.viz", "templates"),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
    )
    figure_context = [{**vars(f), "data_uri": _data_uri(out.parent / f.path)} for f in figures]
    html = environment.get_template(template).render(figures=figure_context, version=__version__, **context)
    write_text(out, html)
    return out
