"""The playground's theory view: the heavy ball's (α, β) map on the ellipse, from `lab.quadratic`.

    GET /api/theory/momentum-map   the measured rate of 200 × 200 (α, β) configurations, one sweep, and the
                                   theory drawn over it (the boundary αλ₁ = 2(1 + β), the optimum)

Clicking a cell runs that configuration through the ordinary `POST /api/run` (the map's surface is the
playground's ellipse), so the page animates exactly what the map measured.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from fastapi import FastAPI
from pydantic import BaseModel, Field

from ..lab.quadratic import MAP_CURVATURES, MAP_SURFACE, momentum_optimum, stability_map


class Optimum(BaseModel):
    """The heavy ball's best constant (α, β) on the map's quadratic and its rate √β = (√κ − 1)/(√κ + 1)."""

    lr: float
    momentum: float
    rate: float


class MomentumMap(BaseModel):
    """The heavy ball's convergence rate per step on `surface`, measured for every (lr, momentum) of the grid."""

    surface: str = Field(description="the surface the map was measured on (run a cell there with POST /api/run)",
                         examples=["ellipse"])
    curvatures: list[float] = Field(description="the surface's Hessian eigenvalues λ")
    steps: int = Field(description="steps per configuration; the rate is read over the last half")
    lrs: list[float] = Field(description="the step sizes α (columns)")
    momentums: list[float] = Field(description="the momentums β (rows)")
    rate: list[list[float | None]] = Field(description="rate[i][j] for momentums[i], lrs[j]; null where the "
                                                       "configuration diverges (rate ≥ 1)")
    boundary_lr: list[float] = Field(description="the stability boundary α = 2(1 + β)/λ₁, one per momentum")
    optimum: Optimum


@lru_cache(maxsize=1)
def momentum_map() -> MomentumMap:
    """Computed once per process (about a second): the map does not depend on anything a request can send."""
    result = stability_map("momentum")
    rate = np.round(result.rate, 5)
    rows = [[float(value) if value < 1.0 else None for value in row] for row in rate]
    optimum = momentum_optimum(max(MAP_CURVATURES) / min(MAP_CURVATURES), min(MAP_CURVATURES))
    return MomentumMap(surface=MAP_SURFACE, curvatures=list(MAP_CURVATURES), steps=result.steps,
                       lrs=result.lrs.tolist(), momentums=result.momentums.tolist(), rate=rows,
                       boundary_lr=(2 * (1 + result.momentums) / result.curvature).tolist(),
                       optimum=Optimum(lr=optimum.lr, momentum=optimum.momentum, rate=optimum.rate))


def add_theory_routes(app: FastAPI) -> None:
    """Register the theory view's endpoint on the playground `app`."""

    @app.get("/api/theory/momentum-map", response_model=MomentumMap, tags=["theory"])
    def get_momentum_map() -> MomentumMap:
        """The heavy ball's (α, β) map on the ellipse: 200 × 200 configurations in one sweep of the momentum rule."""
        return momentum_map()


__all__ = ["MomentumMap", "Optimum", "add_theory_routes", "momentum_map"]
