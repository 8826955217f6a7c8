"""NAdam (Dozat, 2016, "Incorporating Nesterov Momentum into Adam"), in PyTorch's form with its momentum schedule.

    μ_t = β1 (1 − ½ · 0.96^(t ψ))                    (ψ = `momentum_decay`, 0.004: the momentum warms up)
    m_t = β1 m_{t−1} + (1 − β1) g_t                  v_t = β2 v_{t−1} + (1 − β2) g_t²
    Π_t = Π_{t−1} μ_t                                 (`mu_product`, per param, Π_0 = 1)
    θ_t = θ_{t−1} − η (1 − μ_t) / (1 − Π_t) · g_t / d_t − η μ_{t+1} / (1 − Π_t μ_{t+1}) · m_t / d_t
    d_t = √(v_t / (1 − β2^t)) + ε

The Nesterov look-ahead replaces Adam's m̂_t by a mix of the current gradient and the next step's momentum.
`mu_product` is per-param *scalar* state (contract stage (d)): torch keeps it as a float32 0-dim tensor in
the state dict beside `step`, advanced by `scalar_update` once per step on the host; the per-element update
receives the two step sizes it implies as coefficients. `weight_decay` is L2, or decoupled (θ ← θ (1 − ηλ),
`decoupled_weight_decay=True`, "NAdamW"). Evaluated in `torch.optim.NAdam`'s order.
"""

from __future__ import annotations

from typing import Any

from .base import Rule, any_nonzero, check_betas, check_bool, check_nonnegative
from .primitives import lerp, regularized_gradient, sqrt


def update(param, grad, exp_avg, exp_avg_sq, lr, beta1, beta2, weight_decay, use_weight_decay, bias_correction2, eps,
           grad_step, exp_avg_step, decoupled_weight_decay, maximize):
    """m ← β1 m + (1 − β1) g;  v ← β2 v + (1 − β2) g²;  θ ← θ + grad_step · g / d + exp_avg_step · m / d."""
    if decoupled_weight_decay:
        if maximize:
            grad = -grad
        param = param * (1 - lr * weight_decay)
    else:
        grad = regularized_gradient(param, grad, weight_decay, use_weight_decay, maximize)
    exp_avg = lerp(exp_avg, grad, 1 - beta1)
    exp_avg_sq = exp_avg_sq * beta2 + (1 - beta2) * grad * grad
    denom = sqrt(exp_avg_sq / bias_correction2) + eps
    param = param + grad_step * (grad / denom)
    param = param + exp_avg_step * (exp_avg / denom)
    return param, exp_avg, exp_avg_sq


def momentum_cache(step, beta1, momentum_decay):
    """μ_t = β1 (1 − ½ · 0.96^(t ψ)): the scheduled momentum of step t."""
    return beta1 * (1.0 - 0.5 * (0.96 ** (step * momentum_decay)))


def scalar_update(step, scalar_state, hyperparameters) -> dict[str, Any]:
    """Π_t = Π_{t−1} μ_t (in the state's own arithmetic: a float32 tensor in torch, as `torch.optim.NAdam`)."""
    mu = momentum_cache(step, hyperparameters["betas"][0], hyperparameters["momentum_decay"])
    return {"mu_product": scalar_state["mu_product"] * mu}


def coefficients(step, *, lr, betas, eps, weight_decay, momentum_decay, decoupled_weight_decay, maximize,
                 mu_product) -> dict[str, Any]:
    """The two step sizes from μ_t, μ_{t+1} and this step's Π_t (`mu_product`, already advanced)."""
    beta1, beta2 = betas
    mu = momentum_cache(step, beta1, momentum_decay)
    mu_next = momentum_cache(step + 1, beta1, momentum_decay)
    return {"lr": lr, "beta1": beta1, "beta2": beta2, "weight_decay": weight_decay,
            "use_weight_decay": any_nonzero(weight_decay), "bias_correction2": 1 - beta2 ** step, "eps": eps,
            "grad_step": -lr * (1.0 - mu) / (1.0 - mu_product),
            "exp_avg_step": (-lr * mu_next) / (1.0 - mu_product * mu_next),
            "decoupled_weight_decay": decoupled_weight_decay, "maximize": maximize}


def validate(hyper) -> None:
    for name in ("lr", "eps", "weight_decay", "momentum_decay"):
        check_nonnegative(name, hyper[name])
    check_betas("betas", hyper["betas"])
    check_bool("decoupled_weight_decay", hyper["decoupled_weight_decay"])
    check_bool("maximize", hyper["maximize"])


def trace(step, grad, state, hyperparameters) -> dict[str, Any]:
    """m_t, v_t, the scheduled momentum μ_t and the product Π_t."""
    beta1 = hyperparameters["betas"][0]
    return {"m": state["exp_avg"], "v": state["exp_avg_sq"],
            "mu_t": momentum_cache(step, beta1, hyperparameters["momentum_decay"]), "mu_product": state["mu_product"]}


RULE = Rule(
    name="nadam",
    update=update,
    coefficients=coefficients,
    hyperparameters={"lr": 2e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "momentum_decay": 4e-3,
                     "decoupled_weight_decay": False, "maximize": False},
    state_names=("exp_avg", "exp_avg_sq"),
    active_state=lambda hyper: ("exp_avg", "exp_avg_sq"),
    validate=validate,
    trace=trace,
    initial_state=lambda name, hyper: 1.0 if name == "mu_product" else 0.0,
    flags=("use_weight_decay", "decoupled_weight_decay", "maximize"),
    scalar_state=("mu_product",),
    scalar_update=scalar_update,
)
