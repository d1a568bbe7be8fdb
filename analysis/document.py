"""The report's document model: a list of blocks (headings, paragraphs, bullets, tables, figures) rendered
twice, to one self-contained HTML file (images embedded as base64 PNG, inline CSS, a Content-Security-Policy
that forbids any external resource, so it opens offline) and to Markdown (images linked as files).

It knows nothing of studies: `analysis.report` computes the numbers and figures and lays them out here.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["Figure", "Document", "format_cell", "is_number"]


@dataclass
class Figure:
    """A figure in the report: its PNG (embedded in HTML, linked from Markdown), title and one-line reading."""

    png: Path
    title: str
    reading: str


class Document:
    """A small block list rendered twice: to self-contained HTML and to Markdown."""

    def __init__(self) -> None:
        self.blocks: list[tuple] = []

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(("heading", level, text))

    def paragraph(self, text: str) -> None:
        self.blocks.append(("paragraph", text))

    def bullets(self, items: Iterable[str]) -> None:
        items = list(items)
        if items:
            self.blocks.append(("bullets", items))

    def table(self, frame: pd.DataFrame, caption: str = "", collapsible: Iterable[str] = ()) -> None:
        """`collapsible` columns (long JSON) fold into <details> in HTML and are left out of Markdown."""
        self.blocks.append(("table", frame, caption, tuple(collapsible)))

    def figure(self, figure: Figure | None) -> None:
        if figure is not None:
            self.blocks.append(("figure", figure))

    # ----------------------------------------------------------------- HTML
    def to_html(self, title: str, subtitle: str) -> str:
        e = html.escape
        body = []
        toc = [f'<li><a href="#{_anchor(b[2])}">{e(b[2])}</a></li>' for b in self.blocks
               if b[0] == "heading" and b[1] == 2]
        for block in self.blocks:
            kind = block[0]
            if kind == "heading":
                _, level, text = block
                body.append(f'<h{level} id="{_anchor(text)}">{e(text)}</h{level}>')
            elif kind == "paragraph":
                body.append(f"<p>{e(block[1])}</p>")
            elif kind == "bullets":
                body.append("<ul>" + "".join(f"<li>{e(item)}</li>" for item in block[1]) + "</ul>")
            elif kind == "table":
                body.append(_html_table(block[1], block[2], block[3]))
            elif kind == "figure":
                figure = block[1]
                data = base64.b64encode(figure.png.read_bytes()).decode("ascii")
                body.append(
                    f'<figure><img src="data:image/png;base64,{data}" alt="{e(figure.title, quote=True)}">'
                    f"<figcaption><b>{e(figure.title)}.</b> {e(figure.reading)}</figcaption></figure>"
                )
        return "\n".join([
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            # Nothing outside this file may load: the report must open offline, identically anywhere.
            '<meta http-equiv="Content-Security-Policy" '
            "content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">",
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{e(title)}</title>",
            f"<style>{_CSS}</style>",
            "</head>",
            "<body>",
            f"<header><h1>{e(title)}</h1><p class=\"subtitle\">{e(subtitle)}</p>",
            '<nav><ol>' + "".join(toc) + "</ol></nav></header>",
            "<main>",
            *body,
            "</main>",
            "</body>",
            "</html>",
            "",
        ])

    # ----------------------------------------------------------------- Markdown
    def to_markdown(self, title: str, subtitle: str, figure_dir: Path, base: Path) -> str:
        lines = [f"# {_md_text(title)}", "", f"_{_md_text(subtitle)}_", ""]
        for block in self.blocks:
            kind = block[0]
            if kind == "heading":
                lines += ["#" * block[1] + " " + _md_text(block[2]), ""]
            elif kind == "paragraph":
                lines += [_md_text(block[1]), ""]
            elif kind == "bullets":
                lines += [f"- {_md_text(item)}" for item in block[1]] + [""]
            elif kind == "table":
                frame, caption, collapsible = block[1], block[2], block[3]
                if caption:
                    lines += [f"_{_md_text(caption)}_", ""]
                lines += [_md_table(frame.drop(columns=list(collapsible), errors="ignore")), ""]
            elif kind == "figure":
                figure = block[1]
                relative = os.path.relpath(figure.png, base).replace(os.sep, "/")
                svg = Path(relative).with_suffix(".svg").as_posix()
                lines += [f"![{_md_text(figure.title)}]({relative})", "",
                          f"**{_md_text(figure.title)}.** {_md_text(figure.reading)} ([SVG]({svg}))", ""]
        return "\n".join(lines)


_CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0;color:#1d1d1f;background:#fff}
header,main{max-width:1100px;margin:0 auto;padding:0 24px}
header{padding-top:16px;border-bottom:1px solid #ddd}
h1{font-size:1.7em;margin:0.4em 0 0.1em}
h2{font-size:1.35em;margin-top:1.8em;border-bottom:1px solid #eee;padding-bottom:4px}
h3{font-size:1.1em;margin-top:1.4em}
.subtitle{color:#555;margin-top:0}
nav ol{columns:2;font-size:0.95em}
a{color:#1f5fa8}
table{border-collapse:collapse;margin:0.6em 0 1.2em;font-size:0.85em;display:block;overflow-x:auto;max-width:100%}
caption{caption-side:top;text-align:left;font-style:italic;color:#444;padding-bottom:4px}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:left;vertical-align:top;white-space:nowrap}
td.num{text-align:right;font-variant-numeric:tabular-nums}
th{background:#f4f5f7}
tr:nth-child(even) td{background:#fafafa}
td.long{white-space:normal;min-width:18em;max-width:40em}
details pre{white-space:pre-wrap;max-width:40em;font-size:0.9em}
figure{margin:1em 0 1.8em}
figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:0.92em;color:#333;margin-top:4px}
"""


