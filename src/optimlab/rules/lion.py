"""Lion, EvoLved Sign Momentum (Chen et al., 2023, "Symbolic Discovery of Optimization Algorithms", Alg. 2).

    c_t = β1 m_{t−1} + (1 − β1) g_t                 (the interpolation whose sign is the step)
    θ_t = θ_{t−1} (1 − ηλ) − η sign(c_t)             (decoupled weight decay, as AdamW)
    m_t = β2 m_{t−1} + (1 − β2) g_t                 (PyTorch-style state name `exp_avg`)

Every element moves by exactly η (or 0): the update has the magnitude of SGD's with a sign's robustness, so
Lion wants a learning rate 3–10× smaller than AdamW's and a λ as much larger (the paper, §5). Only one
moment is kept, half of Adam's state. Evaluated in the order of the `lion-pytorch` package, whose state
dicts this rule's optimizers read and write: decay first, the step from the old m, then m's update.
"""

from __future__ import annotations

from typing import Any

from .base import Rule, check_betas, check_nonnegative
from .primitives import sign


def update(param, grad, exp_avg, lr, beta1, beta2, weight_decay):
    """θ ← θ (1 − ηλ) − η sign(β1 m + (1 − β1) g);  m ← β2 m + (1 − β2) g."""
    param = param * (1 - lr * weight_decay)
    param = param - lr * sign(exp_avg * beta1 + (1 - beta1) * grad)
    exp_avg = exp_avg * beta2 + (1 - beta2) * grad
    return param, exp_avg


def coefficients(step, *, lr, betas, weight_decay) -> dict[str, Any]:
    beta1, beta2 = betas
    return {"lr": lr, "beta1": beta1, "beta2": beta2, "weight_decay": weight_decay}


def validate(hyper) -> None:
    check_nonnegative("lr", hyper["lr"])
    check_betas("betas", hyper["betas"])
    check_nonnegative("weight_decay", hyper["weight_decay"])


def trace(step, grad, state, hyperparameters) -> dict[str, Any]:
    """The momentum m_t (the step itself is ±η per element: see "update")."""
    return {"m": state["exp_avg"]}


RULE = Rule(
    name="lion",
    update=update,
    coefficients=coefficients,
    hyperparameters={"lr": 1e-4, "betas": (0.9, 0.99), "weight_decay": 0.0},
    state_names=("exp_avg",),
    active_state=lambda hyper: ("exp_avg",),
    validate=validate,
    trace=trace,
)
