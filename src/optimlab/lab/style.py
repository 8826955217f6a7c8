"""One look for every lab figure: each optimizer keeps its name and colour across plots."""

from __future__ import annotations

from typing import Any

from .._extras import requires_extra
from ..rules.registry import REGISTRY

#: Display names and colours, from the optimizer registry (`optimlab.rules.registry`).
LABELS: dict[str, str] = {name: entry.label for name, entry in REGISTRY.items()}
COLORS: dict[str, str] = {name: entry.color for name, entry in REGISTRY.items()}
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
