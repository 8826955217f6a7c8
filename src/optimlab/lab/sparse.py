"""The notes' argument for AdaGrad, as an experiment: a feature that is almost always 0.

A linear model h = w₀ + w₁a₁ + w₂a₂ + w₃a₃ + w₄a₄ learns from one noisy sample per step (squared error).
Feature a₂ is non-zero in about 1 % of the samples, so ∂E/∂w₂ = (h − y) a₂ is 0 on all the others: "w₂ rarely
moves". Each optimizer runs at the learning rate (from a vectorized sweep, `lab.sweep.descend`) after which
*all* weights settle within the tolerance soonest:

    >>> from optimlab.lab.sparse import make_problem, race
    >>> results = race(make_problem(), ["sgd", "adagrad"])
    >>> results["adagrad"].steps_to_tolerance("all") < results["sgd"].steps_to_tolerance("all")
    True

With one global lr, SGD is stuck between two needs: small steps to average out the noise on the dense weights,
large ones for w₂, which gets a gradient once in a hundred steps. AdaGrad divides each element's step by
√(Σ g²) of *that element*: the dense weights, which moved most, are slowed, while w₂'s sum stays small and its
rate large — "개별 맞춤으로" (individually tailored), SPEC §3.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .style import NOTES_OPTIMIZERS, color, format_lr, label, new_figure
from .sweep import descend

#: w₀ (bias), w₁, w₂ (the sparse feature's weight), w₃, w₄.
TRUE_WEIGHTS = (0.5, 2.0, -3.0, 1.0, -1.5)
SPARSE = 2


@dataclass(frozen=True)
class SparseProblem:
    """Samples (rows of [1, a₁, a₂, a₃, a₄]) and targets y = w* · a + noise; sample t − 1 is used at step t."""

    features: np.ndarray
    targets: np.ndarray
    true_weights: np.ndarray
    density: float

    @property
    def steps(self) -> int:
        return len(self.targets)

    def gradient(self, t: int, weights: np.ndarray) -> np.ndarray:
        """∂E/∂w for E = ½ (w · a_t − y_t)², for every row of `weights` (configs × 5)."""
        sample = self.features[t - 1]
        residual = weights @ sample - self.targets[t - 1]
        return residual[:, None] * sample[None, :]


def make_problem(samples: int = 5000, density: float = 0.01, noise: float = 0.1, seed: int = 0) -> SparseProblem:
    """`samples` draws: a₁, a₃, a₄ ~ N(0, 1); a₂ ~ N(0, 1) with probability `density`, else exactly 0;
    y = w* · a + N(0, `noise`²)."""
    if samples < 1 or not 0.0 < density <= 1.0 or not noise >= 0.0:
        raise ValueError(f"Invalid sparse problem: samples={samples} (must be >= 1), density={density} "
                         f"(must be in (0, 1]), noise={noise} (must be >= 0)")
    rng = np.random.default_rng(seed)
    features = np.ones((samples, len(TRUE_WEIGHTS)))
    features[:, 1:] = rng.normal(size=(samples, len(TRUE_WEIGHTS) - 1))
    features[:, SPARSE] *= rng.random(samples) < density
    true_weights = np.array(TRUE_WEIGHTS)
    targets = features @ true_weights + noise * rng.normal(size=samples)
    return SparseProblem(features, targets, true_weights, density)


@dataclass(frozen=True)
class SparseRun:
    """One optimizer at one lr: the weights over time and their errors (dense: the largest over w₀, w₁, w₃, w₄)."""

    optimizer: str
    lr: float
    weights: np.ndarray
    dense_error: np.ndarray
    sparse_error: np.ndarray
    tolerance: float

    def steps_to_tolerance(self, which: str) -> int | None:
        """First step from which the `"dense"`, `"sparse"` or `"all"` errors stay below tolerance (None: never)."""
        errors = {"dense": self.dense_error, "sparse": self.sparse_error,
                  "all": np.maximum(self.dense_error, self.sparse_error)}
        return _settled(errors[which], self.tolerance)


def _settled(error: np.ndarray, tolerance: float) -> int | None:
    """First index t such that error[t:] < tolerance throughout, or None."""
    above = np.nonzero(~(error < tolerance))[0]
    if len(above) == 0:
        return 0
    last = int(above[-1])
    return None if last == len(error) - 1 else last + 1


def _errors(problem: SparseProblem, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    error = np.abs(weights - problem.true_weights)
    dense = np.delete(error, SPARSE, axis=-1).max(axis=-1)
    return dense, error[..., SPARSE]


def race(problem: SparseProblem, optimizers: Iterable[str] = NOTES_OPTIMIZERS,
         lrs: Mapping[str, float] | None = None, tolerance: float = 0.1,
         lr_grid: np.ndarray | None = None) -> dict[str, SparseRun]:
    """Each optimizer from w = 0 at `lrs[name]`, or else at the lr of `lr_grid` (default: 41 lrs from 1e−3 to 10,
    log-spaced) after which all weights stay within `tolerance` soonest (ties: the lowest final error)."""
    grid = np.geomspace(1e-3, 10.0, 41) if lr_grid is None else np.asarray(lr_grid, dtype=np.float64)
    start = np.zeros(len(problem.true_weights))
    results = {}
    for name in optimizers:
        candidates = np.array([lrs[name]]) if lrs and name in lrs else grid
        batch = descend(name, {"lr": candidates}, start, problem.gradient, problem.steps)
        with np.errstate(invalid="ignore"):
            dense, sparse = _errors(problem, batch.path)
            worst = np.fmax(dense, sparse)
        settled = [_settled(worst[:, index], tolerance) for index in range(len(candidates))]
        final = np.where(np.isfinite(worst[-1]), worst[-1], np.inf)
        best = min(range(len(candidates)), key=lambda index: (settled[index] is None, settled[index] or 0,
                                                               final[index]))
        results[name] = SparseRun(name, float(candidates[best]), batch.path[:, best], dense[:, best],
                                  sparse[:, best], tolerance)
    return results


def plot_sparse(problem: SparseProblem, runs: Mapping[str, SparseRun], path: Path | str) -> Path:
    """Error on the dense weights (dashed) and on w₂ (solid) over the steps, log scale; a₂'s rare hits marked."""
    path = Path(path)
    figure = new_figure(12, 4.6)
    dense_axes, sparse_axes = figure.subplots(1, 2, sharey=True)
    steps = np.arange(problem.steps + 1)
    for name, result in runs.items():
        tag = f"{label(name)} (lr {format_lr(result.lr)})"
        dense_axes.plot(steps, result.dense_error, color=color(name), linewidth=0.8, alpha=0.8, label=tag)
        sparse_axes.plot(steps, result.sparse_error, color=color(name), linewidth=1.4, label=tag)
    hits = np.nonzero(problem.features[:, SPARSE])[0] + 1
    sparse_axes.plot(hits, np.full(len(hits), 0.02), "|", color="black", markersize=8,
                     label=f"steps where a₂ ≠ 0 ({len(hits)})", transform=sparse_axes.get_xaxis_transform())
    tolerance = next(iter(runs.values())).tolerance if runs else 0.1
    for axes in (dense_axes, sparse_axes):
        axes.axhline(tolerance, color="black", linestyle=":", linewidth=1)
        axes.set(yscale="log", xlabel="step (one sample each)")
        axes.grid(True, alpha=0.3)
    dense_axes.set(ylabel="|w − w*| (log scale)", title="dense weights w₀, w₁, w₃, w₄ (largest error)")
    sparse_axes.set(title=f"w₂, whose input a₂ is non-zero in {problem.density:.0%} of samples")
    sparse_axes.legend(fontsize=8, loc="lower left")
    figure.suptitle("The notes' sparse-feature argument: each optimizer at the lr that settles all weights "
                    f"soonest; dotted line: tolerance {tolerance:g}", fontsize=11)
    figure.savefig(path)
    return path


