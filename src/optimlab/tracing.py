"""Step-by-step traces: every intermediate quantity the notes compute by hand, for any rule.

    >>> from optimlab.tracing import notes_function, trace
    >>> rows = trace("adam", notes_function(), start=[0.0], steps=10, lr=0.1)
    >>> rows[-1]["x"]            # x_10 of SPEC §6
    0.99239837968...

The quantities come from each rule's own `trace` (m, v, m̂, v̂, α_t for Adam; the buffer b and the notes'
V_t = η b_t for Momentum; h for AdaGrad; s for RMSProp), next to g, the update and x.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .rules import lookup


@dataclass(frozen=True)
class Function:
    """A differentiable function of `variables` with its exact gradient, evaluated on float64 arrays."""

    name: str
    formula: str
    variables: tuple[str, ...]
    value: Callable[[np.ndarray], float]
    gradient: Callable[[np.ndarray], np.ndarray]


def notes_function() -> Function:
    """The notes' worked example f(x) = (2x − 10)², ∇f(x) = 4(2x − 10); minimum at x = 5."""
    return Function(name="notes", formula="(2x - 10)^2", variables=("x",),
                    value=lambda point: float((2 * point[0] - 10) ** 2),
                    gradient=lambda point: np.array([4 * (2 * point[0] - 10)]))


def expression_function(expression: str) -> Function:
    """A Python expression of x and y (e.g. ``"x**2/20 + y**2"``), differentiated symbolically by SymPy.

    Raises `ValueError` with a one-line reason for anything that is not a real expression of x and y.
    """
    import sympy
    from sympy.parsing.sympy_parser import parse_expr, standard_transformations

    x, y = sympy.symbols("x y", real=True)
    try:
        parsed = parse_expr(expression, local_dict={"x": x, "y": y}, transformations=standard_transformations,
                            evaluate=True)
    except Exception as error:  # SymPy raises many kinds (SyntaxError, TokenError, TypeError, ...)
        raise ValueError(f"Invalid function: {expression!r} is not a Python expression of x and y "
                         f"({type(error).__name__})") from None
    if not isinstance(parsed, sympy.Expr):
        raise ValueError(f"Invalid function: {expression!r} is not an expression of x and y")
    unknown = sorted(str(symbol) for symbol in parsed.free_symbols - {x, y})
    if unknown:
        raise ValueError(f"Invalid function: {expression!r} uses {', '.join(unknown)}; only x and y are allowed")
    variables = (x, y) if y in parsed.free_symbols else (x,)
    value = sympy.lambdify([variables], parsed, "numpy")
    partials = [sympy.lambdify([variables], sympy.diff(parsed, variable), "numpy") for variable in variables]
    return Function(
        name="expression", formula=str(parsed), variables=tuple(str(variable) for variable in variables),
        value=lambda point: float(value(point)),
        gradient=lambda point: np.array([float(partial(point)) for partial in partials], dtype=np.float64),
    )


def trace(optimizer: str, function: Function, start: Sequence[float], steps: int,
          **hyperparameters: Any) -> list[dict[str, Any]]:
    """Run `optimizer` on `function` from `start` for `steps` steps, recording every intermediate.

    Returns one row per step t = 1..steps: ``{"t", "g", <rule quantities>, "update", "x", "f"}``, each value
    a float (1-D functions) or a list of floats (one per variable). Hyperparameters are validated.
    """
    rule, overrides = lookup(optimizer)
    settings = rule.defaults(**{**overrides, **hyperparameters})
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"Invalid steps: {steps!r} (must be a whole number >= 1)")
    if len(start) != len(function.variables):
        raise ValueError(f"Invalid start: {list(start)} has {len(start)} coordinate(s); "
                         f"{function.formula} takes {', '.join(function.variables)}")
    point = np.array(start, dtype=np.float64)
    state = {name: np.full_like(point, rule.initial_state(name, settings))
             for name in rule.active_state(settings)}
    rows = []
    for t in range(1, steps + 1):
        grad = function.gradient(point)
        new_point, state = rule.step(point, grad, state, t, settings)
        row = {"t": t, "g": grad}
        row.update(rule.trace(t, grad, state, settings))
        row.update({"update": new_point - point, "x": new_point, "f": function.value(new_point)})
        rows.append({key: _plain(value) for key, value in row.items()})
        point = new_point
    return rows


def _plain(value: Any) -> Any:
    """Floats for 1-element arrays, lists of floats otherwise (JSON- and CSV-friendly)."""
    if isinstance(value, np.ndarray):
        return float(value[0]) if value.size == 1 else [float(item) for item in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value
