"""Stage (c) across several backend calls: a group reduction's total over a whole param group.

A backend finishes a group reduction with its column's total over the rows it was called with
(`rules.base.group_totals`). When one param group's step takes several backend calls — params at different
step counts (`Optimizer._params_by_step`) or with different per-param scalar state share no coefficients —
each call sees only its own params, so the front end runs the calls twice:

1. `record(position, shard_sums)`: each call's `all_reduce` hook takes the sums (after the shard all-reduce where the
   params are DTensors), keeps them and raises `SumsRecorded`, which stops the call before it changes
   anything (a backend's failed step changes nothing);
2. `supply(position)`: each call runs again, its hook handing back the sums it recorded with each group
   reduction's column replaced by the whole group's total in the first row and zeros below, so the backend's
   own column total is the group's (adding zeros is exact).

Pass 1 reaches every check a backend makes before pass 2 updates anything, so a step refused anywhere in
the group leaves every param and state as it was.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..rules import Rule

AllReduce = Callable[[torch.Tensor], torch.Tensor]


class SumsRecorded(Exception):  # noqa: N818 (not an error: the end of a recording call)
    """Raised by a recording hook once it kept a backend call's sums: the call stops before any update."""


class GroupSums:
    """The per-tensor sums of each backend call of one group's step (one matrix per call), and their totals."""

    def __init__(self, rule: Rule, calls: int) -> None:
        self.rule = rule
        self.recorded: list[torch.Tensor | None] = [None] * calls
        self.columns = [rule.reductions.index(name) for name in rule.group_reductions]

    def record(self, position: int, shard_sums: AllReduce | None) -> AllReduce:
        """The hook of call `position`'s first pass: the sums, all-reduced over shards by `shard_sums` where
        given, kept; then `SumsRecorded`."""
        def all_reduce(sums: torch.Tensor) -> torch.Tensor:
            self.recorded[position] = (shard_sums(sums) if shard_sums is not None else sums).clone()
            raise SumsRecorded

        return all_reduce

    def supply(self, position: int) -> AllReduce:
        """The hook of call `position`'s second pass: its recorded sums, whose group columns total the group's."""
        totals = sum(sums[:, self.columns].to(torch.float64).sum(0) for sums in self.recorded)

        def all_reduce(sums: torch.Tensor) -> torch.Tensor:
            supplied = self.recorded[position].clone()
            supplied[:, self.columns] = 0
            supplied[0, self.columns] = totals.to(supplied)
            return supplied

        return all_reduce
