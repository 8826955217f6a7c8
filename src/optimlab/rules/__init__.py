"""The update rules, each written once as a pure elementwise function (see `base.Rule`).

`RULES` maps a rule's name to it; `OPTIMIZERS` maps every optimizer name the front ends accept to
`(rule, hyperparameter overrides)`: Momentum and Nesterov are the momentum rule, AdamW is Adam with
decoupled weight decay.

Each rule's docstring cites its math as "SPEC §n": section §n of docs/math.md, the study notes' content
restated in English with their errata.
"""

from __future__ import annotations

from typing import Any

from . import adagrad, adam, momentum, rmsprop, sgd
from .base import Rule

RULES: dict[str, Rule] = {rule.name: rule for rule in
                          (sgd.RULE, momentum.RULE, adagrad.RULE, rmsprop.RULE, adam.RULE)}

OPTIMIZERS: dict[str, tuple[Rule, dict[str, Any]]] = {
    "sgd": (sgd.RULE, {}),
    "momentum": (momentum.RULE, {}),
    "nesterov": (momentum.RULE, {"nesterov": True}),
    "adagrad": (adagrad.RULE, {}),
    "rmsprop": (rmsprop.RULE, {}),
    "adam": (adam.RULE, {}),
    "adamw": (adam.RULE, {"decoupled_weight_decay": True, "weight_decay": 1e-2}),
}


def lookup(name: str) -> tuple[Rule, dict[str, Any]]:
    """The rule and default overrides for an optimizer name (case-insensitive); `ValueError` if unknown."""
    key = name.lower() if isinstance(name, str) else name
    if key not in OPTIMIZERS:
        raise ValueError(f"Invalid optimizer: {name!r} (expected one of {', '.join(OPTIMIZERS)})")
    return OPTIMIZERS[key]


__all__ = ["OPTIMIZERS", "RULES", "Rule", "lookup"]
