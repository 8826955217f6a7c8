"""Plans: what one param group's step needs that stays the same from step to step, checked before every step.

`prepare(optimizer)` is the one call `Optimizer.step` makes before it changes anything: for each param group
with gradients it takes the group's plan if the plan still fits (the same params at the same data pointers,
gradients of their sizes, the same objects in `optimizer.state`, state and step counters where they were),
or checks gradients and state against the params, resolves the backend (once per plan: `backend="auto"` then
falls back as on the first step) and builds a new plan, creating the missing state. Everything that can
raise — torch's errors for sparse gradients, gradients or state that do not fit their params, the backend's
choice — is raised for every group before any state is created (docs/reliability.md).

A plan lists each param's state tensors and step counter, which params are complex or DTensors (run through
per-step views, `Plan.backend_tensors`), and the backend's prepared tables: on 10,000 small tensors, finding
all of that again would cost tens of milliseconds per step in Python, more than the fused kernel.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import operator
import sys
from collections import defaultdict
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
from torch.optim.optimizer import _get_scalar_dtype

from ..backends import Backend, resolve
from ..rules import Rule
from . import _axis_shards
from ._counters import StepCounters

if TYPE_CHECKING:
    from .optimizer import Optimizer

# Per-tensor reads done by C-level `map` instead of Python loops: on 10,000 tensors a Python loop costs
# milliseconds per step, a `map` a few hundred microseconds.
_grad_of = operator.attrgetter("grad")
_is_complex = torch.Tensor.is_complex
_dtype_of = operator.attrgetter("dtype")
_dtype_is_complex = operator.attrgetter("is_complex")
_data_ptr = torch.Tensor.data_ptr
_numel = torch.Tensor.numel
_nbytes_of = operator.attrgetter("nbytes")
_get_device = torch.Tensor.get_device
_is_contiguous = torch.Tensor.is_contiguous


@dataclasses.dataclass
class GroupStep:
    """One param group's part of a `step`: its params with gradients, its rule, and the plan they run on."""

    #: the key its plan is kept by: the group's position in `optimizer.param_groups` (with the rule, where the
    #: params' shapes choose their rules: `_parts`)
    index: Any
    group: dict[str, Any]
    rule: Rule
    hyperparameters: dict[str, Any]
    params: list[torch.Tensor]
    grads: list[torch.Tensor]
    #: whether some gradient is sparse (Adagrad): those params run row by row
    has_sparse: bool
    plan: Plan
    #: per param, the state keys this step's plan build created (dropped again if the step fails); empty when
    #: the plan was in use already
    created: list[list[str]]


class BackendTensors(NamedTuple):
    """A group's params, gradients and per-param state tensors as its backend takes them (`Plan.backend_tensors`)."""

    params: list[torch.Tensor]
    grads: list[torch.Tensor]
    state: list[list[torch.Tensor]]


class _Candidate(NamedTuple):
    """A group's part of a step while `prepare` checks it: the plan that fit, or None and the backend chosen."""

    index: Any
    group: dict[str, Any]
    rule: Rule
    hyperparameters: dict[str, Any]
    params: list[torch.Tensor]
    grads: list[torch.Tensor]
    has_sparse: bool
    dtypes: tuple[torch.dtype, ...]
    backend: Backend
    plan: Plan | None


