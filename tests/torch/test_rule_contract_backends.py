"""The Rule contract on every backend: natives, a rule's own helpers, names generated code must not capture."""

import math

import pytest
import torch

from optimlab.backends import BACKENDS
from optimlab.rules import Rule
from optimlab.rules.primitives import abs, lerp, maximum, minimum, sign, sqrt, where  # noqa: A004


def _rule(name, update, coefficients, hyperparameters, state_names=(), flags=()):
    return Rule(name=name, update=update, coefficients=coefficients, hyperparameters=hyperparameters,
                state_names=state_names, active_state=lambda hyper: state_names, validate=lambda hyper: None,
                trace=lambda *arguments: {}, flags=flags)


def _run(backend, rule, params, grads, states, hyper, step=1):
    """The backend's in-place step on copies, and `Rule.step` on the same inputs."""
    ours = [param.clone() for param in params]
    our_states = [[tensor.clone() for tensor in state] for state in states]
    BACKENDS[backend].step(rule, hyper, rule.coefficients(step, **hyper), ours, grads, our_states)
    expected = [rule.step(param, grad, dict(zip(rule.state_names, state, strict=True)), step, hyper)
                for param, grad, state in zip(params, grads, states, strict=True)]
    return ours, our_states, expected


def _natives_update(param, grad, root, larger, smaller, chosen, signed, magnitude, mixed, weight):
    root = sqrt(grad)
    larger = maximum(param, grad)
    smaller = minimum(param, grad)
    chosen = where(grad > param, grad, param)
    signed = sign(grad)
    magnitude = abs(grad)
    mixed = lerp(param, grad, weight)
    return param, root, larger, smaller, chosen, signed, magnitude, mixed


NATIVES = _rule("natives", _natives_update, lambda step, *, weight: {"weight": weight}, {"weight": 0.3},
                ("root", "larger", "smaller", "chosen", "signed", "magnitude", "mixed"))


@pytest.mark.filterwarnings("ignore:invalid value encountered")  # √ of the negative gradients: NaN, as torch
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("weight", [0.3, 0.7])
def test_every_native_means_on_each_backend_what_it_means_in_torch(backend, dtype, weight):
    special = [math.nan, math.inf, -math.inf, 0.0, -0.0, -2.5, 1e-30, 4.0]
    grad = torch.cat([torch.tensor(special), torch.linspace(-3, 3, 33)]).to(dtype)
    param = torch.cat([torch.tensor([1.0, 0.0, -1.0, -0.0, 0.0, 2.0, math.nan, 4.0]),
                       torch.linspace(2, -2, 33)]).to(dtype)
    states = [[torch.zeros_like(param) for _ in NATIVES.state_names]]
    hyper = {"weight": weight}
    _, our_states, expected = _run(backend, NATIVES, [param], [grad], states, hyper)
    # float32: torch.lerp's vectorized kernel may fuse a multiply-add where the formula rounds twice (one ulp)
    for name, actual in zip(NATIVES.state_names, our_states[0], strict=True):
        torch.testing.assert_close(actual, expected[0][1][name], rtol=1e-15 if dtype == torch.float64 else 3e-7,
                                   atol=0, equal_nan=True, msg=lambda message, name=name: f"{name}: {message}")
        if name == "magnitude":  # abs(−0.0) is +0.0 everywhere
            assert not torch.signbit(actual).any()


def _halve(x):
    return x * 0.5


def _clipped(x):
    """A helper of the rule's own that calls another one and the natives."""
    return where(abs(x) > 1, sign(x), _halve(x) * 2)


def _helper_update(param, grad, lr, maximize):
    if maximize:
        grad = -grad
    return (param - lr * _clipped(grad),)


HELPERS = _rule("clipped_sign", _helper_update, lambda step, *, lr, maximize: {"lr": lr, "maximize": maximize},
                {"lr": 0.1, "maximize": False}, flags=("maximize",))


