"""Stochastic gradient descent (SPEC §1).

    θ_{t+1} = θ_t − η g_t

with optional L2 weight decay (g ← g + λθ) and `maximize` (g ← −g). This is `torch.optim.SGD` with
`momentum=0`; with momentum it is the `momentum` rule.
"""

from __future__ import annotations

from typing import Any

from .base import Rule, any_nonzero, check_bool, check_nonnegative
from .primitives import regularized_gradient


def update(param, grad, lr, weight_decay, use_weight_decay, maximize):
    """θ ← θ − η (g + λθ)."""
    grad = regularized_gradient(param, grad, weight_decay, use_weight_decay, maximize)
    param = param - lr * grad
    return (param,)


def coefficients(step, *, lr, weight_decay, maximize) -> dict[str, Any]:
    return {"lr": lr, "weight_decay": weight_decay, "use_weight_decay": any_nonzero(weight_decay), "maximize": maximize}


def validate(hyper) -> None:
    check_nonnegative("lr", hyper["lr"])
    check_nonnegative("weight_decay", hyper["weight_decay"])
    check_bool("maximize", hyper["maximize"])


def trace(step, grad, state, hyperparameters) -> dict[str, Any]:
    """Plain gradient descent has no intermediates beyond g and the update."""
    return {}


RULE = Rule(
    name="sgd",
    update=update,
    coefficients=coefficients,
    hyperparameters={"lr": 1e-3, "weight_decay": 0.0, "maximize": False},
    state_names=(),
    active_state=lambda hyper: (),
    validate=validate,
    trace=trace,
    flags=("use_weight_decay", "maximize"),
)
