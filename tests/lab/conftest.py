"""Fixtures for the lab tests: `check` verifies that a written file is what its extension says (magic bytes,
and it parses)."""

from __future__ import annotations

import csv
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image


def assert_png(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.width > 200 and image.height > 200
        return image.size


def assert_gif(path: Path) -> int:
    assert path.read_bytes()[:6] in (b"GIF87a", b"GIF89a"), f"{path} is not a GIF"
    with Image.open(path) as image:
        assert image.is_animated
        return image.n_frames


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert rows, f"{path} has no rows"
    return rows


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.targets: list[str] = []
        self.open: list[str] = []

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        for name in ("src", "href"):
            if attributes.get(name) and not attributes[name].startswith("#"):
                self.targets.append(attributes[name])
        if tag not in ("img", "meta", "br", "link"):
            self.open.append(tag)

    def handle_endtag(self, tag):
        assert self.open and self.open[-1] == tag, f"</{tag}> closes <{self.open[-1] if self.open else None}>"
        self.open.pop()


def assert_html(path: Path) -> list[str]:
    """The page parses with balanced tags; returns the local files it links (all of which must exist)."""
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    parser = _Links()
    parser.feed(text)
    parser.close()
    assert parser.open == []
    for target in parser.targets:
        assert (path.parent / target).stat().st_size > 0, f"{target} is missing or empty"
    return parser.targets


@pytest.fixture
def check() -> SimpleNamespace:
    """`check.png(path)`, `check.gif(path)`, `check.csv(path)`, `check.html(path)`."""
    return SimpleNamespace(png=assert_png, gif=assert_gif, csv=read_csv, html=assert_html)
