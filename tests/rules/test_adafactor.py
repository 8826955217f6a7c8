"""The Adafactor rule (rules/adafactor.py) on NumPy (`Rule.step`) against an independent float64 reference written
here from the algorithm in torch.optim.Adafactor's documentation, element by element in Python floats."""

import math

import numpy as np
import pytest

from optimlab.rules import adafactor
from optimlab.rules.adafactor import FACTORED, RULE, UNFACTORED

SETTINGS = [pytest.param({}, id="defaults"),
            pytest.param({"lr": 0.05, "weight_decay": 0.1, "maximize": True, "d": 2.0, "beta2_decay": -0.5,
                          "eps": (1e-6, 1e-2)}, id="every-option")]


def _mean(values):
    return sum(values) / len(values)


def reference(param, gradients, lr=1e-2, beta2_decay=-0.8, eps=(None, 1e-3), d=1.0, weight_decay=0.0,
              maximize=False):
    """The documented algorithm on one param (a nested list for matrices, a list for vectors), for float64."""
    eps1, eps2 = eps
    if eps1 is None:
        eps1 = 2.0 ** -52
    array = np.asarray(param, dtype=float)
    matrices = array.reshape(-1, *array.shape[-2:]).tolist() if array.ndim >= 2 else None
    flat = array.ravel().tolist()
    rows = [[0.0] * len(matrix) for matrix in matrices] if matrices else None
    columns = [[0.0] * len(matrix[0]) for matrix in matrices] if matrices else None
    variance = [0.0] * len(flat)
    for t, gradient in enumerate(gradients, start=1):
        g_all = [(-g if maximize else g) for g in np.asarray(gradient, dtype=float).ravel().tolist()]
        weight = t ** beta2_decay
        rho = min(lr, 1 / math.sqrt(t))
        alpha = max(eps2, math.sqrt(_mean([x * x for x in flat]))) * rho
        flat = [x * (1 - lr * weight_decay) for x in flat]
        if matrices:
            n_rows, n_columns = array.shape[-2:]
            estimate = []
            for b in range(len(matrices)):
                g = [[g_all[(b * n_rows + i) * n_columns + j] for j in range(n_columns)] for i in range(n_rows)]
                for i in range(n_rows):
                    rows[b][i] += weight * (_mean([x * x for x in g[i]]) - rows[b][i])
                for j in range(n_columns):
                    columns[b][j] += weight * (_mean([g[i][j] ** 2 for i in range(n_rows)]) - columns[b][j])
                scale = max(_mean(rows[b]), eps1)
                estimate += [rows[b][i] * columns[b][j] / scale for i in range(n_rows) for j in range(n_columns)]
        else:
            for k, g in enumerate(g_all):
                variance[k] += weight * (g * g - variance[k])
            estimate = variance
        u = [g / max(math.sqrt(v), eps1) for g, v in zip(g_all, estimate, strict=True)]
        clip = max(1.0, math.sqrt(_mean([x * x for x in u])) / d)
        flat = [x - alpha / clip * y for x, y in zip(flat, u, strict=True)]
    state = ({"row_var": np.array(rows).reshape(*array.shape[:-1], 1),
              "col_var": np.array(columns).reshape(*array.shape[:-2], 1, array.shape[-1])}
             if matrices else {"variance": np.array(variance).reshape(array.shape)})
    return np.array(flat).reshape(array.shape), state


def _run(shape, settings, steps=12, seed=0):
    rng = np.random.default_rng(seed)
    param = rng.normal(size=shape)
    gradients = [rng.normal(size=shape) for _ in range(steps)]
    hyper = RULE.defaults(**settings)
    part = RULE.rule_for_shape(shape)
    state = {name: np.zeros(part.state_shape(name, shape)) for name in part.active_state(hyper)}
    current = param
    for step, grad in enumerate(gradients, start=1):
        current, state = RULE.step(current, grad, state, step, hyper)
    return current, state, reference(param, gradients, **settings)


