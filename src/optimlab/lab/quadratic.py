"""Why momentum works, with numbers: the notes' family on quadratics, checked against the closed forms.

On f(x) = ½ Σ λᵢ xᵢ² (λ₁ ≥ … ≥ λₙ > 0, condition number κ = λ₁/λₙ) the gradient is λᵢxᵢ per coordinate, so
every coordinate is an eigen-component of the error and evolves on its own (Goh, "Why Momentum Really Works",
Distill 2017):

    gradient descent  xᵢ ← (1 − αλᵢ) xᵢ                              rate |1 − αλᵢ|
    heavy ball        xᵢ,t+1 = (1 + β − αλᵢ) xᵢ,t − β xᵢ,t−1          rate max |z| over z² − (1 + β − αλᵢ) z + β

(the momentum rule's b ← βb + g, x ← x − αb is the heavy ball with α = η, β = γ). The slowest component sets
the rate: GD's best step α* = 2/(λ₁ + λₙ) gives (κ − 1)/(κ + 1); momentum's best α = (2/(√λ₁ + √λₙ))²,
β = ((√κ − 1)/(√κ + 1))² gives √β = (√κ − 1)/(√κ + 1), the square root of the condition number in its place.
Momentum is stable exactly where 0 < αλ < 2(1 + β) for every λ, with 0 ≤ β < 1.

    >>> from optimlab.lab.quadratic import gd_optimum, momentum_optimum
    >>> gd_optimum(100.0).rate, momentum_optimum(100.0).rate       # κ = 100: (κ−1)/(κ+1), (√κ−1)/(√κ+1)
    (0.9801980198019802, 0.8181818181818182)

Everything here runs the optimizers' own rules through the lab's `descend`/`sweep`: a whole range of κ, or a
200 × 200 grid of (α, β), is one batch.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .report import Section, figure, link, table
from .style import color, format_lr, label, new_figure
from .sweep import descend, sweep

#: The (α, β) maps and the playground's view run on the ellipse surface, f = x²/20 + y²: λ = (0.1, 2), κ = 20.
MAP_SURFACE = "ellipse"
MAP_CURVATURES = (0.1, 2.0)
#: Distill's picture: five eigen-components from λ = 0.01 to 1 (κ = 100).
COMPONENT_CURVATURES = (0.01, 0.0316, 0.1, 0.316, 1.0)
#: Condition numbers of the rate figure, 1 to 10⁴.
KAPPAS = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1e3, 3e3, 1e4)
ADAPTIVE = ("adagrad", "rmsprop", "adam")
#: Errors below this fraction of the start are rounding, not convergence: rates are measured above it.
_FLOOR = 1e-250


# --- closed forms ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Optimum:
    """The best constant hyperparameters on a quadratic of condition number κ and their rate per step."""

    lr: float
    momentum: float
    rate: float


def gd_optimum(kappa: float, smallest: float = 1.0) -> Optimum:
    """α* = 2/(λ₁ + λₙ): both extreme components then shrink by (κ − 1)/(κ + 1) per step."""
    largest = kappa * smallest
    return Optimum(float(2.0 / (largest + smallest)), 0.0, float((kappa - 1.0) / (kappa + 1.0)))


def momentum_optimum(kappa: float, smallest: float = 1.0) -> Optimum:
    """α = (2/(√λ₁ + √λₙ))², β = ((√κ − 1)/(√κ + 1))²: every component's roots then have modulus √β."""
    largest = kappa * smallest
    root = np.sqrt(kappa)
    rate = (root - 1.0) / (root + 1.0)
    return Optimum(float((2.0 / (np.sqrt(largest) + np.sqrt(smallest))) ** 2), float(rate ** 2), float(rate))


def momentum_rate(lr: Any, momentum: Any, curvatures: Sequence[float]) -> np.ndarray:
    """The heavy ball's theoretical rate: the largest |z| with z² − (1 + β − αλ) z + β = 0 over the λs.

    Broadcasts over arrays of `lr` and `momentum`; β = 0 is gradient descent, |1 − αλ|.
    """
    lr, momentum = np.broadcast_arrays(np.asarray(lr, dtype=np.float64), np.asarray(momentum, dtype=np.float64))
    rates = np.zeros(lr.shape)
    for curvature in curvatures:
        trace = 1.0 + momentum - lr * curvature
        root = np.sqrt((trace * trace - 4.0 * momentum).astype(np.complex128))
        rates = np.maximum(rates, np.maximum(np.abs((trace + root) / 2), np.abs((trace - root) / 2)))
    return rates


