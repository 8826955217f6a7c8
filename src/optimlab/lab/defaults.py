"""Each optimizer's default hyperparameters on each test surface: PyTorch's, with the lr its sweep scores best.

    >>> from optimlab.lab.defaults import STEPS, surface_defaults
    >>> rosenbrock = surface_defaults("rosenbrock")          # optimizer name -> hyperparameters
    >>> sorted(rosenbrock["adam"])[:3], STEPS["rosenbrock"]
    (['amsgrad', 'betas', 'decoupled_weight_decay'], 300)

The lr is chosen as `optimlab tour` chooses it: one vectorized sweep of the lab's grid (`paths.lr_sweeps`:
200 lrs log-spaced from 1e−3 to 10, here each to three significant digits, `LR_GRID`) for `STEPS[surface]`
steps from the surface's default start, scored by `Sweep.score` — the mean of f(x_t) − f* along the path,
`inf` where f overflowed or the path left the surface's box widened by its own size. A default therefore
never diverges within `STEPS[surface]` steps. Every other hyperparameter keeps PyTorch's default (with the
optimizer's overrides: Nesterov's switch, AdamW's decay).

The sweeps of all surfaces and optimizers take a fraction of a second; they run once per process, on the
first call, and later calls are dictionary look-ups.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np

from ..rules import OPTIMIZERS
from .paths import lr_sweeps
from .surfaces import SURFACES, lookup_surface

#: Steps per surface, for the tour's pictures and for the sweeps that choose the defaults: enough for each
#: optimizer to tell its story on that surface.
STEPS: dict[str, int] = {"notes": 30, "ellipse": 30, "rosenbrock": 300, "beale": 200, "saddle": 60,
                         "rastrigin": 100}


#: The lab's lr grid at three significant digits, as the playground shows an lr (0.00383, not 0.0038274...): the
#: default served is exactly the lr that was scored (on Rosenbrock NAdam's 0.12316 descends, 0.123 does not).
LR_GRID: np.ndarray = np.unique([float(f"{lr:.3g}") for lr in np.geomspace(1e-3, 10.0, 200)])


def steps_for(surface: str) -> int:
    """The steps shown on `surface` (a name), and the sweeps' that choose its defaults: `STEPS`, else 100."""
    return STEPS.get(surface, 100)


def surface_defaults(surface: str) -> dict[str, dict[str, Any]]:
    """Optimizer name -> its hyperparameters on `surface` (every one of the rule's, lr from the sweep).

    Raises `ValueError` naming the choices for an unknown surface. The answer is a fresh copy: change it freely.
    """
    chosen = _chosen_defaults(lookup_surface(surface).name)
    return {optimizer: dict(hyperparameters) for optimizer, hyperparameters in chosen.items()}


def all_defaults() -> dict[str, dict[str, dict[str, Any]]]:
    """`surface_defaults` of every surface in `SURFACES`: surface name -> optimizer name -> hyperparameters."""
    return {name: surface_defaults(name) for name in SURFACES}


@cache
def _chosen_defaults(surface: str) -> dict[str, dict[str, Any]]:
    sweeps = lr_sweeps(surface, OPTIMIZERS, steps_for(surface), lrs=LR_GRID)
    chosen = {}
    for optimizer, result in sweeps.items():
        rule, overrides = OPTIMIZERS[optimizer]
        best = float(result.hyperparameters["lr"][result.best()])
        chosen[optimizer] = {**rule.hyperparameters, **overrides, "lr": best}
    return chosen


__all__ = ["LR_GRID", "STEPS", "all_defaults", "steps_for", "surface_defaults"]
