"""The Muon rule (rules/muon.py) and its tensor stage: on NumPy against a float64 reference written here from the
formulas, on torch tensors against torch's own Newton–Schulz, bit for bit; the matrix natives (rules/matrix.py)."""

import math

import numpy as np
import pytest
import torch
from torch.optim._muon import _zeropower_via_newtonschulz

from optimlab.rules import Rule, matrix
from optimlab.rules.muon import RULE, newton_schulz

NS = ((3.4445, -4.7750, 2.0315), 5, 1e-7)
SETTINGS = [
    pytest.param({"lr": 0.02}, id="default-nesterov"),
    pytest.param({"lr": 0.02, "nesterov": False, "weight_decay": 0.0, "momentum": 0.9}, id="plain-momentum"),
    pytest.param({"lr": 0.05, "adjust_lr_fn": "match_rms_adamw"}, id="match_rms_adamw"),
]


def reference(params, gradients, lr, weight_decay=0.1, momentum=0.95, nesterov=True, adjust_lr_fn=None):
    """Muon in float64 from the formulas. Newton–Schulz iterates on G as it is, tall or wide: p(X Xᵀ) X and
    X p(Xᵀ X) are the same matrix, so the rule's transposition is a choice of the smaller Gram matrix only."""
    a, b, c = NS[0]
    params = [param.astype(np.float64) for param in params]
    buffers = [np.zeros_like(param) for param in params]
    for grads in gradients:
        for index, (param, grad) in enumerate(zip(params, grads, strict=True)):
            buffers[index] = momentum * buffers[index] + (1 - momentum) * grad
            direction = (1 - momentum) * grad + momentum * buffers[index] if nesterov else buffers[index]
            x = direction / max(np.sqrt((direction ** 2).sum()), NS[2])
            for _ in range(NS[1]):
                gram = x @ x.T
                x = a * x + (b * gram + c * gram @ gram) @ x
            rows, columns = param.shape
            ratio = 0.2 * math.sqrt(max(rows, columns)) if adjust_lr_fn == "match_rms_adamw" else \
                math.sqrt(max(1, rows / columns))
            params[index] = param * (1 - lr * weight_decay) - lr * ratio * x
    return params, buffers


def _problem(dtype, steps=10, seed=0):
    """A tall and a wide matrix, with random gradients."""
    rng = np.random.default_rng(seed)
    params = [rng.normal(size=(6, 3)).astype(dtype), rng.normal(size=(3, 5)).astype(dtype)]
    return params, [[rng.normal(size=param.shape).astype(dtype) for param in params] for _ in range(steps)]


def _rule_steps(params, gradients, settings):
    """`Rule.step` on the arrays, as the NumPy front end takes it."""
    hyper = RULE.defaults(**settings)
    params = [param.copy() for param in params]
    states = [{"momentum_buffer": np.zeros_like(param)} for param in params]
    for step, grads in enumerate(gradients, start=1):
        for index, grad in enumerate(grads):
            params[index], states[index] = RULE.step(params[index], grad, states[index], step, hyper)
    return params, [state["momentum_buffer"] for state in states]


@pytest.mark.parametrize("settings", SETTINGS)
@pytest.mark.parametrize(("dtype", "rtol"), [(np.float64, 1e-12), (np.float32, 1e-5)])
def test_numpy_matches_the_formulas(settings, dtype, rtol):
    """NumPy has no bfloat16: Newton–Schulz runs in the arrays' own dtype, float64 to the reference's rounding."""
    params, gradients = _problem(dtype)
    expected, expected_buffers = reference(params, [[grad.astype(np.float64) for grad in grads] for grads in gradients],
                                           **settings)
    actual, buffers = _rule_steps(params, gradients, settings)
    for got, want, buffer, want_buffer in zip(actual, expected, buffers, expected_buffers, strict=True):
        assert got.dtype == dtype
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol)
        np.testing.assert_allclose(buffer, want_buffer, rtol=rtol, atol=rtol)


def test_newton_schulz_brings_the_singular_values_near_one():
    matrix = np.random.default_rng(1).normal(size=(8, 5)) * 30
    singular_values = np.linalg.svd(newton_schulz(matrix, *NS), compute_uv=False)
    assert singular_values.min() > 0.5 and singular_values.max() < 1.5