def summary_rows(runs: Mapping[str, SparseRun]) -> list[dict[str, object]]:
    """Per optimizer: lr, steps for the dense weights, for w₂ and for all to settle within tolerance, final errors."""
    return [{"optimizer": name, "lr": result.lr, "dense_steps": result.steps_to_tolerance("dense"),
             "sparse_steps": result.steps_to_tolerance("sparse"), "all_steps": result.steps_to_tolerance("all"),
             "final_dense_error": float(result.dense_error[-1]), "final_sparse_error": float(result.sparse_error[-1])}
            for name, result in runs.items()]


def write_sparse_csv(runs: Mapping[str, SparseRun], path: Path | str) -> Path:
    """The weights and both errors at every step, one row per optimizer and step."""
    path = Path(path)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["optimizer", "lr", "step", *(f"w{index}" for index in range(len(TRUE_WEIGHTS))),
                         "dense_error", "sparse_error"])
        for name, result in runs.items():
            for step, weights in enumerate(result.weights):
                writer.writerow([name, repr(result.lr), step, *(f"{weight:.9g}" for weight in weights),
                                 f"{result.dense_error[step]:.6g}", f"{result.sparse_error[step]:.6g}"])
    return path


__all__ = ["SPARSE", "TRUE_WEIGHTS", "SparseProblem", "SparseRun", "make_problem", "plot_sparse", "race",
           "summary_rows", "write_sparse_csv"]