def stable(lr: Any, momentum: Any, curvature: float) -> np.ndarray:
    """The heavy ball's stability region for one curvature: 0 < αλ < 2(1 + β) and 0 ≤ β < 1."""
    lr, momentum = np.asarray(lr, dtype=np.float64), np.asarray(momentum, dtype=np.float64)
    return (lr * curvature > 0) & (lr * curvature < 2 * (1 + momentum)) & (momentum >= 0) & (momentum < 1)


def critical_momentum(lr: Any, curvature: float) -> np.ndarray:
    """Critical damping β = (1 − √(αλ))²: below it the roots are real (no oscillation), above complex."""
    return (1.0 - np.sqrt(np.asarray(lr, dtype=np.float64) * curvature)) ** 2


# --- measuring ------------------------------------------------------------------------------------------

def measured_rate(error: np.ndarray, whole_run: bool = False) -> np.ndarray:
    """The per-step rate of `error` (shape (steps + 1, ...)): (e_T / e_{T/2})^(2/T) over the last half of the run,
    or (e_T / e₀)^(1/T) over the `whole_run`.

    T is the run's length, or the last step at which the error is still above `_FLOOR` × e₀, so that a fast
    rate is read before it underflows (an error that vanishes in one step has rate e₁/e₀, 0 when exact).
    The last half skips the transient; what is left of a double root's t·rᵗ is a factor 2^(2/T), under
    0.5 % in log rate once the error has fallen by 10⁻¹⁰⁰.
    """
    error = np.asarray(error, dtype=np.float64)
    with np.errstate(all="ignore"):
        above = error > _FLOOR * error[0]
        last = error.shape[0] - 1 - np.argmax(above[::-1], axis=0)
        last = np.where(above.any(axis=0) & (last > 0), last, 1)
        first = np.where((last > 1) & (not whole_run), last // 2, 0)
        end = np.take_along_axis(error, last[None], axis=0)[0]
        begin = np.take_along_axis(error, first[None], axis=0)[0]
        rate = (end / begin) ** (1.0 / (last - first))
    return np.where(np.isfinite(rate), rate, np.inf)


def _rotation(dim: int) -> np.ndarray:
    """An orthogonal Q that mixes every coordinate (a seeded QR): H = Q diag(λ) Qᵀ is not axis-aligned."""
    q, r = np.linalg.qr(np.random.default_rng(0).normal(size=(dim, dim)))
    return q * np.sign(np.diag(r))


def _quadratic_gradient(curvatures: np.ndarray,
                        rotation: np.ndarray | None) -> Callable[[int, np.ndarray], np.ndarray]:
    """∇f = Q diag(λ) Qᵀ x for every row x, with λ per config (rows of `curvatures`) or shared."""
    def gradient(t: int, points: np.ndarray) -> np.ndarray:
        if rotation is None:
            return curvatures * points
        return ((points @ rotation) * curvatures) @ rotation.T
    return gradient


# --- eigen-components -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Components:
    """Gradient descent and the heavy ball from x₀ = 1 on f = ½ Σ λᵢ xᵢ²: `path[name]` has shape (steps + 1, n)."""

    curvatures: np.ndarray
    settings: dict[str, dict[str, float]]
    path: dict[str, np.ndarray]


def eigen_components(curvatures: Sequence[float] = COMPONENT_CURVATURES, steps: int = 150,
                     gd_lr: float | None = None, momentum: tuple[float, float] | None = None) -> Components:
    """Both runs at their optimal settings (or `gd_lr`, `momentum` = (α, β)).

    The coordinates are the eigen-components."""
    lambdas = np.asarray(curvatures, dtype=np.float64)
    kappa = float(lambdas.max() / lambdas.min())
    gd = gd_optimum(kappa, float(lambdas.min()))
    heavy = momentum_optimum(kappa, float(lambdas.min()))
    settings = {"gd": {"lr": gd.lr if gd_lr is None else gd_lr, "momentum": 0.0},
                "momentum": dict(zip(("lr", "momentum"), momentum, strict=True)) if momentum
                else {"lr": heavy.lr, "momentum": heavy.momentum}}
    batch = descend("momentum", {"lr": [settings[name]["lr"] for name in settings],
                                 "momentum": [settings[name]["momentum"] for name in settings]},
                    np.ones(len(lambdas)), _quadratic_gradient(lambdas, None), steps)
    return Components(lambdas, settings, {name: batch.path[:, index] for index, name in enumerate(settings)})


def plot_components(components: Components, path: Path | str) -> Path:
    """Distill's picture: |xᵢ(t)| per eigen-component, measured (solid) and |1 − αλᵢ|ᵗ or √βᵗ (dashed)."""
    path = Path(path)
    figure_ = new_figure(12, 4.8)
    panels = figure_.subplots(1, 2, sharey=True)
    palette = _palette(len(components.curvatures))
    steps = np.arange(components.path["gd"].shape[0])
    for axes, name in zip(panels, ("gd", "momentum"), strict=True):
        lr, beta = components.settings[name]["lr"], components.settings[name]["momentum"]
        values = np.abs(components.path[name])
        for index, curvature in enumerate(components.curvatures):
            axes.plot(steps, values[:, index], color=palette[index], linewidth=1.6,
                      label=f"λ = {curvature:.3g}" + (f": |1 − αλ| = {abs(1 - lr * curvature):.3g}"
                                                       if name == "gd" else ""))
            if name == "gd":
                axes.plot(steps, abs(1 - lr * curvature) ** steps, color=palette[index], linestyle="--",
                          linewidth=0.9)
        if name == "momentum":
            axes.plot(steps, np.sqrt(beta) ** steps, color="black", linestyle="--", linewidth=1.0,
                      label=f"√β ᵗ = {np.sqrt(beta):.3g}ᵗ (every component's modulus)")
        title = (f"gradient descent, α* = 2/(λ₁ + λₙ) = {lr:.3g}" if name == "gd"
                 else f"heavy ball, α = {lr:.3g}, β = {beta:.3g} (optimal)")
        axes.set(yscale="log", ylim=(1e-8, 30), xlabel="step t", title=title)
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=8, loc="lower left")
    panels[0].set(ylabel="|xᵢ − xᵢ*| per eigen-component (log)")
    kappa = components.curvatures.max() / components.curvatures.min()
    figure_.suptitle(f"The error in eigen-components on ½ Σ λᵢ xᵢ² (κ = {kappa:.3g}): each decays at its own rate; "
                     "dashed: theory", fontsize=11)
    figure_.savefig(path)
    return path