def prepare(optimizer: Optimizer) -> list[GroupStep] | None:
    """Each param group's step (groups without gradients left out), every check done before anything changes.

    Returns None, creating nothing, where a group with `skip_nonfinite=True` has a non-finite gradient: the
    whole step is then skipped. Otherwise missing plans are built (creating missing state), and every plan
    used takes the new state snapshot once the step's updates ran (`remember_state`).
    """
    candidates = []
    for index, group in enumerate(optimizer.param_groups):
        params, grads, grad_bytes = params_with_grad(optimizer, group)
        if not params:
            continue
        rule, hyperparameters = optimizer.rule_for(group)
        if grad_bytes is None and rule.group_reductions:
            raise RuntimeError(f"{optimizer.torch_name}: sparse gradients are not supported by the rule "
                               f"{rule.name!r}, whose reductions {rule.group_reductions} span the whole group")
        # torch's choice (Adafactor's ε1 = None): the group's first param with a gradient resolves it for all
        hyperparameters = rule.hyperparameters_for(hyperparameters, params[0].dtype)
        for key, part, part_params, part_grads, part_bytes in _parts(index, rule, params, grads, grad_bytes):
            plan = optimizer._plans.get(key)
            if plan is not None and plan.fits(group, part, hyperparameters, part_params, part_grads, part_bytes):
                backend, dtypes = plan.backend, plan.dtypes
            else:
                plan = None
                dtypes = tuple(map(_dtype_of, part_params))
                _check_gradients(part_params, part_grads)
                _check_placements(optimizer, part, part_params)
                backend = _resolve_backend(group, part, hyperparameters, part_params, dtypes)
            candidates.append(_Candidate(key, group, part, hyperparameters, part_params, part_grads,
                                         part_bytes is None, dtypes, backend, plan))
    unchanged = _StateComparison(optimizer)
    for i, each in enumerate(candidates):
        if each.plan is not None and not each.plan.state_fits(unchanged):
            candidates[i] = each = each._replace(plan=None)
        if each.plan is None:
            _check_state(optimizer, each.params, each.rule, each.rule.active_state(each.hyperparameters))
    if _has_nonfinite_gradient(candidates):
        return None
    group_steps = []
    for each in candidates:
        plan, created = each.plan, []
        if plan is None:
            plan, created = _build_plan(optimizer, each.group, each.rule, each.hyperparameters, each.params,
                                        each.dtypes, each.backend)
            optimizer._plans[each.index] = plan
        group_steps.append(GroupStep(each.index, each.group, each.rule, each.hyperparameters, each.params,
                                     each.grads, each.has_sparse, plan, created))
    return group_steps


def _parts(index: int, rule: Rule, params: list[torch.Tensor], grads: list[torch.Tensor],
           grad_bytes: np.ndarray | None) -> list[tuple[Any, Rule, list[torch.Tensor], list[torch.Tensor], Any]]:
    """A group's params by the rule each one's shape chooses (`Rule.for_shape`: Adafactor's factored rule for
    matrices): (plan key, rule, params, gradients, gradient byte counts) per part. The plan key is the group's
    position, with the rule where shapes choose (each part has its own plan)."""
    if rule.for_shape is None:
        return [(index, rule, params, grads, grad_bytes)]
    by_rule: dict[Rule, list[int]] = {}
    for position, param in enumerate(params):
        by_rule.setdefault(rule.rule_for_shape(tuple(param.shape)), []).append(position)
    return [((index, part), part, [params[i] for i in members], [grads[i] for i in members],
             None if grad_bytes is None else grad_bytes[members]) for part, members in by_rule.items()]


def remember_state(optimizer: Optimizer, group_steps: list[GroupStep]) -> None:
    """Give this step's plans the state snapshot, where one of them was built in this step.

    A rebuilt plan created state, which changed the snapshot. Every plan used in this step still matches the
    state (a group's state creation touches only its own params' state), so all of them take the new one.
    """
    if any(each.plan.state_objects is None for each in group_steps):  # (a plan in use already has its snapshot)
        snapshot = _state_snapshot(optimizer)
        for each in group_steps:
            each.plan.state_objects = snapshot


