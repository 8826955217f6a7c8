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
