"""Effective learning rates, weight by weight, on the sparse-feature experiment (`lab.sparse`).

The adaptive rules all step by a per-element rate times a gradient-like quantity:

    AdaGrad   θ ← θ − η/(√h + ε) · g        h = Σ g²  (every square since the start)
    RMSProp   θ ← θ − η/(√s + ε) · g        s = ρ s + (1 − ρ) g²  (an EMA: old squares are forgotten)
    Adam      θ ← θ − η/(√v̂ + ε) · m̂       v̂ = the bias-corrected EMA of g², m̂ that of g

The notes' claim — AdaGrad "lowers the rate of the elements that moved most" — is then a statement about
η/(√h + ε) per weight: the dense weights' sums grow every step and their rates fall like 1/√t, while w₂,
whose input is almost always 0, keeps its rate between its rare hits (RMSProp's and Adam's even climb back,
as their averages forget). These are the rules' own trace quantities
(`Rule.trace`), recorded by the lab's `descend` on the same samples `lab.sparse.race` uses.

    >>> from optimlab.lab.effective import effective_rates
    >>> from optimlab.lab.sparse import make_problem
    >>> rates = effective_rates(make_problem(samples=500), ["adagrad"], lrs={"adagrad": 0.5})["adagrad"]
    >>> rates.rate.shape                                  # (steps, weights)
    (500, 5)
    >>> rates.rate[-1].round(3)                           # here w₂ (sparse) ends with four times their rate
    array([0.074, 0.061, 0.25 , 0.051, 0.071])
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .report import Section, figure, link, table
from .sparse import SPARSE, TRUE_WEIGHTS, SparseProblem, make_problem, race
from .style import color, format_lr, label, new_figure
from .sweep import descend

ADAPTIVE = ("adagrad", "rmsprop", "adam")
FORMULAS = {"adagrad": "η/(√h + ε)", "rmsprop": "η/(√s + ε)", "adam": "η/(√v̂ + ε)"}


@dataclass(frozen=True)
class EffectiveRates:
    """One optimizer at one lr: `rate[t − 1, i]` is weight i's effective learning rate at step t."""

    optimizer: str
    lr: float
    rate: np.ndarray


def effective_rates(problem: SparseProblem, optimizers: Sequence[str] = ADAPTIVE,
                    lrs: Mapping[str, float] | None = None) -> dict[str, EffectiveRates]:
    """Each optimizer from w = 0 at `lrs[name]`, or at the lr `sparse.race` picks for it, with its trace."""
    unknown = [name for name in optimizers if name not in FORMULAS]
    if unknown:
        raise ValueError(f"Invalid optimizers: {', '.join(unknown)} (effective rates are defined for "
                         f"{', '.join(FORMULAS)})")
    given = dict(lrs or {})
    missing = [name for name in optimizers if name not in given]
    if missing:
        given.update({name: result.lr for name, result in race(problem, missing).items()})
    results = {}
    for name in optimizers:
        batch = descend(name, {"lr": given[name]}, np.zeros(len(problem.true_weights)), problem.gradient,
                        problem.steps, record_trace=True)
        hyper = batch.hyperparameters
        trace = {key: values[:, 0] for key, values in batch.trace.items()}
        if name == "adagrad":
            rate = trace["rate"]
        else:
            squares = trace["s"] if name == "rmsprop" else trace["v_hat"]
            rate = hyper["lr"] / (np.sqrt(squares + hyper["eps_root"]) + hyper["eps"])
        results[name] = EffectiveRates(name, float(given[name]), rate)
    return results


