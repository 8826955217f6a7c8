"""The PyTorch eager backend: `rule.update` evaluated directly on tensors, one param at a time.

The rule runs out of place on the real tensors the front end passes (plain arithmetic becomes ordinary
PyTorch ops, `sqrt`/`maximum`/`lerp` dispatch to `torch.sqrt`/`torch.maximum`/`torch.lerp`), and the results
are `copy_`-ed into the param and state tensors. It runs anything PyTorch runs — every device, every floating
dtype, DTensors — so it is registered last: `backend="auto"` falls back to it.

State kept in a lower-precision `state_dtype` is read widened to the param's dtype, so the rule computes in
the param's precision, and `copy_` rounds the result to nearest-even on store.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from ..rules import Rule
from ..rules.base import group_totals
from . import register


class Eager:
    """Runs any rule on any real PyTorch tensors (see the module docstring); registered as "eager"."""

    name = "eager"

    def supports(self, rule: Rule, hyperparameters: Mapping[str, Any], params: Sequence[Any],
                 state_dtype: Any) -> str | None:
        """None for any real floating-point tensors."""
        for param in params:
            if not isinstance(param, torch.Tensor):
                return f"eager: expected torch tensors, got {type(param).__name__}"
            if not param.is_floating_point():
                return f"eager: floating-point tensors only, got {param.dtype}"
        return None

    def step(self, rule: Rule, hyperparameters: Mapping[str, Any], coefficients: Mapping[str, Any],
             params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor],
             states: Sequence[Sequence[torch.Tensor]], grad_scale: Any = None,
             all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        """Apply `rule.update` to every (param, grad, state) and copy the results in place.

        A rule with reductions runs in two passes: the per-tensor sums of `rule.reduce`'s terms (one row per
        param), passed through `all_reduce` where given (the front end's sum over DTensor shards), then
        `rule.finish` (of each group reduction's total over the rows, `group_totals`) and the update with each
        tensor's coefficients.
        """
        active = rule.active_state(hyperparameters)
        position = {name: index for index, name in enumerate(active)}
        scalars = [coefficients[name] for name in rule.coefficient_names]
        work = []
        for param, grad, state in zip(params, grads, states, strict=True):
            if grad_scale is not None:
                grad = grad / grad_scale
            arguments = [state[position[name]].to(param.dtype) if name in position else None
                         for name in rule.state_names]
            work.append((param, grad, state, arguments))
        per_tensor: list[list[Any]] = [[] for _ in work]
        if rule.reductions and work:
            sums = torch.stack([torch.stack([term.sum() for term in rule.reduce(param, grad, *arguments, *scalars)])
                                for param, grad, _, arguments in work])
            if all_reduce is not None:
                sums = all_reduce(sums)
            finished = rule.finish(*group_totals(rule, list(sums.T)))
            # one value per tensor of each coefficient (a group reduction's, the same for all)
            values = [torch.as_tensor(finished[name]).expand(len(work)).unbind() for name in rule.tensor_coefficients]
            per_tensor = [list(row) for row in zip(*values, strict=True)] if values else per_tensor
        for (param, grad, state, arguments), extra in zip(work, per_tensor, strict=True):
            new_param, *new_state = rule.update(param, grad, *arguments, *scalars, *extra)
            param.copy_(new_param)
            for name, value in zip(rule.state_names, new_state, strict=True):
                if name in position:
                    state[position[name]].copy_(value)


BACKEND = register(Eager())

__all__ = ["BACKEND", "Eager"]
