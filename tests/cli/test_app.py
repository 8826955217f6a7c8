"""The `optimlab` application: `--version`, and every mistake one line on stderr with exit status 2."""

import io
from importlib import import_module
from importlib.metadata import version
from pathlib import Path

import pytest
from rich.cells import cell_len
from rich.console import Console
from typer.testing import CliRunner

from optimlab.cli import app

cli_app = import_module("optimlab.cli.app")  # the module: `optimlab.cli.app` the attribute is the Typer app

runner = CliRunner()


def invoke(*arguments):
    return runner.invoke(app, [str(argument) for argument in arguments])


def assert_one_line_error(result, *words):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for word in words:
        assert word in lines[0]


def test_version_prints_the_installed_version():
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"optimlab {version('optimlab')}"


@pytest.mark.parametrize(("arguments", "words"), [
    (["trace", "adam", "--steps", "abc"], ["--steps", "abc", "optimlab trace --help"]),
    (["trace", "adam", "--bogus"], ["--bogus"]),
    (["trace"], ["Missing argument"]),
    (["trce"], ["No such command 'trce'", "optimlab --help"]),
    (["paths", "--out"], ["--out"]),
])
def test_click_usage_errors_are_one_line(arguments, words):
    assert_one_line_error(invoke(*arguments), *words)


# The cheapest call of each command that writes files: it must be refused before any work starts.
WRITERS = {
    "paths": ["paths", "--preset", "dlfs", "--no-gif"],
    "train": ["train", "--optimizers", "sgd", "--epochs", "1", "--hidden", "4"],
    "sparse": ["sparse", "--optimizers", "sgd", "--samples", "50"],
    "tour": ["tour", "--epochs", "1"],
    "quadratic": ["quadratic", "--kappas", "1,10", "--resolution", "4", "--map-steps", "4", "--adaptive-steps", "5"],
    "eos": ["eos", "--steps", "2", "--every", "1", "--samples", "20", "--hidden", "2", "--adam-lrs", ""],
}


@pytest.mark.parametrize("command", sorted(WRITERS))
def test_out_on_a_file_is_one_line(tmp_path, command):
    existing = tmp_path / "notes.txt"
    existing.write_text("mine")
    assert_one_line_error(invoke(*WRITERS[command], "--out", existing), "--out", str(existing), "is a file")
    assert_one_line_error(invoke(*WRITERS[command], "--out", existing / "figures"), str(existing), "is a file")
    assert existing.read_text() == "mine" and sorted(tmp_path.iterdir()) == [existing]


@pytest.mark.parametrize("command", sorted(WRITERS))
def test_out_in_an_unwritable_place_is_one_line(command):
    if not Path("/proc/self").is_dir():
        pytest.skip("needs Linux's /proc, where no folder can be made")
    result = invoke(*WRITERS[command], "--out", "/proc/optimlab-report")
    assert_one_line_error(result, "/proc/optimlab-report")


def test_an_unwritable_folder_is_refused_before_the_command_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(cli_app.os, "access", lambda path, mode: Path(path) != tmp_path)
    result = invoke(*WRITERS["paths"], "--out", tmp_path / "figures")
    assert_one_line_error(result, "not writable", str(tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_a_table_wider_than_the_terminal_is_split_not_folded(monkeypatch):
    """COLUMNS=80: every line fits, every number is whole on one line, and each part repeats the step column."""
    headers = ["t", *(f"quantity {index}" for index in range(8))]
    rows = [[str(t), *(f"{-t * 1.234567891 * 10 ** index:.10g}" for index in range(8))] for t in range(1, 4)]
    buffer = io.StringIO()
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setattr(cli_app, "console", Console(file=buffer, force_terminal=True, color_system=None))
    cli_app.print_table("a wide table", headers, rows)
    text = buffer.getvalue()
    assert max(cell_len(line) for line in text.splitlines()) <= 80  # columns, not code points (m̂)
    for row in rows:
        for cell in row[1:]:
            assert f" {cell} │" in text
    parts = text.count("┃ t ┃")
    assert parts > 1 and text.count("│ 3 │") == parts
