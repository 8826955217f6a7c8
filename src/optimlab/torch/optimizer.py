"""The `torch.optim.Optimizer` subclass every optimlab PyTorch optimizer is: bookkeeping only, no math.

Per step, for each param group: pick the rule (`rule_for`), create missing state (PyTorch's keys, `step` a
float32 0-dim tensor as PyTorch keeps it), hand the params, gradients, state and the step counts they are
about to reach — as `torch.view_as_real` views for complex params — to a backend (`optimlab.backends`),
which evaluates `rule.update`, and advance `step` once it returned (a failed step changes nothing). Around
that it does what `torch.optim` does: closures, step hooks (the base class wraps `step`), AMP's
`grad_scale`/`found_inf`, sparse gradients (Adagrad), state dicts that load into and from `torch.optim`,
plus optimlab's opt-ins `state_dtype` and `skip_nonfinite`.

What does not change from step to step is kept per group in a `_Plan`; before anything changes, every step
checks that each plan still fits what the backend writes through (data pointers of params, step counters and
state, gradients' sizes), and rebuilds it — choosing the backend again — or raises torch's error
(docs/reliability.md).
"""

from __future__ import annotations

import dataclasses
import importlib
import itertools
import math
import operator
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.optim.optimizer import _get_scalar_dtype, _use_grad_for_differentiable

from ..backends import BACKENDS, Backend, resolve
from ..rules import Rule
from ._counters import StepCounters

#: Optional backends, tried on first use; a missing dependency (numba, triton) just leaves them out.
OPTIONAL_BACKENDS = ("optimlab.backends.triton_gpu", "optimlab.backends.numba_cpu")
_loaded_optional = False

#: Group keys optimlab adds to PyTorch's; a state dict without them (written by `torch.optim`) gets the
#: optimizer's own settings.
OPTIMLAB_KEYS = ("eps_root", "backend", "state_dtype", "skip_nonfinite")

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


def load_optional_backends() -> list[str]:
    """Import the optional backends once (each registers itself if its dependency is installed).

    Returns the registered backend names in `backend="auto"` preference order.
    """
    global _loaded_optional
    if not _loaded_optional:
        for module in OPTIONAL_BACKENDS:
            try:
                importlib.import_module(module)
            except ImportError:
                continue
        _loaded_optional = True
    return list(BACKENDS)


