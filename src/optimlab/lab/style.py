"""One look for every lab figure: each optimizer keeps its name and colour across plots."""

from __future__ import annotations

from typing import Any

from .._extras import requires_extra

LABELS: dict[str, str] = {"sgd": "SGD", "momentum": "Momentum", "nesterov": "Nesterov", "adagrad": "AdaGrad",
                          "rmsprop": "RMSProp", "adam": "Adam", "adamw": "AdamW"}
COLORS: dict[str, str] = {"sgd": "#1f77b4", "momentum": "#ff7f0e", "nesterov": "#8c564b", "adagrad": "#2ca02c",
                          "rmsprop": "#9467bd", "adam": "#d62728", "adamw": "#e377c2"}
#: The family the notes walk through, in their order.
NOTES_OPTIMIZERS: tuple[str, ...] = ("sgd", "momentum", "adagrad", "rmsprop", "adam")


def label(optimizer: str) -> str:
    """The optimizer's display name: "AdaGrad" for "adagrad"."""
    return LABELS.get(optimizer, optimizer)


def color(optimizer: str) -> str:
    """The optimizer's colour in every figure."""
    return COLORS.get(optimizer, "#333333")


def new_figure(width: float, height: float) -> Any:
    """A matplotlib `Figure` on the Agg canvas: no pyplot global state, safe in threads and servers."""
    with requires_extra("the lab's figures"):
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def format_lr(lr: float) -> str:
    """A learning rate in few digits: 0.95, 0.0032, 1.5e-05."""
    return f"{lr:.2g}" if 1e-3 <= lr < 1e3 else f"{lr:.1e}"
