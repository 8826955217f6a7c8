"""`optimlab trace`: the notes' hand computation, step by step, for any optimizer and function."""

from __future__ import annotations

import csv
import io
import json
from enum import Enum
from typing import Any

import typer
from rich.text import Text

from ..rules.registry import REGISTRY, trace_labels
from .app import app, error_console, fail, one_line_errors, print_table

# Hyperparameter options: CLI name -> (rule hyperparameter, help). Each is passed only when given.
_OPTION_HELP = {
    "momentum": "momentum γ (Momentum/Nesterov, RMSProp)",
    "dampening": "dampening of the momentum buffer",
    "nesterov": "Nesterov momentum",
    "beta1": "β1, decay of the first moment m (Adam)",
    "beta2": "β2, decay of the second moment v (Adam)",
    "alpha": "ρ, decay of RMSProp's square average (PyTorch's alpha)",
    "eps": "ε outside the root: sqrt(x + eps_root) + eps",
    "eps_root": "ε inside the root: sqrt(x + eps_root) + eps (the notes' placement)",
    "weight_decay": "weight decay λ (L2; decoupled for AdamW)",
    "lr_decay": "AdaGrad's learning-rate decay",
    "initial_accumulator_value": "AdaGrad's initial h",
    "centered": "centered RMSProp",
    "amsgrad": "AMSGrad",
    "maximize": "maximize instead of minimize",
}


