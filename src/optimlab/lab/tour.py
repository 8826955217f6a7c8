"""The experiments behind `optimlab paths | train | sparse | tour`, each writing its files and a report section.

    >>> from optimlab.lab.tour import tour
    >>> index = tour("optimlab-report")          # every figure, table and CSV, and index.html linking them

Each `*_experiment` function writes into `out` and returns a `report.Section`; the commands print the files,
`tour` gathers the sections into `index.html`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from . import paths, sparse, train, why
from .defaults import STEPS  # steps shown per surface when none are given
from .report import Section, figure, link, raw, table, write_report
from .style import NOTES_OPTIMIZERS, format_lr, label
from .surfaces import Surface, lookup_surface
from .sweep import run, sweep

#: The surfaces the tour sweeps and draws besides the two presets.
TOUR_SURFACES: tuple[str, ...] = ("ellipse", "rosenbrock", "beale", "saddle", "rastrigin")

Announce = Callable[[str], None]


def _folder(out: Path | str) -> Path:
    """`out`, created if missing, once there is something to write into it."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _say(announce: Announce | None, message: str) -> None:
    if announce is not None:
        announce(message)


def paths_experiment(out: Path | str, surface: str = "ellipse", optimizers: Sequence[str] = NOTES_OPTIMIZERS,
                     lrs: Mapping[str, float] | None = None, steps: int | None = None,
                     start: Sequence[float] | None = None, sweep_size: int = 200, gif: bool = True,
                     name: str | None = None, note: str = "", title: str | None = None,
                     announce: Announce | None = None) -> Section:
    """Trajectories of `optimizers` on `surface` at the given lrs, or each at its sweep's best lr.

    Writes `paths-<name>.png` (contour panels), `.csv` (the points), `.gif` (if `gif` and 2-D) and, where lrs
    were swept, `lr-sweep-<name>.png`.
    """
    surface_ = lookup_surface(surface)
    start = paths.check_start(surface_, start)
    steps = STEPS.get(surface_.name, 100) if steps is None else steps
    name = name or surface_.name
    given = dict(lrs or {})
    swept = [optimizer for optimizer in optimizers if optimizer not in given]
    grid = np.geomspace(1e-3, 10.0, sweep_size)
    _say(announce, f"{surface_.name}: sweeping {len(grid)} lrs × {len(swept)} optimizers" if swept
         else f"{surface_.name}: running {len(given)} optimizers")
    sweeps = paths.lr_sweeps(surface_, swept, steps, grid, start)
    runs = paths.compare(surface_, optimizers, given, steps, start, sweeps)
    out = _folder(out)  # only now: a refused or failed computation leaves no folder behind
    files = [paths.plot_paths(surface_, runs, out / f"paths-{name}.png").name,
             paths.write_paths_csv(runs, out / f"paths-{name}.csv").name]
    body = [f"<p>{note or surface_.description}</p>",
            figure(files[0], f"{surface_.title}, {surface_.formula}: {steps} steps per optimizer.")]
    if gif and surface_.dim == 2:
        _say(announce, f"{surface_.name}: animating")
        files.append(paths.animate_paths(surface_, runs, out / f"paths-{name}.gif").name)
        body.append(figure(files[-1], "The same runs, racing (animated GIF)."))
    if sweeps:
        files.append(paths.plot_lr_sweep(surface_, sweeps, out / f"lr-sweep-{name}.png").name)
        body.append(figure(files[-1], "Where each lr came from: one vectorized sweep per optimizer, scored by "
                                      "the mean of f − f* along the path (lower is better)."))
    rows = [[label(optimizer), format_lr(result.hyperparameters["lr"]), "given" if optimizer in given else "sweep",
             f"{result.loss[-1]:.4g}", _steps(paths.arrival_step(surface_, result))]
            for optimizer, result in runs.items()]
    body.append(table(["optimizer", "lr", "lr from", f"f after {steps} steps", ARRIVED], rows))
    body.append(f"<p>{_arrival_note(surface_)}</p>")
    body.append(f"<p>Data: {link(files[1])}</p>")
    title = title or f"Paths: {surface_.title}" + (", lrs from sweeps" if len(given) < len(runs) else "")
    return Section(f"paths-{name}", title, "".join(body), tuple(files))