@pytest.mark.parametrize("maximize", [False, True])
def test_a_rules_own_helpers_compile_on_every_backend(backend, maximize):
    grads = [torch.linspace(-3, 3, 25), torch.tensor([0.5, -2.0])]
    params = [torch.ones_like(grad) for grad in grads]
    ours, _, expected = _run(backend, HELPERS, params, grads, [[], []], {"lr": 0.1, "maximize": maximize})
    for actual, (want, _) in zip(ours, expected, strict=True):
        torch.testing.assert_close(actual, want, rtol=1e-7, atol=0)


def _capture_update(param, grad, numel, tl, mask, offsets, i, size, update, grad_scale, layout):
    """Coefficients named as the generated kernels' own names (Triton's `numel`, `tl`, Numba's `i`, ...)."""
    return (param - numel * grad + tl * mask - offsets * i + size * update - grad_scale * layout,)


_NAMES = ("numel", "tl", "mask", "offsets", "i", "size", "update", "grad_scale", "layout")
CAPTURE = _rule("capture", _capture_update, lambda step, **hyper: dict(hyper),
                {name: 0.1 * (index + 1) for index, name in enumerate(_NAMES)})


def test_generated_code_never_captures_a_rules_names(backend):
    """Before the `_ol_` prefixes, Triton's kernel read its own `numel` (the tensor size) for the rule's."""
    params, grads = [torch.ones(5), torch.full((3,), 2.0)], [torch.full((5,), 0.5), torch.full((3,), -1.0)]
    ours, _, expected = _run(backend, CAPTURE, params, grads, [[], []], dict(CAPTURE.hyperparameters))
    for actual, (want, _) in zip(ours, expected, strict=True):
        torch.testing.assert_close(actual, want, rtol=1e-6, atol=1e-7)


# --- a rule written outside the package: a helper of its own, a per-tensor reduction, a declared flag ---------

def _clip(x, limit):
    """The rule's own helper: x clipped to [−limit, limit]."""
    return minimum(maximum(x, -limit), limit)


def _normalized_reduce(param, grad, lr, limit, maximize):
    if maximize:
        grad = -grad
    return (grad * grad,)


def _normalized_finish(grad_norm_sq):
    """Scale a tensor's gradient to norm ≤ 1 (1 for a zero or small gradient)."""
    grad_norm = sqrt(grad_norm_sq)
    return {"scale": where(grad_norm > 1, 1 / where(grad_norm > 1, grad_norm, 1.0), 1.0)}


def _normalized_update(param, grad, lr, limit, maximize, scale):
    if maximize:
        grad = -grad
    return (param - lr * _clip(grad * scale, limit),)


NORMALIZED = Rule(name="normalized_clipped_sgd", update=_normalized_update,
                  coefficients=lambda step, *, lr, limit, maximize: {"lr": lr, "limit": limit, "maximize": maximize},
                  hyperparameters={"lr": 0.1, "limit": 0.3, "maximize": False}, state_names=(),
                  active_state=lambda hyper: (), validate=lambda hyper: None, trace=lambda *arguments: {},
                  flags=("maximize",), reductions=("grad_norm_sq",), reduce=_normalized_reduce,
                  finish=_normalized_finish, tensor_coefficients=("scale",))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("maximize", [False, True])
def test_a_rule_from_outside_the_package_runs_on_every_backend_as_rule_step(backend, dtype, maximize):
    """Helper, reduction and flag together; tensors from empty to several chunks, one gradient all zeros."""
    generator = torch.Generator().manual_seed(3)
    sizes = (5, 0, 1, 40_000, 40)  # 40,000: more than one Numba chunk (CHUNK = 32,768) and Triton block
    grads = [torch.randn(size, generator=generator, dtype=dtype) * 3 for size in sizes]
    grads[4] = torch.zeros(40, dtype=dtype)
    params = [torch.randn(size, generator=generator, dtype=dtype) for size in sizes]
    hyper = {"lr": 0.1, "limit": 0.3, "maximize": maximize}
    ours, _, expected = _run(backend, NORMALIZED, params, grads, [[] for _ in sizes], hyper)
    assert NORMALIZED.helpers == {"_clip": _clip}
    for actual, (want, _) in zip(ours, expected, strict=True):
        torch.testing.assert_close(actual, want, rtol=1e-6 if dtype == torch.float32 else 1e-13, atol=1e-7)
