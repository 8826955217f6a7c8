"""`optimlab paths | train | sparse | tour`: the lab's experiments, each writing figures and data to --out."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer

from .app import OUT_OPTION, app, console, error_console, fail, one_line_errors, print_table

_OPTIMIZERS_HELP = "comma-separated optimizers (sgd, momentum, nesterov, adagrad, rmsprop, adam, adamw)"
_LR_HELP = "learning rates: one number for all, or name=value pairs, e.g. sgd=0.95,adam=0.3"
_NOTES = "sgd,momentum,adagrad,rmsprop,adam"


def _optimizers(text: str) -> list[str]:
    from ..rules import lookup

    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    if not names:
        fail("Invalid optimizers: none given (e.g. --optimizers sgd,adam)")
    for name in names:
        try:
            lookup(name)
        except ValueError as error:
            fail(str(error))
    return names


def _lrs(text: str | None, optimizers: list[str]) -> dict[str, float]:
    """`0.1` (every optimizer) or `sgd=0.95,adam=0.3`; an optimizer given here is added to `optimizers`."""
    if not text:
        return {}
    try:
        if "=" not in text:
            value = float(text)
            return {name: value for name in optimizers}
        pairs = dict(item.split("=", 1) for item in text.split(","))
        lrs = {name.strip().lower(): float(value) for name, value in pairs.items()}
    except ValueError:
        fail(f"Invalid --lr: {text!r} (expected a number or name=value pairs, e.g. sgd=0.95,adam=0.3)")
    from ..rules import lookup

    for name in _optimizers(",".join(lrs)):
        try:
            lookup(name)[0].defaults(lr=lrs[name])
        except ValueError as error:
            fail(f"{error} (--lr {name}={lrs[name]})")
        if name not in optimizers:
            optimizers.append(name)
    return lrs


def _start(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(item) for item in text.split(",")]
    except ValueError:
        fail(f"Invalid --start: {text!r} (expected comma-separated numbers, e.g. -7,2)")


@contextmanager
def _progress() -> Iterator[Any]:
    """A rich progress display on stderr (stdout keeps only the list of files written); none when stderr is not
    a terminal, so that a log or an error message reads clean."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=error_console, transient=True,
                  disable=not error_console.is_terminal) as progress:
        yield progress


def _announcer(progress: Any) -> Callable[[str], None]:
    task = progress.add_task("starting", total=None)
    return lambda message: progress.update(task, description=message)


def _train_progress(progress: Any, optimizers: list[str], total_per_optimizer: int) -> Callable[[str], None]:
    tasks = {name: progress.add_task(f"training {name}", total=total_per_optimizer) for name in optimizers}
    return lambda name: progress.advance(tasks[name])


def _written(out: Path, files: tuple[str, ...]) -> None:
    for name in files:
        console.print(str(out / name), highlight=False, soft_wrap=True)


@app.command(epilog="""Examples:\n\n
  optimlab paths --preset dlfs              # DLFS fig. 6-8, 30 steps from (-7, 2)\n\n
  optimlab paths --surface rosenbrock --steps 300\n\n
  optimlab paths -s beale --lr sgd=0.01,adam=0.5 --start 1,1.5 --out figures\n\n
  optimlab paths -s saddle --optimizers sgd,momentum,adam --no-gif""")
