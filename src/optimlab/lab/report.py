"""The lab report: a self-contained `index.html` beside the figures and CSV files it shows."""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222;
       line-height: 1.45; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.8em 0; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f4f4f4; } td:first-child, th:first-child { text-align: left; }
table.prose td, table.prose th { text-align: left; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.92em; }
.wrong { color: #b00020; text-decoration: line-through; } .right { color: #006400; font-weight: 600; }
nav a { margin-right: 1em; } code { background: #f4f4f4; padding: 0 0.2em; }
"""


@dataclass(frozen=True)
class Section:
    """A titled part of the report; `body` is HTML, `files` the figures and data it links (names in the folder)."""

    anchor: str
    title: str
    body: str
    files: tuple[str, ...] = ()


def escape(text: object) -> str:
    return html.escape(str(text))


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], prose: bool = False) -> str:
    """An HTML table; cells are escaped text, except those already wrapped by `raw`.

    Cells are right-aligned for numbers; `prose` left-aligns them all (tables of sentences)."""
    head = "".join(f"<th>{escape(header)}</th>" for header in headers)
    body = "".join("<tr>" + "".join(f"<td>{_cell(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    attribute = ' class="prose"' if prose else ""
    return f"<table{attribute}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


class raw(str):  # noqa: N801 (reads as a marker in table rows)
    """HTML that `table` inserts as is."""


def _cell(cell: object) -> str:
    return str(cell) if isinstance(cell, raw) else escape(cell)


def figure(source: str, caption: str, alt: str | None = None) -> str:
    return (f'<figure><img src="{escape(source)}" alt="{escape(alt or caption)}">'
            f"<figcaption>{escape(caption)}</figcaption></figure>")


def link(target: str, text: str | None = None) -> str:
    return f'<a href="{escape(target)}">{escape(text or target)}</a>'


def write_report(directory: Path | str, title: str, introduction: str, sections: Sequence[Section]) -> Path:
    """Write `index.html` into `directory` (figures are expected beside it) and return its path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    navigation = "".join(f'<a href="#{escape(section.anchor)}">{escape(section.title)}</a>' for section in sections)
    parts = [f'<section id="{escape(section.anchor)}"><h2>{escape(section.title)}</h2>{section.body}</section>'
             for section in sections]
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_STYLE}</style></head>'
            f"<body><h1>{escape(title)}</h1><p>{introduction}</p><nav>{navigation}</nav>{''.join(parts)}"
            "</body></html>\n")
    path = directory / "index.html"
    path.write_text(page, encoding="utf-8")
    return path


__all__ = ["Section", "escape", "figure", "link", "raw", "table", "write_report"]