class Optimizer(torch.optim.Optimizer):
    """Base class of optimlab's PyTorch optimizers (a `torch.optim.Optimizer`).

    Subclasses give `__init__` PyTorch's signature, build `defaults` (PyTorch's group keys plus
    `OPTIMLAB_KEYS`) and say which rule a group runs (`rule_for`).

    `skip_nonfinite=True` (a group key): when any gradient of such a group is not finite, the whole step is
    skipped — no param, state or `step` changes in any group — and `skipped_steps` counts it.
    """

    #: PyTorch's name for the optimizer, used in error messages ("Adam does not support sparse gradients").
    torch_name: str = ""
    #: Whether PyTorch keeps a `step` counter in this optimizer's state (SGD does not).
    counts_steps: bool = True
    #: Whether a sparse gradient may run through the rule (Adagrad, as in PyTorch).
    supports_sparse: bool = False
    #: Group keys added in later PyTorch versions, with the values PyTorch's own `__setstate__` gives them when
    #: a state dict (written by an older PyTorch) lacks them: such state dicts load as in `torch.optim`.
    setstate_defaults: Mapping[str, Any] = {}

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]) -> None:
        load_optional_backends()
        self._step_supports_amp_scaling = True
        self.skipped_steps = 0
        self._plans: dict[int, _Plan] = {}
        super().__init__(params, defaults)

    # --- what subclasses define ------------------------------------------------------------------------

    def rule_for(self, group: Mapping[str, Any]) -> tuple[Rule, dict[str, Any]]:
        """The rule a param group runs and its hyperparameters, read from the group's keys."""
        raise NotImplementedError

    # --- groups --------------------------------------------------------------------------------------

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """`torch.optim.Optimizer.add_param_group`, with the group's hyperparameters validated first."""
        self._validate_group({**self.defaults, **param_group})
        super().add_param_group(param_group)

    def _validate_group(self, group: Mapping[str, Any]) -> None:
        rule, hyperparameters = self.rule_for(group)
        rule.validate(hyperparameters)
        for flag in ("capturable", "differentiable"):
            if group.get(flag):
                raise ValueError(f"Invalid {flag}: {group[flag]!r} (optimlab optimizers do not support {flag}=True)")
        backend = group["backend"]
        if not isinstance(backend, str) or (backend != "auto" and backend not in BACKENDS):
            raise ValueError(f"Invalid backend: {backend!r} (expected 'auto' or one of {load_optional_backends()})")
        state_dtype = group["state_dtype"]
        if state_dtype is not None and not (isinstance(state_dtype, torch.dtype) and state_dtype.is_floating_point):
            raise ValueError(f"Invalid state_dtype: {state_dtype!r} (expected None or a floating torch.dtype)")
        if not isinstance(group["skip_nonfinite"], bool):
            raise ValueError(f"Invalid skip_nonfinite: {group['skip_nonfinite']!r} (expected True or False)")

    # --- the step ------------------------------------------------------------------------------------

    @_use_grad_for_differentiable
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One update of every param that has a gradient; `closure` re-evaluates the loss (under grad).

        Under `torch.amp.GradScaler`, gradients arrive scaled by `self.grad_scale` and the step is skipped
        (state untouched, `step` not advanced) where `self.found_inf` is non-zero.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        found_inf = getattr(self, "found_inf", None)
        if found_inf is not None and bool(found_inf.any()):
            return loss
        grad_scale = getattr(self, "grad_scale", None)
        if isinstance(grad_scale, torch.Tensor):
            grad_scale = grad_scale.reshape(())
        # Everything that can fail (sparse gradients, gradients or state that do not fit their params, the
        # backend's choice) is checked for every group before anything changes.
        work: list[_GroupStep] = []
        for index, group in enumerate(self.param_groups):
            params, grads, grad_bytes = self._params_with_grad(group)
            if params:
                rule, hyperparameters = self.rule_for(group)
                has_sparse = grad_bytes is None
                plan = self._plans.get(index)
                if plan is not None and plan.fits(group, rule, hyperparameters, params, grads, grad_bytes):
                    backend, dtypes = plan.backend, plan.dtypes
                else:
                    plan = None
                    dtypes = tuple(map(_dtype_of, params))
                    _check_gradients(params, grads)
                    real_params = params
                    if any(map(_dtype_is_complex, dtypes)):
                        real_params = [torch.view_as_real(param) if param.is_complex() else param
                                       for param in params]
                    backend = resolve(group["backend"], rule, hyperparameters, real_params, group["state_dtype"])
                work.append(_GroupStep(index, group, rule, hyperparameters, backend, params, grads, dtypes,
                                       has_sparse, plan))
        state_ids = self._state_ids() if work else ()
        for each in work:
            if each.plan is not None and not each.plan.state_fits(state_ids):
                each.plan = None
            if each.plan is None:
                self._check_state(each.params, each.rule.active_state(each.hyperparameters))
        if self._has_nonfinite_gradient(work):
            self.skipped_steps += 1
            return loss
        rebuilt = False
        for each in work:
            if each.plan is None:
                each.plan, each.created = self._build_plan(each.group, each.rule, each.hyperparameters, each.params,
                                                         each.dtypes, each.backend)
                self._plans[each.index] = each.plan
                rebuilt = True
        for each in work:
            self._update_group(each, grad_scale)
        if rebuilt:
            # Rebuilt plans created state, which changed the snapshot. Every plan used in this step still
            # matches the state (a group's state creation touches only its own params' state), so all of them
            # take the new snapshot.
            snapshot = self._state_snapshot()
            for each in work:
                self._plans[each.index].state_objects, self._plans[each.index].state_ids = snapshot
        return loss

    def _check_state(self, params: list[torch.Tensor], active: tuple[str, ...]) -> None:
        """Raise PyTorch's error where a param's existing state does not fit it (before anything changes).

        A param grown through `param.data = ...` after its state exists, a state tensor replaced by one of
        another shape or on another device: PyTorch's update raises a size (or device) mismatch there.
        """
        for position, param in enumerate(params):
            state = self.state.get(param)
            for name in active if state else ():
                tensor = state.get(name)
                if not isinstance(tensor, torch.Tensor):
                    continue
                if tensor.shape != param.shape:
                    raise RuntimeError(f"{self.torch_name}: the size of param {position} of its group "
                                       f"{tuple(param.shape)} must match the size of its state {name!r} "
                                       f"{tuple(tensor.shape)}")
                if tensor.device != param.device:
                    raise RuntimeError(f"{self.torch_name}: expected param {position} of its group and its state "
                                       f"{name!r} on the same device, got {param.device} and {tensor.device}")

    def _state_snapshot(self) -> tuple[list[Any], tuple[int, ...]]:
        """`self.state`, its params, their state dicts and the values in those, and the ids of all of them.

        A plan keeps these objects alive, so none of their ids can be taken by another object while it lives:
        equal ids mean nothing in the state was added, removed or replaced since (a `load_state_dict`, a new
        param's state, `optimizer.state[p]["step"] = ...`, `optimizer.state = defaultdict(dict)`...). Values
        changed in place (`state["step"].fill_(0)`) need no check: the plan keeps tensors, not their values.
        """
        dicts = list(self.state.values())
        objects = [self.state, *self.state, *dicts, *itertools.chain.from_iterable(map(dict.values, dicts))]
        return objects, tuple(map(id, objects))

    def _state_ids(self) -> tuple[int, ...]:
        """The ids `_state_snapshot` gives, without listing the objects (what every step compares)."""
        dicts = list(self.state.values())
        return tuple(map(id, itertools.chain((self.state,), self.state, dicts,
                                             itertools.chain.from_iterable(map(dict.values, dicts)))))

    def _params_with_grad(self, group: Mapping[str, Any]
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
        if grad_bytes is not None and (group["state_dtype"] is None or not any(map(_is_complex, params))):
            return params, grads, grad_bytes
        for param, grad in zip(params, grads, strict=True):
            if grad.is_sparse:
                if not self.supports_sparse:
                    raise RuntimeError(f"{self.torch_name} does not support sparse gradients")
                if group["weight_decay"] != 0:
                    raise RuntimeError("weight_decay option is not compatible with sparse gradients")
                if param.is_complex():
                    raise RuntimeError(f"{self.torch_name}: sparse gradients of complex params are not supported")
            if param.is_complex() and group["state_dtype"] is not None:
                raise ValueError(f"Invalid state_dtype: {group['state_dtype']} (not supported for complex params)")
        return params, grads, grad_bytes

    @staticmethod
    def _has_nonfinite_gradient(work: list[_GroupStep]) -> bool:
        """Whether a group with `skip_nonfinite=True` has a non-finite gradient (one host sync per device)."""
        finite_by_device: dict[torch.device, list[torch.Tensor]] = defaultdict(list)
        for each in work:
            if each.group["skip_nonfinite"]:
                for grad in each.grads:
                    finite_by_device[grad.device].append((grad._values() if grad.is_sparse else grad).isfinite().all())
        return not all(bool(torch.stack(flags).all()) for flags in finite_by_device.values())

    def _update_group(self, work: _GroupStep, grad_scale: Any) -> None:
        """Run the backend, then advance the group's step counters (a failed step changes nothing).

        The per-param work that does not change from step to step (state lookups and creation, which params
        are complex or DTensors, the state tensor lists, the backend's prepared tables) lives in the group's
        `_Plan`, which `step` checked or rebuilt (`work.created`: the state keys that rebuild created per param).
        """
        rule, hyperparameters, backend = work.rule, work.hyperparameters, work.backend
        params, grads, has_sparse, plan = work.params, work.grads, work.has_sparse, work.plan
        dtypes = work.dtypes
        steps: float | list[float]
        if plan.counters is None:
            # PyTorch's SGD keeps no counter; the momentum rule only asks whether its buffer is new.
            steps = [1 if names else 2 for names in work.created] if any(work.created) else 2
        else:
            # the counts the counters take once the update succeeded: a step that raises advances none
            counts = plan.counters.next_counts()
            steps = counts[0] if counts.count(counts[0]) == len(counts) else counts
        # per-param scalar state (NAdam's mu_product) advances in `_coefficients`: its values, to put back if the
        # step fails
        scalar_state = [(tensor, tensor.clone()) for param in params
                        for tensor in map(self.state[param].__getitem__, rule.scalar_state)]
        try:
            backend_params, backend_grads, tensors = params, grads, plan.tensors
            if plan.special:
                backend_params, backend_grads, tensors = list(params), list(grads), list(tensors)
                for i in plan.special:
                    param, grad, state = local_shards(params[i], grads[i], tensors[i])
                    if dtypes[i].is_complex:
                        param, grad = torch.view_as_real(param), torch.view_as_real(grad)
                        state = [torch.view_as_real(tensor) for tensor in state]
                    backend_params[i], backend_grads[i], tensors[i] = param, grad, state
            if isinstance(steps, list):
                # params sharing a step count share the per-step coefficients: one backend call per count
                buckets: dict[float, list[int]] = defaultdict(list)
                for i, step in enumerate(steps):
                    buckets[step].append(i)
            else:
                buckets = {steps: list(range(len(params)))}
            for coefficients, indices in self._coefficients(rule, hyperparameters, params, buckets):
                if len(indices) == len(params) and not has_sparse:
                    if plan.prepared is not None:
                        plan.prepared.step(coefficients, backend_grads, grad_scale)
                    else:
                        backend.step(rule, hyperparameters, coefficients, backend_params, backend_grads, tensors,
                                     grad_scale, **_shard_sums(rule, params, plan.special))
                    continue
                dense = [i for i in indices if not backend_grads[i].is_sparse]
                if dense:
                    backend.step(rule, hyperparameters, coefficients, [backend_params[i] for i in dense],
                                 [backend_grads[i] for i in dense], [tensors[i] for i in dense], grad_scale,
                                 **_shard_sums(rule, [params[i] for i in dense], plan.special))
                for i in indices:
                    if backend_grads[i].is_sparse:
                        self._sparse_update(rule, hyperparameters, backend, coefficients, backend_params[i],
                                            backend_grads[i], tensors[i], grad_scale)
        except BaseException:
            # a failed step changes nothing: the state it created goes, the counters have not advanced
            for tensor, value in scalar_state:
                tensor.copy_(value)
            for param, names in zip(params, work.created, strict=False):  # (none created by a plan in use)
                for name in names:
                    del self.state[param][name]
            if any(work.created):
                del self._plans[work.index]  # it holds the state just dropped
            raise
        if plan.counters is not None:
            plan.counters.advance()

    def _coefficients(self, rule: Rule, hyperparameters: dict[str, Any], params: list[torch.Tensor],
                      buckets: Mapping[float, list[int]]) -> list[tuple[dict[str, Any], list[int]]]:
        """The per-step coefficients of each bucket of params, advancing per-param scalar state first.

        For rules with scalar state (NAdam's `mu_product`) each param's 0-dim tensors are advanced in place,
        in their own float32 arithmetic as `torch.optim` does, and params are bucketed again by the values
        (all equal unless params joined at different steps); `coefficients` gets them as Python floats, the
        `_get_value(mu_product)` of `torch.optim`.
        """
        if not rule.scalar_state:
            return [(rule.coefficients(step, **hyperparameters), indices) for step, indices in buckets.items()]
        by_values: dict[tuple[float, ...], list[int]] = defaultdict(list)
        for step, indices in buckets.items():
            for i in indices:
                state = self.state[params[i]]
                advanced = rule.advance_scalar_state(step, state, hyperparameters)
                for name in rule.scalar_state:
                    state[name].copy_(advanced[name])
                by_values[(step, *(state[name].item() for name in rule.scalar_state))].append(i)
        return [(rule.coefficients(step, **hyperparameters, **dict(zip(rule.scalar_state, values, strict=True))),
                 indices) for (step, *values), indices in by_values.items()]

    def _build_plan(self, group: dict[str, Any], rule: Rule, hyperparameters: dict[str, Any],
                    params: list[torch.Tensor], dtypes: tuple[torch.dtype, ...],
                    backend: Backend) -> tuple[_Plan, list[list[str]]]:
        """The group's plan for these params, creating missing state; also the state keys created per param."""
        active = rule.active_state(hyperparameters)
        keeps_state = self.counts_steps or bool(active)
        states = [self.state[param] if keeps_state else {} for param in params]
        before = [{name for name, value in state.items() if value is not None} for state in states]
        self._allocate_state(params, states, group, rule, hyperparameters)
        for param, state in zip(params, states, strict=True):
            self._ensure_state(param, state, group, rule, hyperparameters)
        created = [[name for name in state if name not in known] for state, known in zip(states, before, strict=True)]
        special = [i for i, param in enumerate(params) if dtypes[i].is_complex or _is_dtensor(param)]
        counters = None
        if self.counts_steps:
            # a backend may advance the counters faster than the portable `torch._foreach_add_`
            steps = [state["step"] for state in states]
            offer = getattr(backend, "step_counters", None)
            counters = offer(steps) if offer is not None else None
            if counters is None:
                counters = StepCounters(steps)
        tensors = [[state[name] for name in active] for state in states]
        prepare = getattr(backend, "prepare", None)
        # the backend's tables hold the state's data pointers: only for plain tensors, checked every step
        prepared = prepare(rule, hyperparameters, params, tensors) if prepare is not None and not special else None
        # the state snapshot is filled in by `step` once every group of this step has created its state
        plan = _Plan(group, rule, active, group["backend"], backend, params, dtypes, special, tensors, counters,
                     prepared)
        return plan, created

    @staticmethod
    def _allocate_state(params: list[torch.Tensor], states: list[dict[str, Any]], group: Mapping[str, Any],
                        rule: Rule, hyperparameters: Mapping[str, Any]) -> None:
        """Create the missing state of plain contiguous real params as views of one buffer per name and dtype.

        The values `_new_state` gives, in one allocation per state name: the state tensors' own metadata (their
        tensor objects) then lies together in memory rather than between their data, so the pass over their
        data pointers every step (`_Plan.state_fits`) costs a third as much. Like any views they share their
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
                sizes = [param.numel() for param, _ in members]
                buffer = torch.full((sum(sizes),), rule.initial_state(name, hyperparameters), dtype=dtype,
                                    device=device)
                for (param, state), view in zip(members, buffer.split(sizes), strict=True):
                    state[name] = view.view(param.shape)

    @staticmethod
    def _sparse_update(rule: Rule, hyperparameters: dict[str, Any], backend: Backend, coefficients: dict[str, Any],
                       param: torch.Tensor, grad: torch.Tensor, tensors: list[torch.Tensor], grad_scale: Any) -> None:
        """The rule on the rows a sparse gradient touches: gather them, run the backend, scatter back.

        Elementwise rules whose untouched elements must stay as they are (Adagrad without weight decay, as
        PyTorch requires) give exactly PyTorch's sparse update this way.
        """
        grad = grad.coalesce()
        index = tuple(grad._indices())
        rows = param[index]
        state_rows = [tensor[index] for tensor in tensors]
        backend.step(rule, hyperparameters, coefficients, [rows], [grad._values()], [state_rows], grad_scale)
        param.index_put_(index, rows)
        for tensor, updated in zip(tensors, state_rows, strict=True):
            tensor.index_put_(index, updated)

    def _ensure_state(self, param: torch.Tensor, state: dict[str, Any], group: Mapping[str, Any], rule: Rule,
                      hyperparameters: Mapping[str, Any]) -> list[str]:
        """Create the `step` counter and any missing active state; the keys created."""
        created = []
        if self.counts_steps and "step" not in state:
            state["step"] = torch.tensor(0.0, dtype=_get_scalar_dtype())
            created.append("step")
        for name in rule.scalar_state:  # kept like `step`: a 0-dim float32 CPU tensor, as torch.optim.NAdam
            if name not in state:
                state[name] = torch.tensor(float(rule.initial_state(name, hyperparameters)), dtype=_get_scalar_dtype())
                created.append(name)
        for name in rule.active_state(hyperparameters):
            if state.get(name) is None:
                state[name] = self._new_state(param, group, rule.initial_state(name, hyperparameters))
                created.append(name)
        return created

    @staticmethod
    def _new_state(param: torch.Tensor, group: Mapping[str, Any], value: float) -> torch.Tensor:
        state_dtype = group["state_dtype"]
        if param.is_complex():  # (state_dtype is refused for complex params before the step)
            return torch.full_like(param, complex(value, value), memory_format=torch.preserve_format)
        return torch.full_like(param, value, dtype=state_dtype or param.dtype, memory_format=torch.preserve_format)

    def _initialize_all_state(self) -> None:
        """Create every param's state now, as PyTorch's Adagrad does in its constructor."""
        for group in self.param_groups:
            rule, hyperparameters = self.rule_for(group)
            for param in group["params"]:
                self._ensure_state(param, self.state[param], group, rule, hyperparameters)

    # --- state dicts ---------------------------------------------------------------------------------

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Fill group keys a `torch.optim` state dict lacks, make `step` a tensor, apply `state_dtype`.

        Keys of later PyTorch versions get PyTorch's values (`setstate_defaults`), optimlab's own keys
        (`OPTIMLAB_KEYS`) this optimizer's settings.
        """
        super().__setstate__(state)
        self.__dict__.setdefault("skipped_steps", 0)
        self._plans = {}  # plans hold the previous state's tensors: drop them now, not at the next step
        self._step_supports_amp_scaling = True
        for group in self.param_groups:
            for key, value in {**self.defaults, **self.setstate_defaults}.items():
                group.setdefault(key, value)
            scalars = ("step", *self.rule_for(group)[0].scalar_state)
            for param in group["params"]:
                param_state = self.state.get(param)
                if not param_state:
                    continue
                for key in scalars:
                    if key in param_state and not torch.is_tensor(param_state[key]):
                        param_state[key] = torch.tensor(float(param_state[key]), dtype=_get_scalar_dtype())
                if group["state_dtype"] is not None and not param.is_complex():
                    for key, value in param_state.items():
                        if key not in scalars and torch.is_tensor(value):
                            param_state[key] = value.to(group["state_dtype"])

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """`torch.optim.Optimizer.load_state_dict`, after checking the whole state dict fits this optimizer.

        Accepts state dicts written by `torch.optim` (optimlab's own group keys then take this optimizer's
        settings). Each group keeps its current `backend`: where the math runs belongs to this machine, not to
        the checkpoint (one written with `backend="triton"` loads on a CPU). A state dict that does not fit —
        group or param counts, missing or invalid hyperparameters, missing state, wrong shapes or dtype
        kinds — raises `ValueError` and changes nothing.
        """
        self._check_state_dict(state_dict)
        backends = [group["backend"] for group in self.param_groups]
        super().load_state_dict(state_dict)
        for group, backend in zip(self.param_groups, backends, strict=True):
            group["backend"] = backend

    def _check_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        if not isinstance(state_dict, Mapping) or not {"state", "param_groups"} <= set(state_dict):
            raise ValueError("Invalid state_dict: expected a mapping with keys 'state' and 'param_groups'")
        saved_groups, saved_state = state_dict["param_groups"], state_dict["state"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"Invalid state_dict: {len(saved_groups)} param groups, this optimizer has "
                             f"{len(self.param_groups)}")
        params_by_id = {}
        for index, (saved, group) in enumerate(zip(saved_groups, self.param_groups, strict=True)):
            if not isinstance(saved, Mapping):
                raise ValueError(f"Invalid state_dict: param group {index} is a {type(saved).__name__}, not a mapping")
            if len(saved.get("params", ())) != len(group["params"]):
                raise ValueError(f"Invalid state_dict: param group {index} has {len(saved.get('params', ()))} "
                                 f"params, this optimizer's has {len(group['params'])}")
            missing = [key for key in self.defaults if key not in saved and key not in OPTIMLAB_KEYS
                       and key not in self.setstate_defaults]
            if missing:
                raise ValueError(f"Invalid state_dict: param group {index} lacks {missing}")
            merged = {**self.defaults, **self.setstate_defaults, **saved, "backend": group["backend"]}
            try:
                self._validate_group(merged)
            except (TypeError, ValueError) as error:
                raise ValueError(f"Invalid state_dict: param group {index}: {error}") from error
            rule, hyperparameters = self.rule_for(merged)
            for saved_id, param in zip(saved["params"], group["params"], strict=True):
                params_by_id[saved_id] = (index, param, rule.active_state(hyperparameters), rule.state_names,
                                          rule.scalar_state)
        for saved_id, param_state in saved_state.items():
            if saved_id not in params_by_id:
                raise ValueError(f"Invalid state_dict: state for param {saved_id!r}, which no param group holds")
            index, param, active, state_names, scalars = params_by_id[saved_id]
            where = f"state of param {saved_id!r} (group {index})"
            if not isinstance(param_state, Mapping):
                raise ValueError(f"Invalid state_dict: {where} is a {type(param_state).__name__}, not a mapping")
            if param_state:
                required = (("step",) if self.counts_steps else ()) + tuple(active) + tuple(scalars)
                missing = [key for key in required if param_state.get(key) is None]
                if missing:
                    raise ValueError(f"Invalid state_dict: {where} lacks {missing}")
            for key, value in param_state.items():
                # other keys are kept as they are, as `torch.optim` keeps them: no step reads them
                if key in scalars:
                    _check_scalar_state(where, key, value)
                elif key == "step" or key in state_names:
                    _check_state_value(where, key, value, param)


@dataclasses.dataclass
class _GroupStep:
    """One param group's part of a `step`: what `step` checked, the backend it chose, the plan it runs."""

    index: int
    group: dict[str, Any]
    rule: Rule
    hyperparameters: dict[str, Any]
    backend: Backend
    params: list[torch.Tensor]
    grads: list[torch.Tensor]
    dtypes: tuple[torch.dtype, ...]
    has_sparse: bool
    #: None until `step` builds it (the group's plan did not fit, or there was none)
    plan: _Plan | None
    #: per param, the state keys the plan's build created (dropped again if the step fails)
    created: list[list[str]] = dataclasses.field(default_factory=list)


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


class _Plan:
    """What one param group's step needs that stays the same from step to step, built by `_build_plan`.

    On 10,000 small tensors, finding each param's state and step counter, checking which params are complex
    or DTensors, choosing the backend and listing the state tensors cost tens of milliseconds per step in
    Python: more than the fused kernel. A plan keeps all of that and is used while it `fits` and its state
    `state_fits`; anything else rebuilds it, checking gradients and state against the params and choosing the
    backend again (so `backend="auto"` falls back as on the first step).

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
        self.params = params  # kept alive, so that `param_ids` cannot be reused by other tensors
        self.param_ids = tuple(map(id, params))
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
        self.state_objects: list[Any] = []
        self.state_ids: tuple[int, ...] | None = None

    def fits(self, group: dict[str, Any], rule: Rule, hyperparameters: dict[str, Any], params: list[torch.Tensor],
             grads: list[torch.Tensor], grad_bytes: np.ndarray | None) -> bool:
        """Whether these params of `group` and their gradients (of `grad_bytes` bytes each; None: some are
        sparse) still run on this plan as they are: the same params at the same data pointers (their dtypes,
        sizes, devices and layouts then follow), gradients of their byte counts."""
        if not (self.group is group and self.rule is rule and self.backend_name == group["backend"]
                and self.active == rule.active_state(hyperparameters) and self.param_ids == tuple(map(id, params))):
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

    def state_fits(self, state_ids: tuple[int, ...]) -> bool:
        """Whether `optimizer.state` holds the same objects, and the step counters and state tensors are where
        they were (`share_memory_()`, `.data = ...`, `set_` and a growing `resize_` move them)."""
        return (self.state_ids == state_ids and (self.counters is None or not self.counters.moved())
                and np.array_equal(np.fromiter(map(_data_ptr, self.watched), np.int64, len(self.watched)),
                                   self.watched_pointers))


def local_shards(param: torch.Tensor, grad: torch.Tensor,
                 tensors: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """This rank's local tensors when `param` is a `DTensor` (FSDP2's `fully_shard`), else the arguments as given.

    An elementwise rule updates a sharded param shard by shard with no communication (a reducing rule's
    per-tensor sums are all-reduced over the shard group first, see `_shard_sums`); the local tensors share
    the DTensors' storage, so backends update them in place like any tensor (the fused ones need
    real data pointers, which a DTensor does not have). The state stays a DTensor, as in `torch.optim`, so
    distributed checkpoints save it sharded.
    """
    if not _is_dtensor(param):
        return param, grad, tensors
    for name, tensor in (("gradient", grad), *(("state", tensor) for tensor in tensors)):
        if not _is_dtensor(tensor) or tensor.placements != param.placements:
            placements = getattr(tensor, "placements", "a plain tensor")
            raise ValueError(f"a DTensor param with placements {param.placements} has a {name} with placements "
                             f"{placements}: optimlab updates DTensors shard by shard and needs them to match")
    return param.to_local(), grad.to_local(), [tensor.to_local() for tensor in tensors]


def _shard_sums(rule: Rule, params: list[torch.Tensor], special: list[int]) -> dict[str, Any]:
    """The `all_reduce` a backend applies to a reducing rule's per-tensor sums (one row per param) when some
    params are DTensor shards: each such row is summed over the mesh dimensions the param is sharded on, so
    every shard finishes with the whole tensor's sums (LAMB's ‖θ‖ and ‖u‖). `{}` when there is nothing to do.

    Every rank has the same params with gradients (FSDP2 gives an empty shard an empty gradient), so the
    collectives match across the group.
    """
    if not rule.reductions or not special:
        return {}
    by_group: dict[Any, list[int]] = defaultdict(list)
    for row, param in enumerate(params):
        if _is_dtensor(param):
            for dim, placement in enumerate(param.placements):
                if placement.is_shard():
                    by_group[param.device_mesh.get_group(dim)].append(row)
    if not by_group:
        return {}

    def all_reduce(sums: torch.Tensor) -> torch.Tensor:
        sums = sums.clone()
        for group, rows in by_group.items():
            partial = sums[rows]
            torch.distributed.all_reduce(partial, group=group)
            sums[rows] = partial
        return sums

    return {"all_reduce": all_reduce}


def _is_dtensor(tensor: Any) -> bool:
    """Whether `tensor` is a `DTensor`, without importing torch.distributed (none exists before it is imported)."""
    dtensor_module = sys.modules.get("torch.distributed.tensor")
    return dtensor_module is not None and isinstance(tensor, dtensor_module.DTensor)


def _check_scalar_state(where: str, key: str, value: Any) -> None:
    """Per-param scalar state (NAdam's `mu_product`): a finite real number or a one-element real tensor."""
    number = value.item() if torch.is_tensor(value) and value.numel() == 1 and not value.is_complex() else value
    if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number):
        raise ValueError(f"Invalid state_dict: {where}: {key} must be a finite number, got {value!r}")


