"""The lab: the notes' claims as experiments and figures.

`surfaces` holds the test functions (`SURFACES`), `sweep` runs optimizers on them (`run`, `sweep`,
`best_lr`); the figure, training and report modules build on those two.
"""

from __future__ import annotations

from .surfaces import SURFACES, Surface, lookup_surface
from .sweep import Run, Sweep, best_lr, run, sweep

__all__ = ["SURFACES", "Run", "Surface", "Sweep", "best_lr", "lookup_surface", "run", "sweep"]
