"""LAMB (You et al., 2020, "Large Batch Optimization for Deep Learning", Alg. 2), as optax formulates it.

    m_t = β1 m_{t−1} + (1 − β1) g_t            v_t = β2 v_{t−1} + (1 − β2) g_t²
    u_t = m̂_t / (√v̂_t + ε) + λ θ_{t−1}        (Adam's bias-corrected direction plus decoupled decay)
    r_t = ‖θ_{t−1}‖ / ‖u_t‖ per tensor          (the trust ratio; 1 where either norm is 0)
    θ_t = θ_{t−1} − η r_t u_t

The trust ratio rescales each layer's step to its weights' size, which lets batch sizes grow to 32k (BERT
in 76 minutes). It is the first per-tensor reduction of the contract (stage (a)): `reduce` gives the
elementwise terms θ² and u², each backend sums them over the tensor (over its shard, then across shards),
`finish` turns the sums into the per-tensor coefficient `trust_ratio`, and `update` applies it. The direction
u is written once (`direction`) and evaluated by both passes. optax: `lamb` = chain(scale_by_adam,
add_decayed_weights, scale_by_trust_ratio, scale_by_learning_rate); the norms are Frobenius norms.
"""

from __future__ import annotations

from typing import Any

from .base import Rule, check_betas, check_nonnegative
from .primitives import lerp, sqrt, where


def direction(param, grad, exp_avg, exp_avg_sq, beta1, beta2, bias_correction1, bias_correction2, eps,
              weight_decay):
    """u = m̂ / (√v̂ + ε) + λθ, with the moments it updates."""
    exp_avg = lerp(exp_avg, grad, 1 - beta1)
    exp_avg_sq = exp_avg_sq * beta2 + (1 - beta2) * grad * grad
    update_direction = (exp_avg / bias_correction1) / (sqrt(exp_avg_sq / bias_correction2) + eps) \
        + weight_decay * param
    return update_direction, exp_avg, exp_avg_sq


def reduce(param, grad, exp_avg, exp_avg_sq, lr, beta1, beta2, bias_correction1, bias_correction2, eps,
           weight_decay):
    """The terms summed per tensor: θ² (for ‖θ‖) and u² (for ‖u‖)."""
    update_direction, _, _ = direction(param, grad, exp_avg, exp_avg_sq, beta1, beta2, bias_correction1,
                                       bias_correction2, eps, weight_decay)
    return param * param, update_direction * update_direction


def finish(param_norm_sq, update_norm_sq) -> dict[str, Any]:
    """r = ‖θ‖ / ‖u‖, or 1 where either norm is 0 (optax's `scale_by_trust_ratio`)."""
    param_norm, update_norm = sqrt(param_norm_sq), sqrt(update_norm_sq)
    ratio = param_norm / where(update_norm == 0, 1.0, update_norm)
    return {"trust_ratio": where(param_norm == 0, 1.0, where(update_norm == 0, 1.0, ratio))}


def update(param, grad, exp_avg, exp_avg_sq, lr, beta1, beta2, bias_correction1, bias_correction2, eps,
           weight_decay, trust_ratio):
    """θ ← θ − η r u, m and v as Adam's."""
    update_direction, exp_avg, exp_avg_sq = direction(param, grad, exp_avg, exp_avg_sq, beta1, beta2,
                                                      bias_correction1, bias_correction2, eps, weight_decay)
    param = param - lr * trust_ratio * update_direction
    return param, exp_avg, exp_avg_sq


def coefficients(step, *, lr, betas, eps, weight_decay) -> dict[str, Any]:
    beta1, beta2 = betas
    return {"lr": lr, "beta1": beta1, "beta2": beta2, "bias_correction1": 1 - beta1 ** step,
            "bias_correction2": 1 - beta2 ** step, "eps": eps, "weight_decay": weight_decay}


def validate(hyper) -> None:
    for name in ("lr", "eps", "weight_decay"):
        check_nonnegative(name, hyper[name])
    check_betas("betas", hyper["betas"])


def trace(step, grad, state, hyperparameters) -> dict[str, Any]:
    """m_t and v_t; the lab's trace adds the trust ratio r_t, `finish`'s per-tensor coefficient (`Rule.step`'s
    `record`)."""
    return {"m": state["exp_avg"], "v": state["exp_avg_sq"]}


RULE = Rule(
    name="lamb",
    update=update,
    coefficients=coefficients,
    hyperparameters={"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-6, "weight_decay": 0.0},
    state_names=("exp_avg", "exp_avg_sq"),
    active_state=lambda hyper: ("exp_avg", "exp_avg_sq"),
    validate=validate,
    trace=trace,
    reductions=("param_norm_sq", "update_norm_sq"),
    reduce=reduce,
    finish=finish,
    tensor_coefficients=("trust_ratio",),
)
