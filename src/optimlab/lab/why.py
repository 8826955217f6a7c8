"""The report's "Why it works": the quadratic, the effective learning rates and the edge of stability, small.

`why_section` runs `quadratic.quadratic_experiment`, `effective.effective_experiment` and `eos.eos_experiment`
with sizes that keep `optimlab tour` short, and gathers them in one section that says how to run the full
versions (`optimlab quadratic`, `optimlab eos`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .effective import effective_experiment
from .eos import eos_experiment
from .quadratic import quadratic_experiment
from .report import Section

#: The tour's sizes: 120 × 120 maps of 60 steps (the command: 200 × 200, 100 steps), 500 adaptive steps per κ,
#: the edge of stability on 400 images for 200 steps with one Adam run (the command: all 1,437, 300 steps).
TOUR_SIZES = {"resolution": 120, "map_steps": 60, "adaptive_steps": 500, "eos_samples": 400, "eos_steps": 200}


def why_section(out: Path | str, seed: int = 0, announce: Callable[[str], None] | None = None) -> Section:
    """One report section with every theory figure at `TOUR_SIZES`."""
    say = announce or (lambda message: None)
    say("why it works: the quadratic")
    quadratic = quadratic_experiment(out, resolution=TOUR_SIZES["resolution"], map_steps=TOUR_SIZES["map_steps"],
                                     adaptive_steps=TOUR_SIZES["adaptive_steps"])
    say("why it works: effective learning rates")
    effective = effective_experiment(out, seed=seed)
    say("why it works: the edge of stability")
    eos = eos_experiment(out, adam_lrs=(0.03,), steps=TOUR_SIZES["eos_steps"], every=20,
                         samples=TOUR_SIZES["eos_samples"], seed=seed)
    introduction = ("<p>The notes argue by intuition; here are the numbers behind it, each checked against theory "
                    "by the tests. Small sizes keep the tour short: <code>optimlab quadratic</code> draws "
                    "200 × 200 maps of 100 steps and <code>optimlab eos</code> uses all 1,437 training images "
                    "for 300 steps (both under 30 s; see their <code>--help</code> for larger runs).</p>")
    parts = [introduction] + [f"<h3>{part.title}</h3>{part.body}" for part in (quadratic, effective, eos)]
    return Section("why", "Why it works", "".join(parts), quadratic.files + effective.files + eos.files)


__all__ = ["TOUR_SIZES", "why_section"]
