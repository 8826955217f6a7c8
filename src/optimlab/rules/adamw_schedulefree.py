"""Schedule-Free AdamW (Defazio et al. 2024, "The Road Less Scheduled"), as `schedulefree.AdamWScheduleFree`.

No learning-rate schedule: the point the gradient is taken at, y, interpolates between the iterate z of an
AdamW-like step and the average x of the z's, weighted by the learning rate seen so far:

    γ_k = η · min((k + 1) / warmup_steps, 1)          (`scheduled_lr`; k counts the group's steps from 0)
    γ_max = max(γ_max, γ_k),  w_k = (k + 1)^r · γ_max^p,  W_k = W_{k−1} + w_k,  c = w_k / W_k   (c = 0 if W_k = 0)
    v ← β2 v + (1 − β2) g²,   d = √(v / (1 − β2^(k+1))) + ε
    u = g / d + λ y                                    (with `inner_momentum` μ: m ← μ m + (1 − μ) g, u = m̂ / d + λ y)
    y ← (1 − c) y + c z + γ_k (β1 (1 − c) − 1) u,     z ← z − γ_k u

(p = `weight_lr_power`). The param holds y while training; x = y + (1 − 1/β1)(z − y) is the point to evaluate
at, which the torch optimizer's `eval()` puts in the params (`train()` puts y back).

`k`, `weight_sum` (W), `lr_max` (γ_max) and `scheduled_lr` are *group-level* state (contract stage (e)): they
evolve with the group's lr history, not per param, so torch keeps them in the param-group dicts under these
names, as the reference does. `group_update` advances them once per step and group; `coefficients` turns
them into c and the two step sizes. `z` starts as a copy of the param (`state_from_param`). Evaluated in the
reference's order.
"""

from __future__ import annotations

from typing import Any

from .base import Rule, any_nonzero, check_betas, check_nonnegative, check_unit_interval
from .primitives import lerp, maximum, minimum, sqrt, where


def update(param, grad, z, exp_avg_sq, exp_avg, beta2, bias_correction2, eps, inner_momentum, bias_correction1,
           use_inner_momentum, weight_decay, use_weight_decay, ckp1, lr, y_step):
    """v ← β2 v + (1 − β2) g²;  u = g / d (+ λ y);  y ← lerp(y, z, c) + y_step · u;  z ← z − γ u."""
    exp_avg_sq = exp_avg_sq * beta2 + (1 - beta2) * grad * grad
    denom = sqrt(exp_avg_sq / bias_correction2) + eps
    if use_inner_momentum:
        exp_avg = exp_avg * inner_momentum + (1 - inner_momentum) * grad
        grad_normalized = exp_avg / bias_correction1 / denom
    else:
        grad_normalized = grad / denom
    if use_weight_decay:  # calculated at y
        grad_normalized = grad_normalized + weight_decay * param
    param = lerp(param, z, ckp1)
    param = param + y_step * grad_normalized
    z = z - lr * grad_normalized
    return param, z, exp_avg_sq, exp_avg


def _power(base, exponent):
    """`base ** exponent`, for a lab sweep's per-config arrays element by element through Python's float power.

    NumPy's vectorized `power` (builds with AVX-512 kernels) is not correctly rounded and is picked by the
    operands' shapes: 0.1 ** 2.0 gives 0.01 as a (1, 1) array and 0.010000000000000002 broadcast over (7, 1),
    so a configuration would not compute the same bits alone as in a sweep. Python floats and tensors (the
    PyTorch front end's group state) go through `**` as they are.
    """
    if type(base).__module__ == "numpy" or type(exponent).__module__ == "numpy":
        import numpy

        return numpy.frompyfunc(_python_power, 2, 1)(base, exponent).astype(numpy.float64)
    return base ** exponent


def _python_power(base, exponent):
    return float(base) ** float(exponent)


