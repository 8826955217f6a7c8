"""The `optimlab` Typer application; each command lives in its own module and registers itself here.

Command modules import heavy libraries (torch, matplotlib, numba) inside the command function, so
`optimlab --help` stays fast.

Every mistake a user can make ends the same way: one line on stderr, `error: <what and which value>`, and exit
status 2. The pieces a command uses for that:

* `fail(message)`: print that line and exit;
* `@one_line_errors` (under `@app.command`): a `ValueError` the library raises, an `OSError` of a file the
  command could not write, or a `MemoryError` of a size that does not fit, becomes that line;
* `OUT_OPTION`: the `--out` folder option, checked (`output_folder`) before the command starts;
* Click's own usage errors (an unknown option, `--steps abc`, a missing argument) are printed the same way by
  the command classes below.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperCommand, TyperGroup

from .._extras import extra_of, missing_extra_message, missing_modules

try:  # Typer 0.20 and later carry their own copy of Click
    from typer._click.exceptions import UsageError
except ImportError:
    from click.exceptions import UsageError

console = Console()
error_console = Console(stderr=True)


def _print_error(message: str) -> None:
    """`error: <message>` on stderr, the message printed as it is (no markup: `[serve]` stays)."""
    error_console.print(Text.assemble(("error:", "bold red"), " ", message), highlight=False, soft_wrap=True)


def fail(message: str) -> NoReturn:
    """Print one clear error line and exit with status 2 (usage error)."""
    _print_error(message)
    raise typer.Exit(code=2)


def _usage_error(error: UsageError, args: Sequence[str] = ()) -> NoReturn:
    """Click's usage error (unknown option, bad value, missing argument) in one line, naming the value given and
    the help to read."""
    message = error.format_message()
    if not message:  # `optimlab` alone: Typer prints the help, no mistake to report
        raise error
    given = _given(error, args)
    if given is not None and repr(given) not in message:
        message = f"{message.rstrip('.')}: got {given!r}"
    command = error.ctx.command_path if error.ctx is not None else "optimlab"
    fail(f"{message.rstrip('.')} (see {command} --help)")


def _given(error: UsageError, args: Sequence[str]) -> str | None:
    """The value the command line gave the option `error` is about (`--steps abc` or `--steps=abc`), if any."""
    options = getattr(getattr(error, "param", None), "opts", ())
    for index, token in enumerate(args):
        for option in options:
            if token == option and index + 1 < len(args):
                return args[index + 1]
            if token.startswith(f"{option}="):
                return token[len(option) + 1:]
    return None


class _OneLineUsageErrors:
    """Click's usage errors of a command or group, printed in one line (`_usage_error`)."""

    def make_context(self, info_name: str | None, args: list[str], *rest: Any, **kwargs: Any) -> Any:
        given = list(args)
        try:
            return super().make_context(info_name, args, *rest, **kwargs)  # type: ignore[misc]
        except UsageError as error:
            _usage_error(error, given)


class _Command(_OneLineUsageErrors, TyperCommand):
    pass


class _Group(_OneLineUsageErrors, TyperGroup):
    """Also keeps the command line in `context.meta`, so the group callback can tell `COMMAND --help` apart."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        ctx.meta["optimlab.arguments"] = list(args)
        return super().parse_args(ctx, args)

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        try:
            return super().resolve_command(ctx, args)
        except UsageError as error:
            _usage_error(error)


class _App(typer.Typer):
    """A Typer app whose commands print Click's usage errors in one line (`_Command`)."""

    def command(self, *args: Any, **kwargs: Any) -> Callable[[Any], Any]:
        kwargs.setdefault("cls", _Command)
        return super().command(*args, **kwargs)


app = _App(
    name="optimlab",
    help="optimlab: optimizers written once — trace them, race them, plot them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=_Group,
)


def _print_version(value: bool) -> None:
    if value:
        from .. import __version__

        typer.echo(f"optimlab {__version__}")
        raise typer.Exit()


