"""`optimlab paths | train | sparse | tour`: each writes valid, non-empty files; bad input is one clear line."""

import pytest
from typer.testing import CliRunner

from optimlab.cli import app

runner = CliRunner()


def invoke(*arguments):
    return runner.invoke(app, [str(argument) for argument in arguments])


def test_paths_preset_writes_png_gif_csv(tmp_path, check):
    result = invoke("paths", "--preset", "dlfs", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    check.png(tmp_path / "paths-dlfs.png")
    assert check.gif(tmp_path / "paths-dlfs.gif") == 31
    assert len(check.csv(tmp_path / "paths-dlfs.csv")) == 4 * 31
    assert str(tmp_path / "paths-dlfs.png") in result.output


def test_paths_with_a_sweep(tmp_path, check):
    result = invoke("paths", "-s", "beale", "--optimizers", "sgd,adam", "--lr", "adam=0.5", "--steps", "20",
                    "--sweep-size", "10", "--no-gif", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    check.png(tmp_path / "lr-sweep-beale.png")
    assert {row["lr"] for row in check.csv(tmp_path / "paths-beale.csv") if row["optimizer"] == "adam"} == {"0.5"}
    assert not (tmp_path / "paths-beale.gif").exists()


def test_train_writes_curves_and_metrics(tmp_path, check):
    result = invoke("train", "--optimizers", "sgd,adam", "--epochs", "1", "--hidden", "8", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    check.png(tmp_path / "train-curves.png")
    assert len(check.csv(tmp_path / "train-metrics.csv")) == 2 * 45


def test_sparse_writes_figure_and_tables(tmp_path, check):
    result = invoke("sparse", "--optimizers", "sgd,adagrad", "--samples", "300", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    check.png(tmp_path / "sparse-errors.png")
    assert [row["optimizer"] for row in check.csv(tmp_path / "sparse-summary.csv")] == ["sgd", "adagrad"]
    assert "steps until the error stays below 0.1" in result.output


def test_tour_writes_the_report(tmp_path, monkeypatch, check):
    import optimlab.lab.tour as tour

    monkeypatch.setattr(tour, "TOUR_SURFACES", ("saddle",))
    result = invoke("tour", "--epochs", "1", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    index = tmp_path / "index.html"
    assert result.output.strip().endswith(str(index))
    linked = check.html(index)
    assert {"paths-dlfs.png", "paths-dlfs.gif", "paths-notes.png", "paths-saddle.png", "lr-sweep-saddle.png",
            "train-curves.png", "train-metrics.csv", "sparse-errors.png", "sparse-summary.csv"} <= set(linked)
    assert {"quadratic-maps.png", "quadratic-rates.csv", "stability.csv", "effective-lr.png", "eos.png",
            "eos.csv"} <= set(linked)  # "Why it works"
    for name in linked:
        if name.endswith(".png"):
            check.png(tmp_path / name)
        elif name.endswith(".csv"):
            check.csv(tmp_path / name)
    page = index.read_text(encoding="utf-8")
    for corrected in ("0.0316227766", "0.1000000000", "0.9923983799"):  # SPEC §6
        assert corrected in page
    for slip in ("0.0158", "0.0499"):  # the notes' own numbers, shown beside
        assert slip in page


@pytest.mark.parametrize(("arguments", "message"), [
    (("paths", "--surface", "moon"), "Invalid surface: 'moon'"),
    (("paths", "--lr", "sgd=fast"), "Invalid --lr"),
    (("paths", "--lr", "sgd=-1"), "Invalid lr: -1.0"),
    (("paths", "--start", "1,2,3"), "Invalid --start"),
    (("paths", "--preset", "nope"), "Invalid --preset"),
    (("paths", "--preset", "notes", "--start", "3", "--steps", "9"), "--preset notes sets the surface, lrs and "
                                                                    "steps itself: drop --start, --steps"),
    (("train", "--optimizers", "unknown"), "Invalid optimizer: 'unknown'"),
    (("train", "--epochs", "0"), "Invalid sizes"),
    (("sparse", "--density", "0"), "Invalid sparse problem"),
    (("tour", "--epochs", "0"), "Invalid --epochs"),
])
def test_bad_input_is_one_clear_line(tmp_path, arguments, message):
    result = invoke(*arguments, "--out", tmp_path)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("command", ["paths", "train", "sparse", "tour"])
def test_help_has_examples(command):
    result = invoke(command, "--help")
    assert result.exit_code == 0 and "Examples" in result.output and "--out" in result.output


@pytest.mark.parametrize(("surface", "start"), [("rosenbrock", "100,100"), ("notes", "-5"), ("ellipse", "0,5.5")])
def test_paths_refuses_a_start_outside_the_surface_box_before_writing(tmp_path, surface, start):
    from fastapi.testclient import TestClient

    from optimlab.serve import create_app

    out = tmp_path / "figures"
    result = invoke("paths", "--surface", surface, "--start", start, "--no-gif", "--out", out)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output
    assert lines[0].startswith("error: Invalid start: ") and f"lies outside {surface}'s bounds" in lines[0]
    assert not out.exists()
    answer = TestClient(create_app(), base_url="http://127.0.0.1").post("/api/run", json={
        "surface": surface, "start": [float(value) for value in start.split(",")],
        "optimizers": [{"name": "sgd"}]})
    assert answer.status_code == 422
    assert lines[0] == f"error: {answer.json()['detail'][0]['msg']}"  # one check, one message


def test_a_failed_computation_leaves_no_folder_behind(tmp_path, monkeypatch):
    import optimlab.lab.paths

    def too_big(*args, **kwargs):
        raise MemoryError("Unable to allocate 291. TiB")

    monkeypatch.setattr(optimlab.lab.paths, "lr_sweeps", too_big)
    out = tmp_path / "figures"
    result = invoke("paths", "--steps", "100000000000", "--no-gif", "--out", out)
    assert result.exit_code == 2 and result.stderr.strip() == "error: not enough memory: Unable to allocate 291. TiB"
    assert not out.exists()