def group_update(group_state, hyperparameters) -> dict[str, Any]:
    """k ← k + 1 and, from the step's scheduled lr γ_k, γ_max and W (Python floats, or a sweep's arrays)."""
    k = group_state["k"]
    warmup_steps = hyperparameters["warmup_steps"]
    # (k + 1) / warmup_steps while k < warmup_steps, else 1: the same values as the reference's branch
    scheduled_lr = hyperparameters["lr"] * minimum((k + 1) / maximum(warmup_steps, 1), 1.0)
    lr_max = maximum(scheduled_lr, group_state["lr_max"])
    weight = _power(k + 1, hyperparameters["r"]) * _power(lr_max, hyperparameters["weight_lr_power"])
    return {"k": k + 1, "weight_sum": group_state["weight_sum"] + weight, "lr_max": lr_max,
            "scheduled_lr": scheduled_lr}


def averaging_weight(k, weight_sum, lr_max, r, weight_lr_power):
    """c = w_k / W_k, 0 where W_k = 0 (lr 0: the reference's `ZeroDivisionError` branch); `k` already advanced."""
    weight = _power(k, r) * _power(lr_max, weight_lr_power)
    empty = weight_sum == 0
    return where(empty, 0.0, weight / where(empty, 1.0, weight_sum))


def coefficients(step, *, lr, betas, eps, weight_decay, warmup_steps, r, weight_lr_power, inner_momentum,
                 k, weight_sum, lr_max, scheduled_lr) -> dict[str, Any]:
    """c and the step sizes γ_k (z's) and γ_k (β1 (1 − c) − 1) (y's) from the advanced group state."""
    beta1, beta2 = betas
    ckp1 = averaging_weight(k, weight_sum, lr_max, r, weight_lr_power)
    return {"beta2": beta2, "bias_correction2": 1 - beta2 ** k, "eps": eps, "inner_momentum": inner_momentum,
            "bias_correction1": 1 - inner_momentum ** k, "use_inner_momentum": any_nonzero(inner_momentum),
            "weight_decay": weight_decay, "use_weight_decay": any_nonzero(weight_decay), "ckp1": ckp1,
            "lr": scheduled_lr, "y_step": scheduled_lr * (beta1 * (1 - ckp1) - 1)}


def validate(hyper) -> None:
    for name in ("lr", "eps", "weight_decay", "r", "weight_lr_power"):
        check_nonnegative(name, hyper[name])
    check_betas("betas", hyper["betas"])
    check_unit_interval("inner_momentum", hyper["inner_momentum"])
    warmup_steps = hyper["warmup_steps"]  # (3.0 too, as JSON sends it; the reference's ramp is for whole counts)
    check_nonnegative("warmup_steps", warmup_steps)
    if not float(warmup_steps).is_integer():
        raise ValueError(f"Invalid warmup_steps: {warmup_steps!r} (must be a whole number >= 0)")


def trace(step, grad, state, hyperparameters) -> dict[str, Any]:
    """z_t, v_t, the averaging weight c and the scheduled lr γ_k of the step just taken."""
    ckp1 = averaging_weight(state["k"], state["weight_sum"], state["lr_max"], hyperparameters["r"],
                            hyperparameters["weight_lr_power"])
    return {"z": state["z"], "v": state["exp_avg_sq"], "c": ckp1, "lr_t": state["scheduled_lr"]}


_GROUP_INITIAL = {"k": 0, "weight_sum": 0.0, "lr_max": -1.0, "scheduled_lr": 0.0}

RULE = Rule(
    name="adamw_schedulefree",
    update=update,
    coefficients=coefficients,
    hyperparameters={"lr": 0.0025, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "warmup_steps": 0,
                     "r": 0.0, "weight_lr_power": 2.0, "inner_momentum": 0.0},
    state_names=("z", "exp_avg_sq", "exp_avg"),
    active_state=lambda hyper: ("z", "exp_avg_sq", "exp_avg") if any_nonzero(hyper["inner_momentum"])
    else ("z", "exp_avg_sq"),
    validate=validate,
    trace=trace,
    initial_state=lambda name, hyper: _GROUP_INITIAL.get(name, 0.0),
    flags=("use_inner_momentum", "use_weight_decay"),
    group_state=("k", "weight_sum", "lr_max", "scheduled_lr"),
    group_update=group_update,
    state_from_param=("z",),
)
