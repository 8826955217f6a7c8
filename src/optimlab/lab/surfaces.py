"""Test surfaces for the lab: each a function with its exact gradient, a start, plotting bounds, its minimum.

    >>> from optimlab.lab.surfaces import SURFACES
    >>> ellipse = SURFACES["ellipse"]               # Deep Learning from Scratch's f(x, y) = x²/20 + y²
    >>> float(ellipse.value(np.array([-7.0, 2.0])))   # (−7)²/20 + 2²
    6.45
    >>> ellipse.gradient(np.array([[-7.0, 2.0], [0.0, 1.0]]))   # any leading batch shape: (..., dim)
    array([[-0.7,  4. ],
           [ 0. ,  2. ]])

`value` maps points of shape (..., dim) to (...), `gradient` maps (..., dim) to (..., dim); both are written
with plain NumPy arithmetic, so a sweep evaluates a thousand points in one call and a contour plot a whole grid.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Surface:
    """A differentiable test function with everything a plot or a sweep needs.

    `start` is the default starting point, `bounds` one `(low, high)` pair per coordinate for plots,
    `minimum` the global minimizer (`None` where the function is unbounded below, as the saddle).
    """

    name: str
    title: str
    formula: str
    value: Callable[[np.ndarray], np.ndarray]
    gradient: Callable[[np.ndarray], np.ndarray]
    start: tuple[float, ...]
    bounds: tuple[tuple[float, float], ...]
    minimum: tuple[float, ...] | None
    description: str

    @property
    def dim(self) -> int:
        """Number of coordinates (1 or 2)."""
        return len(self.start)

    @property
    def minimum_value(self) -> float | None:
        """f at the global minimizer, or `None` where there is none."""
        if self.minimum is None:
            return None
        return float(self.value(np.array(self.minimum, dtype=np.float64)))


def _notes_value(p: np.ndarray) -> np.ndarray:
    return (2 * p[..., 0] - 10) ** 2


def _notes_gradient(p: np.ndarray) -> np.ndarray:
    return 4 * (2 * p[..., 0:1] - 10)


def _ellipse_value(p: np.ndarray) -> np.ndarray:
    x, y = p[..., 0], p[..., 1]
    return x * x / 20 + y * y


def _ellipse_gradient(p: np.ndarray) -> np.ndarray:
    x, y = p[..., 0], p[..., 1]
    return np.stack([x / 10, 2 * y], axis=-1)


def _rosenbrock_value(p: np.ndarray) -> np.ndarray:
    x, y = p[..., 0], p[..., 1]
    return (1 - x) ** 2 + 100 * (y - x * x) ** 2


def _rosenbrock_gradient(p: np.ndarray) -> np.ndarray:
    x, y = p[..., 0], p[..., 1]
    valley = y - x * x
    return np.stack([-2 * (1 - x) - 400 * x * valley, 200 * valley], axis=-1)


def _beale_terms(p: np.ndarray) -> tuple[np.ndarray, ...]:
    x, y = p[..., 0], p[..., 1]
    return x, y, 1.5 - x + x * y, 2.25 - x + x * y * y, 2.625 - x + x * y * y * y


def _beale_value(p: np.ndarray) -> np.ndarray:
    _, _, a, b, c = _beale_terms(p)
    return a * a + b * b + c * c


def _beale_gradient(p: np.ndarray) -> np.ndarray:
    x, y, a, b, c = _beale_terms(p)
    d_x = 2 * a * (y - 1) + 2 * b * (y * y - 1) + 2 * c * (y * y * y - 1)
    d_y = 2 * a * x + 4 * b * x * y + 6 * c * x * y * y
    return np.stack([d_x, d_y], axis=-1)


def _saddle_value(p: np.ndarray) -> np.ndarray:
    x, y = p[..., 0], p[..., 1]
    return x * x - y * y


def _saddle_gradient(p: np.ndarray) -> np.ndarray:
    x, y = p[..., 0], p[..., 1]
    return np.stack([2 * x, -2 * y], axis=-1)


def _rastrigin_value(p: np.ndarray) -> np.ndarray:
    return 10 * p.shape[-1] + np.sum(p * p - 10 * np.cos(2 * np.pi * p), axis=-1)


def _rastrigin_gradient(p: np.ndarray) -> np.ndarray:
    return 2 * p + 20 * np.pi * np.sin(2 * np.pi * p)


SURFACES: dict[str, Surface] = {surface.name: surface for surface in (
    Surface("notes", "The notes' parabola", "f(x) = (2x − 10)²", _notes_value, _notes_gradient,
            start=(0.0,), bounds=((-1.0, 11.0),), minimum=(5.0,),
            description="The notes' worked example (SPEC §6): ∇f = 4(2x − 10), x₀ = 0, minimum at x = 5."),
    Surface("ellipse", "Deep Learning from Scratch's ellipse", "f(x, y) = x²/20 + y²", _ellipse_value,
            _ellipse_gradient, start=(-7.0, 2.0), bounds=((-10.0, 10.0), (-5.0, 5.0)), minimum=(0.0, 0.0),
            description="Twenty times steeper in y than in x: SGD zig-zags across the valley (DLFS §6.1)."),
    Surface("rosenbrock", "Rosenbrock's banana", "f(x, y) = (1 − x)² + 100 (y − x²)²", _rosenbrock_value,
            _rosenbrock_gradient, start=(-1.2, 1.0), bounds=((-2.0, 2.0), (-1.0, 3.0)), minimum=(1.0, 1.0),
            description="A curved, flat-bottomed valley: easy to reach, slow to follow to (1, 1)."),
    Surface("beale", "Beale's function", "f(x, y) = (1.5 − x + xy)² + (2.25 − x + xy²)² + (2.625 − x + xy³)²",
            _beale_value, _beale_gradient, start=(1.0, 1.5), bounds=((-4.5, 4.5), (-4.5, 4.5)),
            minimum=(3.0, 0.5),
            description="Flat plateaus and steep walls: gradients span orders of magnitude."),
    Surface("saddle", "A saddle", "f(x, y) = x² − y²", _saddle_value, _saddle_gradient,
            start=(-1.5, 0.01), bounds=((-2.0, 2.0), (-2.0, 2.0)), minimum=None,
            description="Saddle point at (0, 0), unbounded below along y: starting near the ridge, "
                        "plain SGD lingers where the gradient vanishes; momentum and adaptive rates escape."),
    Surface("rastrigin", "Rastrigin's function", "f(x, y) = 20 + Σ (xᵢ² − 10 cos 2πxᵢ)", _rastrigin_value,
            _rastrigin_gradient, start=(2.2, -2.3), bounds=((-3.0, 3.0), (-3.0, 3.0)), minimum=(0.0, 0.0),
            description="A parabola covered in local minima: every optimizer here gets caught in one."),
)}


def lookup_surface(name: str) -> Surface:
    """The surface called `name` (case-insensitive); `ValueError` listing the choices if unknown."""
    key = name.lower()
    if key not in SURFACES:
        raise ValueError(f"Invalid surface: {name!r} (expected one of {', '.join(SURFACES)})")
    return SURFACES[key]


__all__ = ["SURFACES", "Surface", "lookup_surface"]
