"""Row and column reductions (contract stage (b)) on the fused backends, called through the backend contract,
against `Rule.step` on float64 NumPy arrays: matrices whose rows cross chunk boundaries (Numba's chunks of 32,768
elements, the Triton interpreter's tiles), a stack of matrices, a single row and a single column, mixed dtypes."""

import numpy as np
import pytest
import torch

from optimlab.backends import BACKENDS
from optimlab.rules.adafactor import FACTORED, RULE

SHAPES = [(3, 700), (2, 5, 3), (1, 9), (9, 1)]
#: rows that cross Numba's chunks (the interpreter's tiles are crossed by the 3 × 700 already)
NUMBA_SHAPES = [(40, 1000)]


@pytest.fixture(params=["numba", "triton"])
def fused(request, monkeypatch):
    if request.param == "triton":
        pytest.importorskip("triton")
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        import optimlab.backends.triton_gpu  # noqa: F401 (registers "triton")
    else:
        pytest.importorskip("numba")
        import optimlab.backends.numba_cpu  # noqa: F401 (registers "numba")
    return BACKENDS[request.param]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_the_rule_over_three_steps(fused, dtype):
    shapes = SHAPES + (NUMBA_SHAPES if fused.name == "numba" else [])
    hyper = RULE.hyperparameters_for(RULE.defaults(lr=0.1, weight_decay=0.1, maximize=True), dtype)
    generator = torch.Generator().manual_seed(0)
    params = [torch.randn(shape, generator=generator, dtype=dtype) for shape in shapes]
    states = [[torch.zeros(FACTORED.state_shape(name, shape), dtype=dtype) for name in ("row_var", "col_var")]
              for shape in shapes]
    expected = [param.double().numpy() for param in params]
    expected_states = [{"row_var": state[0].double().numpy(), "col_var": state[1].double().numpy()}
                       for state in states]
    assert fused.supports(FACTORED, hyper, params, None) is None
    for step in (1, 2, 3):
        grads = [torch.randn(shape, generator=generator, dtype=dtype) for shape in shapes]
        results = FACTORED.step_group(expected, [grad.double().numpy() for grad in grads], expected_states,
                                      [step] * len(shapes), hyper)
        expected, expected_states = [param for param, _ in results], [state for _, state in results]
        fused.step(FACTORED, hyper, FACTORED.coefficients(step, **hyper), params, grads, states)
    tolerance = {"rtol": 1e-10, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 2e-5, "atol": 1e-6}
    for param, state, want, want_state in zip(params, states, expected, expected_states, strict=True):
        np.testing.assert_allclose(param.double().numpy(), want, **tolerance)
        np.testing.assert_allclose(state[0].double().numpy(), want_state["row_var"], **tolerance)
        np.testing.assert_allclose(state[1].double().numpy(), want_state["col_var"], **tolerance)


def test_a_vector_is_refused_by_the_factored_rule_with_the_reason(fused):
    hyper = RULE.hyperparameters_for(RULE.defaults(), torch.float32)
    with pytest.raises(ValueError, match="at least two dimensions"):
        fused.step(FACTORED, hyper, FACTORED.coefficients(1, **hyper), [torch.zeros(3)], [torch.ones(3)],
                   [[torch.zeros(3, 1), torch.zeros(1, 3)]])


def test_a_group_of_mixed_dtypes_runs_one_launch_per_dtype_each_with_its_own_rows_and_columns(fused):
    """Params split by dtype (one pass each) still find their rows and columns among the whole group's."""
    hyper = RULE.hyperparameters_for(RULE.defaults(lr=0.1), torch.float32)
    shapes, dtypes = [(4, 3), (2, 5), (3, 2, 2)], [torch.float32, torch.float64, torch.float32]
    generator = torch.Generator().manual_seed(1)
    params = [torch.randn(shape, generator=generator, dtype=dtype) for shape, dtype in zip(shapes, dtypes, strict=True)]
    grads = [torch.randn(shape, generator=generator, dtype=dtype) for shape, dtype in zip(shapes, dtypes, strict=True)]
    states = [[torch.full(FACTORED.state_shape(name, param.shape), 0.5, dtype=param.dtype)
               for name in ("row_var", "col_var")] for param in params]
    expected = [FACTORED.step(param.double().numpy(), grad.double().numpy(),
                              {"row_var": state[0].double().numpy(), "col_var": state[1].double().numpy()}, 2, hyper)
                for param, grad, state in zip(params, grads, states, strict=True)]
    fused.step(FACTORED, hyper, FACTORED.coefficients(2, **hyper), params, grads, states)
    for param, state, (want, want_state) in zip(params, states, expected, strict=True):
        np.testing.assert_allclose(param.double().numpy(), want, rtol=2e-5, atol=1e-6)
        np.testing.assert_allclose(state[1].double().numpy(), want_state["col_var"], rtol=2e-5, atol=1e-7)
