"""A rule written outside the package with a group-wide reduction (stage (c)): SGD with momentum after
clipping the gradients of the whole param group by their global norm, as `torch.nn.utils.clip_grad_norm_`
followed by `torch.optim.SGD(momentum=...)`:

    ‖g‖ = √(Σ over the group's tensors Σ g²)       c = min(1, max_norm / (‖g‖ + 1e-6))
    d = c g + λθ     b ← γ b + (1 − dampening) d (b ← d on the first step)     θ ← θ − η b

Used by the single-process tests (tests/torch/test_group_reductions.py) and the FSDP2 scenario
(scenarios.py), which import it from here: a module of its own, outside `optimlab`, like a user's rule.
`finish` sees only the sums, so it gives ‖g‖ and `update` takes the clip coefficient from it and `max_norm`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

import optimlab.numpy
import optimlab.torch
from optimlab.rules import Rule
from optimlab.rules.primitives import minimum, sqrt

#: `torch.nn.utils.clip_grad_norm_`'s guard against a zero norm
CLIP_EPS = 1e-6


def clip_coefficient(grad_norm, max_norm):
    """c = min(1, max_norm / (‖g‖ + 1e-6)), as `clip_grad_norm_` computes and clamps it."""
    return minimum(max_norm / (grad_norm + CLIP_EPS), 1.0)


def reduce(param, grad, momentum_buffer, lr, momentum, dampening, weight_decay, max_norm, first_step):
    """The term of the group's squared gradient norm: g²."""
    return (grad * grad,)


def finish(grad_norm_sq) -> dict[str, Any]:
    """‖g‖ of the whole group (`grad_norm_sq` is the group's total: a group reduction)."""
    return {"grad_norm": sqrt(grad_norm_sq)}


def update(param, grad, momentum_buffer, lr, momentum, dampening, weight_decay, max_norm, first_step, grad_norm):
    """PyTorch's SGD with momentum on the clipped gradient c g."""
    grad = grad * clip_coefficient(grad_norm, max_norm) + weight_decay * param
    if first_step:
        momentum_buffer = grad
    else:
        momentum_buffer = momentum_buffer * momentum + (1 - dampening) * grad
    return param - lr * momentum_buffer, momentum_buffer


def coefficients(step, *, lr, momentum, dampening, weight_decay, max_norm) -> dict[str, Any]:
    return {"lr": lr, "momentum": momentum, "dampening": dampening, "weight_decay": weight_decay,
            "max_norm": max_norm, "first_step": step == 1}


RULE = Rule(name="clipped_momentum", update=update, coefficients=coefficients,
            hyperparameters={"lr": 0.01, "momentum": 0.9, "dampening": 0.0, "weight_decay": 0.0, "max_norm": 1.0},
            state_names=("momentum_buffer",), active_state=lambda hyper: ("momentum_buffer",),
            validate=lambda hyper: None, trace=lambda *arguments: {}, flags=("first_step",),
            reductions=("grad_norm_sq",), reduce=reduce, finish=finish, tensor_coefficients=("grad_norm",),
            group_reductions=("grad_norm_sq",))


class ClippedMomentum(optimlab.torch.Optimizer):
    """The rule as a PyTorch optimizer: `SGD`'s bookkeeping (no step counter; a new buffer is the first step)."""

    torch_name = "ClippedMomentum"
    counts_steps = False

    def __init__(self, params: Iterable[Any], *, backend: str = "auto", **hyperparameters: Any) -> None:
        defaults = {**RULE.defaults(**hyperparameters), "differentiable": False, "backend": backend,
                    "state_dtype": None, "skip_nonfinite": False}
        super().__init__(params, defaults)

    def rule_for(self, group: Mapping[str, Any]) -> tuple[Rule, dict[str, Any]]:
        return RULE, {name: group[name] for name in RULE.hyperparameters}


class NumpyClippedMomentum(optimlab.numpy.Optimizer):
    """The rule on NumPy arrays: the arrays of one `update` call are the group."""

    rule = RULE


class TorchClippedMomentum(torch.optim.SGD):
    """The reference: `clip_grad_norm_` of the params with gradients, then `torch.optim.SGD`'s step."""

    def __init__(self, params: Iterable[Any], **settings: Any) -> None:
        hyper = RULE.defaults(**settings)
        self.max_norm = hyper.pop("max_norm")
        super().__init__(params, **hyper)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        with_grad = [param for group in self.param_groups for param in group["params"] if param.grad is not None]
        torch.nn.utils.clip_grad_norm_(with_grad, self.max_norm)
        return super().step(closure)
