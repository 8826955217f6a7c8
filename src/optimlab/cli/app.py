"""The `optimlab` Typer application; each command lives in its own module and registers itself here.

Command modules import heavy libraries (torch, matplotlib, numba) inside the command function, so
`optimlab --help` stays fast.
"""

from __future__ import annotations

import sys
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from .._extras import extra_of, missing_extra_message, missing_modules


class _Group(TyperGroup):
    """Keeps the command line in `context.meta`, so the group callback can tell `COMMAND --help` apart."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        ctx.meta["optimlab.arguments"] = list(args)
        return super().parse_args(ctx, args)


app = typer.Typer(
    name="optimlab",
    cls=_Group,
    help="optimlab: optimizers written once — trace them, race them, plot them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        from .. import __version__

        typer.echo(f"optimlab {__version__}")
        raise typer.Exit()


#: The extra each command needs beyond the core install, checked before the command starts (not for --help).
COMMAND_EXTRAS = {"bench": "torch", "paths": "lab", "train": "lab", "sparse": "lab", "tour": "lab", "serve": "serve"}


@app.callback()
def _group(
    context: typer.Context,
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                 help="Print optimlab's version and exit."),
) -> None:
    """optimlab: optimizers written once — trace them, race them, plot them."""
    extra = COMMAND_EXTRAS.get(context.invoked_subcommand or "")
    if extra is not None and "--help" not in context.meta["optimlab.arguments"] and missing_modules(extra):
        fail(escape(missing_extra_message(f"optimlab {context.invoked_subcommand}", extra)))


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
    except ModuleNotFoundError as error:
        extra = extra_of(error)
        if extra is None:
            raise
        command = next((argument for argument in sys.argv[1:] if not argument.startswith("-")), "")
        error_console.print(f"[bold red]error:[/] {escape(missing_extra_message(f'optimlab {command}', extra))}",
                            highlight=False, soft_wrap=True)
        sys.exit(2)
