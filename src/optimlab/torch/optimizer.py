"""The `torch.optim.Optimizer` subclass every optimlab PyTorch optimizer is: bookkeeping only, no math.

Per step, for each param group: pick the rule (`rule_for`), create missing state (PyTorch's keys, `step` a
float32 0-dim tensor as PyTorch keeps it), hand the params, gradients, state and the step counts they are
about to reach — as `torch.view_as_real` views for complex params — to a backend (`optimlab.backends`),
which evaluates `rule.update`, and advance `step` once it returned (a failed step changes nothing). Around
that it does what `torch.optim` does: closures, step hooks (the base class wraps `step`), AMP's
`grad_scale`/`found_inf`, sparse gradients (Adagrad), state dicts that load into and from `torch.optim`,
plus optimlab's opt-ins `state_dtype` and `skip_nonfinite`.
"""

from __future__ import annotations

import importlib
import itertools
import math
import operator
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

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
_is_sparse = operator.attrgetter("is_sparse")
_is_complex = torch.Tensor.is_complex
_dtype_of = operator.attrgetter("dtype")
_dtype_is_complex = operator.attrgetter("is_complex")


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
        # Everything that can fail (sparse gradients, the backend's choice) is checked before anything changes.
        work = []
        for index, group in enumerate(self.param_groups):
            params, grads, has_sparse = self._params_with_grad(group)
            if params:
                rule, hyperparameters = self.rule_for(group)
                dtypes = tuple(map(_dtype_of, params))
                real_params = params
                if any(map(_dtype_is_complex, dtypes)):
                    real_params = [torch.view_as_real(param) if param.is_complex() else param for param in params]
                backend = resolve(group["backend"], rule, hyperparameters, real_params, group["state_dtype"])
                work.append((index, group, rule, hyperparameters, backend, params, grads, dtypes, has_sparse))
        if self._has_nonfinite_gradient(work):
            self.skipped_steps += 1
            return loss
        state_ids = self._state_snapshot()[1] if work else ()
        rebuilt = False
        for index, group, rule, hyperparameters, backend, params, grads, dtypes, has_sparse in work:
            rebuilt |= self._update_group(index, group, rule, hyperparameters, backend, params, grads, dtypes,
                                          has_sparse, grad_scale, state_ids)
        if rebuilt:
            # Rebuilt plans created state, which changed the snapshot. Every plan used in this step still
            # matches the state (a group's state creation touches only its own params' state), so all of them
            # take the new snapshot.
            snapshot = self._state_snapshot()
            for index, *_ in work:
                self._plans[index].state_objects, self._plans[index].state_ids = snapshot
        return loss

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

    def _params_with_grad(self, group: Mapping[str, Any]) -> tuple[list[torch.Tensor], list[torch.Tensor], bool]:
        """The group's params that have a gradient, their gradients, and whether one of those is sparse.

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
        has_sparse = any(map(_is_sparse, grads))
        if not has_sparse and (group["state_dtype"] is None or not any(map(_is_complex, params))):
            return params, grads, False
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
        return params, grads, has_sparse

    @staticmethod
    def _has_nonfinite_gradient(work: list[tuple]) -> bool:
        """Whether a group with `skip_nonfinite=True` has a non-finite gradient (one host sync per device)."""
        finite_by_device: dict[torch.device, list[torch.Tensor]] = defaultdict(list)
        for _, group, *_, grads, _, _ in work:
            if group["skip_nonfinite"]:
                for grad in grads:
                    finite_by_device[grad.device].append((grad._values() if grad.is_sparse else grad).isfinite().all())
        return not all(bool(torch.stack(flags).all()) for flags in finite_by_device.values())

    def _update_group(self, index: int, group: dict[str, Any], rule: Rule, hyperparameters: dict[str, Any],
                      backend: Backend, params: list[torch.Tensor], grads: list[torch.Tensor],
                      dtypes: tuple[torch.dtype, ...], has_sparse: bool, grad_scale: Any,
                      state_ids: tuple[int, ...]) -> bool:
        """Run the backend, then advance the group's step counters; whether the group's plan was rebuilt.

        The per-param work that does not change from step to step (state lookups and creation, which params
        are complex or DTensors, the state tensor lists) lives in the group's `_Plan`, checked each step with
        C-level identity passes and rebuilt when anything it depends on changed.
        """
        active = rule.active_state(hyperparameters)
        plan = self._plans.get(index)
        valid = (plan is not None and plan.group is group and plan.active == active
                 and plan.state_ids == state_ids and plan.param_ids == tuple(map(id, params))
                 and plan.dtypes == dtypes)
        if valid and plan.counters is not None and plan.counters.moved():
            valid = False  # a counter whose storage moved (`.data =`, `share_memory_`) is re-checked by a rebuild
        created: list[list[str]] = []
        if not valid:
            plan, created = self._build_plan(group, rule, hyperparameters, backend, params, active, dtypes)
            self._plans[index] = plan
        steps: float | list[float]
        if plan.counters is None:
            # PyTorch's SGD keeps no counter; the momentum rule only asks whether its buffer is new.
            steps = [1 if names else 2 for names in created] if any(created) else 2
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
            for param, names in zip(params, created, strict=False):  # (none created by a plan in use)
                for name in names:
                    del self.state[param][name]
            raise
        if plan.counters is not None:
            plan.counters.advance()
        return not valid

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

    def _build_plan(self, group: dict[str, Any], rule: Rule, hyperparameters: dict[str, Any], backend: Backend,
                    params: list[torch.Tensor], active: tuple[str, ...],
                    dtypes: tuple[torch.dtype, ...]) -> tuple[_Plan, list[list[str]]]:
        """The group's plan for these params, creating missing state; also the state keys created per param."""
        keeps_state = self.counts_steps or bool(active)
        states = [self.state[param] if keeps_state else {} for param in params]
        created = [self._ensure_state(param, state, group, rule, hyperparameters)
                   for param, state in zip(params, states, strict=True)]
        special = [i for i, param in enumerate(params) if dtypes[i].is_complex or _is_dtensor(param)]
        counters = None
        if self.counts_steps:
            # a backend may advance the counters faster than the portable `torch._foreach_add_`
            tensors = [state["step"] for state in states]
            offer = getattr(backend, "step_counters", None)
            counters = offer(tensors) if offer is not None else None
            if counters is None:
                counters = StepCounters(tensors)
        # the state snapshot is filled in by `step` once every group of this step has created its state
        plan = _Plan(group, active, tuple(map(id, params)), dtypes, params, special,
                     [[state[name] for name in active] for state in states], counters)
        return plan, created

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