def _palette(count: int) -> list[Any]:
    """`count` colours along viridis, dark (small λ) to light (large λ)."""
    from matplotlib import colormaps

    return [colormaps["viridis"](value) for value in np.linspace(0.0, 0.85, count)]


# --- rate against the condition number ------------------------------------------------------------------

@dataclass(frozen=True)
class RateRow:
    """One row of quadratic-rates.csv: `theoretical_rate` is None where there is no closed form."""

    optimizer: str
    kappa: float
    lr: float
    momentum: float
    measured_rate: float
    theoretical_rate: float | None


def rates_by_condition(kappas: Sequence[float] = KAPPAS, adaptive: Sequence[str] = ADAPTIVE,
                       steps: int | None = None, adaptive_steps: int = 1000,
                       lrs: np.ndarray | None = None) -> list[RateRow]:
    """Measured rates on a rotated 2-D quadratic with λ = (κ, 1), for every κ at once.

    GD (the momentum rule with β = 0) and the heavy ball run at their closed-form optima in one batch of
    2 × len(κ) configurations, for `steps` (default: enough for the slowest, √κ/2 · 250 steps) and their
    rates are read by `measured_rate`. Each rule of `adaptive` runs one batch of every κ × every lr of `lrs`
    (default: 60 from 10⁻³ to 10, log-spaced) for `adaptive_steps` and reports, per κ, the lr with the lowest
    (‖x_T‖/‖x₀‖)^(1/T) (`measured_rate` over the whole run: no asymptotic regime to wait for).
    The quadratic is rotated so that the diagonal preconditioners of AdaGrad, RMSProp and
    Adam cannot simply divide κ away (GD and momentum are rotation-invariant).
    """
    kappa = np.asarray(kappas, dtype=np.float64)
    if kappa.ndim != 1 or kappa.size == 0 or not np.all(kappa >= 1):
        raise ValueError(f"Invalid kappas: {list(kappas)} (expected condition numbers >= 1)")
    rotation = _rotation(2)
    start = rotation @ np.ones(2)  # one unit along each eigenvector
    optima = [gd_optimum(value) for value in kappa] + [momentum_optimum(value) for value in kappa]
    curvatures = np.tile(np.stack([kappa, np.ones_like(kappa)], axis=1), (2, 1))
    steps = steps or int(250 * np.sqrt(kappa.max()) / 2) + 100
    batch = descend("momentum", {"lr": [optimum.lr for optimum in optima],
                                 "momentum": [optimum.momentum for optimum in optima]},
                    start, _quadratic_gradient(curvatures, rotation), steps)
    measured = measured_rate(np.linalg.norm(batch.path, axis=-1))
    rows = [RateRow("gd" if index < len(kappa) else "momentum", float(kappa[index % len(kappa)]), optimum.lr,
                    optimum.momentum, float(measured[index]), optimum.rate) for index, optimum in enumerate(optima)]
    grid = np.geomspace(1e-3, 10.0, 60) if lrs is None else np.asarray(lrs, dtype=np.float64)
    for name in adaptive:
        configs_lr = np.repeat(grid, len(kappa))
        configs_kappa = np.tile(kappa, len(grid))
        batch = descend(name, {"lr": configs_lr}, start,
                        _quadratic_gradient(np.stack([configs_kappa, np.ones_like(configs_kappa)], axis=1),
                                            rotation), adaptive_steps)
        whole_run = measured_rate(np.linalg.norm(batch.path, axis=-1), whole_run=True).reshape(len(grid), len(kappa))
        best = np.argmin(whole_run, axis=0)
        rows.extend(RateRow(name, float(value), float(grid[best[index]]), 0.0,
                            float(whole_run[best[index], index]), None) for index, value in enumerate(kappa))
    return rows


