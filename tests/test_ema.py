"""ema.py against SPEC §4: span α = 2/(N+1), the closed form with χ_0 (not the notes' χ_{k−N})."""

import numpy as np
import pytest

from optimlab.ema import ema, span_to_alpha


@pytest.mark.parametrize(("span", "alpha"), [(1, 1.0), (3, 0.5), (9, 0.2), (19, 0.1), (1999, 0.001)])
def test_span_to_alpha(span, alpha):
    assert span_to_alpha(span) == pytest.approx(alpha)


def test_closed_form():
    """χ_k = α Σ_{i=0}^{k−1} (1−α)^i p_{k−i} + (1−α)^k χ_0."""
    rng = np.random.default_rng(3)
    values = rng.normal(size=25)
    alpha, initial = span_to_alpha(9), 1.7
    averages = ema(values, alpha, initial=initial)
    for k in range(1, len(values) + 1):
        closed = alpha * sum((1 - alpha) ** i * values[k - 1 - i] for i in range(k)) + (1 - alpha) ** k * initial
        assert averages[k - 1] == pytest.approx(closed, rel=1e-12)


def test_bias_corrected_ema_of_a_constant_is_the_constant():
    np.testing.assert_allclose(ema([4.0] * 10, 0.1, bias_correction=True), 4.0, rtol=1e-14)


def test_invalid_span_and_alpha():
    with pytest.raises(ValueError, match="span"):
        span_to_alpha(0)
    with pytest.raises(ValueError, match="alpha"):
        ema([1.0], alpha=1.5)
