"""Stage (c), reductions over a whole param group: a rule from outside the package (SGD with momentum after
clipping by the global gradient norm, tests/distributed/clipped_momentum.py) on every backend, against
`torch.nn.utils.clip_grad_norm_` + `torch.optim.SGD` and against `Rule.step_group` (the NumPy front end)."""

import numpy as np
import pytest
import torch
from tests.distributed.clipped_momentum import RULE, ClippedMomentum, NumpyClippedMomentum, TorchClippedMomentum

from optimlab.backends import BACKENDS

SETTINGS = {"lr": 0.05, "momentum": 0.9, "dampening": 0.1, "weight_decay": 0.01, "max_norm": 2.0}
#: an empty param, a scalar, a matrix, one of several Triton blocks (Numba chunks: tests/torch/test_lamb.py)
SHAPES = [(0,), (), (5, 3), (3000,)]
#: per step, the gradients' scale: the first step's global norm is below `max_norm` (no clipping), the others'
#: far above
SCALES = [1e-3, 1.0, 3.0]
DTYPES = {"float32": [torch.float32] * 4, "float64": [torch.float64] * 4,
          "mixed": [torch.float32, torch.float64, torch.float32, torch.float64]}


def _problem(dtypes, seed=0):
    generator = torch.Generator().manual_seed(seed)
    params = [torch.randn(shape, generator=generator, dtype=torch.float64) for shape in SHAPES]
    grads = [[scale * torch.randn(shape, generator=generator, dtype=torch.float64) for shape in SHAPES]
             for scale in SCALES]
    return ([param.to(dtype) for param, dtype in zip(params, dtypes, strict=True)],
            [[grad.to(dtype) for grad, dtype in zip(step, dtypes, strict=True)] for step in grads])


def _train(step, params, gradients, present):
    """`step()` after setting the gradients of the params `present(t)` names at step t (the others: none)."""
    for t, grads in enumerate(gradients):
        for index, (param, grad) in enumerate(zip(params, grads, strict=True)):
            param.grad = grad.clone() if index in present(t) else None
        step()


def _numpy(params, gradients, present):
    """The NumPy front end (`Rule.step_group` over the arrays of each call), in float64."""
    optimizer = NumpyClippedMomentum(**SETTINGS)
    arrays = {index: param.double().numpy().copy() for index, param in enumerate(params)}
    for t, grads in enumerate(gradients):
        optimizer.update({index: arrays[index] for index in present(t)},
                         {index: grads[index].double().numpy() for index in present(t)})
    return [arrays[index] for index in range(len(params))]


def _assert_close(actual, expected, dtype, what, float64_rtol=1e-12):
    rtol = float64_rtol if dtype == torch.float64 else 2e-6
    torch.testing.assert_close(actual.double(), expected.double(), rtol=rtol, atol=rtol,
                               msg=lambda message: f"{what}: {message}")


def _run_both(backend, dtypes, present):
    params, gradients = _problem(dtypes)
    ours = [torch.nn.Parameter(param.clone()) for param in params]
    theirs = [torch.nn.Parameter(param.clone()) for param in params]
    _train(ClippedMomentum(ours, backend=backend, **SETTINGS).step, ours, gradients, present)
    _train(TorchClippedMomentum(theirs, **SETTINGS).step, theirs, gradients, present)
    return params, gradients, ours, theirs


@pytest.mark.parametrize("kind", DTYPES)
def test_equals_clip_grad_norm_then_sgd_on_every_backend(backend, kind):
    """One group's global norm over tensors from empty to several chunks, float32 and float64 together."""
    params, gradients, ours, theirs = _run_both(backend, DTYPES[kind], lambda t: range(len(SHAPES)))
    expected = _numpy(params, gradients, lambda t: range(len(SHAPES)))
    # In a mixed group the global norm holds float32 tensors' sums, which torch (per tensor) and each backend
    # (per chunk) round in float32 in their own order: torch's float64 params are themselves just under 1e-12
    # from the float64 NumPy reference there (Triton's, summing pairwise, 1.2e-12 from torch's), so the float64
    # params are held to 1e-11.
    float64_rtol = 1e-11 if kind == "mixed" else 1e-12
    for index, (actual, want, array) in enumerate(zip(ours, theirs, expected, strict=True)):
        _assert_close(actual.detach(), want.detach(), actual.dtype, f"param {index} against torch", float64_rtol)
        _assert_close(actual.detach(), torch.from_numpy(array), actual.dtype, f"param {index} against NumPy",
                      float64_rtol)
        assert actual.dtype == DTYPES[kind][index]