def _anchor(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


def format_cell(value: Any, whole: bool = False) -> str:
    """A table cell as text: missing values as an en dash; floats with 2 decimals (3 significant digits
    below 0.01), or as integers when `whole` (every number of the column is whole)."""
    if value is None:
        return "–"
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return "–"
        if whole and float(value).is_integer():
            return str(int(value))
        return f"{value:.2f}" if abs(value) >= 0.01 or value == 0 else f"{value:.3g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    text = str(value)
    return "–" if text in ("nan", "None", "<NA>") else text


def _whole_columns(frame: pd.DataFrame) -> set[str]:
    """Numeric columns whose finite values are all whole numbers (counts, batch sizes, seeds)."""
    whole = set()
    for column in frame.columns:
        values = pd.to_numeric(frame[column], errors="coerce") if pd.api.types.is_numeric_dtype(frame[column]) \
            else pd.Series(dtype=float)
        finite = values[np.isfinite(values)] if len(values) else values
        if len(finite) and (finite == finite.round()).all():
            whole.add(column)
    return whole


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _html_table(frame: pd.DataFrame, caption: str, collapsible: tuple[str, ...]) -> str:
    e = html.escape
    parts = ["<table>"]
    if caption:
        parts.append(f"<caption>{e(caption)}</caption>")
    parts.append("<thead><tr>" + "".join(f"<th>{e(str(c))}</th>" for c in frame.columns) + "</tr></thead><tbody>")
    whole = _whole_columns(frame)
    for row in frame.itertuples(index=False):
        cells = []
        for column, value in zip(frame.columns, row, strict=True):
            text = format_cell(value, column in whole)
            if column in collapsible and text != "–":
                cells.append(f'<td class="long"><details><summary>show</summary><pre>{e(text)}</pre></details></td>')
            elif is_number(value):
                cells.append(f'<td class="num">{e(text)}</td>')
            elif len(text) > 60:
                cells.append(f'<td class="long">{e(text)}</td>')
            else:
                cells.append(f"<td>{e(text)}</td>")
        parts.append("<tr>" + "".join(cells) + "</tr>")
    parts.append("</tbody></table>")
    return "".join(parts)


def _md_text(text: str) -> str:
    """Text safe inside Markdown: HTML-special characters as entities, no line breaks inside a block."""
    return html.escape(str(text), quote=False).replace("\n", " ")


def _md_table(frame: pd.DataFrame) -> str:
    def cell(value: Any, whole: bool = False) -> str:
        return _md_text(format_cell(value, whole)).replace("\\", "\\\\").replace("|", "\\|")

    whole = _whole_columns(frame)
    header = "| " + " | ".join(cell(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---:" if pd.api.types.is_numeric_dtype(frame[c]) else "---" for c in frame.columns) + "|"
    rows = ["| " + " | ".join(cell(v, c in whole) for c, v in zip(frame.columns, row, strict=True)) + " |"
            for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows])
