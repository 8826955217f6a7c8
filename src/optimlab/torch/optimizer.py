"""The `torch.optim.Optimizer` subclass every optimlab PyTorch optimizer is: bookkeeping only, no math.

Per step, for each param group: pick the rule (`rule_for`), create missing state (PyTorch's keys, `step` a
float32 0-dim tensor as PyTorch keeps it), hand the params, gradients, state and the step counts they are
about to reach — as `torch.view_as_real` views for complex params — to a backend (`optimlab.backends`),
which evaluates `rule.update`, and advance `step` once it returned (a failed step changes nothing). Around
that it does what `torch.optim` does: closures, step hooks (the base class wraps `step`), AMP's
`grad_scale`/`found_inf`, sparse gradients (Adagrad), state dicts that load into and from `torch.optim`,
plus optimlab's opt-ins `state_dtype` and `skip_nonfinite`.

`step` reads like `torch.optim`'s: closure, AMP's `found_inf`, then for each param group its params with
gradients, their plan and the update. The plans (`_plans`: what stays the same from step to step, checked
every step before anything changes, rebuilt — choosing the backend again — or refused with torch's error,
docs/reliability.md) and the state-dict checks (`_state_dict`) live in their own modules.
"""

from __future__ import annotations

import importlib
import math
import numbers
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch.optim.optimizer import _use_grad_for_differentiable

from ..backends import BACKENDS, Backend
from ..rules import Rule
from . import _plans, _state_dict
from ._group_sums import AllReduce, GroupSums, SumsRecorded
from ._plans import BackendTensors, GroupStep, Plan

