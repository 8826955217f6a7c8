"""What the compiled backends derive from a rule before they write a kernel in their own dialect.

Both the Numba and the Triton backend generate a small kernel around the rule's `update`: it loads each
element's param, gradient and state, calls `update(param, grad, *state, *coefficients, *axis_values,
*tensor_coefficients)` and stores the results (`axis_values`: the element's row's and column's values of a
rule with row and column reductions, stage (b), read from arrays each backend fills on the host). What that
call looks like is decided here, once:

* `Slots`: which of the rule's state slots a configuration uses (`Rule.active_state`). An active slot is
  loaded and stored; an inactive one is passed a dummy zero and its result dropped (`_`), so the kernel
  never touches a tensor that does not exist.
* `KernelPlan.flags` and `KernelPlan.scalars`: the coefficients declared structural (`Rule.flags`), which a
  backend compiles in (one kernel per combination, branches removed), and the others, passed at run time;
  how a runtime scalar is passed (a float, a 0-dim tensor) is the backend's own.
* `ChunkTable`: every tensor of a group cut into chunks of equal size (the last one of a tensor shorter),
  so that one launch covers a whole group, and `split_by`: the launches of a group, one per dtype pair.
* `value`, `pointer`, `elements`, `term`, `total`: the names of a generated kernel's locals. Every name that
  comes from the rule appears only behind the `_ol_` prefix, which rules may not use (`Rule` checks it), so
  the kernel's own names (`numel`, `size`, `update`, ...) can never be captured or shadowed by a rule's.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..rules import Rule
from ..rules.base import RESERVED_PREFIX, group_totals

#: The prefix of every generated name that could meet a rule's names; a rule may not use it (see `Rule`).
PREFIX = RESERVED_PREFIX
#: The key of `grad_scale` among a kernel's scalar arguments: not a name a rule may use.
GRAD_SCALE = f"{PREFIX}grad_scale"


def value(name: str) -> str:
    """The local holding a slot's or coefficient's value (one element, or a tile of them)."""
    return f"{PREFIX}v_{name}"


def pointer(name: str) -> str:
    """The local holding a slot's (or a tensor coefficient's) data pointer."""
    return f"{PREFIX}p_{name}"


def elements(name: str) -> str:
    """The local through which a slot's elements are read and written (an array view, or pointers)."""
    return f"{PREFIX}e_{name}"


def term(index: int) -> str:
    """The local holding `rule.reduce`'s `index`-th term for one element (or tile)."""
    return f"{PREFIX}term_{index}"


def total(index: int) -> str:
    """The local a chunk's sum of the `index`-th reduction term accumulates in."""
    return f"{PREFIX}sum_{index}"


@dataclass(frozen=True)
class Slots:
    """A rule's per-element state slots in one configuration: all of them (`names`, the order `update` takes
    them in) and the ones it uses (`active`, the tensors the caller passes, in the same order)."""

    names: tuple[str, ...]
    active: tuple[str, ...]

    @classmethod
    def of(cls, rule: Rule, used: Sequence[bool]) -> Slots:
        """The slots whose `used` entry (one per `rule.state_names`) is true."""
        return cls(rule.state_names, tuple(name for name, on in zip(rule.state_names, used, strict=True) if on))

    @property
    def used(self) -> tuple[bool, ...]:
        """Per slot, whether the configuration uses it."""
        return tuple(name in self.active for name in self.names)

    def index(self, name: str) -> int:
        """The slot's position among all of them (its row in a backend's state pointer table)."""
        return self.names.index(name)

    def arguments(self, load: Callable[[str], str], dummy: str) -> list[str]:
        """`update`'s state arguments: `load(name)` for an active slot, `dummy` (a zero) for another."""
        return [load(name) if name in self.active else dummy for name in self.names]

    def results(self, result: Callable[[str], str]) -> list[str]:
        """The targets of `update`'s state results: `result(name)` for an active slot, `_` for another."""
        return [result(name) if name in self.active else "_" for name in self.names]