def params_with_grad(optimizer: Optimizer, group: Mapping[str, Any]
                     ) -> tuple[list[torch.Tensor], list[torch.Tensor], np.ndarray | None]:
    """The group's params that have a gradient, their gradients, and the gradients' byte counts (None where
    one of them is sparse).

    Raises where PyTorch refuses a gradient (sparse where unsupported, ...), before anything changes.

    The common case (dense gradients, no complex param under `state_dtype`) is checked with C-level passes;
    anything else goes through the per-param loop, which raises PyTorch's errors in PyTorch's order.
    """
    params = group["params"]
    grads = list(map(_grad_of, params))
    has_grad = list(map(operator.is_not, grads, itertools.repeat(None)))
    if all(has_grad):
        params = list(params)
    else:
        params, grads = list(itertools.compress(params, has_grad)), list(itertools.compress(grads, has_grad))
    try:
        # the pass that measures the gradients (checked against their params by the plan) also finds the
        # sparse ones: `nbytes` is not defined for sparse tensors
        grad_bytes = np.fromiter(map(_nbytes_of, grads), np.int64, len(grads))
    except RuntimeError:
        grad_bytes = None
    if not optimizer.supports_complex and any(map(_is_complex, params)):
        raise RuntimeError(f"{optimizer.torch_name} does not support complex parameters")
    if grad_bytes is not None and (group["state_dtype"] is None or not any(map(_is_complex, params))):
        return params, grads, grad_bytes
    for param, grad in zip(params, grads, strict=True):
        if grad.is_sparse:
            if not optimizer.supports_sparse:
                raise RuntimeError(f"{optimizer.torch_name} does not support sparse gradients")
            if group["weight_decay"] != 0:
                raise RuntimeError("weight_decay option is not compatible with sparse gradients")
            if param.is_complex():
                raise RuntimeError(f"{optimizer.torch_name}: sparse gradients of complex params are not supported")
        if param.is_complex() and group["state_dtype"] is not None:
            raise ValueError(f"Invalid state_dtype: {group['state_dtype']} (not supported for complex params)")
    return params, grads, grad_bytes


def _resolve_backend(group: Mapping[str, Any], rule: Rule, hyperparameters: dict[str, Any],
                     params: list[torch.Tensor], dtypes: tuple[torch.dtype, ...]) -> Backend:
    """The backend a new plan runs on, chosen for the params as the backend sees them (complex ones as real)."""
    real_params = params
    if any(map(_dtype_is_complex, dtypes)):
        real_params = [torch.view_as_real(param) if param.is_complex() else param for param in params]
    return resolve(group["backend"], rule, hyperparameters, real_params, group["state_dtype"])


def _check_placements(optimizer: Optimizer, rule: Rule, params: list[torch.Tensor]) -> None:
    """Refuse DTensor placements that rules with row and column reductions (stage (b)) do not run on, before
    anything changes (`_axis_shards`)."""
    if rule.axis_reduce is None:
        return
    for position, param in enumerate(params):
        if is_dtensor(param):
            _axis_shards.check_placements(rule, param, position, optimizer.torch_name)


