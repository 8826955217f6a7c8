"""rules/momentum.py against SPEC §2: PyTorch's buffer, the notes' V_t and the geometric expansion."""

import numpy as np
import pytest

from optimlab.numpy import Momentum
from optimlab.rules import RULES
from optimlab.tracing import trace


def test_notes_example_pytorch_form():
    rows = trace("momentum", "notes", [0.0], 5, lr=0.01, momentum=0.9)
    assert [row["x"] for row in rows] == pytest.approx([0.4, 1.128, 2.09296, 3.1939872, 4.329392704], abs=1e-12)


def test_velocity_expands_geometrically():
    """With f_t = η g_t: V_4 = γ³ f_1 + γ² f_2 + γ f_3 + f_4 — old gradients fade."""
    gamma, lr = 0.9, 0.05
    grads = [np.array([3.0, -1.0]), np.array([0.5, 2.0]), np.array([-4.0, 0.25]), np.array([1.5, 1.0])]
    rule = RULES["momentum"]
    hyper = rule.defaults(lr=lr, momentum=gamma)
    param, state = np.zeros(2), {"momentum_buffer": np.zeros(2)}
    velocities = []
    for t, grad in enumerate(grads, start=1):
        param, state = rule.step(param, grad, state, t, hyper)
        velocities.append(rule.trace(t, grad, state, hyper)["V"])
    f = [lr * grad for grad in grads]
    np.testing.assert_allclose(velocities[0], f[0], rtol=1e-14)
    np.testing.assert_allclose(velocities[1], gamma * f[0] + f[1], rtol=1e-14)
    np.testing.assert_allclose(velocities[2], gamma**2 * f[0] + gamma * f[1] + f[2], rtol=1e-14)
    np.testing.assert_allclose(velocities[3], gamma**3 * f[0] + gamma**2 * f[1] + gamma * f[2] + f[3], rtol=1e-14)
    np.testing.assert_allclose(param, -sum(velocities), rtol=1e-14)  # θ_{t+1} = θ_t − V_t


def test_three_spellings_give_one_trajectory():
    """DLFS (v ← γv − ηg; θ ← θ + v), Ruder (V ← γV + ηg; θ ← θ − V) and PyTorch's buffer agree."""
    gamma, lr = 0.9, 0.1
    rng = np.random.default_rng(1)
    grads = rng.normal(size=(20, 4))
    ours = {"w": np.zeros(4)}
    optimizer = Momentum(lr=lr, momentum=gamma)
    dlfs_theta, dlfs_v = np.zeros(4), np.zeros(4)
    ruder_theta, ruder_v = np.zeros(4), np.zeros(4)
    for grad in grads:
        optimizer.update(ours, {"w": grad})
        dlfs_v = gamma * dlfs_v - lr * grad
        dlfs_theta = dlfs_theta + dlfs_v
        ruder_v = gamma * ruder_v + lr * grad
        ruder_theta = ruder_theta - ruder_v
        np.testing.assert_allclose(ours["w"], dlfs_theta, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(ours["w"], ruder_theta, rtol=1e-12, atol=1e-14)


def test_nesterov_looks_ahead_along_the_buffer():
    rule = RULES["momentum"]
    hyper = rule.defaults(lr=0.1, momentum=0.9, nesterov=True)
    param, state = rule.step(np.array([1.0]), np.array([2.0]), {"momentum_buffer": np.zeros(1)}, 1, hyper)
    param, state = rule.step(param, np.array([1.0]), state, 2, hyper)
    buffer = 0.9 * 2.0 + 1.0
    assert state["momentum_buffer"][0] == pytest.approx(buffer)
    assert param[0] == pytest.approx(1.0 - 0.1 * (2.0 + 0.9 * 2.0) - 0.1 * (1.0 + 0.9 * buffer))


def test_dampening_scales_new_gradients_after_the_first_step():
    rule = RULES["momentum"]
    hyper = rule.defaults(lr=1.0, momentum=0.5, dampening=0.25)
    _, state = rule.step(np.zeros(1), np.array([4.0]), {"momentum_buffer": np.zeros(1)}, 1, hyper)
    assert state["momentum_buffer"][0] == 4.0  # b_1 = g_1, as in PyTorch
    _, state = rule.step(np.zeros(1), np.array([4.0]), state, 2, hyper)
    assert state["momentum_buffer"][0] == 0.5 * 4.0 + 0.75 * 4.0