@dataclass(frozen=True)
class KernelPlan:
    """What a compiled kernel of `rule` in one configuration passes to `update`, and in which order."""

    rule: Rule
    slots: Slots

    @classmethod
    def of(cls, rule: Rule, active: Sequence[str]) -> KernelPlan:
        """The plan for the state `active` names (`rule.active_state(hyperparameters)`)."""
        return cls(rule, Slots(rule.state_names, tuple(active)))

    @property
    def flags(self) -> tuple[str, ...]:
        """The structural coefficients (`Rule.flags`): compile-time constants of a kernel."""
        return self.rule.flags

    @functools.cached_property
    def scalars(self) -> tuple[str, ...]:
        """The other coefficients, in `update`'s order: runtime arguments of a kernel."""
        return tuple(name for name in self.rule.coefficient_names if name not in self.rule.flags)

    def flag_values(self, coefficients: Any) -> tuple[tuple[str, bool], ...]:
        """(name, value) of each flag among one step's coefficients: what a compiled variant is keyed on."""
        return tuple((name, bool(coefficients[name])) for name in self.flags)

    def coefficient_arguments(self, flag: Callable[[str], str], scalar: Callable[[str], str]) -> list[str]:
        """`update`'s coefficient arguments in its order: `flag(name)` for a flag, `scalar(name)` otherwise."""
        return [flag(name) if name in self.rule.flags else scalar(name) for name in self.rule.coefficient_names]

    def finish(self, sums: Any, column: Callable[[Any], Any]) -> list[Any]:
        """Stage (a)'s last step, on the host: `rule.finish` of the per-tensor `sums` (one row per tensor, one
        column per reduction; a NumPy array or a tensor), and each tensor coefficient as `column(value)` (a
        backend's array of one value per tensor), in `rule.tensor_coefficients`' order. A group reduction's
        column is finished as its total over the rows (stage (c), `rules.base.group_totals`)."""
        finished = self.rule.finish(*group_totals(self.rule, list(sums.T)))
        return [column(finished[name]) for name in self.rule.tensor_coefficients]


@dataclass(frozen=True)
class ChunkTable:
    """A group's tensors cut into chunks of `chunk` elements: chunk `c` is elements
    `chunk_start[c]:chunk_stop[c]` of tensor `chunk_tensor[c]`, its `chunk_index[c]`-th chunk.

    An empty tensor has no chunk; every chunk but a tensor's last is full (`chunk_stop - chunk_start == chunk`).
    """

    sizes: np.ndarray
    chunk: int
    chunk_tensor: np.ndarray
    chunk_index: np.ndarray
    chunk_start: np.ndarray
    chunk_stop: np.ndarray

    @classmethod
    def build(cls, sizes: Sequence[int] | np.ndarray, chunk: int) -> ChunkTable:
        """The table for tensors of `sizes` elements (int64 arrays throughout)."""
        sizes = np.asarray(sizes, dtype=np.int64)
        counts = (sizes + chunk - 1) // chunk
        chunk_tensor = np.repeat(np.arange(len(sizes), dtype=np.int64), counts)
        chunk_index = np.arange(len(chunk_tensor), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
        chunk_start = chunk_index * chunk
        chunk_stop = np.minimum(chunk_start + chunk, sizes[chunk_tensor])
        return cls(sizes, chunk, chunk_tensor, chunk_index, chunk_start, chunk_stop)

    @property
    def chunk_sizes(self) -> np.ndarray:
        """Elements per chunk."""
        return self.chunk_stop - self.chunk_start

    def full(self, rows: int = 1) -> np.ndarray:
        """Per run of `rows` consecutive chunks (the last one padded with empty chunks), whether all are full."""
        full = self.chunk_sizes == self.chunk
        return np.concatenate([full, np.zeros(-len(full) % rows, dtype=bool)]).reshape(-1, rows).all(1)


def split_by(keys: Sequence[Hashable]) -> list[tuple[Any, list[int] | None]]:
    """The launches of a group whose tensors need different kernels (by dtypes: `keys`, one per param): per
    distinct key, in order of first appearance, the indices of its params, or None when it is all of them."""
    splits: dict[Hashable, list[int]] = {}
    for index, key in enumerate(keys):
        splits.setdefault(key, []).append(index)
    return [(key, None if len(indices) == len(keys) else indices) for key, indices in splits.items()]