def _check_gradients(params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
    """Raise PyTorch's error where a gradient does not fit its param: `param.grad.data = ...` bypasses the checks
    of `param.grad = ...`, and `param.data = ...` leaves the old gradient."""
    for position, (param, grad) in enumerate(zip(params, grads, strict=True)):
        if grad.shape != param.shape:
            raise RuntimeError(f"the size of param {position} of its group {tuple(param.shape)} must match the "
                               f"size of its gradient {tuple(grad.shape)}")
        if grad.dtype != param.dtype:
            raise RuntimeError(f"expected param {position} of its group and its gradient to have the same dtype, "
                               f"got {param.dtype} and {grad.dtype}")
        if grad.device != param.device:
            raise RuntimeError(f"expected param {position} of its group and its gradient on the same device, "
                               f"got {param.device} and {grad.device}")


def _check_state(optimizer: Optimizer, params: list[torch.Tensor], rule: Rule, active: tuple[str, ...]) -> None:
    """Raise PyTorch's error where a param's existing state does not fit it (before anything changes).

    A param grown through `param.data = ...` after its state exists, a state tensor replaced by one of
    another shape or on another device: PyTorch's update raises a size (or device) mismatch there.
    """
    for position, param in enumerate(params):
        state = optimizer.state.get(param)
        for name in active if state else ():
            tensor = state.get(name)
            if not isinstance(tensor, torch.Tensor):
                continue
            if tuple(tensor.shape) != rule.state_shape(name, tuple(param.shape)):
                raise RuntimeError(f"{optimizer.torch_name}: the size of param {position} of its group "
                                   f"{tuple(param.shape)} must match the size of its state {name!r} "
                                   f"{tuple(tensor.shape)}")
            if tensor.device != param.device:
                raise RuntimeError(f"{optimizer.torch_name}: expected param {position} of its group and its state "
                                   f"{name!r} on the same device, got {param.device} and {tensor.device}")


def _has_nonfinite_gradient(candidates: list[_Candidate]) -> bool:
    """Whether a group with `skip_nonfinite=True` has a non-finite gradient (one host sync per device)."""
    finite_by_device: dict[torch.device, list[torch.Tensor]] = defaultdict(list)
    for each in candidates:
        if each.group["skip_nonfinite"]:
            for grad in each.grads:
                finite_by_device[grad.device].append((grad._values() if grad.is_sparse else grad).isfinite().all())
    return not all(bool(torch.stack(flags).all()) for flags in finite_by_device.values())


def _state_objects(optimizer: Optimizer) -> tuple[int, Any]:
    """How many objects `_state_snapshot` lists for `optimizer.state` as it is now, and an iterator over them."""
    dicts = list(optimizer.state.values())
    count = 1 + 2 * len(dicts) + sum(map(len, dicts))
    return count, itertools.chain((optimizer.state,), optimizer.state, dicts,
                                  itertools.chain.from_iterable(map(dict.values, dicts)))


def _state_snapshot(optimizer: Optimizer) -> list[Any]:
    """`optimizer.state`, its params, their state dicts and the values in those.

    A plan keeps these objects: the same objects, in the same order, mean nothing in the state was added,
    removed or replaced since (a `load_state_dict`, a new param's state, `optimizer.state[p]["step"] = ...`,
    `optimizer.state = defaultdict(dict)`...). Values changed in place (`state["step"].fill_(0)`) need no
    check: the plan keeps tensors, not their values.
    """
    return list(_state_objects(optimizer)[1])


class _StateComparison:
    """Whether `optimizer.state` still holds a snapshot's objects (`_state_snapshot`), asked of each plan of a
    step: compared by identity (C-level `operator.is_` over the objects, no ids listed), once per snapshot
    (the plans of one step share theirs)."""

    def __init__(self, optimizer: Optimizer) -> None:
        self.optimizer = optimizer
        self.answers: dict[int, bool] = {}

    def __call__(self, snapshot: list[Any] | None) -> bool:
        if snapshot is None:
            return False
        answer = self.answers.get(id(snapshot))
        if answer is None:
            count, objects = _state_objects(self.optimizer)
            answer = count == len(snapshot) and all(map(operator.is_, objects, snapshot))
            self.answers[id(snapshot)] = answer
        return answer


def _build_plan(optimizer: Optimizer, group: dict[str, Any], rule: Rule, hyperparameters: dict[str, Any],
                params: list[torch.Tensor], dtypes: tuple[torch.dtype, ...],
                backend: Backend) -> tuple[Plan, list[list[str]]]:
    """The group's plan for these params, creating missing state; also the state keys created per param."""
    active = rule.active_state(hyperparameters)
    keeps_state = optimizer.counts_steps or bool(active)
    states = [optimizer.state[param] if keeps_state else {} for param in params]
    before = [{name for name, value in state.items() if value is not None} for state in states]
    allocate_state(params, states, group, rule, hyperparameters)
    for param, state in zip(params, states, strict=True):
        ensure_state(optimizer, param, state, group, rule, hyperparameters)
    created = [[name for name in state if name not in known] for state, known in zip(states, before, strict=True)]
    special = [i for i, param in enumerate(params) if dtypes[i].is_complex or is_dtensor(param)]
    counters = None
    if optimizer.counts_steps:
        # a backend may advance the counters faster than the portable `torch._foreach_add_`
        steps = [state["step"] for state in states]
        offer = getattr(backend, "step_counters", None)
        counters = offer(steps) if offer is not None else None
        if counters is None:
            counters = StepCounters(steps)
    tensors = [[state[name] for name in active] for state in states]
    prepare_tables = getattr(backend, "prepare", None)
    # the backend's tables hold the state's data pointers: only for plain tensors, checked every step
    prepared = (prepare_tables(rule, hyperparameters, params, tensors)
                if prepare_tables is not None and not special else None)
    # the state snapshot is filled in by `remember_state` once every group of this step has created its state
    plan = Plan(group, rule, active, group["backend"], backend, params, dtypes, special, tensors, counters, prepared)
    return plan, created


def allocate_state(params: list[torch.Tensor], states: list[dict[str, Any]], group: Mapping[str, Any],
                    rule: Rule, hyperparameters: Mapping[str, Any]) -> None:
    """Create the missing state of plain contiguous real params as views of one buffer per name and dtype.

    The values `new_state` gives, in one allocation per state name: the state tensors' own metadata (their
    tensor objects) then lies together in memory rather than between their data, so the pass over their
    data pointers every step (`Plan.state_fits`) costs a third as much. Like any views they share their
    buffer's storage: `share_memory_()` on one moves all of them, and a param's state dropped alone frees
    its memory only with the others.
    """
    for name in rule.active_state(hyperparameters):
        by_kind: dict[tuple[torch.dtype, torch.device], list[tuple[torch.Tensor, dict[str, Any]]]] = {}
        for param, state in zip(params, states, strict=True):
            if (state.get(name) is None and type(param) in (torch.Tensor, torch.nn.Parameter)
                    and param.is_floating_point() and param.is_contiguous()):
                kind = (group["state_dtype"] or param.dtype, param.device)
                by_kind.setdefault(kind, []).append((param, state))
        for (dtype, device), members in by_kind.items():
            shapes = [rule.state_shape(name, tuple(param.shape)) for param, _ in members]
            sizes = [math.prod(shape) for shape in shapes]
            buffer = torch.full((sum(sizes),), rule.initial_state(name, hyperparameters), dtype=dtype,
                                device=device)
            views = [view.view(shape) for view, shape in zip(buffer.split(sizes), shapes, strict=True)]
            if name in rule.state_from_param:  # (Schedule-Free's z starts at the param)
                torch._foreach_copy_(views, [param.detach() for param, _ in members])
            for (_, state), view in zip(members, views, strict=True):
                state[name] = view


def ensure_state(optimizer: Optimizer, param: torch.Tensor, state: dict[str, Any], group: Mapping[str, Any],
                 rule: Rule, hyperparameters: Mapping[str, Any]) -> list[str]:
    """Create the `step` counter and any missing active state; the keys created."""
    created = []
    if optimizer.counts_steps and "step" not in state:
        state["step"] = torch.tensor(0.0, dtype=_get_scalar_dtype())
        created.append("step")
    for name in rule.scalar_state:  # kept like `step`: a 0-dim float32 CPU tensor, as torch.optim.NAdam
        if name not in state:
            state[name] = torch.tensor(float(rule.initial_state(name, hyperparameters)), dtype=_get_scalar_dtype())
            created.append(name)
    for name in rule.active_state(hyperparameters):
        if state.get(name) is None and name in rule.axis_state and is_dtensor(param):
            state[name] = _axis_shards.new_state(rule, name, param, rule.initial_state(name, hyperparameters),
                                                 group["state_dtype"] or param.dtype)
            created.append(name)
        elif state.get(name) is None:
            if name in rule.state_from_param:
                state[name] = copy_of(param, group)
            else:
                state[name] = new_state(param, group, rule.initial_state(name, hyperparameters),
                                        rule.state_shape(name, tuple(param.shape)))
            created.append(name)
    return created


def new_state(param: torch.Tensor, group: Mapping[str, Any], value: float,
              shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """A state tensor like `param` filled with `value` (in `state_dtype` where the group sets one), or of
    `shape` where that is not the param's (per-row or per-column state: `Rule.state_shape`)."""
    state_dtype = group["state_dtype"]
    if shape is not None and shape != tuple(param.shape):
        return param.new_full(shape, value, dtype=state_dtype or param.dtype)
    if param.is_complex():  # (state_dtype is refused for complex params before the step)
        return torch.full_like(param, complex(value, value), memory_format=torch.preserve_format)
    return torch.full_like(param, value, dtype=state_dtype or param.dtype, memory_format=torch.preserve_format)


def copy_of(param: torch.Tensor, group: Mapping[str, Any]) -> torch.Tensor:
    """A state tensor that starts as a copy of `param` (`Rule.state_from_param`), in `state_dtype` if set."""
    dtype = group["state_dtype"] if not param.is_complex() and group["state_dtype"] is not None else param.dtype
    return param.detach().to(dtype=dtype, memory_format=torch.preserve_format, copy=True)


class _Signature(NamedTuple):
    """What a plan depends on in its params besides identity and dtype, where not their data pointers: the
    plans of groups with complex or DTensor params (whose state runs through per-step views) check it every
    step. Each field is one C-level pass over the tensors."""

    numels: np.ndarray
    #: `Tensor.get_device()`: -1 for CPU tensors
    devices: tuple[int, ...]
    #: True where every tensor is contiguous, else each tensor's `is_contiguous()`
    contiguous: bool | tuple[bool, ...]

    @classmethod
    def of(cls, tensors: list[torch.Tensor]) -> _Signature:
        contiguous = all(map(_is_contiguous, tensors)) or tuple(map(_is_contiguous, tensors))
        return cls(np.fromiter(map(_numel, tensors), np.int64, len(tensors)), tuple(map(_get_device, tensors)),
                   contiguous)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, _Signature) and self.devices == other.devices
                and self.contiguous == other.contiguous and np.array_equal(self.numels, other.numels))

    __hash__ = None  # type: ignore[assignment] (compared, never hashed)


