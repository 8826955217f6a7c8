"""Exponential moving averages, the notes' tool for fading memory (SPEC §4, §5).

    χ_k = α p_k + (1 − α) χ_{k−1} = α Σ_{i=0}^{k−1} (1 − α)^i p_{k−i} + (1 − α)^k χ_0,   α = 2 / (N + 1)

RMSProp's `square_avg` is this EMA of g² with α = 1 − ρ, Adam's `exp_avg` of g with α = 1 − β1. Each step is
`primitives.lerp(χ, p, α)`, the same operation the rules use. Dividing by 1 − (1 − α)^k (Adam's bias
correction, χ_0 = 0) turns the EMA into the weighted mean Σ (1−α)^{k−i} p_i / Σ (1−α)^{k−i}.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from .rules.primitives import lerp


def span_to_alpha(span: float) -> float:
    """The smoothing factor α = 2 / (N + 1) of an EMA whose 'span' is N values."""
    if not span >= 1:
        raise ValueError(f"Invalid span: {span!r} (must be >= 1)")
    return 2.0 / (span + 1.0)


def ema(values: Iterable[float], alpha: float, initial: float = 0.0, bias_correction: bool = False) -> np.ndarray:
    """χ_1..χ_k of `values` with smoothing factor `alpha`, starting from χ_0 = `initial`.

    With `bias_correction`, χ_k / (1 − (1 − α)^k) is returned instead (Adam's m̂; meant for χ_0 = 0).
    """
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"Invalid alpha: {alpha!r} (must be in (0, 1])")
    averages = []
    average = float(initial)
    for k, value in enumerate(values, start=1):
        average = lerp(average, float(value), alpha)
        averages.append(average / (1.0 - (1.0 - alpha) ** k) if bias_correction else average)
    return np.array(averages, dtype=np.float64)
