"""Step-by-step traces: every intermediate quantity the notes compute by hand, for any rule.

    >>> from optimlab.tracing import trace
    >>> rows = trace("adam", "notes", steps=10, lr=0.1)
    >>> rows[-1]["x"]            # x_10 of SPEC §6
    0.99239837968...

A trace is the lab's `run` (one configuration through `rule.step`, recording each rule's own `trace`
quantities: m, v, m̂, v̂, α_t for Adam; the buffer b and the notes' V_t = η b_t for Momentum; h for AdaGrad;
s for RMSProp) laid out as rows, one per step. The function is a lab surface by name (`notes` is the notes'
f(x) = (2x − 10)²) or any Python expression of x and y, differentiated symbolically by SymPy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .lab.surfaces import SURFACES, Surface
from .lab.sweep import run


def notes_function() -> Surface:
    """The notes' worked example f(x) = (2x − 10)², ∇f(x) = 4(2x − 10); minimum at x = 5."""
    return SURFACES["notes"]


def function(name_or_expression: str) -> Surface:
    """A lab surface by name (`notes`, `ellipse`, `rosenbrock`, ...) or a SymPy-differentiated expression."""
    surface = SURFACES.get(name_or_expression.lower())
    return surface if surface is not None else expression_function(name_or_expression)


def expression_function(expression: str) -> Surface:
    """A Python expression of x and y (e.g. ``"x**2/20 + y**2"``) as a surface with its exact gradient.

    Raises `ValueError` with a one-line reason for anything that is not a real expression of x and y.
    """
    import sympy
    from sympy.parsing.sympy_parser import parse_expr, standard_transformations

    x, y = sympy.symbols("x y", real=True)
    try:
        parsed = parse_expr(expression, local_dict={"x": x, "y": y}, transformations=standard_transformations)
    except Exception as error:  # SymPy raises many kinds (SyntaxError, TokenError, TypeError, ...)
        raise ValueError(f"Invalid function: {expression!r} is not a Python expression of x and y "
                         f"({type(error).__name__})") from None
    if not isinstance(parsed, sympy.Expr):
        raise ValueError(f"Invalid function: {expression!r} is not an expression of x and y")
    unknown = sorted(str(symbol) for symbol in parsed.free_symbols - {x, y})
    if unknown:
        raise ValueError(f"Invalid function: {expression!r} uses {', '.join(unknown)}; only x and y are allowed")
    variables = (x, y) if y in parsed.free_symbols else (x,)
    value = sympy.lambdify(variables, parsed, "numpy")
    partials = [sympy.lambdify(variables, sympy.diff(parsed, variable), "numpy") for variable in variables]

    def evaluate(points: np.ndarray) -> np.ndarray:
        return np.broadcast_to(value(*np.moveaxis(points, -1, 0)), points.shape[:-1]).astype(np.float64)

    def gradient(points: np.ndarray) -> np.ndarray:
        coordinates = np.moveaxis(points, -1, 0)
        return np.stack([np.broadcast_to(partial(*coordinates), points.shape[:-1]) for partial in partials],
                        axis=-1).astype(np.float64)

    return Surface(name="expression", title=str(parsed), formula=str(parsed), value=evaluate, gradient=gradient,
                   start=(0.0,) * len(variables), bounds=((-10.0, 10.0),) * len(variables), minimum=None,
                   description=f"f({', '.join(map(str, variables))}) = {parsed}")


def trace(optimizer: str, surface: Surface | str, start: Sequence[float] | None = None, steps: int = 10,
          **hyperparameters: Any) -> list[dict[str, Any]]:
    """Run `optimizer` on `surface` from `start` (default: the surface's) for `steps` steps.

    Returns one row per step t = 1..steps: ``{"t", "g", <rule quantities>, "update", "x", "f"}``, each value
    a float for 1-D functions or a list of floats (one per variable). Hyperparameters are validated.
    """
    surface = function(surface) if isinstance(surface, str) else surface
    return [{key: _plain(value) for key, value in row.items()}
            for row in run(surface, optimizer, hyperparameters, start, steps).rows()]


def _plain(value: Any) -> Any:
    """A float for a one-element list (1-D functions), else the value as it is."""
    return value[0] if isinstance(value, list) and len(value) == 1 else value