class Plan:
    """What one param group's step needs that stays the same from step to step, built by `_build_plan`.

    A plan is used while it `fits` and its state `state_fits`; anything else rebuilds it, checking gradients
    and state against the params and choosing the backend again.

    Every step costs a few C-level passes over the tensors (≈ 0.1 µs per tensor each): the params' dtypes and
    data pointers, the gradients' byte counts, the identities of everything in `optimizer.state`, and the data
    pointers of the state tensors a backend's prepared tables point into. A param or state tensor whose data
    moved (`.data = ...`, `share_memory_()`, `model.half()`, `model.to(memory_format=...)`, `set_`, a growing
    `resize_`) has another data pointer. The plan keeps the storages it was built for alive, so that no other
    tensor can be allocated at one of its addresses while it lives: a tensor still at its address is still in
    the storage it was in, at least as large (docs/reliability.md lists what is checked and what is not).
    """

    def __init__(self, group: dict[str, Any], rule: Rule, active: tuple[str, ...], backend_name: str,
                 backend: Backend, params: list[torch.Tensor], dtypes: tuple[torch.dtype, ...], special: list[int],
                 tensors: list[list[torch.Tensor]], counters: StepCounters | None, prepared: Any) -> None:
        self.group = group
        self.rule = rule
        self.active = active
        self.backend_name = backend_name
        self.backend = backend
        self.params = params  # the same objects every step (`fits` compares them by identity)
        self.dtypes = dtypes
        #: params whose tensors are converted every step (DTensor to local shard, complex to real view)
        self.special = special
        count = len(params)
        if special:
            self.signature = _Signature.of(params)
        else:
            self.param_pointers = np.fromiter(map(_data_ptr, params), np.int64, count)
            self.param_bytes = np.fromiter(map(_nbytes_of, params), np.int64, count)
        #: per param, its active state tensors (as stored; `special` ones still DTensors or complex)
        self.tensors = tensors
        #: the backend's tables for these tensors (`backend.prepare`), or None: call `backend.step`
        self.prepared = prepared
        #: the params' `step` tensors (None for optimizers that keep none: SGD), as the backend advances them
        self.counters = counters
        # The state tensors, each param's together (they were created together, so they lie together in
        # memory: one pass over them touches each region once), and their addresses: the prepared tables write
        # through these, and a backend called with the tensors must not be handed state that no longer fits its
        # param (checked, before anything changes, when one moved). The counters check their own (`moved`).
        self.watched = list(itertools.chain.from_iterable(tensors if not special else ()))
        self.watched_pointers = np.fromiter(map(_data_ptr, self.watched), np.int64, len(self.watched))
        self._storages = [tensor.untyped_storage() for tensor in itertools.chain(
            params if not special else (), self.watched)]
        #: the state snapshot (`_state_snapshot`) this plan was last checked against; None until its first step
        self.state_objects: list[Any] | None = None

    def fits(self, group: dict[str, Any], rule: Rule, hyperparameters: dict[str, Any], params: list[torch.Tensor],
             grads: list[torch.Tensor], grad_bytes: np.ndarray | None) -> bool:
        """Whether these params of `group` and their gradients (of `grad_bytes` bytes each; None: some are
        sparse) still run on this plan as they are: the same params at the same data pointers (their dtypes,
        sizes, devices and layouts then follow), gradients of their byte counts."""
        if not (self.group is group and self.rule is rule and self.backend_name == group["backend"]
                and self.active == rule.active_state(hyperparameters) and len(params) == len(self.params)
                and all(map(operator.is_, params, self.params))):  # (the plan keeps its params: identity)
            return False
        count = len(params)
        if self.special:
            return (tuple(map(_dtype_of, params)) == self.dtypes and self.signature == _Signature.of(params)
                    and tuple(map(_dtype_of, grads)) == self.dtypes
                    and np.array_equal(np.fromiter(map(_numel, grads), np.int64, count), self.signature.numels)
                    and tuple(map(_get_device, grads)) == self.signature.devices)
        if not np.array_equal(np.fromiter(map(_data_ptr, params), np.int64, count), self.param_pointers):
            return False
        if grad_bytes is None:
            return all(grad.shape == param.shape and grad.dtype == param.dtype and grad.device == param.device
                       for param, grad in zip(params, grads, strict=True))
        # a gradient of the param's dtype and size has its byte count (`param.grad = ...` checks the device)
        return np.array_equal(grad_bytes, self.param_bytes)

    def state_fits(self, unchanged: _StateComparison) -> bool:
        """Whether `optimizer.state` holds the same objects, and the step counters and state tensors are where
        they were (`share_memory_()`, `.data = ...`, `set_` and a growing `resize_` move them)."""
        return (unchanged(self.state_objects) and (self.counters is None or not self.counters.moved())
                and np.array_equal(np.fromiter(map(_data_ptr, self.watched), np.int64, len(self.watched)),
                                   self.watched_pointers))

    def backend_tensors(self, params: list[torch.Tensor], grads: list[torch.Tensor]) -> BackendTensors:
        """The params, gradients and state as the backend takes them: DTensors as their local shards, complex
        tensors as `torch.view_as_real` views (views sharing the storage, made anew every step)."""
        if not self.special:
            return BackendTensors(params, grads, self.tensors)
        backend_params, backend_grads, tensors = list(params), list(grads), list(self.tensors)
        for i in self.special:
            param, grad, state = local_shards(params[i], grads[i], tensors[i], self._placements(params[i]))
            if self.dtypes[i].is_complex:
                param, grad = torch.view_as_real(param), torch.view_as_real(grad)
                state = [torch.view_as_real(tensor) for tensor in state]
            backend_params[i], backend_grads[i], tensors[i] = param, grad, state
        return BackendTensors(backend_params, backend_grads, tensors)

    def _placements(self, param: torch.Tensor) -> list[Any] | None:
        """The placements each active state tensor of DTensor `param` must have (None: the param's, for all)."""
        if not self.rule.axis_state or not is_dtensor(param):
            return None
        return [_axis_shards.state_placements(self.rule, name, param) if name in self.rule.axis_state
                else param.placements for name in self.active]

    def shard_sums(self, params: list[torch.Tensor]) -> dict[str, Any]:
        """The `all_reduce` a backend applies to a reducing rule's per-tensor sums (one row per param) when some
        of `params` are DTensor shards: each such row is summed over the mesh dimensions the param is sharded
        on, so every shard finishes with the whole tensor's sums (LAMB's ‖θ‖ and ‖u‖). `{}` when there is
        nothing to do.

        Every rank has the same params with gradients (FSDP2 gives an empty shard an empty gradient), so the
        collectives match across the group.
        """
        if not self.special:
            return {}
        hooks = {}
        if self.rule.axis_reduce is not None:
            axis_finish = _axis_shards.axis_finish_hook(self.rule, params)
            if axis_finish is not None:
                hooks["axis_finish"] = axis_finish
        if not self.rule.reductions:
            return hooks
        by_group: dict[Any, list[int]] = defaultdict(list)
        for row, param in enumerate(params):
            if is_dtensor(param):
                for dim, placement in enumerate(param.placements):
                    if placement.is_shard():
                        by_group[param.device_mesh.get_group(dim)].append(row)
        if not by_group:
            return hooks

        def all_reduce(sums: torch.Tensor) -> torch.Tensor:
            sums = sums.clone()
            for group, rows in by_group.items():
                partial = sums[rows]
                torch.distributed.all_reduce(partial, group=group)
                sums[rows] = partial
            return sums

        return {**hooks, "all_reduce": all_reduce}