def write_rates_csv(rows: Sequence[RateRow], path: Path | str) -> Path:
    """quadratic-rates.csv: optimizer,kappa,lr,momentum,measured_rate,theoretical_rate (empty: no closed form)."""
    path = Path(path)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["optimizer", "kappa", "lr", "momentum", "measured_rate", "theoretical_rate"])
        for row in rows:
            theory = "" if row.theoretical_rate is None else repr(float(row.theoretical_rate))
            writer.writerow([row.optimizer, *(repr(float(value)) for value in (row.kappa, row.lr, row.momentum,
                                                                               row.measured_rate)), theory])
    return path


def plot_rates(rows: Sequence[RateRow], path: Path | str, adaptive_steps: int = 1000) -> Path:
    """Rate against κ: GD and momentum measured (markers) on their closed forms (lines); adaptive measured."""
    path = Path(path)
    figure_ = new_figure(9, 5.6)
    axes = figure_.subplots()
    names = list(dict.fromkeys(row.optimizer for row in rows))
    for name in names:
        chosen = [row for row in rows if row.optimizer == name]
        kappa = np.array([row.kappa for row in chosen])
        measured = np.array([row.measured_rate for row in chosen])
        # plotted as 1 − rate on a log axis: the decades near rate 1 are where κ matters
        if name in ("gd", "momentum"):
            formula = "(κ − 1)/(κ + 1)" if name == "gd" else "(√κ − 1)/(√κ + 1)"
            tint = color("sgd" if name == "gd" else "momentum")
            dense = np.geomspace(kappa.min(), kappa.max(), 200)
            closed = [(gd_optimum if name == "gd" else momentum_optimum)(value).rate for value in dense]
            axes.plot(dense, 1 - np.array(closed), color=tint, linewidth=1.4,
                      label=f"{'GD at α*' if name == 'gd' else 'momentum at optimal (α, β)'}: theory {formula}")
            axes.plot(kappa, 1 - measured, "o", color=tint, markersize=6, markerfacecolor="none",
                      label=f"{'GD' if name == 'gd' else 'momentum'}: measured")
        else:
            axes.plot(kappa, 1 - np.minimum(measured, 1.0), "s--", color=color(name), markersize=4, linewidth=1,
                      label=f"{label(name)} at its best lr: measured over {adaptive_steps} steps")
    axes.set(xscale="log", yscale="log", xlabel="condition number κ = λ₁/λₙ (log)",
             ylabel="1 − rate (log; higher is faster)",
             title="Convergence rate per step on a rotated 2-D quadratic, against κ")
    axes.grid(True, which="both", alpha=0.25)
    axes.legend(fontsize=8, loc="lower left")
    figure_.savefig(path)
    return path


