"""RMSProp (SPEC §4): AdaGrad with the sum replaced by an exponential moving average.

    s_t = ρ s_{t−1} + (1 − ρ) g_t²                 (PyTorch calls ρ `alpha`, state `square_avg`)
    θ_{t+1} = θ_t − η g_t / (√(s_t + eps_root) + eps)

With ρ = 0.9 the notes unroll s_t = 0.81 s_{t−2} + 0.09 g_{t−1}² + 0.1 g_t²: the EMA weights fade.
Centered: also track ḡ_t = ρ ḡ_{t−1} + (1 − ρ) g_t (`grad_avg`) and use s_t − ḡ_t², an estimate of the
variance. Momentum: b_t = μ b_{t−1} + g_t / denominator, θ ← θ − η b_t (`momentum_buffer`).
"""

from __future__ import annotations

from typing import Any

from .base import Rule, any_nonzero, check_bool, check_nonnegative, check_unit_interval
from .primitives import lerp, regularized_gradient, sqrt


def update(param, grad, square_avg, grad_avg, momentum_buffer, lr, alpha, eps, eps_root, weight_decay,
           use_weight_decay, momentum, centered, use_momentum, maximize):
    """s ← ρ s + (1 − ρ) g²;  θ ← θ − η g / (√(s [− ḡ²] + eps_root) + eps)  (through b with momentum)."""
    grad = regularized_gradient(param, grad, weight_decay, use_weight_decay, maximize)
    square_avg = square_avg * alpha + (1 - alpha) * grad * grad
    if centered:
        grad_avg = lerp(grad_avg, grad, 1 - alpha)
        avg = sqrt(square_avg - grad_avg * grad_avg + eps_root) + eps
    else:
        avg = sqrt(square_avg + eps_root) + eps
    if use_momentum:
        momentum_buffer = momentum_buffer * momentum + grad / avg
        param = param - lr * momentum_buffer
    else:
        param = param - lr * (grad / avg)
    return param, square_avg, grad_avg, momentum_buffer


def coefficients(step, *, lr, alpha, eps, eps_root, weight_decay, momentum, centered,
                 maximize) -> dict[str, Any]:
    """The update's scalars; `use_weight_decay` and `use_momentum` are derived (see `active_state`)."""
    return {"lr": lr, "alpha": alpha, "eps": eps, "eps_root": eps_root, "weight_decay": weight_decay,
            "use_weight_decay": any_nonzero(weight_decay),
            "momentum": momentum, "centered": centered, "use_momentum": any_nonzero(momentum), "maximize": maximize}


def active_state(hyper) -> tuple[str, ...]:
    """`momentum_buffer` with momentum, as PyTorch: a flag derived from the value, so that a lab sweep over
    momentum (0 included) takes the buffer path for every config — exact for momentum 0 too, b = g / avg."""
    return ("square_avg",) + (("grad_avg",) if hyper["centered"] else ()) \
        + (("momentum_buffer",) if any_nonzero(hyper["momentum"]) else ())


def validate(hyper) -> None:
    for name in ("lr", "eps", "eps_root", "weight_decay", "momentum"):
        check_nonnegative(name, hyper[name])
    check_unit_interval("alpha", hyper["alpha"])
    check_bool("centered", hyper["centered"])
    check_bool("maximize", hyper["maximize"])


def trace(step, grad, state, hyperparameters) -> dict[str, Any]:
    """The EMA of squared gradients s_t (and ḡ_t when centered)."""
    quantities = {"s": state["square_avg"]}
    if hyperparameters["centered"]:
        quantities["g_avg"] = state["grad_avg"]
    return quantities


RULE = Rule(
    name="rmsprop",
    update=update,
    coefficients=coefficients,
    hyperparameters={"lr": 1e-2, "alpha": 0.99, "eps": 1e-8, "eps_root": 0.0, "weight_decay": 0.0,
                     "momentum": 0.0, "centered": False, "maximize": False},
    state_names=("square_avg", "grad_avg", "momentum_buffer"),
    active_state=active_state,
    validate=validate,
    trace=trace,
    flags=("use_weight_decay", "centered", "use_momentum", "maximize"),
)