#: The arrival column of every table in the report, with the criterion it counts (`paths.arrival_step`).
ARRIVED = "arrived at step (‖x_t − x*‖ < 10⁻³)"


def _steps(step: int | None) -> str:
    return "—" if step is None else str(step)


def _arrival_note(surface: Surface) -> str:
    if surface.minimum is None:
        return f"{surface.title} has no minimum: no run arrives (—)."
    where = ", ".join(f"{value:g}" for value in surface.minimum)
    return (f"Arrived: the first step t at which x_t lies within {paths.ARRIVAL_TOLERANCE:g} of the minimizer "
            f"x* = ({where}) (Euclidean distance); — : not within the steps shown.")


def preset_experiment(out: Path | str, preset: str, gif: bool = True, announce: Announce | None = None) -> Section:
    """`paths_experiment` with a named preset of `paths.PRESETS` (e.g. DLFS's 30 steps on the ellipse)."""
    if preset not in paths.PRESETS:
        raise ValueError(f"Invalid preset: {preset!r} (expected one of {', '.join(paths.PRESETS)})")
    setting = paths.PRESETS[preset]
    return paths_experiment(out, setting.surface, list(setting.lrs), setting.lrs, setting.steps, gif=gif,
                            name=preset, note=f"Preset <code>{preset}</code>: {setting.description}.",
                            title=f"Preset {preset}: {lookup_surface(setting.surface).title}", announce=announce)


def train_experiment(out: Path | str, optimizers: Sequence[str] = NOTES_OPTIMIZERS,
                     lrs: Mapping[str, float] | None = None, epochs: int = 10, batch_size: int = 32,
                     hidden: int = 64, seed: int = 0, span: int = 20,
                     on_step: Callable[[str], None] | None = None) -> Section:
    """Train the digits MLP with each optimizer; writes `train-curves.png` and `train-metrics.csv`."""
    runs = train.train_all(optimizers, lrs, epochs, batch_size, hidden, seed, on_step)
    out = _folder(out)
    picture = train.plot_training(runs, out / "train-curves.png", span).name
    data = train.write_training_csv(runs, out / "train-metrics.csv", span).name
    rows = [[label(name), format_lr(result.lr), f"{result.test_loss[-1]:.4f}", f"{result.test_accuracy[-1]:.2%}",
             f"{float(train.smooth(result.batch_loss, span)[-1]):.4f}"] for name, result in runs.items()]
    body = (f"<p>A 64–{hidden}–10 ReLU network on scikit-learn's bundled digits (1,797 8×8 images, 80/20 split), "
            f"{epochs} epochs of minibatches of {batch_size}, seed {seed}. Every optimizer starts from the same "
            "weights and sees the same batches. Faint: the raw minibatch curves; bold: the notes' EMA, "
            f"χₖ = α pₖ + (1 − α) χₖ₋₁ with α = 2/(N + 1), N = {span} (bias-corrected, as Adam corrects m).</p>"
            + figure(picture, "Loss and accuracy per step (raw and EMA) and per epoch on the test split.")
            + table(["optimizer", "lr", "test loss", "test accuracy", f"last train loss (EMA, N = {span})"], rows)
            + f"<p>Data: {link(data)} (per step; test metrics on each epoch's last step).</p>")
    return Section("train", "Training an MLP on digits", body, (picture, data))


