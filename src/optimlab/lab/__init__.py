"""The lab: the notes' claims as experiments and figures.

`surfaces` holds the test functions (`SURFACES`), `sweep` runs optimizers on them (`run`, `sweep`,
`best_lr`); the figure, training and report modules build on those two.
"""

from __future__ import annotations

from .surfaces import SURFACES, Surface, lookup_surface
from .sweep import Descent, Run, Sweep, best_lr, descend, run, sweep

__all__ = ["SURFACES", "Descent", "Run", "Surface", "Sweep", "best_lr", "descend", "lookup_surface", "run", "sweep"]