@pytest.mark.parametrize("settings", SETTINGS)
@pytest.mark.parametrize("shape", [(4, 6), (6, 1), (1, 5), (2, 3, 4), (7,), (1,), ()],
                         ids=lambda shape: "x".join(map(str, shape)) or "scalar")
def test_rule_step_matches_the_reference(shape, settings):
    actual, state, (expected, expected_state) = _run(shape, settings)
    np.testing.assert_allclose(actual, expected, rtol=1e-12, atol=1e-15)
    assert sorted(state) == sorted(expected_state)
    for name, value in expected_state.items():
        assert state[name].shape == value.shape
        np.testing.assert_allclose(state[name], value, rtol=1e-12, atol=1e-300)


def test_matrices_keep_torchs_factored_state_shapes_and_vectors_the_whole_variance():
    assert RULE.rule_for_shape((5, 3)) is FACTORED and RULE.rule_for_shape((2, 5, 3)) is FACTORED
    assert RULE.rule_for_shape((3,)) is UNFACTORED and RULE.rule_for_shape(()) is UNFACTORED
    assert FACTORED.state_shape("row_var", (2, 5, 3)) == (2, 5, 1)
    assert FACTORED.state_shape("col_var", (2, 5, 3)) == (2, 1, 3)
    assert FACTORED.active_state(RULE.defaults()) == ("row_var", "col_var")
    assert UNFACTORED.active_state(RULE.defaults()) == ("variance",)


def test_eps1_none_is_the_first_params_machine_epsilon():
    assert RULE.hyperparameters_for(RULE.defaults(), np.dtype(np.float32))["eps"] == (np.finfo(np.float32).eps, 1e-3)
    assert RULE.hyperparameters_for(RULE.defaults(eps=(0.5, 1e-3)), np.dtype(np.float32))["eps"] == (0.5, 1e-3)
    with pytest.raises(ValueError, match="machine epsilon"):
        adafactor.coefficients(1, **RULE.defaults())


def test_a_param_group_steps_each_param_with_the_rule_of_its_shape():
    rng = np.random.default_rng(3)
    params = [rng.normal(size=(3, 4)), rng.normal(size=5)]
    grads = [rng.normal(size=(3, 4)), rng.normal(size=5)]
    states = [{"row_var": np.zeros((3, 1)), "col_var": np.zeros((1, 4))}, {"variance": np.zeros(5)}]
    hyper = RULE.defaults(lr=0.1)
    results = RULE.step_group(params, grads, states, [1, 1], hyper)
    for (param, state), one, grad, its_state in zip(results, params, grads, states, strict=True):
        alone, alone_state = RULE.step(one, grad, its_state, 1, hyper)
        np.testing.assert_array_equal(param, alone)
        assert sorted(state) == sorted(alone_state)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"lr": -1.0}, "Invalid lr"),
    ({"beta2_decay": 0.5}, "Invalid beta2_decay: 0.5"),
    ({"eps": (None, -1.0)}, r"Invalid eps\[1\]"),
    ({"eps": (-1.0, 1e-3)}, r"Invalid eps\[0\]"),
    ({"eps": 1e-3}, "Invalid eps: 0.001"),
    ({"d": 0.5}, "Invalid d: 0.5"),
    ({"weight_decay": -0.1}, "Invalid weight_decay"),
    ({"maximize": 1}, "Invalid maximize"),
])
def test_invalid_hyperparameters_are_refused_by_name(overrides, message):
    with pytest.raises(ValueError, match=message):
        RULE.defaults(**overrides)


def test_row_and_column_reductions_are_not_for_rows_of_a_sweep():
    with pytest.raises(ValueError, match="whole tensors"):
        FACTORED.step(np.ones((2, 3)), np.ones((2, 3)), {"row_var": np.zeros((2, 1)), "col_var": np.zeros((1, 3))},
                      1, RULE.defaults(), tensor_axes=(1,))
