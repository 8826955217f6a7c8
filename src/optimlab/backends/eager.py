"""The PyTorch eager backend: `rule.update` evaluated directly on tensors, one param at a time.

The rule runs out of place on the real tensors the front end passes (plain arithmetic becomes ordinary
PyTorch ops, `sqrt`/`maximum`/`lerp` dispatch to `torch.sqrt`/`torch.maximum`/`torch.lerp`), and the results
are `copy_`-ed into the param and state tensors. It runs anything PyTorch runs — every device, every floating
dtype, DTensors — so it is registered last: `backend="auto"` falls back to it.

State kept in a lower-precision `state_dtype` is read widened to the param's dtype, so the rule computes in
the param's precision, and `copy_` rounds the result to nearest-even on store.

Row and column sums (stage (b)) of a DTensor shard are finished by the front end's `axis_finish` hook where
the shard holds part of a matrix. A rule's tensor stage (Muon's Newton–Schulz) runs on each whole param: a
DTensor shard holds part of a matrix, so `supports` declines sharded DTensors for such rules (there is then no
backend for them: the error says why).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from ..rules import Rule
from ..rules.base import axis_sum, group_totals, in_dtype_of
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
        if rule.tensor_stage is not None and any(map(_is_sharded, params)):
            return (f"eager: {rule.name}'s tensor stage needs each whole matrix, and a sharded DTensor param "
                    f"holds part of one (gather it, or shard the optimizer by whole params)")
        return None

    def step(self, rule: Rule, hyperparameters: Mapping[str, Any], coefficients: Mapping[str, Any],
             params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor],
             states: Sequence[Sequence[torch.Tensor]], grad_scale: Any = None,
             all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
             axis_finish: Callable[..., dict[str, Any]] | None = None) -> None:
        """Apply `rule.update` to every (param, grad, state) and copy the results in place.

        A rule with reductions runs in two passes: the per-tensor sums of `rule.reduce`'s terms (one row per
        param), passed through `all_reduce` where given (the front end's sum over DTensor shards), then
        `rule.finish` (of each group reduction's total over the rows, `group_totals`) and the update with each
        tensor's coefficients. A rule with a tensor stage runs it on every param first, then the updates.
        `axis_finish(index, *arguments)`, where given, replaces `rule.axis_finish` for param `index` (the front
        end's, for DTensor shards holding part of a matrix).
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
        # stage (b): each param's sums over its rows and columns, finished into its per-row and per-column values
        axis = [_axis_stage(rule, position, param, grad, state, arguments, scalars,
                            rule.axis_finish if axis_finish is None else functools.partial(axis_finish, index))
                if rule.axis_reduce else {} for index, (param, grad, state, arguments) in enumerate(work)]
        axis_arguments = [[finished[name] for name in rule.axis_values] for finished in axis]
        per_tensor: list[list[Any]] = [[] for _ in work]
        if rule.reductions and work:
            sums = torch.stack([torch.stack([term.sum() for term in rule.reduce(param, grad, *arguments, *scalars,
                                                                                 *axis_values)])
                                for (param, grad, _, arguments), axis_values in zip(work, axis_arguments, strict=True)])
            if all_reduce is not None:
                sums = all_reduce(sums)
            finished = rule.finish(*group_totals(rule, list(sums.T)))
            # one value per tensor of each coefficient (a group reduction's, the same for all)
            values = [torch.as_tensor(finished[name]).expand(len(work)).unbind() for name in rule.tensor_coefficients]
            per_tensor = [list(row) for row in zip(*values, strict=True)] if values else per_tensor
        if rule.tensor_stage is not None:
            per_tensor = _tensor_stage(rule, work, scalars)
        for (param, grad, state, arguments), extra, axis_values, finished in zip(work, per_tensor, axis_arguments,
                                                                                 axis, strict=True):
            extra = [in_dtype_of(value, param) for value in extra]  # (a tensor stage's, in the param's dtype)
            new_param, *new_state = rule.update(param, grad, *arguments, *scalars, *axis_values, *extra)
            param.copy_(new_param)
            for name, value in zip(rule.state_names, new_state, strict=True):
                if name in position:
                    state[position[name]].copy_(value)
            for name in rule.axis_state:
                state[position[name]].copy_(finished[name])


def _axis_stage(rule: Rule, position: Mapping[str, int], param: torch.Tensor, grad: torch.Tensor,
                state: Sequence[torch.Tensor], arguments: list[Any], scalars: list[Any],
                axis_finish: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    """Stage (b) of one param: `rule.axis_reduce`'s terms summed over its rows (last axis) and columns
    (second-to-last), `rule.axis_finish`ed with its per-row and per-column state (read in the param's dtype)."""
    terms = rule.axis_reduce(param, grad, *arguments, *scalars)
    count = len(rule.row_reductions)
    sums = [axis_sum(term, -1) for term in terms[:count]] + [axis_sum(term, -2) for term in terms[count:]]
    kept = [state[position[name]].to(param.dtype) for name in rule.axis_state]
    return axis_finish(*kept, *sums, *scalars)


def _tensor_stage(rule: Rule, work: list[tuple[Any, ...]], scalars: list[Any]) -> list[list[Any]]:
    """Each param's tensor-stage values, every param's computed before any is updated: a stage that raises
    (a param that is not a matrix) leaves the whole group as it was. They stay as the stage returns them
    (Muon's bfloat16 matrices) until their param's update widens them."""
    staged = [rule.tensor_stage(param, grad, *arguments, *scalars) for param, grad, _, arguments in work]
    return [[values[name] for name in rule.tensor_coefficients] for values in staged]


def _is_sharded(param: Any) -> bool:
    """Whether `param` is a DTensor with a placement other than `Replicate` (its local tensor is not the whole).

    Read without importing torch.distributed: no DTensor exists before it is imported."""
    dtensor = sys.modules.get("torch.distributed.tensor")
    return (dtensor is not None and isinstance(param, dtensor.DTensor)
            and not all(placement.is_replicate() for placement in param.placements))


BACKEND = register(Eager())

__all__ = ["BACKEND", "Eager"]
