"""Schedule-Free AdamW written out from `schedulefree.AdamWScheduleFree.step` (facebookresearch/schedule_free,
`schedulefree/adamw_schedulefree.py`, its per-param loop), independently of `optimlab.rules`: one param group
of NumPy arrays, float64 unless the arrays are of another dtype. The group's dict holds the reference's keys.
"""

from __future__ import annotations

import numpy as np

#: The configurations both test modules run (defaults, warmup, weight decay, r > 0 with weight_lr_power, inner
#: momentum).
CONFIGS = {
    "defaults": {},
    "warmup": {"lr": 0.05, "warmup_steps": 7},
    "weight_decay": {"lr": 0.02, "weight_decay": 0.1},
    "polynomial": {"lr": 0.02, "r": 1.5, "weight_lr_power": 1.0, "warmup_steps": 3},
    "inner_momentum": {"lr": 0.03, "inner_momentum": 0.9, "weight_decay": 0.01},
}


def new_group(lr=0.0025, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, warmup_steps=0, r=0.0,
              weight_lr_power=2.0, inner_momentum=0.0) -> dict:
    return dict(lr=lr, betas=betas, eps=eps, r=r, k=0, warmup_steps=warmup_steps, train_mode=True, weight_sum=0.0,
                lr_max=-1.0, scheduled_lr=0.0, weight_lr_power=weight_lr_power, weight_decay=weight_decay,
                inner_momentum=inner_momentum)


def step(group: dict, params: list[np.ndarray], grads: list[np.ndarray], states: list[dict]) -> None:
    """One step of the group, params (y) and states updated in place (`states[i]` starts as `{}`)."""
    eps = group["eps"]
    beta1, beta2 = group["betas"]
    decay = group["weight_decay"]
    k = group["k"]
    r = group["r"]
    warmup_steps = group["warmup_steps"]
    weight_lr_power = group["weight_lr_power"]
    inner_momentum = group["inner_momentum"]
    sched = (k + 1) / warmup_steps if k < warmup_steps else 1.0
    bias_correction2 = 1 - beta2 ** (k + 1)
    bias_correction1 = 1 - inner_momentum ** (k + 1)
    lr = group["lr"] * sched
    group["scheduled_lr"] = lr
    lr_max = group["lr_max"] = max(lr, group["lr_max"])
    weight = ((k + 1) ** r) * (lr_max ** weight_lr_power)
    weight_sum = group["weight_sum"] = group["weight_sum"] + weight
    try:
        ckp1 = weight / weight_sum
    except ZeroDivisionError:
        ckp1 = 0
    dtype = params[0].dtype.type
    for y, grad, state in zip(params, grads, states, strict=True):
        if "z" not in state:
            state["z"] = y.copy()
            state["exp_avg_sq"] = np.zeros_like(y)
            if inner_momentum != 0:
                state["exp_avg"] = np.zeros_like(y)
        z, exp_avg_sq = state["z"], state["exp_avg_sq"]
        exp_avg_sq[...] = exp_avg_sq * dtype(beta2) + dtype(1 - beta2) * grad * grad
        denom = np.sqrt(exp_avg_sq / dtype(bias_correction2)) + dtype(eps)
        if inner_momentum != 0:
            exp_avg = state["exp_avg"]
            exp_avg[...] = exp_avg * dtype(inner_momentum) + dtype(1 - inner_momentum) * grad
            grad_normalized = exp_avg / dtype(bias_correction1) / denom
        else:
            grad_normalized = grad / denom
        if decay != 0:
            grad_normalized = grad_normalized + dtype(decay) * y
        y[...] = y + dtype(ckp1) * (z - y)
        y[...] = y + dtype(lr * (beta1 * (1 - ckp1) - 1)) * grad_normalized
        z[...] = z - dtype(lr) * grad_normalized
    group["k"] = k + 1


def to_eval(group: dict, params: list[np.ndarray], states: list[dict]) -> None:
    """`eval()`: the params from y to x = lerp(y, z, 1 − 1/β1)."""
    beta1 = group["betas"][0]
    if group["train_mode"]:
        for y, state in zip(params, states, strict=True):
            if "z" in state:
                y[...] = y + (1 - 1 / beta1) * (state["z"] - y)
        group["train_mode"] = False


def to_train(group: dict, params: list[np.ndarray], states: list[dict]) -> None:
    """`train()`: the params from x back to y = lerp(x, z, 1 − β1)."""
    beta1 = group["betas"][0]
    if not group["train_mode"]:
        for x, state in zip(params, states, strict=True):
            if "z" in state:
                x[...] = x + (1 - beta1) * (state["z"] - x)
        group["train_mode"] = True

