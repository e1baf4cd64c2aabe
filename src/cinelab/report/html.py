"""A self-contained HTML report builder: sections, tables, metrics and embedded PNG images.

The page has no external resources at all: CSS is inline and every image is a base64
``data:image/png`` URI, so one file can be mailed, archived or opened offline.

Number formatting (`format_value`, used by every table): integers as they are; other
numbers with ``FLOAT_DIGITS`` (3) decimals; NaN, infinity and None as ``n/a``; booleans as
``yes``/``no``. Metric tables show one row per metric: name, value, CI low, CI high.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cinelab.errors import InputError
from cinelab.evaluate.metrics import METRIC_KEYS, metric_rows
from cinelab.utils import atomic_path

FLOAT_DIGITS = 3
MISSING = "n/a"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
METRIC_HEADERS = ("metric", "value", "CI low", "CI high")
CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px auto;
max-width:1100px;color:#222;background:#fff;line-height:1.4}
h1{font-size:1.6em;margin-bottom:0}h2{border-bottom:1px solid #ddd;padding-bottom:4px;
margin-top:2em}h3{margin-bottom:.3em}.subtitle{color:#666;margin-top:4px}
table{border-collapse:collapse;margin:8px 0 16px;font-size:.9em}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
caption{caption-side:top;text-align:left;color:#555;padding-bottom:4px}
.gallery{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0 0 12px}
figcaption{font-size:.85em;color:#555}img{max-width:100%;image-rendering:auto}
img.pixel{image-rendering:pixelated}.note{color:#555;font-size:.9em}
"""


def format_value(value: Any) -> str:
    """The report's text for one number (see the module docstring)."""
    if value is None:
        return MISSING
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.{FLOAT_DIGITS}f}" if math.isfinite(value) else MISSING
    return str(value)


def embed_png(source: str | Path | bytes) -> str:
    """A ``data:image/png;base64,...`` URI of a PNG file (path) or PNG bytes."""
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    if not data.startswith(PNG_MAGIC):
        where = None if isinstance(source, bytes) else source
        raise InputError(where, "image", "PNG data", f"{data[:8]!r}...")
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _table_html(header: Sequence[str], rows: Sequence[Sequence[Any]],
                caption: str | None) -> str:
    cap = f"<caption>{_esc(caption)}</caption>" if caption else ""
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_esc(format_value(v))}</td>" for v in row)
                   + "</tr>" for row in rows)
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


class HtmlReport:
    """Build a one-file HTML report: call section/paragraph/table/image..., then write()."""

    def __init__(self, title: str, subtitle: str | None = None) -> None:
        self.title = title
        self.subtitle = subtitle
        self._parts: list[str] = []

    def section(self, heading: str, level: int = 2) -> HtmlReport:
        """Start a new section with a heading (h2 by default)."""
        self._parts.append(f"<h{level}>{_esc(heading)}</h{level}>")
        return self

    def paragraph(self, text: str, note: bool = False) -> HtmlReport:
        """A paragraph of plain (escaped) text."""
        cls = ' class="note"' if note else ""
        self._parts.append(f"<p{cls}>{_esc(text)}</p>")
        return self

    def bullets(self, items: Sequence[str]) -> HtmlReport:
        """A bulleted list of plain text items."""
        lis = "".join(f"<li>{_esc(i)}</li>" for i in items)
        self._parts.append(f"<ul>{lis}</ul>")
        return self

    def table(self, df: pd.DataFrame, caption: str | None = None) -> HtmlReport:
        """A DataFrame as a table (index left out; numbers via format_value)."""
        rows = [[_py(v) for v in row] for row in df.itertuples(index=False, name=None)]
        self._parts.append(_table_html([str(c) for c in df.columns], rows, caption))
        return self

    def metrics_table(self, metrics: Mapping[str, Any] | pd.DataFrame,
                      caption: str | None = None) -> HtmlReport:
        """Metric rows (name, value, CI low, CI high) from a nested report or a table with
        columns metric, value, ci_low, ci_high."""
        if isinstance(metrics, pd.DataFrame):
            rows = metrics.loc[:, ["metric", *METRIC_KEYS]].to_dict("records")
        else:
            rows = metric_rows(metrics)
        body = [[r["metric"], *(_py(r[k]) for k in METRIC_KEYS)] for r in rows]
        self._parts.append(_table_html(METRIC_HEADERS, body, caption))
        return self

    def image(self, source: str | Path | bytes, caption: str | None = None,
              alt: str | None = None, pixelated: bool = False) -> HtmlReport:
        """One embedded PNG with an optional caption."""
        self._parts.append(_figure(source, caption, alt, pixelated))
        return self

    def gallery(self, items: Sequence[tuple[str | Path | bytes, str | None]],
                pixelated: bool = False) -> HtmlReport:
        """Several embedded PNGs side by side: [(source, caption), ...]."""
        figs = "".join(_figure(src, cap, cap, pixelated) for src, cap in items)
        self._parts.append(f'<div class="gallery">{figs}</div>')
        return self

    def raw(self, fragment: str) -> HtmlReport:
        """Append an HTML fragment as is (the caller keeps it free of external links)."""
        self._parts.append(fragment)
        return self

    def render(self) -> str:
        """The whole page as a string."""
        sub = f'<p class="subtitle">{_esc(self.subtitle)}</p>' if self.subtitle else ""
        return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"<title>{_esc(self.title)}</title><style>{CSS}</style></head><body>"
                f"<h1>{_esc(self.title)}</h1>{sub}\n" + "\n".join(self._parts)
                + "\n</body></html>\n")

    def write(self, path: str | Path) -> Path:
        """Write the page atomically (UTF-8); return the path."""
        path = Path(path)
        with atomic_path(path) as tmp:
            tmp.write_text(self.render(), encoding="utf-8")
        return path


def _figure(source: str | Path | bytes, caption: str | None, alt: str | None,
            pixelated: bool) -> str:
    cls = ' class="pixel"' if pixelated else ""
    cap = f"<figcaption>{_esc(caption)}</figcaption>" if caption else ""
    return (f'<figure><img{cls} src="{embed_png(source)}" alt="{_esc(alt or caption or "")}">'
            f"{cap}</figure>")


def _py(value: Any) -> Any:
    """numpy scalars -> Python scalars (so integers format as integers)."""
    return value.item() if isinstance(value, np.generic) else value
