"""rules/adagrad.py against SPEC §3: h accumulates g², the three ε placements, lr_decay."""

import math

import numpy as np
import pytest

from optimlab.rules import RULES


def _run(grads, **hyper):
    rule = RULES["adagrad"]
    settings = rule.defaults(**hyper)
    param = np.zeros(len(grads[0]))
    state = {"sum": np.full_like(param, settings["initial_accumulator_value"])}
    for t, grad in enumerate(grads, start=1):
        param, state = rule.step(param, np.asarray(grad, dtype=float), state, t, settings)
    return param, state


def test_h_is_the_sum_of_squared_gradients():
    _, state = _run([[1.0, 2.0], [3.0, -1.0], [0.5, 0.0]], lr=0.1)
    np.testing.assert_allclose(state["sum"], [1 + 9 + 0.25, 4 + 1 + 0])


@pytest.mark.parametrize(("eps", "eps_root", "denominator"), [
    (0.0, 0.0, lambda h: math.sqrt(h)),              # DLFS text: 1/√h
    (0.0, 1e-8, lambda h: math.sqrt(h + 1e-8)),      # Ruder: η/√(G + ε)
    (1e-7, 0.0, lambda h: math.sqrt(h) + 1e-7),      # DLFS code, PyTorch (1e-10)
])
def test_epsilon_placements(eps, eps_root, denominator):
    param, _ = _run([[3.0]], lr=0.5, eps=eps, eps_root=eps_root)
    assert param[0] == pytest.approx(-0.5 * 3.0 / denominator(9.0), rel=1e-15)


def test_lr_decay_and_initial_accumulator():
    rule = RULES["adagrad"]
    assert rule.coefficients(3, **rule.defaults(lr=1.0, lr_decay=0.5))["clr"] == pytest.approx(1 / (1 + 2 * 0.5))
    param, state = _run([[2.0]], lr=1.0, initial_accumulator_value=5.0, eps=0.0)
    assert state["sum"][0] == 9.0 and param[0] == pytest.approx(-2.0 / 3.0)


def test_rarely_updated_elements_keep_a_large_rate():
    """The notes' sparse feature: w₂'s gradient is mostly 0, so its h stays small and its step large."""
    rule = RULES["adagrad"]
    hyper = rule.defaults(lr=0.1)
    grads = [[1.0, 0.0]] * 50 + [[1.0, 1.0]]
    _, state = _run(grads, lr=0.1)
    rate = rule.trace(len(grads), np.array(grads[-1]), state, hyper)["rate"]
    assert rate[1] > 5 * rate[0]
