"""optimlab.numpy: DLFS's `update(params, grads)` interface, state, dtypes, names, validation."""

import numpy as np
import pytest

import optimlab.numpy as onp
from optimlab.rules import OPTIMIZERS

CLASSES = [onp.SGD, onp.Momentum, onp.Nesterov, onp.AdaGrad, onp.RMSprop, onp.Adam, onp.AdamW]


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_updates_dicts_in_place_and_keeps_dtype(cls, dtype):
    params = {"W": np.ones((2, 3), dtype=dtype), "b": np.zeros(3, dtype=dtype)}
    original = params["W"]
    optimizer = cls()
    optimizer.update(params, {"W": np.full((2, 3), 0.5, dtype=dtype), "b": np.ones(3, dtype=dtype)})
    assert params["W"] is original and params["W"].dtype == dtype
    assert np.all(params["W"] < 1) and np.all(params["b"] < 0)
    assert optimizer.state["W"]["step"] == 1
    for name in optimizer.rule.active_state(optimizer.hyperparameters):
        assert optimizer.state["W"][name].dtype == dtype


def test_lists_are_matched_by_position():
    params = [np.ones(2), np.ones(3)]
    optimizer = onp.SGD(lr=0.5)
    optimizer.update(params, [np.ones(2), np.full(3, 2.0)])
    np.testing.assert_array_equal(params[0], [0.5, 0.5])
    np.testing.assert_array_equal(params[1], [0.0, 0.0, 0.0])


def test_state_is_inspectable_under_pytorch_names():
    params = {"w": np.array([1.0])}
    optimizer = onp.Adam(lr=0.1)
    for _ in range(3):
        optimizer.update(params, {"w": np.array([2.0])})
    assert set(optimizer.state["w"]) == {"step", "exp_avg", "exp_avg_sq"}
    assert optimizer.state["w"]["step"] == 3
    assert optimizer.state["w"]["exp_avg"][0] == pytest.approx(2.0 * (1 - 0.9**3))


def test_create_by_name_and_defaults():
    assert isinstance(onp.create("ADAM", lr=0.1), onp.Adam)
    assert onp.create("adamw").hyperparameters["weight_decay"] == 0.01
    assert onp.create("nesterov").hyperparameters["nesterov"] is True
    assert onp.SGD().hyperparameters["lr"] == 0.01 and onp.Adam().hyperparameters["lr"] == 0.001
    assert "lr=0.1" in repr(onp.create("sgd", lr=0.1))
    with pytest.raises(ValueError, match="Invalid optimizer: 'adamax'"):
        onp.create("adamax")


def test_bad_calls_name_the_problem():
    optimizer = onp.SGD()
    with pytest.raises(ValueError, match="shape"):
        optimizer.update({"w": np.ones(2)}, {"w": np.ones(3)})
    with pytest.raises(KeyError, match="w"):
        optimizer.update({"w": np.ones(2)}, {"v": np.ones(2)})
    with pytest.raises(TypeError, match="floating-point"):
        optimizer.update({"w": np.ones(2, dtype=int)}, {"w": np.ones(2)})
    with pytest.raises(TypeError, match="unexpected hyperparameter"):
        onp.SGD(betas=(0.9, 0.99))


def _invalid_values(name, default):
    if isinstance(default, bool):
        return ["yes", 1]
    if isinstance(default, tuple):
        return [(1.0, 0.999), (0.9, -0.1), (0.9,), "0.9"]
    values = [-1.0, float("nan"), "0.1"] + ([] if name == "lr" else [None])  # lr=None: the DLFS default
    if name in ("alpha",):
        values.append(1.0)
    if name == "dampening":
        values.append(1.5)
    if name not in ("momentum", "alpha", "dampening"):
        values.append(float("inf"))
    return values


CASES = [(name, hyper, value) for name, (rule, overrides) in OPTIMIZERS.items()
         for hyper, default in rule.hyperparameters.items() for value in _invalid_values(hyper, default)]


@pytest.mark.parametrize(("optimizer", "hyperparameter", "value"), CASES,
                         ids=[f"{o}-{h}-{v!r}" for o, h, v in CASES])
def test_every_invalid_hyperparameter_raises_naming_it(optimizer, hyperparameter, value):
    with pytest.raises(ValueError, match=rf"Invalid {hyperparameter}\b"):
        onp.create(optimizer, **{hyperparameter: value})


def test_nesterov_needs_momentum_without_dampening():
    with pytest.raises(ValueError, match="nesterov"):
        onp.Nesterov(dampening=0.5)
    with pytest.raises(ValueError, match="nesterov"):
        onp.Nesterov(momentum=0.0)
