"""rules/rmsprop.py against SPEC §4: the EMA of g², its 0.81/0.09/0.1 weights, centered and momentum."""

import numpy as np
import pytest

from optimlab.ema import ema
from optimlab.rules import RULES


def _states(grads, **hyper):
    rule = RULES["rmsprop"]
    settings = rule.defaults(**hyper)
    param = np.zeros(1)
    state = {name: np.zeros(1) for name in rule.active_state(settings)}
    states = []
    for t, grad in enumerate(grads, start=1):
        param, state = rule.step(param, np.array([grad]), state, t, settings)
        states.append({name: value.copy() for name, value in state.items()})
    return param, states


def test_two_steps_weigh_0_81_0_09_0_1():
    """ρ = 0.9: s_t = 0.81 s_{t−2} + 0.09 g_{t−1}² + 0.1 g_t² (the 0.09 term is the previous gradient's)."""
    grads = [2.0, -3.0, 5.0]
    _, states = _states(grads, lr=0.01, alpha=0.9)
    s1, s3 = states[0]["square_avg"][0], states[2]["square_avg"][0]
    assert s3 == pytest.approx(0.81 * s1 + 0.09 * (-3.0) ** 2 + 0.1 * 5.0**2, rel=1e-14)


def test_square_avg_is_the_ema_of_squared_gradients():
    rng = np.random.default_rng(2)
    grads = rng.normal(size=30)
    _, states = _states(list(grads), lr=0.01, alpha=0.95)
    expected = ema(grads**2, alpha=0.05)
    np.testing.assert_allclose([state["square_avg"][0] for state in states], expected, rtol=1e-12)


def test_step_uses_the_root_of_the_average():
    param, states = _states([2.0], lr=0.1, alpha=0.9, eps=0.0)
    assert param[0] == pytest.approx(-0.1 * 2.0 / np.sqrt(0.1 * 4.0))


def test_centered_subtracts_the_squared_mean_gradient():
    param, states = _states([2.0, 2.0], lr=0.1, alpha=0.5, eps=0.0, centered=True)
    square_avg, grad_avg = states[-1]["square_avg"][0], states[-1]["grad_avg"][0]
    assert square_avg == pytest.approx(3.0) and grad_avg == pytest.approx(1.5)


def test_momentum_accumulates_normalized_steps():
    param, states = _states([2.0, 2.0], lr=0.1, alpha=0.9, eps=0.0, momentum=0.5)
    first = 2.0 / np.sqrt(0.4)
    second = 2.0 / np.sqrt(0.9 * 0.4 + 0.4)
    assert states[-1]["momentum_buffer"][0] == pytest.approx(0.5 * first + second)
    assert param[0] == pytest.approx(-0.1 * first - 0.1 * (0.5 * first + second))
