"""Muon (Jordan et al. 2024, "Muon: An optimizer for hidden layers in neural networks"), as `torch.optim.Muon`.

    B_t = μ B_{t−1} + (1 − μ) g_t                     (`momentum_buffer`: torch's `lerp_`, an average)
    B̃_t = (1 − μ) g_t + μ B_t  (nesterov)  or  B_t
    O_t = NS_k^(a,b,c)(B̃_t; ε)                        (Newton–Schulz: ≈ U Vᵀ where B̃_t = U S Vᵀ)
    θ_t = θ_{t−1} (1 − ηλ) − η_adj O_t                  η_adj = η √max(1, A/B)   ("original", the default)
                                                       η_adj = 0.2 η √max(A, B) ("match_rms_adamw", Moonshot)

for an A × B matrix θ. Newton–Schulz (`newton_schulz`) runs k quintic iterations from X_0 = B̃/max(‖B̃‖_F, ε)
(transposed so that X is wide): A = X Xᵀ, X ← a X + (b A + c A²) X; with (a, b, c) = (3.4445, −4.7750,
2.0315) the singular values end near 1 (roughly in [0.5, 1.5], which trains as well as U Vᵀ). As torch does,
the iterations run in bfloat16 (`bfloat16(...)`); NumPy has no bfloat16, so there they run in the array's dtype
(`optimlab.rules.matrix`).

The math is cut where the rule contract cuts it: the elementwise momentum (`momentum_direction`), the tensor
stage (`orthogonalize`, contract stage (f): a function of the whole matrix, the direction orthogonalized and the
shape's learning rate), and the elementwise update applying it. Fused backends decline the tensor stage and
`backend="auto"` falls back to eager. Only 2-D params: anything else raises `ValueError`, as torch's Muon.
One difference from torch 2.13 on purpose: its Newton–Schulz divides its input in place, and for bfloat16
params without Nesterov that input *is* the momentum buffer (`bfloat16()` of a bfloat16 tensor is itself), which
torch thus normalizes every step; here the buffer stays the average B_t.
"""

from __future__ import annotations

import numbers
from typing import Any

from .base import Rule, check_bool, check_nonnegative
from .matrix import addmm, bfloat16, matmul, norm, transpose
from .primitives import lerp, maximum, sqrt

#: `adjust_lr_fn` values torch's Muon accepts (None means "original").
ADJUST_LR_FNS = (None, "original", "match_rms_adamw")


def momentum_direction(grad, momentum_buffer, momentum, nesterov):
    """B ← lerp(B, g, 1 − μ); the direction B̃ = lerp(g, B, μ) with Nesterov, else B. Returns (B̃, B)."""
    momentum_buffer = lerp(momentum_buffer, grad, 1 - momentum)
    direction = lerp(grad, momentum_buffer, momentum) if nesterov else momentum_buffer
    return direction, momentum_buffer


def newton_schulz(matrix, ns_coefficients, ns_steps, eps):
    """NS_k^(a,b,c)(G; ε): k quintic Newton–Schulz iterations in bfloat16, torch's `_zeropower_via_newtonschulz`."""
    if len(matrix.shape) != 2:
        raise ValueError(f"Muon orthogonalizes 2-D matrices, got a tensor of shape {tuple(matrix.shape)}")
    a, b, c = ns_coefficients
    tall = matrix.shape[0] > matrix.shape[1]
    ortho = bfloat16(matrix)
    if tall:  # iterate on the wide side: X Xᵀ is then the smaller Gram matrix
        ortho = transpose(ortho)
    ortho = ortho / maximum(norm(ortho), eps)  # ‖X‖_F ≥ ‖X‖_2: the spectral norm starts at most 1
    for _ in range(ns_steps):
        gram = matmul(ortho, transpose(ortho))
        gram_update = addmm(gram, gram, gram, b, c)  # b A + c A²
        ortho = addmm(ortho, gram_update, ortho, a, 1.0)  # a X + (b A + c A²) X
    return transpose(ortho) if tall else ortho