#: Optional backends, tried on first use; a missing dependency (numba, triton) just leaves them out.
OPTIONAL_BACKENDS = ("optimlab.backends.triton_gpu", "optimlab.backends.numba_cpu")
_loaded_optional = False


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
    `_state_dict.OPTIMLAB_KEYS`) and say which rule a group runs (`rule_for`).

    `skip_nonfinite=True` (a group key): when any gradient of such a group is not finite, the whole step is
    skipped — no param, state or `step` changes in any group — and `skipped_steps` counts it.
    """

    #: PyTorch's name for the optimizer, used in error messages ("Adam does not support sparse gradients").
    torch_name: str = ""
    #: Whether PyTorch keeps a `step` counter in this optimizer's state (SGD does not).
    counts_steps: bool = True
    #: Whether a sparse gradient may run through the rule (Adagrad, as in PyTorch).
    supports_sparse: bool = False
    #: Whether complex params run (as real views); PyTorch's Muon refuses them in its step.
    supports_complex: bool = True
    #: Group keys added in later PyTorch versions, with the values PyTorch's own `__setstate__` gives them when
    #: a state dict (written by an older PyTorch) lacks them: such state dicts load as in `torch.optim`.
    setstate_defaults: Mapping[str, Any] = {}

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]) -> None:
        load_optional_backends()
        self._step_supports_amp_scaling = True
        self.skipped_steps = 0
        self._plans: dict[int, Plan] = {}
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
        for name in rule.group_state:  # (a state dict's values, or a group's given to add_param_group)
            value = group.get(name)
            # a one-element tensor too: with `lr=torch.tensor(...)` the group state is tensors, as the reference's
            number = value.item() if torch.is_tensor(value) and value.numel() == 1 and not value.is_complex() else value
            if isinstance(number, bool) or not isinstance(number, numbers.Real) or not math.isfinite(number):
                raise ValueError(f"Invalid {name}: {value!r} (group state: expected a finite number)")

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
        # each group's params with gradients and the plan they run on, everything that can fail checked for
        # every group before anything changes
        group_steps = _plans.prepare(self)
        if group_steps is None:
            self.skipped_steps += 1
            return loss
        for position, group_step in enumerate(group_steps):
            try:
                self._update_group(group_step, grad_scale)
            except BaseException:
                for later in group_steps[position + 1:]:  # never ran: the state their plans created goes too
                    self._drop_created_state(later)
                raise
        _plans.remember_state(self, group_steps)
        self._advance_idle_groups({each.index for each in group_steps})
        return loss

    def _advance_idle_groups(self, stepped: set[int]) -> None:
        """Advance the group state of the groups none of whose params had a gradient: a group's state counts the
        optimizer's steps, as Schedule-Free's reference advances `k`, `weight_sum` and `lr_max` of every group."""
        if len(stepped) == len(self.param_groups):
            return
        for index, group in enumerate(self.param_groups):
            if index not in stepped:
                rule, hyperparameters = self.rule_for(group)
                if rule.group_state:
                    group.update(rule.advance_group_state(group, hyperparameters))

    def _update_group(self, group_step: GroupStep, grad_scale: Any) -> None:
        """Run the group's update on its plan's backend, then advance the group's step counters.

        A failed update changes nothing: the per-param scalar state it advanced (NAdam's `mu_product`) is put
        back, the group state (Schedule-Free's `k`) is not written, the state its plan's build created is
        dropped, with the plan that holds it, and the counters have not advanced.
        """
        plan, rule, params = group_step.plan, group_step.rule, group_step.params
        buckets = self._params_by_step(group_step)
        # (no pass over the params for the rules that keep none: most of them)
        scalar_state = _ScalarStateSnapshot([self.state[param][name] for param in params
                                             for name in rule.scalar_state] if rule.scalar_state else [])
        # group-level state (Schedule-Free's `k`, `weight_sum`, ...) lives in the group's dict, as the reference
        # keeps it: advanced once for the whole group, written back only once the update succeeded
        group_values = rule.advance_group_state(group_step.group, group_step.hyperparameters)
        try:
            tensors = plan.backend_tensors(params, group_step.grads)
            calls = self._coefficients(rule, group_step.hyperparameters, params, buckets, group_values)
            if rule.group_reductions and len(calls) > 1:
                self._run_group_reducing(group_step, tensors, calls, grad_scale)
            else:
                for coefficients, indices in calls:
                    self._run_backend(group_step, tensors, coefficients, indices, grad_scale)
        except BaseException:
            scalar_state.restore()
            self._drop_created_state(group_step)
            raise
        group_step.group.update(group_values)
        if plan.counters is not None:
            plan.counters.advance()

    def _drop_created_state(self, group_step: GroupStep) -> None:
        """Drop the state this step's plan build created for the group (a param left with none is forgotten,
        as before the step), and the plan that holds it."""
        for param, names in zip(group_step.params, group_step.created, strict=False):  # (none: a plan in use)
            for name in names:
                del self.state[param][name]
            if names and not self.state[param]:
                del self.state[param]
        if any(group_step.created):
            del self._plans[group_step.index]

    @staticmethod
    def _params_by_step(group_step: GroupStep) -> dict[float, list[int]]:
        """The positions of the group's params by the step count each is about to reach (params sharing a count
        share the per-step coefficients: one backend call per count)."""
        counters = group_step.plan.counters
        if counters is None:
            # PyTorch's SGD keeps no counter; the momentum rule only asks whether its buffer is new.
            if not any(group_step.created):
                return {2: list(range(len(group_step.params)))}
            steps = [1 if names else 2 for names in group_step.created]
        else:
            # the counts the counters take once the update succeeded: a step that raises advances none
            steps = counters.next_counts()
            if steps.count(steps[0]) == len(steps):
                return {steps[0]: list(range(len(group_step.params)))}
        buckets: dict[float, list[int]] = defaultdict(list)
        for i, step in enumerate(steps):
            buckets[step].append(i)
        return buckets

    def _run_group_reducing(self, group_step: GroupStep, tensors: BackendTensors,
                            calls: list[tuple[dict[str, Any], list[int]]], grad_scale: Any) -> None:
        """Stage (c) over several backend calls (params at different step counts): every call's sums first,
        recorded by a pass that stops each call before it updates anything, then the updates, each call's
        group reductions totalled over the whole group (`_group_sums`)."""
        group_sums = GroupSums(group_step.rule, len(calls))
        for position, (coefficients, indices) in enumerate(calls):
            shard_sums = group_step.plan.shard_sums([group_step.params[i] for i in indices]).get("all_reduce")
            try:
                self._run_backend(group_step, tensors, coefficients, indices, grad_scale,
                                  group_sums.record(position, shard_sums))
            except SumsRecorded:
                pass
        for position, (coefficients, indices) in enumerate(calls):
            self._run_backend(group_step, tensors, coefficients, indices, grad_scale, group_sums.supply(position))

    def _run_backend(self, group_step: GroupStep, tensors: BackendTensors, coefficients: dict[str, Any],
                     indices: list[int], grad_scale: Any, all_reduce: AllReduce | None = None) -> None:
        """The backend's update of the params at `indices`, which share these coefficients: all of them at once
        (on the plan's prepared tables where the backend has them), sparse gradients row by row.

        `all_reduce`, where given, is what the backend applies to the sums instead of the shard all-reduce
        (stage (c) over several calls, `_run_group_reducing`; sparse gradients are refused there)."""
        plan, rule, hyperparameters = group_step.plan, group_step.rule, group_step.hyperparameters
        if all_reduce is not None:
            axis_hooks = ({"axis_finish": hook} if (hook := plan.shard_sums(
                [group_step.params[i] for i in indices]).get("axis_finish")) is not None else {})
            plan.backend.step(rule, hyperparameters, coefficients, [tensors.params[i] for i in indices],
                              [tensors.grads[i] for i in indices], [tensors.state[i] for i in indices], grad_scale,
                              all_reduce=all_reduce, **axis_hooks)
            return
        if len(indices) == len(tensors.params) and not group_step.has_sparse:
            if plan.prepared is not None:
                plan.prepared.step(coefficients, tensors.grads, grad_scale)
            else:
                plan.backend.step(rule, hyperparameters, coefficients, tensors.params, tensors.grads, tensors.state,
                                  grad_scale, **plan.shard_sums(group_step.params))
            return
        dense = [i for i in indices if not tensors.grads[i].is_sparse]
        if dense:
            plan.backend.step(rule, hyperparameters, coefficients, [tensors.params[i] for i in dense],
                              [tensors.grads[i] for i in dense], [tensors.state[i] for i in dense], grad_scale,
                              **plan.shard_sums([group_step.params[i] for i in dense]))
        for i in indices:
            if tensors.grads[i].is_sparse:
                self._sparse_update(rule, hyperparameters, plan.backend, coefficients, tensors.params[i],
                                    tensors.grads[i], tensors.state[i], grad_scale)

    def _coefficients(self, rule: Rule, hyperparameters: dict[str, Any], params: list[torch.Tensor],
                      buckets: Mapping[float, list[int]],
                      group_values: Mapping[str, Any]) -> list[tuple[dict[str, Any], list[int]]]:
        """The per-step coefficients of each bucket of params, advancing per-param scalar state first.

        `group_values` is the group state already advanced for this step, the same for every bucket.

        For rules with scalar state (NAdam's `mu_product`) each param's 0-dim tensors are advanced in place,
        in their own float32 arithmetic as `torch.optim` does, and params are bucketed again by the values
        (all equal unless params joined at different steps); `coefficients` gets them as Python floats, the
        `_get_value(mu_product)` of `torch.optim`. The rule's `scalar_update` runs once per bucket on the
        stacked values (elementwise, so each element rounds as its own 0-dim tensor would), not once per param:
        three tensor ops and one host transfer per step instead of three per param.
        """
        if not rule.scalar_state:
            return [(rule.coefficients(step, **hyperparameters, **group_values), indices)
                    for step, indices in buckets.items()]
        by_values: dict[tuple[float, ...], list[int]] = defaultdict(list)
        for step, indices in buckets.items():
            by_kind: dict[tuple[Any, ...], list[int]] = defaultdict(list)  # stackable: same dtypes and devices
            for i in indices:
                state = self.state[params[i]]
                by_kind[tuple((state[name].dtype, state[name].device) for name in rule.scalar_state)].append(i)
            for members in by_kind.values():
                tensors = {name: [self.state[params[i]][name] for i in members] for name in rule.scalar_state}
                advanced = rule.advance_scalar_state(
                    step, {name: torch.stack(values) for name, values in tensors.items()}, hyperparameters)
                rows = []
                for name in rule.scalar_state:
                    values = advanced[name].to(tensors[name][0].dtype)
                    torch._foreach_copy_(tensors[name], list(values.unbind()))
                    rows.append(values.tolist())
                for i, values in zip(members, zip(*rows, strict=True), strict=True):
                    by_values[(step, *values)].append(i)
        return [(rule.coefficients(step, **hyperparameters, **dict(zip(rule.scalar_state, values, strict=True)),
                                   **group_values), indices) for (step, *values), indices in by_values.items()]

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

    def _initialize_all_state(self) -> None:
        """Create every param's state now, as PyTorch's Adagrad does in its constructor (plain params' state
        tensors as views of one buffer per name, as a step's plan creates them: `_plans.allocate_state`)."""
        for group in self.param_groups:
            rule, hyperparameters = self.rule_for(group)
            params = group["params"]
            _plans.allocate_state(params, [self.state[param] for param in params], group, rule, hyperparameters)
            for param in params:
                _plans.ensure_state(self, param, self.state[param], group, rule, hyperparameters)

    # --- state dicts ---------------------------------------------------------------------------------

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Fill group keys a `torch.optim` state dict lacks, make `step` a tensor, apply `state_dtype`
        (`_state_dict.complete`), and drop the plans."""
        super().__setstate__(state)
        self.__dict__.setdefault("skipped_steps", 0)
        self._plans = {}  # plans hold the previous state's tensors: drop them now, not at the next step
        self._step_supports_amp_scaling = True
        _state_dict.complete(self)

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """`torch.optim.Optimizer.load_state_dict`, after checking the whole state dict fits this optimizer.

        Accepts state dicts written by `torch.optim` (optimlab's own group keys then take this optimizer's
        settings). Each group keeps its current `backend`: where the math runs belongs to this machine, not to
        the checkpoint (one written with `backend="triton"` loads on a CPU). A state dict that does not fit —
        group or param counts, missing or invalid hyperparameters, missing state, wrong shapes or dtype
        kinds — raises `ValueError` and changes nothing.
        """
        _state_dict.check(self, state_dict)
        backends = [group["backend"] for group in self.param_groups]
        super().load_state_dict(state_dict)
        for group, backend in zip(self.param_groups, backends, strict=True):
            group["backend"] = backend


class _ScalarStateSnapshot:
    """The values of a group's per-param scalar state (0-dim tensors) before a step, to put back if it fails:
    one stacked copy per dtype and device, not one clone per param."""

    def __init__(self, tensors: list[torch.Tensor]) -> None:
        by_kind: dict[tuple[Any, ...], list[torch.Tensor]] = defaultdict(list)
        for tensor in tensors:
            by_kind[(tensor.dtype, tensor.device)].append(tensor)
        self._saved = [(members, torch.stack(members)) for members in by_kind.values()]

    def restore(self) -> None:
        for members, values in self._saved:
            torch._foreach_copy_(members, list(values.unbind()))