#: The extra each command needs beyond the core install, checked before the command starts (not for --help).
COMMAND_EXTRAS = {"bench": "torch", "paths": "lab", "train": "lab", "sparse": "lab", "tour": "lab", "serve": "serve",
                  "quadratic": "lab", "eos": "lab"}


@app.callback()
def _group(
    context: typer.Context,
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="print optimlab's version and exit"),
) -> None:
    """optimlab: optimizers written once — trace them, race them, plot them."""
    extra = COMMAND_EXTRAS.get(context.invoked_subcommand or "")
    if extra is not None and "--help" not in context.meta["optimlab.arguments"] and missing_modules(extra):
        fail(missing_extra_message(f"optimlab {context.invoked_subcommand}", extra))


Command = TypeVar("Command", bound=Callable[..., Any])


def one_line_errors(command: Command) -> Command:
    """Turn the `ValueError`, `OSError` and `MemoryError` that `command` raises into one line and exit status 2.

    A `ValueError` from the library names the argument and the value already; an `OSError` is a file the
    command could not write (a full disk, a folder that became read-only): its path and the reason; a
    `MemoryError` is a size asked for that does not fit (`--steps 100000000000`).
    """

    @functools.wraps(command)
    def checked(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except ValueError as error:
            fail(str(error))
        except OSError as error:
            where = f"{error.filename}: " if error.filename else ""
            fail(f"cannot write {where}{error.strerror or error}")
        except MemoryError as error:  # numpy names the array it could not allocate
            fail(f"not enough memory: {error or 'ask for fewer steps or a smaller sweep'}")

    return checked  # type: ignore[return-value]


def output_folder(out: Path) -> Path:
    """`out` if the command can write its files there: a folder, or a path where one can be made.

    Checked before any work, and nothing is created here, so that a refused command leaves nothing behind.
    """
    if out.exists() and not out.is_dir():
        fail(f"Invalid --out: {out} is a file, not a folder")
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        fail(f"Invalid --out: {out} cannot be a folder: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        fail(f"Invalid --out: {out} is not writable (no permission to write into {existing})")
    return out


#: The `--out` option of every command that writes files (`out: Path = OUT_OPTION`), checked by `output_folder`
#: before the command runs.
OUT_OPTION: Any = typer.Option(Path("optimlab-report"), "--out", callback=output_folder,
                               help="folder for the figures, CSV files and report (created if missing)")


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]], *, key_columns: int = 1,
                justify: Sequence[str] | None = None, caption: str | None = None) -> None:
    """Print a table without eliding or folding a digit.

    In a terminal narrower than the table the columns are dealt out over several tables, each repeating the
    first `key_columns` (the step, the workload): every number stays on one line (a single column wider than
    the terminal folds). Piped output gets the width the table needs.
    """
    from rich.table import Table

    justify = list(justify or ["right"] * len(headers))

    def build(columns: Sequence[int], part: str = "", last: bool = True) -> Table:
        table = Table(title=title + part, caption=caption if last else None)
        for index in columns:
            # a column wider than the terminal on its own folds (digits kept), never elides
            table.add_column(headers[index], justify=justify[index], overflow="fold")  # type: ignore[arg-type]
        for row in rows:
            table.add_row(*(row[index] for index in columns))
        return table

    everything = list(range(len(headers)))
    if not console.is_terminal:
        whole = build(everything)
        Console(width=max(console.width, _natural_width(whole))).print(whole)
        return
    if _natural_width(build(everything)) <= console.width:
        console.print(build(everything))
        return
    keys, others = everything[:key_columns], everything[key_columns:]
    panels: list[list[int]] = []
    for index in others:
        if panels and _natural_width(build(keys + panels[-1] + [index])) <= console.width:
            panels[-1].append(index)
        else:
            panels.append([index])
    for number, columns in enumerate(panels, start=1):
        console.print(build(keys + columns, f" ({number}/{len(panels)})", last=number == len(panels)))


def _natural_width(table: Any) -> int:
    return Console(width=10_000).measure(table).maximum


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
        _print_error(missing_extra_message(f"optimlab {command}", extra))
        sys.exit(2)
