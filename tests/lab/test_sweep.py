"""lab/sweep.py: a batch of configs is the same math as each config alone, bit for bit."""

import numpy as np
import pytest

from optimlab.lab import SURFACES, best_lr, run, sweep
from optimlab.rules import OPTIMIZERS
from optimlab.tracing import notes_function, trace

LRS = np.geomspace(1e-3, 1.0, 7)


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
@pytest.mark.parametrize("surface", ["ellipse", "rastrigin", "notes"])
def test_each_config_of_an_lr_sweep_equals_its_run_alone_bit_for_bit(optimizer, surface):
    batch = sweep(surface, optimizer, {"lr": LRS}, steps=40, record_trace=True)
    for index, lr in enumerate(LRS):
        alone = run(surface, optimizer, {"lr": float(lr)}, steps=40)
        np.testing.assert_array_equal(batch.path[:, index], alone.path)
        np.testing.assert_array_equal(batch.loss[:, index], alone.loss)
        for name, values in alone.trace.items():
            np.testing.assert_array_equal(batch.trace[name][:, index], values)


@pytest.mark.parametrize(("optimizer", "hyperparameters", "alone"), [
    ("adam", {"lr": 0.1, "betas": ([0.5, 0.8, 0.9, 0.99], 0.999)}, lambda i, h: {"lr": 0.1,
                                                                                "betas": (h["betas"][0][i], 0.999)}),
    ("adam", {"lr": LRS[:4], "betas": (0.9, [0.9, 0.99, 0.999, 0.9999]), "eps_root": [0, 1e-8, 1e-4, 1.0]},
     lambda i, h: {"lr": float(LRS[i]), "betas": (0.9, h["betas"][1][i]), "eps_root": h["eps_root"][i]}),
    ("rmsprop", {"lr": 0.01, "alpha": [0.5, 0.9, 0.99, 0.999], "eps": [1e-8, 1e-6, 1e-4, 1e-2]},
     lambda i, h: {"lr": 0.01, "alpha": h["alpha"][i], "eps": h["eps"][i]}),
    ("momentum", {"lr": 0.01, "momentum": [0.0, 0.5, 0.9, 0.99], "dampening": [0, 0.1, 0.5, 1]},
     lambda i, h: {"lr": 0.01, "momentum": h["momentum"][i], "dampening": h["dampening"][i]}),
    ("adagrad", {"lr": 0.5, "lr_decay": [0, 0.01, 0.1, 1], "initial_accumulator_value": [0, 0.1, 1, 10]},
     lambda i, h: {"lr": 0.5, "lr_decay": h["lr_decay"][i],
                   "initial_accumulator_value": h["initial_accumulator_value"][i]}),
])
def test_sweeping_any_continuous_hyperparameter_is_bit_exact(optimizer, hyperparameters, alone):
    batch = sweep("rosenbrock", optimizer, hyperparameters, steps=50)
    assert batch.n_configs == 4
    for index in range(4):
        single = run("rosenbrock", optimizer, alone(index, hyperparameters), steps=50)
        np.testing.assert_array_equal(batch.path[:, index], single.path)


def test_run_reproduces_spec_6_and_the_trace_command():
    adam = run("notes", "adam", {"lr": 0.1}, steps=10)
    assert adam.trace["alpha_t"][0, 0] == pytest.approx(0.0316227766, abs=1e-10)
    assert adam.path[1, 0] == pytest.approx(0.1, abs=1e-10)
    assert adam.path[10, 0] == pytest.approx(0.9923983799, abs=1e-9)  # ε outside moves the 10th digit
    notes_placement = run("notes", "adam", {"lr": 0.1, "eps": 0.0, "eps_root": 1e-8}, steps=10)
    assert notes_placement.path[10, 0] == pytest.approx(0.9923983799, abs=1e-10)
    rows = trace("adam", notes_function(), [0.0], 10, lr=0.1)
    for row, mine in zip(rows, adam.rows(), strict=True):
        for name in ("g", "m", "v", "m_hat", "v_hat", "alpha_t", "x"):
            assert mine[name][0] == pytest.approx(row[name], rel=1e-12, abs=1e-15)


def test_runs_are_deterministic():
    first = sweep("rastrigin", "adam", {"lr": LRS}, steps=30)
    second = sweep("rastrigin", "adam", {"lr": LRS}, steps=30)
    np.testing.assert_array_equal(first.path, second.path)


def test_sweep_records_the_varied_hyperparameters_and_picks_the_best():
    batch = sweep("ellipse", "sgd", {"lr": [1e-4, 0.5, 5.0]}, steps=30)
    assert batch.varied == ("lr",)
    assert batch.config(1) == {"lr": 0.5, "weight_decay": 0.0, "maximize": False}
    assert batch.path.shape == (31, 3, 2) and batch.loss.shape == (31, 3)
    assert batch.score()[2] > 1e50  # lr 5 diverges on the ellipse
    assert np.isinf(sweep("ellipse", "sgd", {"lr": [5.0]}, steps=200).score()[0])  # ... until it overflows
    assert batch.best() == 1
    assert best_lr("ellipse", "sgd", [1e-4, 0.5, 5.0], steps=30) == 0.5


def test_start_can_be_given():
    result = run(SURFACES["ellipse"], "sgd", {"lr": 0.1}, start=[1.0, 1.0], steps=1)
    assert result.path[0].tolist() == [1.0, 1.0]
    assert result.path[1].tolist() == pytest.approx([1.0 - 0.1 * 0.1, 1.0 - 0.1 * 2.0])


@pytest.mark.parametrize(("arguments", "message"), [
    (("ellipse", "sgd", {"lr": -1.0}), "Invalid lr"),
    (("ellipse", "sgd", {"lr": [0.1, -1.0]}), "Invalid lr"),
    (("ellipse", "unknown", {}), "Invalid optimizer"),
    (("ellipse", "adam", {"lr": [0.1, 0.2], "eps": [1e-8, 1e-8, 1e-8]}), "differ in length"),
    (("ellipse", "adam", {"lr": 0.1, "amsgrad": [True, False]}), "switch"),
])
def test_invalid_sweeps_say_why(arguments, message):
    with pytest.raises(ValueError, match=message):
        sweep(*arguments, steps=3)


def test_invalid_start_and_steps():
    with pytest.raises(ValueError, match="Invalid start"):
        run("ellipse", "sgd", {"lr": 0.1}, start=[1.0], steps=3)
    with pytest.raises(ValueError, match="Invalid steps"):
        run("ellipse", "sgd", {"lr": 0.1}, steps=0)
    with pytest.raises(ValueError, match="use sweep"):
        run("ellipse", "sgd", {"lr": [0.1, 0.2]}, steps=3)
