"""Property tests (hypothesis) of the rules, through the NumPy optimizers."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import optimlab.numpy as onp
from optimlab.rules import OPTIMIZERS, RULES

finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)
vectors = arrays(np.float64, st.integers(1, 6), elements=finite)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6).flatmap(lambda size: st.lists(arrays(np.float64, size, elements=finite),
                                                       min_size=2, max_size=12)))
def test_adagrad_step_size_never_grows(grads):
    rule = RULES["adagrad"]
    hyper = rule.defaults(lr=0.1)
    param, state = np.zeros_like(grads[0]), {"sum": np.zeros_like(grads[0])}
    previous = None
    for t, grad in enumerate(grads, start=1):
        param, state = rule.step(param, grad, state, t, hyper)
        rate = rule.trace(t, grad, state, hyper)["rate"]
        if previous is not None:
            assert np.all(rate <= previous)
        previous = rate


@settings(max_examples=100, deadline=None)
@given(st.floats(-3, 8), arrays(np.float64, 5, elements=st.floats(0.1, 10)), st.sampled_from([1, -1]))
def test_adam_first_step_is_lr_whatever_the_gradient_scale(log_scale, magnitudes, sign):
    """|Δθ_1| = η |g| / (|g| + ε) ≈ η for every |g| ≫ ε (here |g| ≥ 1e-4 = 10⁴ ε)."""
    grad = sign * magnitudes * 10.0**log_scale
    params = [np.zeros(5)]
    onp.Adam(lr=0.01).update(params, [grad])
    np.testing.assert_allclose(np.abs(params[0]), 0.01, rtol=1e-4)
    assert np.all(np.sign(params[0]) == -np.sign(grad))


@settings(max_examples=60, deadline=None)
@given(st.lists(arrays(np.float64, 4, elements=st.floats(0.01, 100) | st.floats(-100, -0.01)),
                min_size=1, max_size=10), st.floats(-8, 8))
def test_adam_is_invariant_to_rescaling_the_gradient(grads, log_scale):
    scale = 10.0**log_scale
    plain, scaled = [np.ones(4)], [np.ones(4)]
    first, second = onp.Adam(lr=0.1, eps=0.0), onp.Adam(lr=0.1, eps=0.0)
    for grad in grads:
        first.update(plain, [grad])
        second.update(scaled, [grad * scale])
    np.testing.assert_allclose(scaled[0], plain[0], rtol=1e-9)


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(sorted(OPTIMIZERS)), vectors, st.data())
def test_zero_learning_rate_changes_nothing(name, start, data):
    grads = data.draw(st.lists(arrays(np.float64, start.shape, elements=finite), min_size=1, max_size=5))
    params = [start.copy()]
    optimizer = onp.create(name, lr=0.0)
    for grad in grads:
        optimizer.update(params, [grad])
    np.testing.assert_array_equal(params[0], start)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@settings(max_examples=25, deadline=None)
@given(start=arrays(np.float64, 3, elements=st.floats(0.5, 5) | st.floats(-5, -0.5)),
       curvature=arrays(np.float64, 3, elements=st.floats(0.5, 4)))
def test_every_optimizer_decreases_a_convex_quadratic(name, start, curvature):
    """f(θ) = ½ Σ c_i θ_i², from a random start, with a small learning rate."""
    def loss(theta):
        return 0.5 * np.sum(curvature * theta**2)

    params = [start.copy()]
    optimizer = onp.create(name, lr=1e-3)
    for _ in range(20):
        optimizer.update(params, [curvature * params[0]])
    assert loss(params[0]) < loss(start)