# --- the stability maps ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class StabilityMap:
    """A grid of (lr, momentum) configurations on the ellipse: `rate[i, j]` for `momentums[i]`, `lrs[j]`.

    `momentum` is the heavy ball's β, or Adam's β₁; `curvature` the largest λ (the one setting the boundary).
    """

    optimizer: str
    lrs: np.ndarray
    momentums: np.ndarray
    rate: np.ndarray
    curvature: float
    steps: int

    @property
    def converged(self) -> np.ndarray:
        return self.rate < 1.0


def stability_map(optimizer: str = "momentum", lrs: np.ndarray | None = None, momentums: np.ndarray | None = None,
                  steps: int = 100, resolution: int = 200) -> StabilityMap:
    """Every (lr, momentum) pair of the grid on the ellipse, in ONE sweep; rates by `measured_rate` of the
    error's envelope.

    Defaults: for momentum, α linear in (0, 2.5] and β in [0, 0.995]; for Adam, lr log-spaced 10⁻³..10 and
    β₁ in [0, 0.995] (β₂ = 0.999), `resolution` values each.
    """
    if optimizer not in ("momentum", "adam"):
        raise ValueError(f"Invalid optimizer: {optimizer!r} (the maps are for 'momentum' and 'adam')")
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 2:
        raise ValueError(f"Invalid resolution: {resolution!r} (must be a whole number >= 2)")
    if lrs is None:
        lrs = (np.linspace(2.5 / resolution, 2.5, resolution) if optimizer == "momentum"
               else np.geomspace(1e-3, 10.0, resolution))
    momentums = np.linspace(0.0, 0.995, resolution) if momentums is None else momentums
    lr_grid, momentum_grid = np.meshgrid(np.asarray(lrs, dtype=np.float64), np.asarray(momentums, dtype=np.float64))
    settings: dict[str, Any] = {"lr": lr_grid.ravel()}
    if optimizer == "momentum":
        settings["momentum"] = momentum_grid.ravel()
    else:
        settings["betas"] = (momentum_grid.ravel(), 0.999)
    result = sweep(MAP_SURFACE, optimizer, settings, steps=steps)
    # The error of two components with complex roots beats; its upper envelope (the largest error over the
    # last fifth of the run) decays at the rate without the beat, which would otherwise fan across the map.
    window = max(1, steps // 5)
    envelope = sliding_window_view(np.linalg.norm(result.path, axis=-1), window, axis=0).max(axis=-1)
    rate = measured_rate(envelope).reshape(lr_grid.shape)
    return StabilityMap(optimizer, lr_grid[0], momentum_grid[:, 0], rate, max(MAP_CURVATURES), steps)


def write_stability_csv(result: StabilityMap, path: Path | str) -> Path:
    """stability.csv: lr,momentum,curvature,converged,rate (converged: measured rate < 1), one row per cell."""
    path = Path(path)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["lr", "momentum", "curvature", "converged", "rate"])
        for row, momentum in enumerate(result.momentums):
            for column, lr in enumerate(result.lrs):
                rate = result.rate[row, column]
                writer.writerow([f"{lr:.9g}", f"{momentum:.9g}", repr(result.curvature), int(rate < 1.0),
                                 f"{rate:.9g}"])
    return path


