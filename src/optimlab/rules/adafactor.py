"""Adafactor (Shazeer & Stern 2018, "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost"), as
`torch.optim.Adafactor` (torch 2.13) computes it.

For a step t (counting from 1), with G_t = ∇f(θ_{t−1}) (negated to maximize):

    β̂_2t = 1 − t^τ              (τ = beta2_decay ≤ 0; the lerp weight 1 − β̂_2t = t^τ)
    ρ_t = min(η, 1/√t)           α_t = max(ε2, RMS(θ_{t−1})) ρ_t
    θ ← θ (1 − ηλ)
    matrices (ndim ≥ 2, over the last two axes):
        R_t = lerp(R_{t−1}, mean_j G²_ij, t^τ)      (`row_var`, shape (..., R, 1))
        C_t = lerp(C_{t−1}, mean_i G²_ij, t^τ)      (`col_var`, shape (..., 1, C))
        V̂_t = R_t C_t / max(mean_i R_t, ε1)
    vectors:
        V̂_t = lerp(V̂_{t−1}, G², t^τ)                (`variance`)
    U_t = G_t / max(√V̂_t, ε1)                    (torch: rsqrt(max(V̂, ε1²)) · G)
    θ_t = θ − α_t / max(1, RMS(U_t)/d) · U_t

ε1 = None (the default) is the param dtype's machine epsilon — that of the first param of the group, for all
of them, as torch resolves it (`for_dtype`). The factored second moment keeps R + C numbers per matrix instead
of R·C: it is the contract's stage (b), reductions over the rows and columns (`axis_reduce` gives G² twice,
each backend sums it over the last axis and over the second-to-last, `axis_finish` turns the sums into the new
`row_var` and `col_var` and the per-matrix mean of `row_var`). Both RMS values are stage (a), per-tensor
reductions (θ², U², and a count of elements: a shard counts its part, so the all-reduce completes all three).
A param's shape chooses its rule (`for_shape`): `FACTORED` for ndim ≥ 2, `UNFACTORED` otherwise (vectors and
0-dim tensors, as torch's `grad.dim() > 1`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .base import Rule, _as_float, check_bool, check_nonnegative, machine_epsilon
from .matrix import axis_mean
from .primitives import lerp, maximum, minimum, sqrt, where


def step_size(rho, eps2, d, param_norm, update_norm, sqrt_numel):
    """α_t / max(1, RMS(U)/d), with α_t = max(ε2, RMS(θ)) ρ_t, evaluated in torch's order."""
    return maximum(eps2, param_norm / sqrt_numel) * rho / maximum(1.0, update_norm / (sqrt_numel * d))


def scaled_gradient(grad, variance_estimate, eps1):
    """U = rsqrt(max(V̂, ε1²)) · G (ε1 squared: the square root keeps its magnitude)."""
    return (1 / sqrt(maximum(variance_estimate, eps1 * eps1))) * grad


# --- vectors: the unfactored second moment ------------------------------------------------------------------

def vector_direction(grad, variance, one_minus_beta2, eps1, maximize):
    """U and the new `variance` V̂ = lerp(V̂, G², t^τ)."""
    if maximize:
        grad = -grad
    variance = lerp(variance, grad * grad, one_minus_beta2)
    return scaled_gradient(grad, variance, eps1), variance


def vector_reduce(param, grad, variance, decay_factor, one_minus_beta2, rho, eps1, eps2, d, maximize):
    """The per-tensor terms: θ² (for RMS(θ)), U² (for RMS(U)) and 1 (the element count)."""
    update_direction, _ = vector_direction(grad, variance, one_minus_beta2, eps1, maximize)
    return param * param, update_direction * update_direction, where(param == param, 1.0, 1.0)


def vector_update(param, grad, variance, decay_factor, one_minus_beta2, rho, eps1, eps2, d, maximize,
                  param_norm, update_norm, sqrt_numel):
    """θ ← θ (1 − ηλ) − α_t / max(1, RMS(U)/d) · U."""
    update_direction, variance = vector_direction(grad, variance, one_minus_beta2, eps1, maximize)
    param = param * decay_factor
    param = param - step_size(rho, eps2, d, param_norm, update_norm, sqrt_numel) * update_direction
    return param, variance


# --- matrices: the factored second moment (stage (b)) -------------------------------------------------------

def factored_axis_reduce(param, grad, decay_factor, one_minus_beta2, rho, eps1, eps2, d, maximize):
    """The terms summed over each row and each column: G² both times."""
    return grad * grad, grad * grad


def factored_axis_finish(row_var, col_var, row_sum_sq, col_sum_sq, decay_factor, one_minus_beta2, rho, eps1,
                         eps2, d, maximize) -> dict[str, Any]:
    """R ← lerp(R, mean_j G², t^τ), C ← lerp(C, mean_i G², t^τ), and max(mean_i R, ε1) per matrix."""
    row_var = lerp(row_var, row_sum_sq / col_var.shape[-1], one_minus_beta2)
    col_var = lerp(col_var, col_sum_sq / row_var.shape[-2], one_minus_beta2)
    return {"row_var": row_var, "col_var": col_var, "row_var_mean": maximum(axis_mean(row_var, -2), eps1)}


def factored_direction(grad, eps1, maximize, row_var, row_var_mean, col_var):
    """U with V̂ = R C / max(mean R, ε1), the element's row and column values."""
    if maximize:
        grad = -grad
    return scaled_gradient(grad, row_var * col_var / row_var_mean, eps1)