def sparse_experiment(out: Path | str, optimizers: Sequence[str] = NOTES_OPTIMIZERS,
                      lrs: Mapping[str, float] | None = None, samples: int = 5000, density: float = 0.01,
                      noise: float = 0.1, tolerance: float = 0.1, seed: int = 0) -> Section:
    """The notes' sparse-feature argument; writes `sparse-errors.png`, `sparse-weights.csv`, `sparse-summary.csv`."""
    problem = sparse.make_problem(samples, density, noise, seed)
    runs = sparse.race(problem, optimizers, lrs, tolerance)
    out = _folder(out)
    picture = sparse.plot_sparse(problem, runs, out / "sparse-errors.png").name
    data = sparse.write_sparse_csv(runs, out / "sparse-weights.csv").name
    summary = sparse.summary_rows(runs)
    summary_file = out / "sparse-summary.csv"
    with summary_file.open("w", encoding="utf-8") as handle:
        handle.write(",".join(summary[0]) + "\n")
        for row in summary:
            handle.write(",".join("" if value is None else str(value) for value in row.values()) + "\n")

    def steps(value: int | None) -> str:
        return "never" if value is None else str(value)

    rows = [[label(row["optimizer"]), format_lr(row["lr"]), steps(row["dense_steps"]), steps(row["sparse_steps"]),
             steps(row["all_steps"]), f"{row['final_sparse_error']:.3g}"] for row in summary]
    hits = int(np.count_nonzero(problem.features[:, sparse.SPARSE]))
    body = (f"<p>The notes (AdaGrad): with h = w₀ + w₁a₁ + w₂a₂ + …, an input a₂ that is mostly 0 gives "
            "∂E/∂w₂ = 0 on those samples, so w₂ starts learning late, when the others have arrived; it needs "
            f"larger steps. Here a₂ ≠ 0 in {hits} of {samples} samples (one per step, label noise σ = {noise}). "
            "Each optimizer runs at the lr (from a vectorized sweep of 41) after which all weights stay within "
            f"{tolerance} of the truth soonest.</p>"
            + figure(picture, "Error on the dense weights (left) and on w₂ (right), log scale.")
            + table(["optimizer", "lr", "steps: dense settle", "steps: w₂ settles", "steps: all settle",
                     "final |w₂ − w₂*|"], rows)
            + f"<p>Data: {link(data)}, {link(summary_file.name)}.</p>")
    return Section("sparse", "The sparse feature: AdaGrad's argument", body, (picture, data, summary_file.name))


def worked_example_section() -> Section:
    """The notes' hand computation (Adam on (2x − 10)², lr 0.1, 10 steps), recomputed, with their slips marked."""
    adam = run("notes", "adam", {"lr": 0.1, "eps": 0.0, "eps_root": 1e-8}, steps=10)
    rows = [[row["t"], *(f"{row[key][0]:.10g}" for key in ("g", "m", "v", "m_hat", "v_hat", "alpha_t")),
             f"{row['x'][0]:.10f}"] for row in adam.rows()]
    alpha_1, x_1 = adam.trace["alpha_t"][0, 0], adam.path[1, 0]
    gd = run("notes", "sgd", {"lr": 0.1}, steps=300)
    adam_long = run("notes", "adam", {"lr": 0.1, "eps": 0.0, "eps_root": 1e-8}, steps=300)
    gd_steps, adam_steps = (_steps(paths.arrival_step(adam.surface, result)) for result in (gd, adam_long))
    claims = [
        ["m₁ (the notes' a₁)", "−4", raw(f'<span class="right">{adam.trace["m"][0, 0]:.10g}</span>'), "right"],
        ["v₁ (the notes' b₁)", "1.6", raw(f'<span class="right">{adam.trace["v"][0, 0]:.10g}</span>'), "right"],
        ["α₁ = η √(1 − β₂) / (1 − β₁)", raw('<span class="wrong">0.1</span> (or <span class="wrong">0.0158</span>)'),
         raw(f'<span class="right">{alpha_1:.10f}</span>'),
         "the notes divide by √(1 − β₁); the paper (§2) divides by 1 − β₁"],
        ["x₁", raw('<span class="wrong">0.0499</span>'), raw(f'<span class="right">{x_1:.10f}</span>'),
         "x₁ = x₀ − α₁ m₁ / √v₁ = 0.0316 · 4 / 1.2649 = 0.1: Adam's first step is η · sign(g)"],
        ["arrived at step (|x_t − 5| < 10⁻³)", "“slower than GD, yet it arrives”",
         f"GD (lr 0.1): {gd_steps}; Adam: {adam_steps}", "both arrive; Adam's steps are capped near η"],
    ]
    body = ("<p>The notes compute Adam by hand on f(x) = (2x − 10)², ∇f = 4(2x − 10), from x₀ = 0 with η = 0.1, "
            "β₁ = 0.9, β₂ = 0.999, ε = 10⁻⁸ inside the root (their placement; outside changes only the 10th "
            "digit). Recomputed in float64 by the same rule the optimizers run "
            "(<code>optimlab trace adam --lr 0.1 --eps 0 --eps-root 1e-8</code> prints the same):</p>"
            + table(["t", "g", "m", "v", "m̂", "v̂", "α_t (efficient form)", "x_t"], rows)
            + "<p>The notes' numbers beside the recomputed ones (SPEC §6):</p>"
            + table(["quantity", "the notes", "recomputed", "why"], claims, prose=True))
    return Section("worked-example", "The notes' worked example, corrected", body)


