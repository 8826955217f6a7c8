"""lab/paths.py: presets, lr choice by sweep, and the PNG, GIF and CSV files."""

import numpy as np
import pytest

from optimlab.lab.paths import PRESETS, animate_paths, compare, lr_sweeps, plot_lr_sweep, plot_paths, write_paths_csv


def test_dlfs_preset_is_deep_learning_from_scratch_setting():
    preset = PRESETS["dlfs"]
    assert (preset.surface, preset.steps) == ("ellipse", 30)
    assert preset.lrs == {"sgd": 0.95, "momentum": 0.1, "adagrad": 1.5, "adam": 0.3}
    runs = compare(preset.surface, lrs=preset.lrs, steps=preset.steps)
    assert list(runs) == ["sgd", "momentum", "adagrad", "adam"]
    assert all(result.path.shape == (31, 2) and result.path[0].tolist() == [-7.0, 2.0] for result in runs.values())
    sgd_y = runs["sgd"].path[:, 1]
    assert np.all(np.sign(sgd_y[1:8]) != np.sign(sgd_y[:7]))  # the zig-zag: y changes sign every step


def test_without_lrs_each_optimizer_gets_its_sweeps_best():
    sweeps = lr_sweeps("ellipse", ["sgd", "adam"], steps=20, lrs=[0.01, 0.1, 0.9, 3.0])
    runs = compare("ellipse", ["sgd", "adam"], steps=20, sweeps=sweeps)
    for name, result in runs.items():
        assert result.hyperparameters["lr"] == sweeps[name].config(sweeps[name].best())["lr"]
    given = compare("ellipse", ["sgd", "adam"], lrs={"sgd": 0.5}, steps=20, sweeps=sweeps)
    assert given["sgd"].hyperparameters["lr"] == 0.5


def test_png_gif_and_csv_files(tmp_path, check):
    runs = compare("ellipse", lrs=PRESETS["dlfs"].lrs, steps=12)
    check.png(plot_paths("ellipse", runs, tmp_path / "paths.png"))
    assert check.gif(animate_paths("ellipse", runs, tmp_path / "paths.gif", max_frames=6)) == 6
    rows = check.csv(write_paths_csv(runs, tmp_path / "paths.csv"))
    assert len(rows) == 4 * 13 and set(rows[0]) == {"optimizer", "lr", "t", "x", "y", "f"}
    assert float(rows[0]["x"]) == -7.0 and float(rows[0]["f"]) == pytest.approx(6.45)
    sweeps = lr_sweeps("rosenbrock", ["sgd", "adam"], steps=20, lrs=np.geomspace(1e-3, 1, 9))
    check.png(plot_lr_sweep("rosenbrock", sweeps, tmp_path / "sweep.png"))


def test_one_dimensional_surface_and_unbounded_saddle_plot(tmp_path, check):
    notes = PRESETS["notes"]
    check.png(plot_paths("notes", compare("notes", lrs=notes.lrs, steps=20), tmp_path / "notes.png"))
    sweeps = lr_sweeps("saddle", ["sgd"], steps=10, lrs=[0.01, 0.1, 1.0])
    check.png(plot_lr_sweep("saddle", sweeps, tmp_path / "saddle.png"))
    with pytest.raises(ValueError, match="1-D"):
        animate_paths("notes", compare("notes", lrs={"sgd": 0.1}, steps=3), tmp_path / "notes.gif")