def plot_maps(maps: Sequence[StabilityMap], path: Path | str) -> Path:
    """The maps side by side: rate in colour (grey: diverges), the heavy ball's theory drawn over its map."""
    from matplotlib import colormaps

    path = Path(path)
    figure_ = new_figure(6.2 * len(maps) + 0.8, 5.4)
    panels = np.atleast_1d(figure_.subplots(1, len(maps)))
    palette = colormaps["viridis"].with_extremes(over="#d9d9d9", bad="#d9d9d9")
    image = None
    for axes, result in zip(panels, maps, strict=True):
        image = axes.pcolormesh(result.lrs, result.momentums, np.where(result.rate < 1.0, result.rate, np.inf),
                                cmap=palette, vmin=0.0, vmax=1.0, shading="nearest", rasterized=True)
        if result.optimizer == "momentum":
            boundary = 2 * (1 + result.momentums) / result.curvature
            axes.plot(boundary, result.momentums, color="red", linewidth=2,
                      label=f"stability boundary αλ₁ = 2(1 + β), λ₁ = {result.curvature:g}")
            for curvature, style in zip(MAP_CURVATURES, (":", "-."), strict=True):
                dense = np.linspace(result.lrs.min(), min(result.lrs.max(), 4 / curvature), 300)
                axes.plot(dense, critical_momentum(dense, curvature), color="black", linestyle=style, linewidth=1.1,
                          label=f"critical damping β = (1 − √(αλ))², λ = {curvature:g}")
            optimum = momentum_optimum(max(MAP_CURVATURES) / min(MAP_CURVATURES), min(MAP_CURVATURES))
            axes.plot(optimum.lr, optimum.momentum, "*", color="white", markeredgecolor="black", markersize=14,
                      label=f"optimum α = {optimum.lr:.3g}, β = {optimum.momentum:.3g} (rate {optimum.rate:.3g})")
            axes.set(xlim=(0, result.lrs.max()), ylim=(0, 1), xlabel="step size α (lr)", ylabel="momentum β",
                     title=f"Heavy ball: measured rate, {result.rate.size:,} configs in one sweep")
            axes.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2)
        else:
            axes.set(xscale="log", ylim=(0, 1), xlabel="lr η (log)", ylabel="β₁ (β₂ = 0.999)",
                     title=f"Adam: measured rate, {result.rate.size:,} configs in one sweep")
        axes.grid(True, alpha=0.2)
    figure_.colorbar(image, ax=list(panels), extend="max",
                     label=f"rate per step over the last half of {maps[0].steps} steps (grey: ≥ 1, no convergence)")
    figure_.suptitle("Where each configuration converges on the ellipse f = x²/20 + y² (λ = 0.1, 2; κ = 20)",
                     fontsize=11)
    figure_.savefig(path)
    return path


# --- phase portrait -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Portrait:
    """The heavy ball on f = ½ λ x² at one α and three β: below, at and above critical damping."""

    curvature: float
    lr: float
    momentums: tuple[float, float, float]
    position: np.ndarray   # (steps + 1, 3)

    @property
    def velocity(self) -> np.ndarray:
        """x_t − x_{t−1} (0 at t = 0): −α b_t, the notes' −V_t."""
        return np.diff(self.position, axis=0, prepend=self.position[:1])


def phase_portrait(curvature: float = 1.0, lr: float = 0.1, steps: int = 60) -> Portrait:
    """β = β_c/4, β_c = (1 − √(αλ))² and β_c + (1 − β_c)/2, from x₀ = 1, in one batch."""
    critical = float(critical_momentum(lr, curvature))
    momentums = (critical / 4, critical, critical + (1 - critical) / 2)
    batch = descend("momentum", {"lr": lr, "momentum": list(momentums)}, np.ones(1),
                    _quadratic_gradient(np.array([curvature]), None), steps)
    return Portrait(curvature, lr, momentums, batch.path[:, :, 0])


def plot_portrait(portrait: Portrait, path: Path | str) -> Path:
    """Position against velocity (left) and position against step (right) for the three dampings."""
    path = Path(path)
    figure_ = new_figure(12, 4.8)
    phase, over_time = figure_.subplots(1, 2)
    names = ("overdamped: β < β_c, real roots", "critically damped: β = β_c", "underdamped: β > β_c, spirals")
    tints = ("#1f77b4", "#2ca02c", "#d62728")
    steps = np.arange(portrait.position.shape[0])
    for index, (name, tint) in enumerate(zip(names, tints, strict=True)):
        tag = f"{name} ({portrait.momentums[index]:.3g})"
        phase.plot(portrait.position[:, index], portrait.velocity[:, index], "o-", color=tint, markersize=2.5,
                   linewidth=1, label=tag)
        over_time.plot(steps, portrait.position[:, index], color=tint, linewidth=1.4, label=tag)
    phase.plot([1.0], [0.0], "ks", markersize=6, label="start x₀ = 1")
    phase.set(xlabel="position x_t", ylabel="velocity x_t − x_{t−1}", title="phase portrait")
    over_time.axhline(0, color="black", linewidth=0.6)
    over_time.set(xlabel="step t", ylabel="position x_t", title="position over time")
    for axes in (phase, over_time):
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=8)
    figure_.suptitle(f"Heavy ball on f = ½ λx², λ = {portrait.curvature:g}, α = {portrait.lr:g}: "
                     f"critical damping β_c = (1 − √(αλ))² = {portrait.momentums[1]:.3g}", fontsize=11)
    figure_.savefig(path)
    return path


