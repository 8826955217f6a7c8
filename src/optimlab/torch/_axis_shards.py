"""Stage (b) (row and column reductions, `Rule.axis_reduce`) on DTensor shards (FSDP2's `fully_shard`).

A backend sums `axis_reduce`'s terms over the rows (last axis) and columns (second-to-last axis) of the local
shard it is handed, then finishes them with `rule.axis_finish` on small per-row and per-column tensors. On a
param sharded along a leading (stacking) axis every matrix is whole in one rank: nothing to do. On one sharded
along its rows (FSDP2's `Shard(0)` of a matrix) the row sums are whole, the column sums partial, and
`axis_finish` may reduce over the rows (Adafactor's mean of `row_var`, its division by the number of rows):
the front end hands the backend `axis_finish(index, *arguments)` (`axis_finish_hook`), which for such a param

1. makes every argument whole: partial sums all-reduced (summed) over the shard group, per-row tensors
   all-gathered (uneven shards and empty ones as `DTensor` lays them out),
2. runs `rule.axis_finish` on the whole tensors, the same on every rank,
3. hands back this rank's piece of each value: the local rows of per-row values, per-column values whole.

The per-row and per-column state lives on a sharded param as DTensors of their own placements
(`state_placements`): along each mesh dimension the param is sharded on, the state is sharded the same way
unless its size-1 axis is the one sharded, where it is replicated. For FSDP2's `Shard(0)` of a matrix (R, C):
`row_var` (R, 1) is `Shard(0)` (each rank keeps its rows), `col_var` (1, C) is `Replicate()` (identical in
every rank after the all-reduce). A distributed checkpoint saves both as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..rules import Rule


def _dim(placement: Any, ndim: int) -> int | None:
    """The param axis a `Shard` placement shards (non-negative), None for `Replicate`."""
    if placement.is_replicate():
        return None
    return placement.dim % ndim


def check_placements(rule: Rule, param: Any, position: int, torch_name: str) -> None:
    """Refuse placements other than `Shard` and `Replicate` (`_StridedShard`, `Partial`), before anything changes."""
    for placement in param.placements:
        if not (placement.is_replicate() or (placement.is_shard() and type(placement).__name__ == "Shard")):
            raise ValueError(f"{torch_name}: param {position} of its group is a DTensor placed as "
                             f"{param.placements}: {rule.name}'s row and column reductions run on Shard and "
                             f"Replicate placements only")


def _side_placements(param: Any, row_side: bool) -> tuple[Any, ...]:
    """The placements of `param`'s per-row (`row_side`) or per-column tensors: sharded as the param, except
    replicated along a mesh dimension that shards their size-1 axis."""
    from torch.distributed.tensor import Replicate, Shard

    ndim = param.ndim
    placements = []
    for placement in param.placements:
        dim = _dim(placement, ndim)
        placements.append(Replicate() if dim is None or dim == (ndim - 1 if row_side else ndim - 2) else Shard(dim))
    return tuple(placements)


def state_placements(rule: Rule, name: str, param: Any) -> tuple[Any, ...]:
    """The placements of per-row or per-column state `name` of DTensor `param` (see the module docstring)."""
    return _side_placements(param, name in rule.row_state)


def new_state(rule: Rule, name: str, param: Any, value: float, dtype: torch.dtype) -> Any:
    """A per-row or per-column state DTensor of `param`, filled with `value`."""
    from torch.distributed.tensor import full

    return full(rule.state_shape(name, tuple(param.shape)), value, dtype=dtype, device_mesh=param.device_mesh,
                placements=state_placements(rule, name, param))


def _communicates(param: Any) -> bool:
    """Whether a shard of `param` holds part of a matrix (a placement shards one of the last two axes)."""
    return any(_dim(placement, param.ndim) in (param.ndim - 1, param.ndim - 2) for placement in param.placements)


def axis_finish_hook(rule: Rule, params: Sequence[Any]) -> Callable[..., dict[str, Any]] | None:
    """`axis_finish(index, *arguments)` for the backend, where some of `params` hold part of a matrix; else
    None (every matrix is whole in its rank: the backend's own `rule.axis_finish` is right)."""
    from torch.distributed.tensor import DTensor, Partial, Replicate, Shard

    from ._plans import is_dtensor

    if rule.axis_reduce is None or not any(is_dtensor(param) and _communicates(param) for param in params):
        return None
    rows, columns = len(rule.row_state), len(rule.column_state)
    row_sums = len(rule.row_reductions)
    sums = row_sums + len(rule.column_reductions)

    def finish(index: int, *arguments: Any) -> dict[str, Any]:
        param = params[index]
        if not (is_dtensor(param) and _communicates(param)):
            return rule.axis_finish(*arguments)
        mesh, ndim, shape = param.device_mesh, param.ndim, tuple(param.shape)
        row_shape, column_shape = (*shape[:-1], 1), (*shape[:-2], 1, shape[-1])

        def placements(row_side: bool, summed: bool) -> list[Any]:
            result = []
            for placement in param.placements:
                dim = _dim(placement, ndim)
                partial = dim == (ndim - 1 if row_side else ndim - 2)
                result.append(Replicate() if dim is None else (Partial() if summed else Replicate()) if partial
                              else Shard(dim))
            return result

        def whole(local: torch.Tensor, row_side: bool, summed: bool) -> torch.Tensor:
            global_shape = row_shape if row_side else column_shape
            stride = torch.empty(global_shape, device="meta").stride()
            return DTensor.from_local(local.contiguous(), mesh, placements(row_side, summed), run_check=False,
                                      shape=torch.Size(global_shape), stride=stride).full_tensor()

        kept = arguments[:rows + columns]
        whole_arguments = [whole(tensor, i < rows, False) for i, tensor in enumerate(kept)]
        whole_arguments += [whole(tensor, i < row_sums, True)
                            for i, tensor in enumerate(arguments[rows + columns:rows + columns + sums])]
        values = rule.axis_finish(*whole_arguments, *arguments[rows + columns + sums:])
        local = {}
        for name, value in values.items():
            row_side = name in rule.row_values
            full = torch.broadcast_to(torch.as_tensor(value), row_shape if row_side else column_shape).contiguous()
            local[name] = DTensor.from_local(full, mesh, [Replicate()] * mesh.ndim, run_check=False).redistribute(
                mesh, _side_placements(param, row_side)).to_local()
        return local

    return finish