@pytest.mark.parametrize("shape", [(6, 3), (3, 6), (5, 5)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_on_torch_tensors_it_is_torchs_newton_schulz_bit_for_bit(shape, dtype):
    """The same calls on the same dtypes: bfloat16 iterations, the transposition of tall matrices, the norm."""
    grad = torch.randn(shape, generator=torch.Generator().manual_seed(2)).to(dtype)
    ours = newton_schulz(grad, *NS)
    theirs = _zeropower_via_newtonschulz(grad.clone(), *NS)  # (in place on a bfloat16 input: given a copy)
    assert ours.dtype == theirs.dtype == torch.bfloat16 and torch.equal(ours, theirs)


def test_a_zero_gradient_gives_a_zero_update():
    assert not newton_schulz(np.zeros((3, 4)), *NS).any()


@pytest.mark.parametrize("shape", [(4,), (2, 3, 4)])
def test_only_matrices(shape):
    with pytest.raises(ValueError, match=r"Muon orthogonalizes 2-D matrices, got a tensor of shape \(" + str(shape[0])):
        RULE.step(np.ones(shape), np.ones(shape), {"momentum_buffer": np.zeros(shape)}, 1, RULE.defaults())


def test_a_tensor_stage_takes_whole_tensors_not_a_sweeps_rows():
    param = np.ones((2, 3))
    with pytest.raises(ValueError, match="tensor stage takes whole tensors"):
        RULE.step(param, param, {"momentum_buffer": np.zeros_like(param)}, 1, RULE.defaults(), tensor_axes=(1,))


@pytest.mark.parametrize(("value", "message"), [
    ({"ns_steps": 100}, r"Invalid ns_steps: 100"), ({"ns_steps": 2.0}, r"Invalid ns_steps: 2.0"),
    ({"ns_coefficients": (1.0, 2.0)}, r"Invalid ns_coefficients: \(1.0, 2.0\)"),
    ({"adjust_lr_fn": "rms"}, r"Invalid adjust_lr_fn: 'rms'"), ({"momentum": -0.1}, r"Invalid momentum: -0.1"),
    ({"nesterov": 1}, r"Invalid nesterov: 1"),
])
def test_bad_hyperparameters_are_refused_naming_them(value, message):
    with pytest.raises(ValueError, match=message):
        RULE.defaults(**value)


def _stage(param, grad, lr):
    return {"scale": lr * 2.0}


def _scaled(param, grad, lr, scale):
    return (param - scale * grad,)


def _rule(**changes):
    fields = {"name": "staged", "update": _scaled, "coefficients": lambda step, *, lr: {"lr": lr},
              "hyperparameters": {"lr": 0.1}, "state_names": (), "active_state": lambda hyper: (),
              "validate": lambda hyper: None, "trace": lambda *arguments: {}, "tensor_stage": _stage,
              "tensor_coefficients": ("scale",)}
    return Rule(**{**fields, **changes})


def test_a_rule_with_a_tensor_stage_runs_it_before_its_update():
    new_param, _ = _rule().step(np.ones(2), np.ones(2), {}, 1, {"lr": 0.1})
    np.testing.assert_allclose(new_param, [0.8, 0.8])


@pytest.mark.parametrize(("changes", "message"), [
    ({"tensor_stage": lambda param, lr: {"scale": lr}},
     r"tensor_stage takes update's parameters .* \('param', 'grad', 'lr'\)"),
    ({"tensor_coefficients": (), "update": lambda param, grad, lr: (param,)}, "name them in tensor_coefficients"),
    ({"reductions": ("total",), "reduce": lambda param, grad, lr: (param,), "finish": lambda total: {"scale": total}},
     "from reductions or from a tensor stage, not both"),
])
def test_a_tensor_stage_that_breaks_the_contract_is_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        _rule(**changes)


def test_each_matrix_native_means_the_same_on_numpy_and_torch():
    rng = np.random.default_rng(3)
    x, y, z = rng.normal(size=(3, 4)), rng.normal(size=(4, 2)), rng.normal(size=(3, 2))
    tx, ty, tz = map(torch.from_numpy, (x, y, z))
    np.testing.assert_allclose(matrix.matmul(tx, ty).numpy(), matrix.matmul(x, y), rtol=1e-12)
    np.testing.assert_array_equal(matrix.transpose(tx).numpy(), matrix.transpose(x))
    np.testing.assert_allclose(matrix.norm(tx).numpy(), matrix.norm(x), rtol=1e-12)
    np.testing.assert_allclose(matrix.addmm(tz, tx, ty, 0.5, -2.0).numpy(), matrix.addmm(z, x, y, 0.5, -2.0),
                               rtol=1e-12)
    assert matrix.bfloat16(tx).dtype == torch.bfloat16 and matrix.bfloat16(x) is x  # NumPy has no bfloat16
