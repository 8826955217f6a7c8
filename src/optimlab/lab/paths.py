"""Trajectories on a surface: the notes' pictures of SGD zig-zagging, momentum smoothing, AdaGrad slowing.

    >>> from optimlab.lab.paths import PRESETS, compare
    >>> runs = compare("ellipse", lrs=PRESETS["dlfs"].lrs, steps=30)   # Deep Learning from Scratch, fig. 6-8
    >>> sorted(runs)
    ['adagrad', 'adam', 'momentum', 'sgd']

`compare` runs each optimizer at a given lr or, where none is given, at the lr its sweep scored best
(`Sweep.score`). `plot_paths` draws one contour panel per optimizer (PNG), `animate_paths` the race as a GIF,
`plot_lr_sweep` each optimizer's score against lr, `write_paths_csv` the points.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._extras import requires_extra
from .style import NOTES_OPTIMIZERS, color, format_lr, label, new_figure
from .surfaces import Surface, lookup_surface
from .sweep import Run, Sweep, run, sweep

#: Surfaces whose values span many decades: contour levels are log-spaced there.
LOG_LEVELS = frozenset({"rosenbrock", "beale"})
#: A run has arrived at step t when ‖x_t − x*‖ < ARRIVAL_TOLERANCE: the one criterion of the report's tables
#: and of the 1-D plot's distance panel.
ARRIVAL_TOLERANCE = 1e-3


@dataclass(frozen=True)
class Preset:
    """A named setting: surface, steps and per-optimizer learning rates."""

    surface: str
    steps: int
    lrs: dict[str, float] = field(default_factory=dict)
    description: str = ""


PRESETS: dict[str, Preset] = {
    "dlfs": Preset("ellipse", 30, {"sgd": 0.95, "momentum": 0.1, "adagrad": 1.5, "adam": 0.3},
                   "Deep Learning from Scratch §6.1.7: 30 steps on x²/20 + y² from (−7, 2)"),
    "notes": Preset("notes", 160, {"sgd": 0.1, "momentum": 0.01, "adam": 0.1},
                    "the notes' worked example (SPEC §6): f(x) = (2x − 10)² from x₀ = 0; Adam starts slower "
                    "than GD, yet arrives"),
}


def check_start(surface: Surface, start: Sequence[float] | None) -> list[float]:
    """`start` as floats (default: the surface's), if it lies in the surface's box, the extent of its picture.

    Raises `ValueError` naming the start and the box; the playground's API refuses the same starts (HTTP 422).
    """
    if start is None:
        return [float(coordinate) for coordinate in surface.start]
    if len(start) != surface.dim:
        raise ValueError(f"Invalid start: {surface.name} takes {surface.dim} coordinate(s), got {len(start)}")
    for coordinate, (low, high) in zip(start, surface.bounds, strict=True):
        if not low <= coordinate <= high:  # NaN fails this too
            box = " × ".join(f"[{low:g}, {high:g}]" for low, high in surface.bounds)
            raise ValueError(f"Invalid start: {list(start)} lies outside {surface.name}'s bounds {box}")
    return [float(coordinate) for coordinate in start]


def lr_sweeps(surface: Surface | str, optimizers: Iterable[str], steps: int,
              lrs: Sequence[float] | np.ndarray | None = None, start: Sequence[float] | None = None,
              ) -> dict[str, Sweep]:
    """One vectorized lr sweep per optimizer (default grid: 200 lrs from 1e−3 to 10, log-spaced)."""
    grid = np.geomspace(1e-3, 10.0, 200) if lrs is None else np.asarray(lrs, dtype=np.float64)
    return {name: sweep(surface, name, {"lr": grid}, start=start, steps=steps) for name in optimizers}


def compare(surface: Surface | str, optimizers: Iterable[str] | None = None,
            lrs: Mapping[str, float] | None = None, steps: int = 100, start: Sequence[float] | None = None,
            sweeps: Mapping[str, Sweep] | None = None) -> dict[str, Run]:
    """Each optimizer's run, at `lrs[name]` if given, else at the best lr of its sweep in `sweeps`.

    `optimizers` defaults to the names in `lrs`, or the notes' five without it. Missing sweeps are computed
    with `lr_sweeps`. Returns the runs in the order of `optimizers`.
    """
    names = list(optimizers) if optimizers is not None else list(lrs) if lrs else list(NOTES_OPTIMIZERS)
    given = dict(lrs or {})
    missing = [name for name in names if name not in given and not (sweeps and name in sweeps)]
    chosen_from = {**(sweeps or {}), **lr_sweeps(surface, missing, steps, start=start)}
    for name in names:
        if name not in given:
            result = chosen_from[name]
            given[name] = float(result.hyperparameters["lr"][result.best()])
    return {name: run(surface, name, {"lr": given[name]}, start=start, steps=steps) for name in names}


def distance_to_minimum(surface: Surface, result: Run) -> np.ndarray | None:
    """‖x_t − x*‖ for t = 0..T (Euclidean), or `None` where the surface has no minimizer."""
    if surface.minimum is None:
        return None
    with np.errstate(invalid="ignore", over="ignore"):
        return np.linalg.norm(result.path - np.asarray(surface.minimum), axis=-1)


def arrival_step(surface: Surface, result: Run, tolerance: float = ARRIVAL_TOLERANCE) -> int | None:
    """The first step t with ‖x_t − x*‖ < `tolerance`, or `None` if the run never gets there (or there is no x*)."""
    distance = distance_to_minimum(surface, result)
    if distance is None:
        return None
    below = np.flatnonzero(distance < tolerance)
    return int(below[0]) if below.size else None


def _grid(surface: Surface, resolution: int = 300) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    (x_low, x_high), (y_low, y_high) = surface.bounds
    x, y = np.meshgrid(np.linspace(x_low, x_high, resolution), np.linspace(y_low, y_high, resolution))
    return x, y, surface.value(np.stack([x, y], axis=-1))


def _draw_surface(axes, surface: Surface) -> None:
    from matplotlib.colors import LogNorm

    x, y, z = _grid(surface)
    if surface.name in LOG_LEVELS:
        floor = surface.minimum_value or 0.0
        shifted = z - floor + 1e-3
        levels = np.geomspace(max(shifted.min(), 1e-3), shifted.max(), 25)
        axes.contourf(x, y, shifted, levels=levels, norm=LogNorm(), cmap="Greys_r", alpha=0.35)
        axes.contour(x, y, shifted, levels=levels, norm=LogNorm(), colors="grey", linewidths=0.5)
    else:  # levels at quantiles of f: each band covers the same area of the picture
        levels = np.unique(np.quantile(z, np.linspace(0.0, 1.0, 16)))
        axes.contourf(x, y, z, levels=levels, cmap="Greys_r", alpha=0.35)
        axes.contour(x, y, z, levels=levels, colors="grey", linewidths=0.5)
    if surface.minimum is not None:
        axes.plot(*surface.minimum, marker="*", markersize=15, markerfacecolor="none", markeredgecolor="black",
                  markeredgewidth=1.2, linestyle="none", label="minimum", zorder=4)
    axes.set_xlim(surface.bounds[0])
    axes.set_ylim(surface.bounds[1])
    axes.set_xlabel("x")
    axes.set_ylabel("y")


def _run_label(name: str, result: Run) -> str:
    return f"{label(name)} (lr {format_lr(result.hyperparameters['lr'])})"


def plot_paths(surface: Surface | str, runs: Mapping[str, Run], path: Path | str) -> Path:
    """Contour panels, one per optimizer, each with its trajectory; a 1-D surface gets f(x) with the iterates."""
    surface = lookup_surface(surface) if isinstance(surface, str) else surface
    path = Path(path)
    if surface.dim == 1:
        return _plot_paths_1d(surface, runs, path)
    columns = min(len(runs), 3 if len(runs) > 4 else 2)
    rows = -(-len(runs) // columns)
    figure = new_figure(4.6 * columns, 3.4 * rows + 0.4)
    axes_grid = figure.subplots(rows, columns, squeeze=False)
    for axes, (name, result) in zip(axes_grid.flat, runs.items(), strict=False):
        _draw_surface(axes, surface)
        axes.plot(result.path[:, 0], result.path[:, 1], "o-", color=color(name), markersize=3, linewidth=1.4,
                  zorder=3)
        axes.plot(*result.path[0], "s", color="black", markersize=5, label="start")
        axes.set_title(f"{_run_label(name, result)}: f = {result.loss[-1]:.3g} after {result.steps} steps",
                       fontsize=10)
    for axes in axes_grid.flat[len(runs):]:
        axes.set_visible(False)
    figure.suptitle(f"{surface.title}, {surface.formula}, from {_point(surface, runs)}", fontsize=12)
    figure.savefig(path)
    return path


def _point(surface: Surface, runs: Mapping[str, Run]) -> str:
    start = next(iter(runs.values())).path[0] if runs else np.array(surface.start)
    return "(" + ", ".join(f"{value:g}" for value in start) + ")"


def _plot_paths_1d(surface: Surface, runs: Mapping[str, Run], path: Path) -> Path:
    figure = new_figure(11, 4)
    curve, distance = figure.subplots(1, 2)
    x = np.linspace(*surface.bounds[0], 400)
    curve.plot(x, surface.value(x[:, None]), color="grey", linewidth=1)
    minimum = surface.minimum[0] if surface.minimum is not None else 0.0
    for name, result in runs.items():
        curve.plot(result.path[:, 0], result.loss, "o", color=color(name), markersize=4, alpha=0.6,
                   label=_run_label(name, result))
        with np.errstate(divide="ignore"):
            distance.plot(np.arange(result.steps + 1), np.abs(result.path[:, 0] - minimum), color=color(name),
                          linewidth=1.5, label=_run_label(name, result))
    distance.axhline(ARRIVAL_TOLERANCE, color="black", linestyle=":", linewidth=1,
                     label=f"arrived: |x_t − {minimum:g}| < {ARRIVAL_TOLERANCE:g}")
    distance.set_yscale("log")
    curve.set(xlabel="x", ylabel="f(x)", title=f"{surface.formula}: where the iterates land")
    curve.legend(fontsize=8)
    distance.set(xlabel="step t", ylabel=f"|x_t − {minimum:g}| (log scale)", title="distance to the minimum")
    distance.legend(fontsize=8)
    distance.grid(True, alpha=0.3)
    figure.suptitle(f"{surface.title} from x₀ = {_point(surface, runs)[1:-1]}", fontsize=12)
    figure.savefig(path)
    return path


def animate_paths(surface: Surface | str, runs: Mapping[str, Run], path: Path | str, max_frames: int = 60,
                  frame_ms: int = 120) -> Path:
    """All optimizers racing on one contour plot, as an animated GIF (at most `max_frames` frames)."""
    with requires_extra("the lab's animations"):
        from PIL import Image

    surface = lookup_surface(surface) if isinstance(surface, str) else surface
    if surface.dim != 2:
        raise ValueError(f"Invalid surface: {surface.name} is 1-D; the animation needs a 2-D surface")
    path = Path(path)
    figure = new_figure(6.4, 4.8)
    axes = figure.subplots()
    _draw_surface(axes, surface)
    lines = {name: axes.plot([], [], "o-", color=color(name), markersize=3, linewidth=1.4,
                             label=_run_label(name, result))[0] for name, result in runs.items()}
    axes.legend(loc="upper right", fontsize=8)
    steps = max(result.steps for result in runs.values())
    shown = np.unique(np.linspace(0, steps, min(max_frames, steps + 1)).round().astype(int))
    frames = []
    for t in shown:
        for name, result in runs.items():
            lines[name].set_data(result.path[:t + 1, 0], result.path[:t + 1, 1])
        axes.set_title(f"{surface.title}: step {t} of {steps}", fontsize=11)
        figure.canvas.draw()
        image = Image.frombuffer("RGBA", figure.canvas.get_width_height(), figure.canvas.buffer_rgba())
        frames.append(image.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=128))
    durations = [frame_ms] * (len(frames) - 1) + [frame_ms * 15]  # linger on the final picture
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=durations, loop=0, optimize=True)
    return path


def plot_lr_sweep(surface: Surface | str, sweeps: Mapping[str, Sweep], path: Path | str) -> Path:
    """Each optimizer's score (mean f − f* over the steps, log scale) against lr, its best lr marked."""
    surface = lookup_surface(surface) if isinstance(surface, str) else surface
    path = Path(path)
    figure = new_figure(7, 4.2)
    axes = figure.subplots()
    steps = 0
    for name, result in sweeps.items():
        lrs = np.asarray(result.hyperparameters["lr"])
        score = result.score()
        best = result.best()
        steps = result.steps
        axes.plot(lrs, np.where(np.isfinite(score), score, np.nan), color=color(name), linewidth=1.5,
                  label=f"{label(name)}: best lr {format_lr(lrs[best])}")
        axes.plot(lrs[best], score[best], "o", color=color(name), markeredgecolor="black")
    axes.set_xscale("log")
    axes.set_yscale("symlog" if surface.minimum is None else "log")
    axes.set_xlabel("learning rate η (log scale)")
    axes.set_ylabel("mean f(x_t) − f* over the steps" + (" (symlog)" if surface.minimum is None else " (log)"))
    axes.set_title(f"{surface.title}: lr sweeps, {steps} steps each\n"
                   "(a line stops where the path diverged or left the picture)", fontsize=10)
    axes.legend(fontsize=8)
    axes.grid(True, which="major", alpha=0.3)
    figure.savefig(path)
    return path


def write_paths_csv(runs: Mapping[str, Run], path: Path | str) -> Path:
    """Every point of every trajectory: optimizer, lr, t, coordinates, f."""
    path = Path(path)
    dim = next(iter(runs.values())).path.shape[1]
    coordinates = ["x", "y"][:dim]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["optimizer", "lr", "t", *coordinates, "f"])
        for name, result in runs.items():
            for t, (point, value) in enumerate(zip(result.path, result.loss, strict=True)):
                writer.writerow([name, repr(result.hyperparameters["lr"]), t, *map(repr, point.tolist()),
                                 repr(float(value))])
    return path


__all__ = ["ARRIVAL_TOLERANCE", "LOG_LEVELS", "PRESETS", "Preset", "animate_paths", "arrival_step", "check_start",
           "compare", "distance_to_minimum", "lr_sweeps", "plot_lr_sweep", "plot_paths", "write_paths_csv"]