def orthogonalize(param, grad, momentum_buffer, lr, weight_decay, momentum, ns_coefficients, ns_steps, eps, nesterov,
                  match_rms_adamw) -> dict[str, Any]:
    """The tensor stage: O = NS(B̃) of the whole matrix, and η_adj from its shape (torch's `_adjust_lr`)."""
    direction, _ = momentum_direction(grad, momentum_buffer, momentum, nesterov)
    orthogonalized = newton_schulz(direction, ns_coefficients, ns_steps, eps)
    rows, columns = param.shape
    ratio = 0.2 * sqrt(max(rows, columns)) if match_rms_adamw else sqrt(max(1, rows / columns))
    return {"orthogonalized": orthogonalized, "adjusted_lr": lr * ratio}


def update(param, grad, momentum_buffer, lr, weight_decay, momentum, ns_coefficients, ns_steps, eps, nesterov,
           match_rms_adamw, orthogonalized, adjusted_lr):
    """θ ← θ (1 − ηλ) − η_adj O;  B ← lerp(B, g, 1 − μ)."""
    _, momentum_buffer = momentum_direction(grad, momentum_buffer, momentum, nesterov)
    param = param * (1 - lr * weight_decay)
    param = param - adjusted_lr * orthogonalized
    return param, momentum_buffer


def coefficients(step, *, lr, weight_decay, momentum, nesterov, ns_coefficients, eps, ns_steps,
                 adjust_lr_fn) -> dict[str, Any]:
    return {"lr": lr, "weight_decay": weight_decay, "momentum": momentum, "ns_coefficients": tuple(ns_coefficients),
            "ns_steps": ns_steps, "eps": eps, "nesterov": nesterov,
            "match_rms_adamw": adjust_lr_fn == "match_rms_adamw"}


def validate(hyper) -> None:
    """torch's checks (lr, momentum, weight decay >= 0; `adjust_lr_fn`), and at construction those torch makes in
    its first step (`ns_steps` < 100, three `ns_coefficients`)."""
    for name in ("lr", "weight_decay", "momentum", "eps"):
        check_nonnegative(name, hyper[name])
    check_bool("nesterov", hyper["nesterov"])
    coefficients = hyper["ns_coefficients"]
    if not (isinstance(coefficients, (tuple, list)) and len(coefficients) == 3):
        raise ValueError(f"Invalid ns_coefficients: {coefficients!r} (expected three numbers (a, b, c))")
    for index, value in enumerate(coefficients):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f"Invalid ns_coefficients[{index}]: {value!r} (expected a real number)")
    steps = hyper["ns_steps"]
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or not 0 <= steps < 100:
        raise ValueError(f"Invalid ns_steps: {steps!r} (expected an integer in [0, 100))")
    if hyper["adjust_lr_fn"] not in ADJUST_LR_FNS:
        raise ValueError(f"Invalid adjust_lr_fn: {hyper['adjust_lr_fn']!r} (expected one of {ADJUST_LR_FNS})")


def trace(step, grad, state, hyperparameters) -> dict[str, Any]:
    """The momentum buffer B_t (the orthogonalized update is a matrix: see `orthogonalize`)."""
    return {"b": state["momentum_buffer"]}


RULE = Rule(
    name="muon",
    update=update,
    coefficients=coefficients,
    hyperparameters={"lr": 1e-3, "weight_decay": 0.1, "momentum": 0.95, "nesterov": True,
                     "ns_coefficients": (3.4445, -4.7750, 2.0315), "eps": 1e-7, "ns_steps": 5, "adjust_lr_fn": None},
    state_names=("momentum_buffer",),
    active_state=lambda hyper: ("momentum_buffer",),
    validate=validate,
    trace=trace,
    flags=("nesterov", "match_rms_adamw"),
    tensor_stage=orthogonalize,
    tensor_coefficients=("orthogonalized", "adjusted_lr"),
)
