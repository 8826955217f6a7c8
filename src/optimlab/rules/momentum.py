"""Momentum, the heavy ball (SPEC §2), in PyTorch's form so state dicts interoperate.

    b_t = γ b_{t−1} + (1 − dampening) g_t      (b_1 = g_1: the buffer starts as a copy of the gradient)
    θ_{t+1} = θ_t − η b_t                       (Nesterov: θ_{t+1} = θ_t − η (g_t + γ b_t))

The notes (after Ruder) write V_t = γ V_{t−1} + η g_t, θ_{t+1} = θ_t − V_t; for a constant η, V_t = η b_t,
and Deep Learning from Scratch's v = −V. With f_t = η g_t the buffer expands to
V_4 = γ³ f_1 + γ² f_2 + γ f_3 + f_4: old gradients fade geometrically.
"""

from __future__ import annotations

from typing import Any

from .base import Rule, any_nonzero, check_bool, check_closed_unit_interval, check_nonnegative
from .primitives import regularized_gradient


def update(param, grad, momentum_buffer, lr, momentum, dampening, weight_decay, use_weight_decay, nesterov, maximize,
           first_step):
    """b ← γ b + (1 − dampening) g (b ← g on the first step); θ ← θ − η b, or θ − η (g + γ b) for Nesterov."""
    grad = regularized_gradient(param, grad, weight_decay, use_weight_decay, maximize)
    if first_step:
        momentum_buffer = grad
    else:
        momentum_buffer = momentum_buffer * momentum + (1 - dampening) * grad
    if nesterov:
        grad = grad + momentum * momentum_buffer
    else:
        grad = momentum_buffer
    param = param - lr * grad
    return param, momentum_buffer


def coefficients(step, *, lr, momentum, dampening, weight_decay, nesterov, maximize) -> dict[str, Any]:
    return {"lr": lr, "momentum": momentum, "dampening": dampening, "weight_decay": weight_decay,
            "use_weight_decay": any_nonzero(weight_decay), "nesterov": nesterov, "maximize": maximize,
            "first_step": step == 1}


def validate(hyper) -> None:
    check_nonnegative("lr", hyper["lr"])
    check_nonnegative("momentum", hyper["momentum"])
    check_closed_unit_interval("dampening", hyper["dampening"])
    check_nonnegative("weight_decay", hyper["weight_decay"])
    check_bool("nesterov", hyper["nesterov"])
    check_bool("maximize", hyper["maximize"])
    if hyper["nesterov"] and (hyper["momentum"] <= 0 or hyper["dampening"] != 0):
        raise ValueError(f"Invalid nesterov: True needs momentum > 0 and dampening = 0 "
                         f"(got momentum={hyper['momentum']!r}, dampening={hyper['dampening']!r})")


def trace(step, grad, state, hyperparameters) -> dict[str, Any]:
    """The buffer b_t and the notes' velocity V_t = η b_t."""
    momentum_buffer = state["momentum_buffer"]
    return {"b": momentum_buffer, "V": hyperparameters["lr"] * momentum_buffer}


RULE = Rule(
    name="momentum",
    update=update,
    coefficients=coefficients,
    hyperparameters={"lr": 1e-3, "momentum": 0.9, "dampening": 0.0, "weight_decay": 0.0,
                     "nesterov": False, "maximize": False},
    state_names=("momentum_buffer",),
    active_state=lambda hyper: ("momentum_buffer",),
    validate=validate,
    trace=trace,
    flags=("use_weight_decay", "nesterov", "maximize", "first_step"),
)
