"""lab.effective: each adaptive rule's per-weight rate, recomputed from the gradients it saw."""

import numpy as np
import pytest

from optimlab.lab.effective import effective_rates
from optimlab.lab.sparse import SPARSE, make_problem


@pytest.fixture(scope="module")
def problem():
    return make_problem(samples=400, seed=1)


def _gradients(problem, weights):
    """g_t at w_{t−1}, for the weights after each step (w_0 = 0)."""
    before = np.vstack([np.zeros(weights.shape[1]), weights[:-1]])
    return np.array([problem.gradient(t, before[t - 1][None])[0] for t in range(1, problem.steps + 1)])


def test_rates_are_the_formulas_on_the_gradients_seen(problem):
    from optimlab.lab.sweep import descend

    lrs = {"adagrad": 0.5, "rmsprop": 0.01, "adam": 0.02}
    rates = effective_rates(problem, lrs=lrs)
    for name, lr in lrs.items():
        weights = descend(name, {"lr": lr}, np.zeros(5), problem.gradient, problem.steps).path[1:, 0]
        squares = _gradients(problem, weights) ** 2
        if name == "adagrad":
            expected = lr / (np.sqrt(np.cumsum(squares, axis=0)) + 1e-10)
        else:
            decay = 0.99 if name == "rmsprop" else 0.999
            average = np.zeros(5)
            expected = []
            for t, square in enumerate(squares, start=1):
                average = decay * average + (1 - decay) * square
                correction = 1.0 if name == "rmsprop" else 1 - decay ** t
                expected.append(lr / (np.sqrt(average / correction) + 1e-8))
        np.testing.assert_allclose(rates[name].rate, expected, rtol=1e-9)


def test_between_its_rare_hits_the_sparse_weight_keeps_adagrad_s_rate_and_regains_rmsprop_s(problem):
    rates = effective_rates(problem, ["adagrad", "rmsprop"], lrs={"adagrad": 0.5, "rmsprop": 0.01})
    quiet = problem.features[1:, SPARSE] == 0  # steps t ≥ 2 where a₂ = 0, so ∂E/∂w₂ = 0 ...
    quiet[:np.flatnonzero(problem.features[:, SPARSE])[0]] = False  # ... after the first hit (before: η/ε)
    adagrad, rmsprop = rates["adagrad"].rate, rates["rmsprop"].rate
    assert quiet.sum() > 300
    np.testing.assert_array_equal(adagrad[1:, SPARSE][quiet], adagrad[:-1, SPARSE][quiet])  # h unchanged
    assert np.all(adagrad[1:, 1] < adagrad[:-1, 1])           # a dense weight's h grows every step
    assert np.all(rmsprop[1:, SPARSE][quiet] > rmsprop[:-1, SPARSE][quiet])  # s decays: RMSProp forgets


def test_only_adaptive_rules_have_effective_rates(problem):
    with pytest.raises(ValueError, match="Invalid optimizers: sgd"):
        effective_rates(problem, ["sgd"])