def plot_effective_rates(problem: SparseProblem, results: Mapping[str, EffectiveRates], path: Path | str) -> Path:
    """One panel per optimizer: each weight's effective rate over the steps (log), w₂ bold; a₂'s hits marked."""
    path = Path(path)
    figure = new_figure(5 * len(results) + 1, 4.8)
    panels = np.atleast_1d(figure.subplots(1, len(results)))
    steps = np.arange(1, problem.steps + 1)
    hits = np.nonzero(problem.features[:, SPARSE])[0] + 1
    greys = ["#555555", "#7f7f7f", None, "#a0a0a0", "#c0c0c0"]
    for axes, (name, result) in zip(panels, results.items(), strict=True):
        for index in range(len(TRUE_WEIGHTS)):
            sparse = index == SPARSE
            axes.plot(steps, result.rate[:, index], color=color(name) if sparse else greys[index],
                      linewidth=2.2 if sparse else 1.0,
                      label=f"w{index}" + (" (sparse input a₂)" if sparse else " (dense)" if index else " (bias)"))
        axes.axhline(result.lr, color="black", linestyle=":", linewidth=1, label="η (the lr itself)")
        axes.plot(hits, np.full(len(hits), 0.02), "|", color="black", markersize=8,
                  label=f"steps where a₂ ≠ 0 ({len(hits)})", transform=axes.get_xaxis_transform())
        # before w₂'s first non-zero gradient its rate is η/ε (~10⁸ η): keep the axis on the readable part
        settled = result.rate[hits[0]:] if len(hits) else result.rate
        finite = settled[np.isfinite(settled)]
        axes.set(yscale="log", ylim=(finite.min() / 2, finite.max() * 4), xlabel="step (one sample each)",
                 title=f"{label(name)} (η = {format_lr(result.lr)}): {FORMULAS[name]}")
        axes.grid(True, alpha=0.3)
    panels[0].set(ylabel="effective learning rate (log)")
    panels[-1].legend(fontsize=8, loc="upper right")
    figure.suptitle("Effective learning rates on the sparse-feature problem: w₂, whose input is almost always 0, "
                    "keeps its rate between its rare gradients; the dense weights' rates move every step",
                    fontsize=11)
    figure.savefig(path)
    return path


def write_effective_csv(results: Mapping[str, EffectiveRates], path: Path | str) -> Path:
    """effective-lr.csv: optimizer,lr,step,w0..w4 (each weight's effective rate at that step)."""
    path = Path(path)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["optimizer", "lr", "step", *(f"w{index}" for index in range(len(TRUE_WEIGHTS)))])
        for name, result in results.items():
            for step, rates in enumerate(result.rate, start=1):
                writer.writerow([name, repr(result.lr), step, *(f"{rate:.6g}" for rate in rates)])
    return path




def effective_experiment(out: Path | str, samples: int = 5000, density: float = 0.01, noise: float = 0.1,
                         seed: int = 0) -> Section:
    """The adaptive rules' effective rates on `sparse.make_problem`: effective-lr.png and effective-lr.csv."""
    problem = make_problem(samples, density, noise, seed)
    results = effective_rates(problem)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)  # only now: a refused or failed computation leaves no folder
    files = (plot_effective_rates(problem, results, out / "effective-lr.png").name,
             write_effective_csv(results, out / "effective-lr.csv").name)
    rows = [[label(name), format_lr(result.lr), f"{np.median(np.delete(result.rate[-1], SPARSE)):.3g}",
             f"{result.rate[-1, SPARSE]:.3g}"] for name, result in results.items()]
    body = ("<p>AdaGrad, RMSProp and Adam each divide η by the root of their own sum or average of g², weight by "
            "weight. The dense weights get a gradient every step: AdaGrad's sums grow and their rates fall like "
            "1/√t; RMSProp's and Adam's averages follow the gradients down as the weights arrive, so their rates "
            "climb back. w₂ gets a gradient only when a₂ ≠ 0: AdaGrad's rate for it drops only at those hits and "
            "stays put between them (how low it ends depends on how large the hits were), while RMSProp's and "
            "Adam's averages forget each hit and its rate climbs between hits — the notes' “RMSProp forgets”, "
            "weight by weight.</p>"
            + figure(files[0], "Effective learning rate per weight over the steps, at the lr the sparse race "
                               "picked (before w₂'s first gradient its rate is η/ε, off the top).")
            + table(["optimizer", "lr", "final rate, dense weights (median)", "final rate, w₂"], rows)
            + f"<p>Data: {link(files[1])}.</p>")
    return Section("effective-lr", "Effective learning rates, weight by weight", body, files)


__all__ = ["ADAPTIVE", "FORMULAS", "EffectiveRates", "effective_experiment", "effective_rates",
           "plot_effective_rates", "write_effective_csv"]
