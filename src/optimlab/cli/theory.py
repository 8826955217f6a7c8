"""`optimlab quadratic | eos`: the theory behind the lab's pictures, each writing figures and CSV files to --out."""

from __future__ import annotations

from pathlib import Path

import typer

from .app import OUT_OPTION, app, console, error_console, fail, one_line_errors


def _numbers(option: str, text: str, allow_empty: bool = False) -> list[float]:
    """Comma-separated positive finite numbers, e.g. `0.2,0.4`; one line naming the option otherwise."""
    import math

    items = [item.strip() for item in text.split(",") if item.strip()]
    try:
        values = [float(item) for item in items]
    except ValueError:
        fail(f"Invalid {option}: {text!r} (expected comma-separated numbers, e.g. 0.2,0.4)")
    if (not values and not allow_empty) or not all(math.isfinite(value) and value > 0 for value in values):
        fail(f"Invalid {option}: {text!r} (expected comma-separated finite numbers > 0)")
    return values


def _written(out: Path, files: tuple[str, ...]) -> None:
    for name in files:
        console.print(str(out / name), highlight=False, soft_wrap=True)


@app.command(epilog="""Examples:\n\n
  optimlab quadratic                        # every figure, 200 × 200 maps, κ from 1 to 10⁴\n\n
  optimlab quadratic --resolution 250 --map-steps 150 --out figures\n\n
  optimlab quadratic --kappas 1,10,100,1000,10000,100000""")
@one_line_errors
def quadratic(
    kappas: str = typer.Option("1,3,10,30,100,300,1000,3000,10000",
                               help="condition numbers κ of the rate figure (comma-separated, each >= 1)"),
    resolution: int = typer.Option(200, help="lrs and momentums per axis of the (α, β) and Adam maps"),
    map_steps: int = typer.Option(100, help="steps per configuration of the maps"),
    adaptive_steps: int = typer.Option(1000, help="steps of AdaGrad, RMSProp and Adam in the rate figure"),
    out: Path = OUT_OPTION,
) -> None:
    """Why momentum works, on f = ½ Σ λᵢ xᵢ²: measured rates checked against the closed forms.

    Writes quadratic-components.png (the error's eigen-components over time, GD and heavy ball),
    quadratic-rates.png/.csv (rate against κ: GD vs (κ−1)/(κ+1), momentum vs (√κ−1)/(√κ+1), AdaGrad,
    RMSProp and Adam measured), quadratic-maps.png with stability.csv and adam-stability.csv (the (α, β)
    plane in one sweep, with the boundary 0 < αλ < 2(1 + β)) and quadratic-phase.png (phase portraits).
    """
    from ..lab.quadratic import quadratic_experiment

    values = _numbers("--kappas", kappas)
    if not all(value >= 1 for value in values):
        fail(f"Invalid --kappas: {kappas!r} (condition numbers must be >= 1)")
    for option, value, least in (("--resolution", resolution, 2), ("--map-steps", map_steps, 2),
                                 ("--adaptive-steps", adaptive_steps, 1)):
        if value < least:
            fail(f"Invalid {option}: {value} (must be >= {least})")
    with error_console.status("sweeping the quadratic"):
        section = quadratic_experiment(out, values, resolution, map_steps, adaptive_steps)
    _written(out, section.files)


@app.command(epilog="""Examples:\n\n
  optimlab eos                              # GD at η = 0.2, 0.4 and Adam at 0.01, 0.03, 300 steps\n\n
  optimlab eos --lrs 0.1,0.2,0.4 --steps 1000 --out figures\n\n
  optimlab eos --adam-lrs '' --samples 500  # GD only, on 500 images""")
@one_line_errors
def eos(
    lrs: str = typer.Option("0.2,0.4", help="full-batch GD step sizes η (comma-separated)"),
    adam_lrs: str = typer.Option("0.01,0.03", help="Adam learning rates (comma-separated; '' for none)"),
    steps: int = typer.Option(300, help="full-batch steps per run"),
    every: int = typer.Option(10, help="measure the sharpness every this many steps"),
    hidden: int = typer.Option(32, help="hidden units of the digits MLP"),
    samples: int = typer.Option(None, help="training images used (default: all 1,437)"),
    seed: int = typer.Option(0, help="seed of the split and the initial weights"),
    out: Path = OUT_OPTION,
) -> None:
    """The edge of stability: full-batch GD on the digits MLP sharpens until the sharpness reaches 2/η.

    The sharpness (top Hessian eigenvalue) is power iteration on exact Hessian-vector products; Adam's
    preconditioned sharpness is drawn against (2 + 2β₁)/((1 − β₁)η). Writes eos.png, eos.csv
    (lr,step,loss,sharpness) and eos-adam.csv.
    """
    from ..lab.eos import eos_experiment

    gd_lrs = _numbers("--lrs", lrs, allow_empty=True)
    adam = _numbers("--adam-lrs", adam_lrs, allow_empty=True)
    if not gd_lrs:
        fail(f"Invalid --lrs: {lrs!r} (give at least one GD step size, e.g. 0.2,0.4)")
    for option, value in (("--steps", steps), ("--every", every), ("--hidden", hidden)):
        if value < 1:
            fail(f"Invalid {option}: {value} (must be >= 1)")
    if every > steps:
        fail(f"Invalid --every: {every} (must be <= --steps, {steps})")
    if samples is not None and samples < 10:
        fail(f"Invalid --samples: {samples} (must be >= 10)")
    with error_console.status(f"training {len(gd_lrs) + len(adam)} runs, measuring the sharpness"):
        section = eos_experiment(out, gd_lrs, adam, steps, every, hidden, samples, seed)
    _written(out, section.files)
