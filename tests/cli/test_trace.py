"""`optimlab trace`: the notes' example as JSON, CSV and a table; errors are one line with exit status 2."""

import csv
import io
import json

import pytest
from typer.testing import CliRunner

from optimlab.cli import app

runner = CliRunner()


def _run(*args):
    return runner.invoke(app, ["trace", *args])


def test_json_reports_the_corrected_numbers():
    result = _run("adam", "--function", "notes", "--lr", "0.1", "--steps", "10", "--format", "json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    steps = report["steps"]
    assert steps[0]["x"] == pytest.approx(0.1, abs=1e-9)
    assert steps[9]["x"] == pytest.approx(0.9923983799, abs=1e-9)
    assert set(steps[0]) >= {"t", "g", "m", "v", "m_hat", "v_hat", "alpha_t", "update", "x"}
    assert steps[0]["alpha_t"] == pytest.approx(0.0316227766, abs=1e-10)


def test_eps_inside_the_root_as_the_notes_write_it():
    result = _run("adam", "--lr", "0.1", "--eps", "0", "--eps-root", "1e-8", "--format", "json")
    report = json.loads(result.stdout)
    assert report["hyperparameters"]["eps_root"] == 1e-8
    assert report["steps"][9]["x"] == pytest.approx(0.9923983799, abs=1e-9)


def test_csv_has_one_column_per_quantity():
    result = _run("momentum", "--lr", "0.01", "--momentum", "0.9", "--steps", "5", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert list(rows[0]) == ["t", "g", "b", "V", "update", "x", "f"]
    assert float(rows[4]["x"]) == pytest.approx(4.329392704)


def test_table_shows_every_digit():
    result = _run("adagrad", "--lr", "1.5", "--steps", "3")
    assert result.exit_code == 0
    assert "h_t" in result.stdout and "…" not in result.stdout


def test_expression_of_x_and_y_is_differentiated_symbolically():
    result = _run("sgd", "--function", "x**2/20 + y**2", "--start", "-7,2", "--lr", "0.1", "--steps", "1",
                  "--format", "json")
    step = json.loads(result.stdout)["steps"][0]
    assert step["g"] == pytest.approx([-0.7, 4.0])
    assert step["x"] == pytest.approx([-6.93, 1.6])


@pytest.mark.parametrize(("args", "message"), [
    (["adamax"], "Invalid optimizer"),
    (["adam", "--lr", "-0.1"], "Invalid lr"),
    (["adam", "--function", "x+*2"], "Invalid function"),
    (["adam", "--function", "z**2"], "only x and y"),
    (["adam", "--function", "x**2", "--start", "1,2"], "Invalid start"),
    (["sgd", "--beta1", "0.5"], "--beta1 does not apply to sgd"),
    (["adam", "--steps", "0"], "Invalid steps"),
    (["rmsprop", "--alpha", "1.0"], "Invalid alpha"),
])
def test_errors_are_one_line_and_exit_2(args, message):
    result = _run(*args)
    assert result.exit_code == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_diverging_run_is_cut_and_reported_as_the_api_reports_it():
    from optimlab.lab import run
    from optimlab.serve.app import run_result
    from optimlab.tracing import function

    arguments = ["sgd", "--function", "x**4", "--start", "3", "--lr", "10", "--steps", "6"]
    api = run_result(run(function("x**4"), "sgd", {"lr": 10.0}, [3.0], 6))
    assert api.diverged and api.message == "diverged at step 4: f became non-finite; shown up to step 3"

    report = json.loads(_run(*arguments, "--format", "json").stdout)
    assert report["diverged"] is True and report["message"] == api.message
    assert [step["t"] for step in report["steps"]] == [1, 2, 3]

    table = _run(*arguments)
    assert table.exit_code == 0
    assert table.stderr.strip() == f"warning: {api.message}"
    assert "inf" not in table.stdout and "nan" not in table.stdout
    assert [line.split(",")[0] for line in _run(*arguments, "--format", "csv").stdout.splitlines()] == \
        ["t", "1", "2", "3"]


def test_a_finite_run_says_it_did_not_diverge():
    report = json.loads(_run("adam", "--format", "json").stdout)
    assert report["diverged"] is False and report["message"] is None and len(report["steps"]) == 10


@pytest.mark.parametrize("arguments", [
    ["adam", "--steps", "10"],
    ["rmsprop", "--function", "rosenbrock", "--centered", "--momentum", "0.5", "--steps", "3"],
])
def test_the_table_fits_an_80_column_terminal_with_every_digit(monkeypatch, arguments):
    from importlib import import_module

    from rich.cells import cell_len
    from rich.console import Console

    cli_app = import_module("optimlab.cli.app")
    wide = _run(*arguments, "--format", "csv").stdout.splitlines()
    buffer = io.StringIO()
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setattr(cli_app, "console", Console(file=buffer, force_terminal=True, color_system=None))
    assert _run(*arguments).exit_code == 0
    text = buffer.getvalue()
    assert max(cell_len(line) for line in text.splitlines()) <= 80  # columns, not code points (m̂)
    last = dict(zip(wide[0].split(","), wide[-1].split(","), strict=True))
    x = [float(value) for key, value in last.items() if key == "x" or key.startswith("x_")]
    shown = f"{x[0]:.10g}" if len(x) == 1 else "(" + ", ".join(f"{value:.10g}" for value in x) + ")"
    assert f" {shown} │" in text  # x_T whole, on one line


@pytest.mark.parametrize("expression", ['__import__("os").system("touch pwned")', 'sympify("x")', "x.real",
                                        "[x][0]", "lambda: x", '"x"', "True * x", "_x"])
def test_an_expression_is_arithmetic_checked_before_sympy_evaluates_it(tmp_path, monkeypatch, expression):
    monkeypatch.chdir(tmp_path)
    result = _run("sgd", "--function", expression)
    assert result.exit_code == 2 and result.stderr.startswith("error: Invalid function: ")
    assert len(result.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_mathematical_functions_are_accepted():
    result = _run("sgd", "--function", "sin(x)*exp(-y**2) + sqrt(x**2 + 1) + Abs(y) + Max(x, y) + pi",
                  "--start", "1,1", "--steps", "1", "--format", "json")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(("expression", "start"), [("log(x)", "0"), ("x**0.5", "-1")])
def test_a_start_where_f_is_not_finite_is_refused(expression, start):
    result = _run("adam", "--function", expression, "--start", start)
    assert result.exit_code == 2
    assert result.stderr.strip().startswith(f"error: Invalid start: {float(start)} (f is ")


def test_a_size_that_does_not_fit_in_memory_is_one_line(monkeypatch):
    import optimlab.tracing

    def too_big(*args, **kwargs):
        raise MemoryError("Unable to allocate 745. GiB for an array with shape (100000000001, 1, 1)")

    monkeypatch.setattr(optimlab.tracing, "trace_run", too_big)
    result = _run("adam", "--steps", "100000000000")
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: not enough memory: Unable to allocate 745. GiB for an array with shape " \
                                    "(100000000001, 1, 1)"
