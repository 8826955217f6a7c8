"""The `optimlab` Typer application; each command lives in its own module and registers itself here.

Command modules import heavy libraries (torch, matplotlib, numba) inside the command function, so
`optimlab --help` stays fast.
"""

from __future__ import annotations

import sys
from typing import Any, NoReturn

import typer
from rich.console import Console

app = typer.Typer(
    name="optimlab",
    help="optimlab: optimizers written once — trace them, race them, plot them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)



@app.callback()
def _group() -> None:
    """optimlab: optimizers written once — trace them, race them, plot them."""


console = Console()
error_console = Console(stderr=True)


def print_table(table: Any) -> None:
    """Print a rich table without eliding digits: cells fold in a terminal; piped output gets the width it needs."""
    for column in table.columns:
        column.overflow = "fold"
    if console.is_terminal:
        console.print(table)
    else:
        natural = Console(width=10_000).measure(table).maximum
        Console(width=max(console.width, natural)).print(table)


def fail(message: str) -> NoReturn:
    """Print one clear error line and exit with status 2 (usage error)."""
    error_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


def run() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
