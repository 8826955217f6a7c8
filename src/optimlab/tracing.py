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

import ast
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .lab.surfaces import SURFACES, Surface
from .lab.sweep import Run, run


def notes_function() -> Surface:
    """The notes' worked example f(x) = (2x − 10)², ∇f(x) = 4(2x − 10); minimum at x = 5."""
    return SURFACES["notes"]


def function(name_or_expression: str) -> Surface:
    """A lab surface by name (`notes`, `ellipse`, `rosenbrock`, ...) or a SymPy-differentiated expression."""
    surface = SURFACES.get(name_or_expression.lower())
    return surface if surface is not None else expression_function(name_or_expression)


def _check_arithmetic(expression: str) -> None:
    """Refuse anything but numbers, names and SymPy's mathematical functions joined by operators.

    SymPy's `parse_expr` evaluates its input with `eval`: without this check `__import__('os')...` would run.
    """
    try:
        tree = ast.parse(expression, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as error:
        raise ValueError(f"Invalid function: {expression!r} is not a Python expression of x and y "
                         f"({type(error).__name__})") from None
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = node.func.id if isinstance(node.func, ast.Name) else None
            if name is None or node.keywords or not _is_math_function(name):
                raise ValueError(f"Invalid function: {expression!r} calls {ast.unparse(node.func)}, which is not "
                                 "a mathematical function (sin, exp, log, sqrt, Abs, ...)")
        elif not isinstance(node, _ARITHMETIC) or isinstance(node, ast.Name) and node.id.startswith("_"):
            shown = ast.unparse(node) if isinstance(node, ast.expr) else type(node).__name__
            raise ValueError(f"Invalid function: {expression!r} is not arithmetic of x and y (it holds {shown})")
        elif isinstance(node, ast.Constant) and (isinstance(node.value, bool)
                                                 or not isinstance(node.value, (int, float))):
            raise ValueError(f"Invalid function: {expression!r} holds {node.value!r}, which is not a number")


#: The syntax an expression may use: numbers, names, operators, calls (checked by `_is_math_function`).
_ARITHMETIC = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Call, ast.Constant, ast.Name, ast.Load, ast.operator,
               ast.unaryop)


def _is_math_function(name: str) -> bool:
    """SymPy's functions of expressions (sin, exp, log, Abs, Max, gamma, ...) and its roots (sqrt, cbrt, root)."""
    import sympy
    from sympy.core.function import FunctionClass

    return name in ("sqrt", "cbrt", "root") or isinstance(getattr(sympy, name, None), FunctionClass)


def expression_function(expression: str) -> Surface:
    """A Python expression of x and y (e.g. ``"x**2/20 + y**2"``) as a surface with its exact gradient.

    Raises `ValueError` with a one-line reason for anything that is not a real expression of x and y.
    """
    import sympy
    from sympy.parsing.sympy_parser import parse_expr, standard_transformations

    x, y = sympy.symbols("x y", real=True)
    _check_arithmetic(expression)
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


@dataclass(frozen=True)
class Divergence:
    """Where a run stopped being finite: `step` is the first step t at which any of `quantities` (x, f, g, or
    one of the rule's) is NaN or ±inf; x_0 .. x_{step − 1} are finite (step 0: f at the start already is not)."""

    step: int
    quantities: tuple[str, ...]

    @property
    def last_finite_step(self) -> int:
        return max(self.step - 1, 0)

    @property
    def message(self) -> str:
        return (f"diverged at step {self.step}: {', '.join(self.quantities)} became non-finite; "
                f"shown up to step {self.last_finite_step}")


def divergence(result: Run) -> Divergence | None:
    """The first step at which anything in `result` became non-finite, or `None` if every value is finite.

    `optimlab trace` and the playground's API cut a run there and report `Divergence.message`.
    """
    # Per quantity, row t is True where step t made it non-finite (row 0 is the start: x and f only).
    nonfinite = {"x": ~np.isfinite(result.path).all(axis=-1), "f": ~np.isfinite(result.loss)}
    for name, values in result.trace.items():
        nonfinite[name] = np.concatenate([[False], ~np.isfinite(values).all(axis=-1)])
    broken = np.flatnonzero(np.logical_or.reduce(list(nonfinite.values())))
    if not broken.size:
        return None
    step = int(broken[0])
    return Divergence(step, tuple(name for name, rows in nonfinite.items() if rows[step]))


@dataclass(frozen=True)
class Trace:
    """A run as rows, one per step t = 1..T, cut before the step at which it diverged (`divergence`)."""

    rows: list[dict[str, Any]]
    divergence: Divergence | None


def trace_run(optimizer: str, surface: Surface | str, start: Sequence[float] | None = None, steps: int = 10,
              **hyperparameters: Any) -> Trace:
    """Run `optimizer` on `surface` from `start` (default: the surface's) for `steps` steps.

    The rows are ``{"t", "g", <rule quantities>, "update", "x", "f"}``, each value a float for 1-D functions
    or a list of floats (one per variable); a diverging run keeps the finite rows only. Hyperparameters are
    validated; a start where f is not finite is a `ValueError`.
    """
    surface = function(surface) if isinstance(surface, str) else surface
    result = run(surface, optimizer, hyperparameters, start, steps)
    broken = divergence(result)
    if broken is not None and broken.step == 0:  # nothing diverged: there was no finite point to start from
        raise ValueError(f"Invalid start: {_plain(result.path[0].tolist())} (f is {float(result.loss[0])} there, "
                         "not a finite number)")
    return Trace(_rows(result)[:result.steps if broken is None else broken.last_finite_step], broken)


def trace(optimizer: str, surface: Surface | str, start: Sequence[float] | None = None, steps: int = 10,
          **hyperparameters: Any) -> list[dict[str, Any]]:
    """The rows of `trace_run`: one per step t = 1..steps, every value (NaN and inf included) as computed."""
    surface = function(surface) if isinstance(surface, str) else surface
    return _rows(run(surface, optimizer, hyperparameters, start, steps))


def _rows(result: Run) -> list[dict[str, Any]]:
    return [{key: _plain(value) for key, value in row.items()} for row in result.rows()]


def _plain(value: Any) -> Any:
    """A float for a one-element list (1-D functions), else the value as it is."""
    return value[0] if isinstance(value, list) and len(value) == 1 else value