def _check_state_value(where: str, key: str, value: Any, param: torch.Tensor) -> None:
    """Refuse, at load time, a `step` or rule state value that a step could not use.

    A `step` tensor keeps its dtype, as in `torch.optim` (an int64 one is advanced in int64); a sparse or
    other non-strided state tensor is refused: `torch.optim` loads it and then fails in the middle of a step.
    """
    if torch.is_tensor(value) and value.layout != torch.strided:
        raise ValueError(f"Invalid state_dict: {where}: {key} is a {value.layout} tensor (expected a dense one)")
    if key == "step":
        number = value.item() if torch.is_tensor(value) and value.numel() == 1 else value
        if isinstance(number, bool) or not isinstance(number, (int, float)) or not 0 <= number < math.inf:
            raise ValueError(f"Invalid state_dict: {where}: step must be a finite count >= 0, got {value!r}")
        return
    if value is None:
        return
    if not torch.is_tensor(value):
        raise ValueError(f"Invalid state_dict: {where}: {key} must be a tensor, got {type(value).__name__}")
    if value.shape != param.shape:
        raise ValueError(f"Invalid state_dict: {where}: {key} has shape {tuple(value.shape)}, "
                         f"the param {tuple(param.shape)}")
    kind_ok = value.is_complex() if param.is_complex() else value.is_floating_point()
    if not kind_ok:
        raise ValueError(f"Invalid state_dict: {where}: {key} has dtype {value.dtype}, the param {param.dtype}")
