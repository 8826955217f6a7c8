"""Adam (SPEC §5) = momentum's EMA of g + RMSProp's EMA of g² + bias correction (Kingma & Ba, 2015).

    m_t = β1 m_{t−1} + (1 − β1) g_t          v_t = β2 v_{t−1} + (1 − β2) g_t²        m_0 = v_0 = 0
    m̂_t = m_t / (1 − β1^t)                   v̂_t = v_t / (1 − β2^t)
    θ_{t+1} = θ_t − η m̂_t / (√(v̂_t + eps_root) + eps)

The notes put ε inside the root (eps_root = 1e−8, eps = 0); the paper and PyTorch outside (eps = 1e−8).
Efficient form (paper §2): α_t = η √(1 − β2^t) / (1 − β1^t) — the notes' √(1 − β1^t) is an erratum.
Variants: AMSGrad (uses max_k v_k, state `max_exp_avg_sq`), `maximize`, L2 `weight_decay`, and decoupled
decay θ ← θ (1 − ηλ) (`decoupled_weight_decay=True` = AdamW, Loshchilov & Hutter 2019).

Evaluated in PyTorch's order: step_size = η / (1 − β1^t) and √v / √(1 − β2^t) + eps, with eps_root folded in
as √(v + eps_root (1 − β2^t)) / √(1 − β2^t) = √(v̂ + eps_root).
"""

from __future__ import annotations

from typing import Any

from .base import Rule, any_nonzero, check_betas, check_bool, check_nonnegative
from .primitives import lerp, maximum, regularized_gradient, sqrt


def update(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, lr, beta1, beta2, step_size,
           bias_correction2, bias_correction2_sqrt, eps, eps_root, weight_decay, use_weight_decay,
           decoupled_weight_decay, amsgrad, maximize):
    """m ← β1 m + (1 − β1) g;  v ← β2 v + (1 − β2) g²;  θ ← θ − η m̂ / (√(v̂ + eps_root) + eps)."""
    if decoupled_weight_decay:
        if maximize:
            grad = -grad
        param = param * (1 - lr * weight_decay)
    else:
        grad = regularized_gradient(param, grad, weight_decay, use_weight_decay, maximize)
    exp_avg = lerp(exp_avg, grad, 1 - beta1)
    exp_avg_sq = exp_avg_sq * beta2 + (1 - beta2) * grad * grad
    if amsgrad:
        max_exp_avg_sq = maximum(max_exp_avg_sq, exp_avg_sq)
        second_moment = max_exp_avg_sq
    else:
        second_moment = exp_avg_sq
    denom = sqrt(second_moment + eps_root * bias_correction2) / bias_correction2_sqrt + eps
    param = param - step_size * (exp_avg / denom)
    return param, exp_avg, exp_avg_sq, max_exp_avg_sq


def coefficients(step, *, lr, betas, eps, eps_root, weight_decay, amsgrad, maximize,
                 decoupled_weight_decay) -> dict[str, Any]:
    beta1, beta2 = betas
    bias_correction1 = 1 - beta1 ** step
    bias_correction2 = 1 - beta2 ** step
    return {"lr": lr, "beta1": beta1, "beta2": beta2, "step_size": lr / bias_correction1,
            "bias_correction2": bias_correction2, "bias_correction2_sqrt": bias_correction2 ** 0.5,
            "eps": eps, "eps_root": eps_root, "weight_decay": weight_decay,
            "use_weight_decay": any_nonzero(weight_decay), "decoupled_weight_decay": decoupled_weight_decay,
            "amsgrad": amsgrad, "maximize": maximize}


def active_state(hyper) -> tuple[str, ...]:
    return ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if hyper["amsgrad"] else ())


def validate(hyper) -> None:
    for name in ("lr", "eps", "eps_root", "weight_decay"):
        check_nonnegative(name, hyper[name])
    check_betas("betas", hyper["betas"])
    for name in ("amsgrad", "maximize", "decoupled_weight_decay"):
        check_bool(name, hyper[name])


def trace(step, grad, state, hyperparameters) -> dict[str, Any]:
    """m_t, v_t, the bias-corrected m̂_t and v̂_t, and the efficient form's α_t = η √(1 − β2^t) / (1 − β1^t)."""
    coefficients_ = coefficients(step, **hyperparameters)
    bias_correction1 = 1 - coefficients_["beta1"] ** step
    return {"m": state["exp_avg"], "v": state["exp_avg_sq"],
            "m_hat": state["exp_avg"] / bias_correction1,
            "v_hat": state["exp_avg_sq"] / coefficients_["bias_correction2"],
            "alpha_t": coefficients_["step_size"] * coefficients_["bias_correction2_sqrt"]}


RULE = Rule(
    name="adam",
    update=update,
    coefficients=coefficients,
    hyperparameters={"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "eps_root": 0.0, "weight_decay": 0.0,
                     "amsgrad": False, "maximize": False, "decoupled_weight_decay": False},
    state_names=("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
    active_state=active_state,
    validate=validate,
    trace=trace,
    flags=("use_weight_decay", "decoupled_weight_decay", "amsgrad", "maximize"),
)