def test_params_at_different_steps_share_the_group_norm(backend):
    """A param whose first gradient comes a step later starts its momentum then: two backend calls (first step
    and later steps) in one group, whose norm still spans both."""
    def present(t):
        return [0, 1, 2] if t == 0 else [0, 1, 2, 3]

    params, gradients, ours, theirs = _run_both(backend, DTYPES["float64"], present)
    expected = _numpy(params, gradients, present)
    for index, (actual, want, array) in enumerate(zip(ours, theirs, expected, strict=True)):
        _assert_close(actual.detach(), want.detach(), actual.dtype, f"param {index} against torch")
        _assert_close(actual.detach(), torch.from_numpy(array), actual.dtype, f"param {index} against NumPy")


def test_a_call_that_fails_in_a_split_group_changes_nothing(monkeypatch):
    """The second of a group's two backend calls raises: the first call has not updated anything, and the
    momentum buffer the step created is gone again."""
    params = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.full((2,), 2.0))]
    optimizer = ClippedMomentum(params, backend="eager", **SETTINGS)
    params[0].grad = torch.ones(3)
    optimizer.step()
    params[1].grad = torch.ones(2)  # its first step, the other's second: two calls
    before = [param.detach().clone() for param in params]
    buffer = optimizer.state[params[0]]["momentum_buffer"].clone()
    eager, calls = BACKENDS["eager"], []

    def failing(*arguments, **options):
        calls.append(len(arguments[4]))
        if len(calls) == 2:
            raise RuntimeError("the second call failed")
        return type(eager).step(eager, *arguments, **options)

    monkeypatch.setattr(eager, "step", failing)
    with pytest.raises(RuntimeError, match="the second call failed"):
        optimizer.step()
    for param, value in zip(params, before, strict=True):
        assert torch.equal(param.detach(), value)
    assert torch.equal(optimizer.state[params[0]]["momentum_buffer"], buffer)
    assert params[1] not in optimizer.state


def test_sparse_gradients_are_refused_before_anything_changes():
    class Sparse(ClippedMomentum):
        supports_sparse = True

    params = [torch.nn.Parameter(torch.ones(4, 2)), torch.nn.Parameter(torch.ones(3))]
    optimizer = Sparse(params, backend="eager")
    params[0].grad = torch.sparse_coo_tensor([[1]], torch.ones(1, 2), (4, 2))
    params[1].grad = torch.ones(3)
    with pytest.raises(RuntimeError, match="sparse gradients are not supported by the rule 'clipped_momentum'"):
        optimizer.step()
    assert torch.equal(params[1].detach(), torch.ones(3)) and not optimizer.state


def test_rule_step_group_totals_the_group_and_rule_step_a_tensor():
    """`Rule.step_group`'s norm spans its arrays; `Rule.step` takes its one array as the group."""
    hyper = RULE.defaults(**{**SETTINGS, "weight_decay": 0.0, "lr": 1.0, "max_norm": 1.0})
    grads = [np.array([3.0]), np.array([4.0])]  # ‖g‖ = 5 over the group: c = 1 / (5 + 1e-6)
    state = {"momentum_buffer": np.zeros(1)}
    results = RULE.step_group([np.zeros(1), np.zeros(1)], grads, [state, state], [1, 1], hyper)
    coefficient = 1 / (5 + 1e-6)
    np.testing.assert_allclose([param for param, _ in results], [[-3 * coefficient], [-4 * coefficient]],
                               rtol=1e-15)
    param, _ = RULE.step(np.zeros(1), grads[0], state, 1, hyper)
    np.testing.assert_allclose(param, [-3 / (3 + 1e-6)], rtol=1e-15)
