"""One entry per optimizer: everything a surface needs to offer it, in one place.

Every surface reads this table instead of keeping its own list: `optimlab.numpy` builds its classes from it,
`optimlab.torch.create` finds the drop-in class by `torch_class`, `optimlab trace` takes its names and column
headers, the lab its labels and colours, and the playground API serves labels, colours and trace headers to
the page (`/api/optimizers`), so no JavaScript copies them. Adding an optimizer is its rule file, its entry
here, its torch class (the drop-in signature) and its tests (see docs/adding-an-optimizer.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from . import adagrad, adam, adamw_schedulefree, lamb, lion, momentum, nadam, rmsprop, sgd
from .base import Rule

#: Column headers for the quantities every trace has (the gradient, the update, the point and its value).
COMMON_TRACE_LABELS: Mapping[str, str] = MappingProxyType({"g": "g_t", "update": "Δx", "x": "x_t", "f": "f(x_t)"})


@dataclass(frozen=True)
class Entry:
    """An optimizer as the surfaces offer it (`name` is what users type: "adamw")."""

    name: str
    #: the rule it evaluates, and the hyperparameter overrides it applies (AdamW: decoupled decay, λ = 0.01)
    rule: Rule
    overrides: Mapping[str, Any]
    #: display name and colour in every figure, table and the playground
    label: str
    color: str
    #: the NumPy class `optimlab.numpy` builds (name, one-line docstring, default lr: DLFS's 0.01 / 0.001)
    numpy_class: str
    summary: str
    #: the drop-in class in `optimlab.torch`, and the arguments `create(name)` passes it (Nesterov: True)
    torch_class: str
    #: headers of the rule's trace quantities (`Rule.trace`'s keys), and those that are per-step scalars
    trace_labels: Mapping[str, str]
    numpy_lr: float = 0.01
    torch_overrides: Mapping[str, Any] = field(default_factory=dict)
    trace_scalars: tuple[str, ...] = ()

    def all_trace_labels(self) -> dict[str, str]:
        """Every column of this optimizer's trace with its header, in the order of the trace rows."""
        return {"g": COMMON_TRACE_LABELS["g"], **self.trace_labels,
                **{key: value for key, value in COMMON_TRACE_LABELS.items() if key != "g"}}


_MOMENTUM_TRACE = {"b": "b_t", "V": "V_t = ηb_t"}
_ADAM_TRACE = {"m": "m_t", "v": "v_t", "m_hat": "m̂_t", "v_hat": "v̂_t", "alpha_t": "α_t"}

REGISTRY: dict[str, Entry] = {entry.name: entry for entry in (
    Entry("sgd", sgd.RULE, {}, "SGD", "#1f77b4", "SGD", "θ ← θ − η g.", "SGD", {}),
    Entry("momentum", momentum.RULE, {}, "Momentum", "#ff7f0e", "Momentum",
          "Heavy ball: b ← γ b + g, θ ← θ − η b (γ = `momentum`, 0.9).", "Momentum", _MOMENTUM_TRACE),
    Entry("nesterov", momentum.RULE, {"nesterov": True}, "Nesterov", "#8c564b", "Nesterov",
          "Nesterov momentum (PyTorch's form): θ ← θ − η (g + γ b).", "Momentum", _MOMENTUM_TRACE,
          torch_overrides={"nesterov": True}),
    Entry("adagrad", adagrad.RULE, {}, "AdaGrad", "#2ca02c", "AdaGrad",
          "h ← h + g², θ ← θ − η g / (√(h + eps_root) + eps).", "Adagrad", {"h": "h_t", "rate": "η/(√h+ε)"}),
    Entry("rmsprop", rmsprop.RULE, {}, "RMSProp", "#9467bd", "RMSprop",
          "s ← ρ s + (1 − ρ) g², θ ← θ − η g / (√(s + eps_root) + eps) (ρ = `alpha`, 0.99).", "RMSprop",
          {"s": "s_t", "g_avg": "ḡ_t"}),
    Entry("adam", adam.RULE, {}, "Adam", "#d62728", "Adam",
          "Adam with bias correction; `amsgrad`, L2 `weight_decay`, `maximize`, `eps_root` supported.", "Adam",
          _ADAM_TRACE, numpy_lr=0.001, trace_scalars=("alpha_t",)),
    Entry("adamw", adam.RULE, {"decoupled_weight_decay": True, "weight_decay": 1e-2}, "AdamW", "#e377c2", "AdamW",
          "Adam with decoupled weight decay θ ← θ (1 − ηλ), λ = 0.01.", "AdamW", _ADAM_TRACE, numpy_lr=0.001,
          trace_scalars=("alpha_t",)),
    Entry("lion", lion.RULE, {}, "Lion", "#17becf", "Lion",
          "Lion: θ ← θ (1 − ηλ) − η sign(β1 m + (1 − β1) g), m ← β2 m + (1 − β2) g.", "Lion", {"m": "m_t"},
          numpy_lr=1e-4),
    Entry("nadam", nadam.RULE, {}, "NAdam", "#bcbd22", "NAdam",
          "NAdam: Adam with Nesterov momentum on a warming-up schedule μ_t (PyTorch's form).", "NAdam",
          {"m": "m_t", "v": "v_t", "mu_t": "μ_t", "mu_product": "Π_t"}, numpy_lr=2e-3,
          trace_scalars=("mu_t", "mu_product")),
    Entry("lamb", lamb.RULE, {}, "LAMB", "#7f7f7f", "LAMB",
          "LAMB: Adam's direction u (+ λθ) scaled per tensor by the trust ratio ‖θ‖ / ‖u‖.", "LAMB",
          {"m": "m_t", "v": "v_t", "trust_ratio": "r_t"}, numpy_lr=1e-3, trace_scalars=("trust_ratio",)),
    Entry("adamw_schedulefree", adamw_schedulefree.RULE, {}, "Schedule-Free AdamW", "#aec7e8", "AdamWScheduleFree",
          "Schedule-Free AdamW: y between AdamW's iterate z and the average x, no lr schedule (the param is y).",
          "AdamWScheduleFree", {"z": "z_t", "v": "v_t", "c": "c_t", "lr_t": "γ_t"}, numpy_lr=0.0025,
          trace_scalars=("c", "lr_t")),
)}


def trace_labels() -> dict[str, str]:
    """Every trace column of every optimizer with its header (the CLI's table)."""
    labels: dict[str, str] = {}
    for entry in REGISTRY.values():
        labels.update(entry.all_trace_labels())
    return labels


__all__ = ["COMMON_TRACE_LABELS", "REGISTRY", "Entry", "trace_labels"]
