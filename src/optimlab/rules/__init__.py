"""The update rules, each written once as a pure elementwise function (see `base.Rule`).

`RULES` maps a rule's name to it; `OPTIMIZERS` maps every optimizer name the front ends accept to
`(rule, hyperparameter overrides)`: Momentum and Nesterov are the momentum rule, AdamW is Adam with
decoupled weight decay. Both are read from `registry.REGISTRY`, one entry per optimizer with what every
surface needs (labels, colours, trace headers, the NumPy and torch classes).

Each rule's docstring cites its math as "SPEC §n": section §n of docs/math.md, the study notes' content
restated in English with their errata.
"""

from __future__ import annotations

from typing import Any

from .base import Rule
from .registry import REGISTRY, Entry

#: Every rule some registered optimizer runs, by the rule's name.
RULES: dict[str, Rule] = {entry.rule.name: entry.rule for entry in REGISTRY.values()}

#: Every optimizer name → (rule, hyperparameter overrides), read from `registry.REGISTRY`.
OPTIMIZERS: dict[str, tuple[Rule, dict[str, Any]]] = {name: (entry.rule, dict(entry.overrides))
                                                     for name, entry in REGISTRY.items()}


def lookup(name: str) -> tuple[Rule, dict[str, Any]]:
    """The rule and default overrides for an optimizer name (case-insensitive); `ValueError` if unknown."""
    key = name.lower() if isinstance(name, str) else name
    if key not in OPTIMIZERS:
        raise ValueError(f"Invalid optimizer: {name!r} (expected one of {', '.join(OPTIMIZERS)})")
    return OPTIMIZERS[key]


__all__ = ["OPTIMIZERS", "REGISTRY", "RULES", "Entry", "Rule", "lookup"]
