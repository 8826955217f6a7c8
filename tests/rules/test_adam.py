"""rules/adam.py against SPEC §5 and the corrected worked example of §6."""

import math

import numpy as np
import pytest

from optimlab.rules import RULES
from optimlab.tracing import trace

# SPEC §6: t, g, m, v, m̂, v̂, α_t, x  (Adam, lr 0.1, on f(x) = (2x − 10)² from x₀ = 0)
NOTES_TABLE = [
    (1, -40, -4, 1.6, -40, 1600, 0.0316227766, 0.1000000000),
    (2, -39.2, -7.52, 3.13504, -39.57894737, 1568.304152, 0.02353167253, 0.1999422433),
    (3, -38.40046205, -10.60804621, 4.606500446, -39.14408194, 1537.036673, 0.02020105974, 0.2997867090),
    (4, -37.60170633, -13.30741222, 6.015782264, -38.69558656, 1506.203365, 0.01837689237, 0.3994923264),
    (5, -36.80406139, -15.65707713, 7.364305417, -38.23368693, 1475.809753, 0.01724988469, 0.4990170527),
    (10, -32.84450527, -23.27427899, 13.24636913, -35.73392993, 1330.608712, 0.0153189074, 0.9923983799),
]


def _close(actual, expected):
    """Within 1e-9, relative for values above 1: the SPEC prints 10 significant digits."""
    return abs(actual - expected) <= 1e-9 * max(1.0, abs(expected))


@pytest.mark.parametrize("placement", [{"eps": 1e-8}, {"eps": 0.0, "eps_root": 1e-8}], ids=["outside", "inside"])
def test_worked_example_matches_the_corrected_table(placement):
    rows = {row["t"]: row for row in trace("adam", "notes", [0.0], 10, lr=0.1, **placement)}
    for t, g, m, v, m_hat, v_hat, alpha_t, x in NOTES_TABLE:
        row = rows[t]
        assert abs(row["x"] - x) <= 1e-9, (t, row["x"], x)
        for name, expected in [("g", g), ("m", m), ("v", v), ("m_hat", m_hat), ("v_hat", v_hat),
                               ("alpha_t", alpha_t)]:
            assert _close(row[name], expected), (t, name, row[name], expected)


def test_first_step_size_is_0_316_lr_not_the_notes_value():
    alpha_1 = trace("adam", "notes", [0.0], 1, lr=0.1)[0]["alpha_t"]
    assert alpha_1 == pytest.approx(0.1 * math.sqrt(0.001) / 0.1, rel=1e-12)
    assert alpha_1 == pytest.approx(0.0316227766, abs=1e-10)  # the notes' 0.1 and 0.0158 are slips


def test_reaches_the_minimum_first_at_step_144():
    rows = trace("adam", "notes", [0.0], 200, lr=0.1)
    first = next(row["t"] for row in rows if abs(row["x"] - 5) < 1e-3)
    assert first == 144


def test_efficient_form_gives_the_same_step():
    """θ − η m̂/(√v̂ + ε) = θ − α_t m/(√v + ε̂) with ε̂ = ε √(1 − β2^t)."""
    rows = trace("adam", "notes", [0.0], 10, lr=0.1)
    beta2 = 0.999
    for row in rows:
        eps_hat = 1e-8 * math.sqrt(1 - beta2 ** row["t"])
        assert row["update"] == pytest.approx(-row["alpha_t"] * row["m"] / (math.sqrt(row["v"]) + eps_hat),
                                              rel=1e-12)


def test_bias_corrected_ema_is_a_weighted_mean():
    """m̂_t = Σ β^{t−k} g_k / Σ β^{t−k}: the correction removes the pull toward m_0 = 0."""
    rule = RULES["adam"]
    hyper = rule.defaults(lr=0.01)
    rng = np.random.default_rng(0)
    grads = rng.normal(size=(12, 3))
    state = {"exp_avg": np.zeros(3), "exp_avg_sq": np.zeros(3)}
    param = np.zeros(3)
    for t, grad in enumerate(grads, start=1):
        param, state = rule.step(param, grad, state, t, hyper)
        weights = 0.9 ** np.arange(t - 1, -1, -1)
        expected = (weights[:, None] * grads[:t]).sum(0) / weights.sum()
        np.testing.assert_allclose(rule.trace(t, grad, state, hyper)["m_hat"], expected, rtol=1e-12)


def test_amsgrad_uses_the_running_maximum_of_v():
    rule = RULES["adam"]
    hyper = rule.defaults(lr=0.1, amsgrad=True)
    state = {"exp_avg": np.zeros(1), "exp_avg_sq": np.zeros(1), "max_exp_avg_sq": np.zeros(1)}
    param = np.zeros(1)
    seen = []
    for t, grad in enumerate([10.0, 0.1, 0.1], start=1):
        param, state = rule.step(param, np.array([grad]), state, t, hyper)
        seen.append(state["exp_avg_sq"][0])
        assert state["max_exp_avg_sq"][0] == max(seen)


def test_adamw_decays_the_weights_before_the_adam_step():
    rule = RULES["adam"]
    hyper = rule.defaults(lr=0.1, weight_decay=0.5, decoupled_weight_decay=True)
    param, _ = rule.step(np.array([2.0]), np.array([0.0]), {"exp_avg": np.zeros(1), "exp_avg_sq": np.zeros(1)},
                         1, hyper)
    assert param[0] == pytest.approx(2.0 * (1 - 0.1 * 0.5))  # zero gradient: only the decay moves θ


def test_maximize_climbs():
    rule = RULES["adam"]
    hyper = rule.defaults(lr=0.1, maximize=True)
    param, _ = rule.step(np.array([0.0]), np.array([1.0]), {"exp_avg": np.zeros(1), "exp_avg_sq": np.zeros(1)},
                         1, hyper)
    assert param[0] == pytest.approx(0.1, rel=1e-6)