def factored_reduce(param, grad, decay_factor, one_minus_beta2, rho, eps1, eps2, d, maximize, row_var,
                    row_var_mean, col_var):
    """θ², U² and 1, as for vectors, U from the finished row and column factors."""
    update_direction = factored_direction(grad, eps1, maximize, row_var, row_var_mean, col_var)
    return param * param, update_direction * update_direction, where(param == param, 1.0, 1.0)


def factored_update(param, grad, decay_factor, one_minus_beta2, rho, eps1, eps2, d, maximize, row_var,
                    row_var_mean, col_var, param_norm, update_norm, sqrt_numel):
    """θ ← θ (1 − ηλ) − α_t / max(1, RMS(U)/d) · U (the row and column state are `axis_finish`'s)."""
    update_direction = factored_direction(grad, eps1, maximize, row_var, row_var_mean, col_var)
    param = param * decay_factor
    param = param - step_size(rho, eps2, d, param_norm, update_norm, sqrt_numel) * update_direction
    return (param,)


# --- shared -------------------------------------------------------------------------------------------------

def finish(param_sum_sq, update_sum_sq, numel) -> dict[str, Any]:
    """‖θ‖, ‖U‖ and √n per tensor (torch's `norm(2)` and `numel() ** 0.5`)."""
    return {"param_norm": sqrt(param_sum_sq), "update_norm": sqrt(update_sum_sq), "sqrt_numel": sqrt(numel)}


def coefficients(step, *, lr, beta2_decay, eps, d, weight_decay, maximize) -> dict[str, Any]:
    eps1, eps2 = eps
    if eps1 is None:
        raise ValueError("adafactor: eps[0] = None is the param dtype's machine epsilon: resolve it with "
                         "RULE.hyperparameters_for(hyperparameters, dtype) first")
    return {"decay_factor": 1 - lr * weight_decay, "one_minus_beta2": step ** beta2_decay,
            "rho": minimum(lr, 1 / step ** 0.5), "eps1": eps1, "eps2": eps2, "d": d, "maximize": maximize}


def for_dtype(hyper, dtype) -> dict[str, Any]:
    """ε1 = None resolved to `dtype`'s machine epsilon (torch: `torch.finfo(param.dtype).eps`)."""
    eps1, eps2 = hyper["eps"]
    if eps1 is not None:
        return dict(hyper)
    return {**hyper, "eps": (machine_epsilon(dtype), eps2)}


def validate(hyper) -> None:
    check_nonnegative("lr", hyper["lr"])
    beta2_decay = _as_float("beta2_decay", hyper["beta2_decay"])
    if not beta2_decay <= 0:
        raise ValueError(f"Invalid beta2_decay: {hyper['beta2_decay']!r} (must be <= 0)")
    eps = hyper["eps"]
    if not (isinstance(eps, (tuple, list)) and len(eps) == 2):
        raise ValueError(f"Invalid eps: {eps!r} (expected a pair (eps1 or None, eps2))")
    if eps[0] is not None:
        check_nonnegative("eps[0]", eps[0])
    check_nonnegative("eps[1]", eps[1])
    d = _as_float("d", hyper["d"])
    if not 1.0 <= d < float("inf"):
        raise ValueError(f"Invalid d: {hyper['d']!r} (must be a finite number >= 1)")
    check_nonnegative("weight_decay", hyper["weight_decay"])
    check_bool("maximize", hyper["maximize"])


def vector_trace(step, grad, state, hyperparameters) -> dict[str, Any]:
    """V̂_t (the RMS values are per tensor: see `finish`)."""
    return {"v": state["variance"]}


def factored_trace(step, grad, state, hyperparameters) -> dict[str, Any]:
    """R_t and C_t."""
    return {"row_var": state["row_var"], "col_var": state["col_var"]}


HYPERPARAMETERS = {"lr": 1e-2, "beta2_decay": -0.8, "eps": (None, 1e-3), "d": 1.0, "weight_decay": 0.0,
                   "maximize": False}
_SHARED: dict[str, Any] = {"coefficients": coefficients, "hyperparameters": HYPERPARAMETERS, "validate": validate,
                           "flags": ("maximize",), "reductions": ("param_sum_sq", "update_sum_sq", "numel"),
                           "finish": finish, "tensor_coefficients": ("param_norm", "update_norm", "sqrt_numel"),
                           "for_dtype": for_dtype}

#: Vectors and 0-dim tensors: the second moment `variance` of the param's shape.
UNFACTORED = Rule(name="adafactor_unfactored", update=vector_update, state_names=("variance",),
                  active_state=lambda hyper: ("variance",), trace=vector_trace, reduce=vector_reduce, **_SHARED)

#: Matrices and stacks of them (ndim ≥ 2): `row_var` (..., R, 1) and `col_var` (..., 1, C).
FACTORED = Rule(name="adafactor_factored", update=factored_update, state_names=(),
                active_state=lambda hyper: ("row_var", "col_var"), trace=factored_trace, reduce=factored_reduce,
                row_reductions=("row_sum_sq",), column_reductions=("col_sum_sq",),
                axis_reduce=factored_axis_reduce, axis_finish=factored_axis_finish, row_state=("row_var",),
                column_state=("col_var",), row_coefficients=("row_var_mean",), **_SHARED)


def for_shape(shape: tuple[int, ...]) -> Rule:
    """`FACTORED` for a param of two or more dimensions, else `UNFACTORED` (torch's `grad.dim() > 1`)."""
    return FACTORED if len(shape) >= 2 else UNFACTORED


#: Adafactor: each param runs the rule its shape chooses (`for_shape`).
RULE = dataclasses.replace(UNFACTORED, name="adafactor", for_shape=for_shape)

__all__ = ["FACTORED", "RULE", "UNFACTORED"]