def sweep_timing_section(configs: int = 1000, steps: int = 1000, repeats: int = 3) -> Section:
    """Time an lr sweep of `configs` × `steps` on the ellipse (best of `repeats`) for SGD and Adam."""
    lrs = np.geomspace(1e-3, 1.0, configs)
    rows = []
    for optimizer in ("sgd", "adam"):
        timings = []
        for _ in range(repeats):
            begin = time.perf_counter()
            sweep("ellipse", optimizer, {"lr": lrs}, steps=steps)
            timings.append(time.perf_counter() - begin)
        rows.append([label(optimizer), configs, steps, f"{min(timings):.3f}"])
    body = ("<p>A sweep evaluates every configuration at once: the parameters are one (configs, 2) array and "
            "lr a (configs, 1) column broadcast through the same <code>rule.step</code>. Each configuration "
            "equals its run alone, bit for bit (tests/lab/test_sweep.py). Measured on this machine now:</p>"
            + table(["optimizer", "configs", "steps", "seconds (best of 3)"], rows))
    return Section("sweep-timing", "Vectorized sweeps", body)


def tour(out: Path | str = "optimlab-report", seed: int = 0, epochs: int = 8,
         announce: Announce | None = None, on_train_step: Callable[[str], None] | None = None,
         surfaces: Iterable[str] | None = None) -> Path:
    """Every experiment with small defaults, and `index.html` gathering them; returns the index's path.

    `surfaces` are swept and drawn after the two presets (default: `TOUR_SURFACES`)."""
    out = Path(out)
    sections = [worked_example_section()]
    _say(announce, "presets")
    sections.append(preset_experiment(out, "dlfs", announce=announce))
    sections.append(preset_experiment(out, "notes", announce=announce))
    for surface in TOUR_SURFACES if surfaces is None else surfaces:
        sections.append(paths_experiment(out, surface, gif=False, announce=announce))
    _say(announce, "sweep timing")
    sections.append(sweep_timing_section())
    _say(announce, "training")
    sections.append(train_experiment(out, epochs=epochs, seed=seed, on_step=on_train_step))
    _say(announce, "sparse feature")
    sections.append(sparse_experiment(out, seed=seed))
    sections.append(why.why_section(out, seed=seed, announce=announce))
    introduction = ("The claims of the study notes (SGD zig-zags, momentum smooths the path, AdaGrad slows the "
                    "elements that moved most, RMSProp forgets, Adam starts slow but arrives), each as a figure "
                    "you can regenerate with <code>optimlab tour</code> or the single commands "
                    "<code>optimlab paths | train | sparse | quadratic | eos</code>.")
    return write_report(out, "optimlab: the lab report", introduction, sections)


__all__ = ["STEPS", "TOUR_SURFACES", "paths_experiment", "preset_experiment", "sparse_experiment",
           "sweep_timing_section", "tour", "train_experiment", "worked_example_section"]
