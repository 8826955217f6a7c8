"""Command-line interface: `optimlab COMMAND --help` documents each command with examples."""

from __future__ import annotations

from . import bench, lab, serve, theory, trace  # noqa: F401  (each import registers its command on `app`)
from .app import app, run


def main() -> None:
    run()


__all__ = ["app", "main"]
