"""Lion (rules/lion.py) against the paper's Algorithm 2, written out here in float64."""

import numpy as np

from optimlab.rules import RULES

RULE = RULES["lion"]


def test_each_element_moves_by_exactly_lr_in_the_sign_of_the_interpolation():
    hyper = RULE.defaults(lr=0.01, betas=(0.9, 0.99))
    param, grad = np.array([1.0, 1.0, 1.0]), np.array([0.5, -3.0, 1e-9])
    exp_avg = np.array([-1.0, 1.0, 0.0])
    new_param, state = RULE.step(param, grad, {"exp_avg": exp_avg}, 1, hyper)
    interpolation = 0.9 * exp_avg + 0.1 * grad  # (−0.85, 0.6, 1e−10)
    np.testing.assert_array_equal(new_param, param - 0.01 * np.sign(interpolation))
    np.testing.assert_allclose(state["exp_avg"], 0.99 * exp_avg + 0.01 * grad, rtol=1e-15)


def test_weight_decay_is_decoupled_and_applied_first():
    hyper = RULE.defaults(lr=0.1, weight_decay=0.5)
    new_param, _ = RULE.step(np.array([2.0]), np.array([1.0]), {"exp_avg": np.zeros(1)}, 1, hyper)
    np.testing.assert_allclose(new_param, [2.0 * (1 - 0.1 * 0.5) - 0.1], rtol=1e-15)


def test_a_zero_interpolation_and_a_nan_do_not_move_the_param():
    """sign(0) = 0 (and NaN → 0, as torch.sign): no step where there is no direction."""
    new_param, _ = RULE.step(np.array([1.0, 1.0]), np.array([0.0, np.nan]), {"exp_avg": np.zeros(2)}, 1,
                             RULE.defaults(lr=0.1))
    np.testing.assert_array_equal(new_param, [1.0, 1.0])