def local_shards(param: torch.Tensor, grad: torch.Tensor, tensors: list[torch.Tensor],
                 placements: list[Any] | None = None) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """This rank's local tensors when `param` is a `DTensor` (FSDP2's `fully_shard`), else the arguments as given.

    An elementwise rule updates a sharded param shard by shard with no communication (a reducing rule's
    per-tensor sums are all-reduced over the shard group first, see `Plan.shard_sums`); the local tensors share
    the DTensors' storage, so backends update them in place like any tensor (the fused ones need
    real data pointers, which a DTensor does not have). The state stays a DTensor, as in `torch.optim`, so
    distributed checkpoints save it sharded. `placements`, where given, are those of each state tensor (per-row
    and per-column state: `_axis_shards.state_placements`); by default the param's.
    """
    if not is_dtensor(param):
        return param, grad, tensors
    expected = [param.placements, *(placements or [param.placements] * len(tensors))]
    for (name, tensor), wanted in zip((("gradient", grad), *(("state", tensor) for tensor in tensors)), expected,
                                      strict=True):
        if not is_dtensor(tensor) or tuple(tensor.placements) != tuple(wanted):
            actual = getattr(tensor, "placements", "a plain tensor")
            raise ValueError(f"a DTensor param with placements {param.placements} has a {name} with placements "
                             f"{actual} (expected {wanted}): optimlab updates DTensors shard by shard and needs "
                             f"them to match")
    return param.to_local(), grad.to_local(), [tensor.to_local() for tensor in tensors]


def is_dtensor(tensor: Any) -> bool:
    """Whether `tensor` is a `DTensor`, without importing torch.distributed (none exists before it is imported)."""
    dtensor_module = sys.modules.get("torch.distributed.tensor")
    return dtensor_module is not None and isinstance(tensor, dtensor_module.DTensor)