# --- the experiment -------------------------------------------------------------------------------------

def quadratic_experiment(out: Path | str, kappas: Sequence[float] = KAPPAS, resolution: int = 200,
                         map_steps: int = 100, adaptive_steps: int = 1000) -> Section:
    """Everything above into `out`: quadratic-components.png, quadratic-rates.png/.csv, quadratic-maps.png,
    stability.csv (the heavy ball's map), adam-stability.csv, quadratic-phase.png."""
    components = eigen_components()
    rows = rates_by_condition(kappas, adaptive_steps=adaptive_steps)
    maps = [stability_map("momentum", steps=map_steps, resolution=resolution),
            stability_map("adam", steps=map_steps, resolution=resolution)]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)  # only now: a refused or failed computation leaves no folder
    files = [plot_components(components, out / "quadratic-components.png").name,
             plot_rates(rows, out / "quadratic-rates.png", adaptive_steps).name,
             write_rates_csv(rows, out / "quadratic-rates.csv").name,
             plot_maps(maps, out / "quadratic-maps.png").name,
             write_stability_csv(maps[0], out / "stability.csv").name,
             write_stability_csv(maps[1], out / "adam-stability.csv").name,
             plot_portrait(phase_portrait(), out / "quadratic-phase.png").name]
    summary = [["GD" if row.optimizer == "gd" else label(row.optimizer), f"{row.kappa:g}",
                format_lr(row.lr), f"{row.momentum:.4g}", f"{row.measured_rate:.6f}",
                "—" if row.theoretical_rate is None else f"{row.theoretical_rate:.6f}"]
               for row in rows if row.kappa in (kappas[0], kappas[len(kappas) // 2], kappas[-1])]
    body = ("<p>On f = ½ Σ λᵢ xᵢ² every eigen-component of the error evolves alone: gradient descent multiplies "
            "it by 1 − αλᵢ per step, the heavy ball (the momentum rule, b ← βb + g, x ← x − αb) by the roots "
            "of z² − (1 + β − αλᵢ) z + β. The slowest component sets the pace; tuned, GD converges at "
            "(κ − 1)/(κ + 1) and momentum at (√κ − 1)/(√κ + 1) — κ replaced by its square root.</p>"
            + figure(files[0], "Eigen-components of the error: GD's decay at exactly |1 − αλᵢ| (dashed); "
                               "tuned momentum's all share the modulus √β.")
            + figure(files[1], "Measured rates (markers) on the closed forms (lines); AdaGrad, RMSProp and "
                               "Adam at their best lr, measured (no closed form).")
            + table(["optimizer", "κ", "lr", "β", "measured rate", "theory"], summary)
            + figure(files[3], "Left: the heavy ball's (α, β) plane in one sweep, with the stability boundary "
                               "0 < αλ < 2(1 + β) and the critical-damping curves; right: Adam's (lr, β₁).")
            + figure(files[6], "Phase portraits below, at and above critical damping.")
            + f"<p>Data: {link(files[2])}, {link(files[4])}, {link(files[5])}.</p>")
    return Section("quadratic", "Why momentum works: the quadratic", body, tuple(files))


__all__ = ["ADAPTIVE", "COMPONENT_CURVATURES", "KAPPAS", "MAP_CURVATURES", "MAP_SURFACE", "Components", "Optimum",
           "Portrait", "RateRow", "StabilityMap", "critical_momentum", "eigen_components", "gd_optimum",
           "measured_rate", "momentum_optimum", "momentum_rate", "phase_portrait", "plot_components", "plot_maps",
           "plot_portrait", "plot_rates", "quadratic_experiment", "rates_by_condition", "stable",
           "stability_map", "write_rates_csv", "write_stability_csv"]
