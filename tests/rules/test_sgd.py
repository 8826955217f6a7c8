"""rules/sgd.py against SPEC §1 and the plain-GD numbers of §6."""

import numpy as np
import pytest

from optimlab.rules import RULES
from optimlab.tracing import trace


def test_gradient_descent_on_the_notes_function():
    rows = trace("sgd", "notes", [0.0], 10, lr=0.1)
    assert [row["x"] for row in rows[:5]] == pytest.approx([4.0, 4.8, 4.96, 4.992, 4.9984], abs=1e-12)
    assert next(row["t"] for row in rows if abs(row["x"] - 5) < 1e-3) == 6


def test_weight_decay_adds_lambda_theta_and_maximize_flips_the_sign():
    rule = RULES["sgd"]
    (param,), _ = rule.step(np.array([2.0]), np.array([1.0]), {}, 1, rule.defaults(lr=0.1, weight_decay=0.5))
    assert param == pytest.approx(2.0 - 0.1 * (1.0 + 0.5 * 2.0))
    (param,), _ = rule.step(np.array([2.0]), np.array([1.0]), {}, 1, rule.defaults(lr=0.1, maximize=True))
    assert param == pytest.approx(2.1)