class _Plan:
    """What one param group's step needs that stays the same from step to step, built by `_build_plan`.

    On 10,000 small tensors, finding each param's state and step counter, checking which params are complex
    or DTensors and listing their state tensors cost tens of milliseconds per step in Python: more than the
    fused kernel. A plan keeps all of that and is used while the group, its params with gradients, their
    dtypes, the active state and every object in `optimizer.state` are the same ones (identity checks,
    C-level passes); anything else rebuilds it.
    """

    def __init__(self, group: dict[str, Any], active: tuple[str, ...], param_ids: tuple[int, ...],
                 dtypes: tuple[torch.dtype, ...], params: list[torch.Tensor], special: list[int],
                 tensors: list[list[torch.Tensor]], counters: StepCounters | None) -> None:
        self.group = group
        self.active = active
        self.param_ids = param_ids
        self.params = params  # kept alive, so that `param_ids` cannot be reused by other tensors
        self.dtypes = dtypes
        #: params whose tensors are converted every step (DTensor to local shard, complex to real view)
        self.special = special
        #: per param, its active state tensors (as stored; `special` ones still DTensors or complex)
        self.tensors = tensors
        #: the params' `step` tensors (None for optimizers that keep none: SGD), as the backend advances them
        self.counters = counters
        self.state_objects: list[Any] = []
        self.state_ids: tuple[int, ...] | None = None


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
