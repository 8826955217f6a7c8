"""Run an optimizer on a test surface: one configuration (`run`) or many at once (`sweep`).

    >>> import numpy as np
    >>> from optimlab.lab import run, sweep
    >>> adam = run("ellipse", "adam", {"lr": 0.3}, steps=30)         # DLFS's setting, from (−7, 2)
    >>> adam.path.shape, sorted(adam.trace)                          # start + 30 steps; rule.trace's quantities
    ((31, 2), ['alpha_t', 'g', 'm', 'm_hat', 'update', 'v', 'v_hat'])
    >>> lrs = sweep("ellipse", "sgd", {"lr": np.geomspace(1e-3, 1.0, 1000)}, steps=1000)
    >>> lrs.path.shape                                               # (steps + 1, configs, dim)
    (1001, 1000, 2)
    >>> best = lrs.config(lrs.best())                                # the lr with the lowest mean loss

How a batch runs: the configurations share one parameter array of shape (n_configs, dim), and every real
hyperparameter becomes a float64 column of shape (n_configs, 1) — or (1, 1) when it is the same for all —
that broadcasts through the *same* `rule.step` the optimizers use (primitives.py: continuous
hyperparameters may be arrays). Every operation is elementwise, so config i of a batch computes exactly
what config i computes alone: `run` is a sweep of one, and the results agree bit for bit.

Hyperparameters take the rule's names (`lr`, `momentum`, `betas`, `eps`, ...). In a sweep each may be a
scalar or a 1-D sequence of length n_configs (for `betas`, each of the pair may be); booleans must be
the same for all configs; flags derived from a value (`use_weight_decay`, RMSProp's `use_momentum`) hold for
the whole sweep (see `optimlab.rules.base`).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..rules import Rule, lookup
from .surfaces import Surface, lookup_surface


@dataclass(frozen=True)
class Run:
    """One optimizer run: the path x_0..x_T, f along it, and every per-step quantity `optimlab trace` shows.

    `trace` maps "g" (the gradient at x_{t−1}), the rule's own quantities (`Rule.trace`: m, v, m̂, v̂, α_t for
    Adam; b and V for Momentum; h and the per-element rate for AdaGrad; s for RMSProp) and "update"
    (x_t − x_{t−1}) to arrays of shape (steps, dim); row t − 1 belongs to step t.
    """

    surface: Surface
    optimizer: str
    hyperparameters: dict[str, Any]
    path: np.ndarray
    loss: np.ndarray
    trace: dict[str, np.ndarray]

    @property
    def steps(self) -> int:
        return len(self.path) - 1

    def rows(self) -> list[dict[str, Any]]:
        """One JSON-friendly dict per step t = 1..T: `t`, the trace quantities, `x` and `f`, as lists of floats."""
        return [{"t": t, **{name: values[t - 1].tolist() for name, values in self.trace.items()},
                 "x": self.path[t].tolist(), "f": float(self.loss[t])} for t in range(1, self.steps + 1)]


@dataclass(frozen=True)
class Sweep:
    """Many configurations of one optimizer run side by side from the same start.

    `hyperparameters` holds the validated settings: the `varied` ones as 1-D arrays of length n_configs
    (for `betas`, a pair whose varied members are arrays), the others as scalars. `path` has shape
    (steps + 1, n_configs, dim), `loss` (steps + 1, n_configs), each `trace` array (steps, n_configs, dim)
    — empty unless the sweep was asked to record it.
    """

    surface: Surface
    optimizer: str
    hyperparameters: dict[str, Any]
    varied: tuple[str, ...]
    path: np.ndarray
    loss: np.ndarray
    trace: dict[str, np.ndarray]

    @property
    def n_configs(self) -> int:
        return self.path.shape[1]

    @property
    def steps(self) -> int:
        return self.path.shape[0] - 1

    def config(self, index: int) -> dict[str, Any]:
        """The hyperparameters of configuration `index`, as scalars."""
        return {name: _pick(value, index) for name, value in self.hyperparameters.items()}

    def select(self, index: int) -> Run:
        """Configuration `index` as a `Run` (its views of this sweep's arrays)."""
        return Run(self.surface, self.optimizer, self.config(index), self.path[:, index], self.loss[:, index],
                   {name: values[:, index] for name, values in self.trace.items()})

    def score(self) -> np.ndarray:
        """Mean of f(x_t) − f* over t = 1..T per config (f* = 0 without a minimum); lower is better.

        Averaging over the whole path rewards getting there fast, not only ending low. A config scores `inf`
        where f overflowed or the path left the surface's plotting box widened by its own size on each side
        (which also keeps a surface unbounded below, like the saddle, from rewarding the largest lr).
        """
        floor = self.surface.minimum_value or 0.0
        low, high = np.array(self.surface.bounds, dtype=np.float64).T
        width = high - low
        with np.errstate(all="ignore"):
            score = np.mean(self.loss[1:] - floor, axis=0)
            inside = np.all((self.path >= low - width) & (self.path <= high + width), axis=(0, 2))
        return np.where(np.isfinite(score) & inside, score, np.inf)

    def best(self) -> int:
        """Index of the configuration with the lowest `score` (the first one on ties)."""
        return int(np.argmin(self.score()))


def sweep(surface: Surface | str, optimizer: str, hyperparameters: Mapping[str, Any] | None = None,
          start: Sequence[float] | None = None, steps: int = 100, record_trace: bool = False) -> Sweep:
    """Run every configuration in `hyperparameters` on `surface` for `steps` steps, all at once.

    `optimizer` is a name from `optimlab.rules.OPTIMIZERS`; `start` defaults to the surface's. Raises
    `ValueError` (or `TypeError` for an unknown hyperparameter name) with a one-line reason.
    With `record_trace`, `Sweep.trace` holds the per-step quantities of `Run.trace`.
    """
    surface = lookup_surface(surface) if isinstance(surface, str) else surface
    start_point = np.asarray(surface.start if start is None else start, dtype=np.float64)
    if start_point.shape != (surface.dim,) or not np.all(np.isfinite(start_point)):
        raise ValueError(f"Invalid start: {np.asarray(start).tolist()} (expected {surface.dim} finite "
                         f"coordinate(s) for {surface.name})")
    batch = descend(optimizer, hyperparameters, start_point, lambda t, point: surface.gradient(point), steps,
                    record_trace)
    with np.errstate(all="ignore"):  # a diverging lr is a result of the sweep, not an error
        loss = surface.value(batch.path)
    return Sweep(surface, batch.optimizer, batch.hyperparameters, batch.varied, batch.path, loss, batch.trace)


@dataclass(frozen=True)
class Descent:
    """What `descend` returns: the validated `hyperparameters` (varied ones as 1-D arrays, see `Sweep`), the
    `varied` names, `path` of shape (steps + 1, n_configs, dim) and the per-step `trace` (if recorded)."""

    optimizer: str
    hyperparameters: dict[str, Any]
    varied: tuple[str, ...]
    path: np.ndarray
    trace: dict[str, np.ndarray]


def descend(optimizer: str, hyperparameters: Mapping[str, Any] | None, start: Sequence[float] | np.ndarray,
            gradient: Callable[[int, np.ndarray], np.ndarray], steps: int, record_trace: bool = False) -> Descent:
    """The engine under `sweep`: every configuration from `start` along `gradient(t, points)`, all at once.

    `gradient` receives the step t (from 1) and the points, shape (n_configs, dim), and returns the gradients
    in the same shape — so a stochastic objective can pick step t's sample (see `lab.sparse`).
    """
    rule, overrides = lookup(optimizer)
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise ValueError(f"Invalid steps: {steps!r} (must be a whole number >= 1)")
    requested = {**overrides, **(hyperparameters or {})}
    n_configs, varied = _count_configs(rule, requested)
    settings = [rule.defaults(**{name: _pick(value, index) for name, value in requested.items()})
                for index in range(n_configs)]
    validated = {name: _column(rule, name, [config[name] for config in settings], name in varied)
                 for name in settings[0]}
    columns = {name: _as_array(value) for name, value in validated.items()}

    point = np.broadcast_to(np.asarray(start, dtype=np.float64), (n_configs, len(start))).copy()
    path = np.empty((steps + 1, *point.shape))
    path[0] = point
    trace: dict[str, np.ndarray] = {}
    # a diverging lr is a result of the sweep, not an error
    with np.errstate(all="ignore"), _no_branching_on(rule, varied):
        state = {name: np.broadcast_to(rule.initial_tensor(name, point, columns), point.shape).astype(np.float64)
                 for name in rule.active_state(columns)}
        state.update({name: rule.initial_state(name, columns) for name in rule.scalar_state})
        state.update(rule.initial_group_state(columns))  # the configs are one group each, stepping together
        for t in range(1, steps + 1):
            grad = gradient(t, point)
            per_tensor: dict[str, Any] = {}  # the step's per-tensor coefficients (LAMB's trust ratio), per config
            point, state = rule.step(point, grad, state, t, columns, tensor_axes=(-1,),  # a config is a tensor
                                     record=per_tensor if record_trace else None)
            path[t] = point
            if record_trace:
                _record(trace, t, steps, {"g": grad, **rule.trace(t, grad, state, columns), **per_tensor},
                        point.shape)
    if record_trace:
        trace["update"] = np.diff(path, axis=0)
    return Descent(optimizer.lower(), validated, varied, path, trace)


def run(surface: Surface | str, optimizer: str, hyperparameters: Mapping[str, Any] | None = None,
        start: Sequence[float] | None = None, steps: int = 100) -> Run:
    """One configuration (scalar hyperparameters) on `surface`, with its per-step trace: a sweep of one."""
    result = sweep(surface, optimizer, hyperparameters, start, steps, record_trace=True)
    if result.n_configs != 1:
        raise ValueError(f"Invalid hyperparameters: {', '.join(result.varied)} hold several values; "
                         f"use sweep() for many configurations")
    return result.select(0)


def best_lr(surface: Surface | str, optimizer: str, lrs: Sequence[float] | np.ndarray | None = None,
            hyperparameters: Mapping[str, Any] | None = None, start: Sequence[float] | None = None,
            steps: int = 100) -> float:
    """The learning rate from `lrs` (default: 200 values from 1e−4 to 10, log-spaced) with the best `score`."""
    grid = np.geomspace(1e-4, 10.0, 200) if lrs is None else np.asarray(lrs, dtype=np.float64)
    result = sweep(surface, optimizer, {**(hyperparameters or {}), "lr": grid}, start, steps)
    return float(grid[result.best()])


@contextmanager
def _no_branching_on(rule: Rule, varied: tuple[str, ...]) -> Iterator[None]:
    """Turn NumPy's "truth value of an array is ambiguous" — a rule branching on a swept value — into a reason."""
    try:
        yield
    except ValueError as error:
        if "truth value of an array" not in str(error):
            raise
        raise ValueError(f"Invalid sweep: the {rule.name} rule branches on one of {', '.join(varied)}, "
                         f"so it must be the same for every config; run one sweep per value") from None


# --- configurations ------------------------------------------------------------------------------------

def _is_vector(value: Any) -> bool:
    return isinstance(value, (list, tuple, np.ndarray)) and np.ndim(value) == 1


def _members(rule: Rule, name: str, value: Any) -> tuple[Any, ...]:
    """A hyperparameter's sweepable members: the pair for tuple-valued ones (`betas`), else the value."""
    if isinstance(rule.hyperparameters.get(name), tuple) and isinstance(value, (list, tuple)):
        return tuple(value)
    return (value,)


def _count_configs(rule: Rule, requested: Mapping[str, Any]) -> tuple[int, tuple[str, ...]]:
    lengths: dict[str, int] = {}
    for name, value in requested.items():
        for member in _members(rule, name, value):
            if _is_vector(member):
                lengths[name] = len(member)
            elif np.ndim(member) > 1:
                raise ValueError(f"Invalid {name}: expected a scalar or a 1-D sequence, got shape "
                                 f"{np.shape(member)}")
    sizes = set(lengths.values())
    if len(sizes) > 1:
        raise ValueError("Invalid sweep: swept hyperparameters differ in length ("
                         + ", ".join(f"{name}: {length}" for name, length in lengths.items()) + ")")
    n_configs = sizes.pop() if sizes else 1
    if n_configs < 1:
        raise ValueError("Invalid sweep: a swept hyperparameter is empty")
    return n_configs, tuple(lengths)


def _pick(value: Any, index: int) -> Any:
    """Config `index`'s scalar from a hyperparameter value (scalar, 1-D sequence, or a pair of those)."""
    if isinstance(value, tuple):
        return tuple(_pick(member, index) for member in value)
    if _is_vector(value):
        value = value[index]
    return value.item() if isinstance(value, np.generic) else value


def _column(rule: Rule, name: str, values: list[Any], is_varied: bool) -> Any:
    """The validated per-config values of one hyperparameter: a scalar if not varied, else a 1-D array."""
    if not is_varied:
        return values[0]
    if isinstance(rule.hyperparameters.get(name), tuple):
        return tuple(_member_column(name, [value[position] for value in values])
                     for position in range(len(values[0])))
    return _member_column(name, values)


def _member_column(name: str, values: list[Any]) -> Any:
    if len(set(values)) == 1:
        return values[0]
    if isinstance(values[0], bool):
        raise ValueError(f"Invalid sweep: {name} is a switch and must be the same for every config")
    return np.array(values, dtype=np.float64)


def _as_array(value: Any) -> Any:
    """Real hyperparameters as float64 columns ((n, 1), or (1, 1) if shared) that broadcast over (n, dim)."""
    if isinstance(value, tuple):
        return tuple(_as_array(member) for member in value)
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, np.ndarray)):
        return value
    return np.asarray(value, dtype=np.float64).reshape(-1, 1)


def _record(trace: dict[str, np.ndarray], t: int, steps: int, quantities: Mapping[str, Any],
            shape: tuple[int, ...]) -> None:
    for name, value in quantities.items():
        if name not in trace:
            trace[name] = np.empty((steps, *shape))
        trace[name][t - 1] = np.broadcast_to(value, shape)


__all__ = ["Descent", "Run", "Sweep", "best_lr", "descend", "run", "sweep"]
