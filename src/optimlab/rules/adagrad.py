"""AdaGrad (SPEC §3): a per-element learning rate that shrinks for the elements that moved most.

    h_t = h_{t−1} + g_t ⊙ g_t                      (Ruder's G_{t,ii} = Σ_k g_{k,i}²; PyTorch's state `sum`)
    θ_{t+1} = θ_t − η_t g_t / (√(h_t + eps_root) + eps),   η_t = η / (1 + (t − 1) · lr_decay)

ε placement follows optax: `eps_root` inside the root (Ruder: η/√(G + ε)), `eps` outside (DLFS code 1e−7,
PyTorch 1e−10). Because h only grows, the step tends to 0 — the flaw RMSProp fixes.
"""

from __future__ import annotations

from typing import Any

from .base import Rule, any_nonzero, check_bool, check_nonnegative
from .primitives import regularized_gradient, sqrt


def update(param, grad, sum, clr, weight_decay, use_weight_decay, eps, eps_root, maximize):  # noqa: A002 (PyTorch's name)
    """h ← h + g²;  θ ← θ − η_t g / (√(h + eps_root) + eps)."""
    grad = regularized_gradient(param, grad, weight_decay, use_weight_decay, maximize)
    sum = sum + grad * grad  # noqa: A001
    std = sqrt(sum + eps_root) + eps
    param = param - clr * (grad / std)
    return param, sum


def coefficients(step, *, lr, lr_decay, weight_decay, initial_accumulator_value, eps, eps_root,
                 maximize) -> dict[str, Any]:
    return {"clr": lr / (1 + (step - 1) * lr_decay), "weight_decay": weight_decay,
            "use_weight_decay": any_nonzero(weight_decay), "eps": eps,
            "eps_root": eps_root, "maximize": maximize}


def validate(hyper) -> None:
    for name in ("lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps", "eps_root"):
        check_nonnegative(name, hyper[name])
    check_bool("maximize", hyper["maximize"])


def trace(step, grad, state, hyperparameters) -> dict[str, Any]:
    """The accumulated squares h_t and the per-element step size η_t / (√(h_t + eps_root) + eps)."""
    hyper = hyperparameters
    clr = coefficients(step, **hyper)["clr"]
    return {"h": state["sum"], "rate": clr / (sqrt(state["sum"] + hyper["eps_root"]) + hyper["eps"])}


RULE = Rule(
    name="adagrad",
    update=update,
    coefficients=coefficients,
    hyperparameters={"lr": 1e-2, "lr_decay": 0.0, "weight_decay": 0.0, "initial_accumulator_value": 0.0,
                     "eps": 1e-10, "eps_root": 0.0, "maximize": False},
    state_names=("sum",),
    active_state=lambda hyper: ("sum",),
    validate=validate,
    trace=trace,
    initial_state=lambda name, hyper: hyper["initial_accumulator_value"],
    flags=("use_weight_decay", "maximize"),
)