@one_line_errors
def paths(
    surface: str = typer.Option("ellipse", "--surface", "-s",
                                help="notes, ellipse, rosenbrock, beale, saddle or rastrigin"),
    preset: str = typer.Option(None, help="a named setting: 'dlfs' (the ellipse, DLFS's lrs) or 'notes' "
                                     "(sets surface, optimizers, lrs and steps)"),
    optimizers: str = typer.Option(_NOTES, help=_OPTIMIZERS_HELP),
    lr: str = typer.Option(None, help=_LR_HELP + "; the others are swept"),
    steps: int = typer.Option(None, help="steps per optimizer (default: per surface, e.g. 30 on the ellipse)"),
    start: str = typer.Option(None, help="start point, comma-separated, inside the surface's box (default: the "
                                         "surface's own)"),
    sweep_size: int = typer.Option(200, help="learning rates per sweep (log-spaced from 1e-3 to 10)"),
    gif: bool = typer.Option(True, "--gif/--no-gif", help="also write the animated GIF (2-D surfaces)"),
    out: Path = OUT_OPTION,
) -> None:
    """Contour plot of each optimizer's trajectory (PNG, GIF, CSV), at the lr its sweep found best.

    One vectorized lr sweep per optimizer picks its lr (lowest mean f along the path) unless --lr gives it.
    """
    from ..lab.paths import PRESETS, check_start
    from ..lab.surfaces import lookup_surface
    from ..lab.tour import paths_experiment, preset_experiment

    names = _optimizers(optimizers)
    lrs = _lrs(lr, names)
    if sweep_size < 1:
        fail(f"Invalid --sweep-size: {sweep_size} (must be >= 1)")
    if preset is not None and preset not in PRESETS:
        fail(f"Invalid --preset: {preset!r} (expected one of {', '.join(PRESETS)})")
    overridden = [name for name, value in (("--start", start), ("--lr", lr), ("--steps", steps)) if value is not None]
    if preset is not None and overridden:
        fail(f"--preset {preset} sets the surface, lrs and steps itself: drop {', '.join(overridden)} "
             "(or the preset)")
    chosen = lookup_surface(surface)
    point = _start(start)
    if point is not None and len(point) != chosen.dim:
        fail(f"Invalid --start: {start!r} has {len(point)} coordinate(s); {surface} takes {chosen.dim}")
    check_start(chosen, point)  # before any file is written: the picture shows the surface's box
    if steps is not None and steps < 1:
        fail(f"Invalid --steps: {steps} (must be >= 1)")
    with _progress() as progress:
        announce = _announcer(progress)
        if preset is not None:
            section = preset_experiment(out, preset, gif=gif, announce=announce)
        else:
            section = paths_experiment(out, surface, names, lrs, steps, point, sweep_size, gif,
                                       announce=announce)
    _written(out, section.files)


@app.command(epilog="""Examples:\n\n
  optimlab train                            # the notes' five optimizers, 10 epochs\n\n
  optimlab train --optimizers sgd,adam --lr sgd=0.1,adam=0.001 --epochs 20\n\n
  optimlab train --span 50 --seed 1 --out runs/seed1""")
@one_line_errors
def train(
    optimizers: str = typer.Option(_NOTES, help=_OPTIMIZERS_HELP),
    lr: str = typer.Option(None, help=_LR_HELP + " (default: each optimizer's tuned lr)"),
    epochs: int = typer.Option(10, help="passes over the training images (80 % of 1,797)"),
    batch_size: int = typer.Option(32, help="minibatch size"),
    hidden: int = typer.Option(64, help="hidden units"),
    seed: int = typer.Option(0, help="seed for the split, the initial weights and the batch order"),
    span: int = typer.Option(20, help="EMA span N of the smoothed curves (α = 2/(N+1))"),
    out: Path = OUT_OPTION,
) -> None:
    """Train a small MLP on scikit-learn's digits with every optimizer: same seed, same init, same batches.

    Writes train-curves.png (loss and accuracy, raw and EMA-smoothed) and train-metrics.csv. Offline.
    """
    from ..lab.tour import train_experiment
    from ..lab.train import load_digits_split, steps_per_epoch

    names = _optimizers(optimizers)
    lrs = _lrs(lr, names)
    if min(epochs, batch_size, hidden, span) < 1:
        fail(f"Invalid sizes: epochs={epochs}, batch-size={batch_size}, hidden={hidden}, span={span} "
             "(each must be >= 1)")
    with _progress() as progress:
        per_optimizer = epochs * steps_per_epoch(load_digits_split(seed), batch_size)
        section = train_experiment(out, names, lrs, epochs, batch_size, hidden, seed, span,
                                   _train_progress(progress, names, per_optimizer))
    _written(out, section.files)