class Format(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"


@app.command(epilog="""Examples:\n\n
  optimlab trace adam --function notes --lr 0.1 --steps 10\n\n
  optimlab trace adam --lr 0.1 --eps 0 --eps-root 1e-8          # ε inside the root, as the notes write it\n\n
  optimlab trace momentum --lr 0.01 --momentum 0.9 --steps 5 --format csv\n\n
  optimlab trace rmsprop --function "x**2/20 + y**2" --start -7,2 --lr 0.1 --format json""")
@one_line_errors
def trace(
    optimizer: str = typer.Argument(..., help=f"{', '.join(list(REGISTRY)[:-1])} or {list(REGISTRY)[-1]}"),
    function: str = typer.Option("notes", "--function", "-f",
                                 help="'notes' for f(x) = (2x - 10)^2, a lab surface (ellipse, rosenbrock, beale, "
                                      "saddle, rastrigin) or a Python expression of x and y"),
    start: str = typer.Option(None, help="start point, comma-separated (default: the surface's, 0 for an "
                                         "expression)"),
    lr: float = typer.Option(0.1, help="learning rate η"),
    steps: int = typer.Option(10, help="number of steps"),
    output_format: Format = typer.Option(Format.table, "--format", help="table, csv or json"),
    momentum: float = typer.Option(None, help=_OPTION_HELP["momentum"]),
    dampening: float = typer.Option(None, help=_OPTION_HELP["dampening"]),
    nesterov: bool = typer.Option(None, "--nesterov/--no-nesterov", help=_OPTION_HELP["nesterov"], show_default=False),
    beta1: float = typer.Option(None, help=_OPTION_HELP["beta1"]),
    beta2: float = typer.Option(None, help=_OPTION_HELP["beta2"]),
    alpha: float = typer.Option(None, help=_OPTION_HELP["alpha"]),
    eps: float = typer.Option(None, help=_OPTION_HELP["eps"]),
    eps_root: float = typer.Option(None, help=_OPTION_HELP["eps_root"]),
    weight_decay: float = typer.Option(None, help=_OPTION_HELP["weight_decay"]),
    lr_decay: float = typer.Option(None, help=_OPTION_HELP["lr_decay"]),
    initial_accumulator_value: float = typer.Option(None, help=_OPTION_HELP["initial_accumulator_value"]),
    centered: bool = typer.Option(None, "--centered/--no-centered", help=_OPTION_HELP["centered"], show_default=False),
    amsgrad: bool = typer.Option(None, "--amsgrad/--no-amsgrad", help=_OPTION_HELP["amsgrad"], show_default=False),
    maximize: bool = typer.Option(None, "--maximize/--no-maximize", help=_OPTION_HELP["maximize"], show_default=False),
) -> None:
    """Print every intermediate quantity of each step, as the notes compute it by hand.

    For Adam: g, m, v, m̂, v̂, the efficient form's α_t, the update and x; for Momentum the buffer b and the
    notes' V_t = η b_t; for AdaGrad h; for RMSProp s.

    A run that diverges is cut before the step at which a value became NaN or infinite, and says so (as the
    playground does): "diverged at step N: ... became non-finite; shown up to step N − 1".
    """
    from ..rules import lookup
    from ..tracing import function as lookup_function
    from ..tracing import trace_run

    rule, _ = lookup(optimizer)
    given = {name: value for name, value in locals().items() if name in _OPTION_HELP and value is not None}
    hyperparameters = _hyperparameters(rule.name, rule.hyperparameters, given)
    target = lookup_function(function)
    point = list(target.start) if start is None else _start(start)
    result = trace_run(optimizer, target, point, steps, lr=lr, **hyperparameters)
    message = None if result.divergence is None else result.divergence.message
    if output_format is Format.json:
        typer.echo(json.dumps({"optimizer": optimizer.lower(), "function": target.formula,
                               "start": _plain_start(point), "hyperparameters": {"lr": lr, **hyperparameters},
                               "diverged": message is not None, "message": message, "steps": result.rows},
                              indent=2))
    elif output_format is Format.csv:
        typer.echo(_csv(result.rows), nl=False)
    else:
        _table(optimizer, target.formula, point, lr, hyperparameters, result.rows)
    if message is not None:
        error_console.print(Text.assemble(("warning:", "bold yellow"), " ", message), highlight=False,
                            soft_wrap=True)


def _hyperparameters(rule_name: str, accepted: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """Map CLI options onto the rule's hyperparameters; an option the rule does not take is an error."""
    hyperparameters: dict[str, Any] = {}
    betas = list(accepted.get("betas", (None, None)))
    for name, value in given.items():
        if name in ("beta1", "beta2") and "betas" in accepted:
            betas[0 if name == "beta1" else 1] = value
            hyperparameters["betas"] = tuple(betas)
        elif name in accepted:
            hyperparameters[name] = value
        else:
            fail(f"--{name.replace('_', '-')} does not apply to {rule_name} "
                 f"(it takes: {', '.join(sorted(accepted))})")
    return hyperparameters


def _start(text: str) -> list[float]:
    try:
        return [float(item) for item in text.split(",")]
    except ValueError:
        raise ValueError(f"Invalid start: {text!r} (expected comma-separated numbers, e.g. -7,2)") from None


def _plain_start(point: list[float]) -> float | list[float]:
    return point[0] if len(point) == 1 else point


def _format(value: Any) -> str:
    if isinstance(value, list):
        return "(" + ", ".join(_format(item) for item in value) + ")"
    if isinstance(value, float):
        return f"{value:.10g}"
    return str(value)


def _csv(rows: list[dict[str, Any]]) -> str:
    """One column per quantity (per quantity and variable for 2-D functions: g_x, g_y, ...)."""
    flat = []
    for row in rows:
        record: dict[str, Any] = {}
        for key, value in row.items():
            if isinstance(value, list):
                record.update({f"{key}_{index}": item for index, item in enumerate(value)})
            else:
                record[key] = value
        flat.append(record)
    if not flat:
        return ""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(flat[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows({key: repr(value) if isinstance(value, float) else value for key, value in record.items()}
                     for record in flat)
    return buffer.getvalue()


_HEADERS = trace_labels()


def _table(optimizer: str, formula: str, start: list[float], lr: float, hyperparameters: dict[str, Any],
           rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    settings = ", ".join(f"{key}={value}" for key, value in {"lr": lr, **hyperparameters}.items())
    equation = formula if "=" in formula else f"f = {formula}"
    print_table(f"{optimizer} on {equation} from x₀ = {_format(_plain_start(start))} ({settings})",
                [_HEADERS.get(key, key) for key in rows[0]],
                [[_format(value) for value in row.values()] for row in rows])