@app.command(epilog="""Examples:\n\n
  optimlab sparse                           # a₂ non-zero in 1 % of 5,000 samples\n\n
  optimlab sparse --density 0.005 --samples 10000 --tolerance 0.05\n\n
  optimlab sparse --optimizers sgd,adagrad --lr sgd=0.1,adagrad=0.8""")
@one_line_errors
def sparse(
    optimizers: str = typer.Option(_NOTES, help=_OPTIMIZERS_HELP),
    lr: str = typer.Option(None, help=_LR_HELP + "; the others are swept"),
    samples: int = typer.Option(5000, help="samples, one per step"),
    density: float = typer.Option(0.01, help="fraction of samples where a₂ is non-zero"),
    noise: float = typer.Option(0.1, help="standard deviation of the label noise"),
    tolerance: float = typer.Option(0.1, help="|w − w*| counted as arrived"),
    seed: int = typer.Option(0, help="seed of the data"),
    out: Path = OUT_OPTION,
) -> None:
    """The notes' AdaGrad argument: a weight whose input is almost always 0 learns late — unless its rate is its own.

    Plots each optimizer's error on w₂ against the dense weights over time and tabulates the steps to reach
    the tolerance (sparse-errors.png, sparse-weights.csv, sparse-summary.csv).
    """
    from ..lab.tour import sparse_experiment

    names = _optimizers(optimizers)
    lrs = _lrs(lr, names)
    if not tolerance > 0:
        fail(f"Invalid --tolerance: {tolerance} (must be > 0)")
    with _progress() as progress:
        _announcer(progress)(f"racing {len(names)} optimizers over {samples} samples")
        section = sparse_experiment(out, names, lrs, samples, density, noise, tolerance, seed)
    _written(out, section.files)
    _print_summary(out / "sparse-summary.csv", tolerance)


def _print_summary(path: Path, tolerance: float) -> None:
    import csv

    with path.open(encoding="utf-8") as handle:
        rows = [[row["optimizer"], f"{float(row['lr']):.3g}", row["dense_steps"] or "never",
                 row["sparse_steps"] or "never", row["all_steps"] or "never", f"{float(row['final_sparse_error']):.3g}"]
                for row in csv.DictReader(handle)]
    print_table(f"steps until the error stays below {tolerance:g}",
                ["optimizer", "lr", "dense weights", "w₂ (sparse)", "all", "final |w₂ − w₂*|"], rows)


@app.command(epilog="""Examples:\n\n
  optimlab tour                             # writes optimlab-report/index.html\n\n
  optimlab tour --out /tmp/report --epochs 4""")
@one_line_errors
def tour(
    out: Path = OUT_OPTION,
    epochs: int = typer.Option(8, help="training epochs (the tour's small default)"),
    seed: int = typer.Option(0, help="seed of the training run and the sparse data"),
) -> None:
    """Every experiment with small defaults, gathered in one HTML report; prints its path.

    The notes' worked example (Adam on (2x − 10)², corrected), trajectories on six surfaces with their lr
    sweeps, the sweep timing, the digits MLP and the sparse feature.
    """
    from ..lab.style import NOTES_OPTIMIZERS
    from ..lab.tour import tour as run_tour
    from ..lab.train import load_digits_split, steps_per_epoch

    if epochs < 1:
        fail(f"Invalid --epochs: {epochs} (must be >= 1)")
    with _progress() as progress:
        announce = _announcer(progress)
        on_step = _train_progress(progress, list(NOTES_OPTIMIZERS),
                                  epochs * steps_per_epoch(load_digits_split(seed), 32))
        index = run_tour(out, seed=seed, epochs=epochs, announce=announce, on_train_step=on_step)
    console.print(str(index), highlight=False, soft_wrap=True)
