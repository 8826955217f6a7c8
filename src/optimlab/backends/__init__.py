"""How a rule runs on PyTorch tensors: the backend contract and the registry.

A backend applies one rule to a list of tensors in place. The PyTorch front end (`optimlab.torch`) does
everything else — param groups, state creation, step counting, AMP's `found_inf`, complex params (it
passes `torch.view_as_real` views, so backends only ever see real tensors), sparse gradients — and calls

    backend.step(rule, hyperparameters, coefficients, params, grads, states, grad_scale=None[, all_reduce=...,
                 axis_finish=...])

once per param group and distinct step count (and, for rules with per-param scalar state, distinct values
of it), where

* `params`, `grads`: lists of real, same-device tensors; `params[i]` and `states[i]` are updated in place,
* `states[i]`: the param's state tensors in `rule.active_state(hyperparameters)` order (possibly in a
  lower-precision `state_dtype` than the param: results are rounded to nearest-even on store),
* `coefficients`: `rule.coefficients(step, **hyperparameters)`, Python scalars or 0-dim tensors,
* `grad_scale`: where not None, gradients are divided by it before the rule (AMP's fused unscale);
  `grads` themselves are left as they are;
* for a rule with per-tensor reductions (`rule.reductions`), the backend sums `rule.reduce`'s terms over
  each tensor, passes the sums (a tensor with one row per param) through `all_reduce` when the front end
  gives one (DTensor shards: the sum over the shard group), and feeds `rule.finish`'s per-tensor
  coefficients to the update. The front end passes `all_reduce` only to such rules.
* for a rule with row and column reductions (stage (b), `rule.axis_reduce`: Adafactor's factored second
  moment), `states[i]` also holds the per-row and per-column state (`rule.row_state`, `rule.column_state`, in
  the shapes `rule.state_shape` gives, not the param's). The backend sums `axis_reduce`'s terms over each
  param's last axis and second-to-last axis, evaluates `rule.axis_finish` on those small tensors, hands
  `update` (and `reduce`) each element's row and column values, and stores the new per-row and per-column
  state. Where the front end gives `axis_finish=...` (DTensor shards holding part of a matrix: a shard's
  column sums are partial), the backend calls `axis_finish(i, *arguments)` for param `i` instead of
  `rule.axis_finish(*arguments)`, with the same arguments, and uses the values it returns (this rank's piece).
* for a rule with a tensor stage (`rule.tensor_stage`: matrix math over each whole param, Muon's
  Newton–Schulz), a backend that runs it evaluates it on every param before any update and hands `update` its
  tensors in the param's dtype; one that cannot (the fused Numba and Triton backends) declines in `supports`.

Optionally, `step_counters(counters)` takes the params' `step` tensors and returns an object that advances
them faster than the front end's portable `optimlab.torch._counters.StepCounters` (one `torch._foreach_add_`),
with its three methods and semantics — `moved()`, `next_counts()`, `advance()` — or None to decline.

A backend that caches data pointers between calls checks on every call that the tensors are still where
they were, as large (`state.share_memory_()` or `param.data = ...` move them) and keys nothing on the
`id()` of an object that may be freed. It may also offer `prepare(rule, hyperparameters, params, states)`,
tables whose `step(coefficients, grads, grad_scale)` runs them without those checks: the PyTorch front end
uses it and checks every step itself that params and state are at the same data pointers and gradients of
the params' sizes (docs/reliability.md).

`supports(...)` returns None when the backend can take the work, else a one-line reason; `backend="auto"`
picks the first registered backend that supports it, and an explicitly named backend that cannot raises
that reason as an error. `resolve(name, rule, hyperparameters, params, state_dtype)` makes that choice.

Backends register themselves on import: `optimlab.backends.eager` (always there, last for `auto`: this
package imports it), and optionally `numba_cpu` and `triton_gpu`, which the PyTorch front end tries to
import (ahead of eager). Front ends use only this module's registry API, never a backend module's insides.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from ..rules import Rule


class Backend(Protocol):
    name: str

    def supports(self, rule: Rule, hyperparameters: Mapping[str, Any], params: Sequence[Any],
                 state_dtype: Any) -> str | None:
        """None if this backend can run `rule` on `params` (and state in `state_dtype`), else why not."""

    def step(self, rule: Rule, hyperparameters: Mapping[str, Any], coefficients: Mapping[str, Any],
             params: Sequence[Any], grads: Sequence[Any], states: Sequence[Sequence[Any]],
             grad_scale: Any = None, all_reduce: Any = None, axis_finish: Any = None) -> None:
        """Apply `rule.update` to every (param, grad, state) in place (after the reductions, if any)."""


#: Registered backends in `auto` preference order (fastest first). Modules register on import.
BACKENDS: dict[str, Backend] = {}


def register(backend: Backend, *, first: bool = False) -> Backend:
    """Add `backend` to the registry (`first=True` puts it ahead of the others for `auto`)."""
    others = [(name, other) for name, other in BACKENDS.items() if name != backend.name]
    BACKENDS.clear()
    if first:
        BACKENDS[backend.name] = backend
    BACKENDS.update(others)
    BACKENDS.setdefault(backend.name, backend)
    return backend


def resolve(name: str, rule: Rule, hyperparameters: Mapping[str, Any], params: Sequence[Any],
            state_dtype: Any) -> Backend:
    """The backend that runs `rule` on `params`: `name`, or for `"auto"` the first registered that supports it.

    `ValueError` for an unknown name, a named backend whose `supports` declines (its reason is the message),
    or `"auto"` when no registered backend supports the work.
    """
    if name == "auto":
        reasons = []
        for backend in BACKENDS.values():
            reason = backend.supports(rule, hyperparameters, params, state_dtype)
            if reason is None:
                return backend
            reasons.append(f"{backend.name}: {_unprefixed(backend, reason)}")
        raise ValueError(f"no registered backend can run {rule.name} here ({'; '.join(reasons) or 'none registered'})")
    backend = BACKENDS.get(name)
    if backend is None:
        raise ValueError(f"Invalid backend: {name!r} (expected 'auto' or one of {sorted(BACKENDS)})")
    reason = backend.supports(rule, hyperparameters, params, state_dtype)
    if reason is not None:
        raise ValueError(f"backend {name!r} cannot run {rule.name} here: {_unprefixed(backend, reason)}")
    return backend


def _unprefixed(backend: Backend, reason: str) -> str:
    """`reason` without a leading "<backend name>: ": the messages above name the backend once themselves."""
    prefix = f"{backend.name}: "
    return reason[len(prefix):] if reason.startswith(prefix) else reason


from . import eager as _eager  # noqa: E402, F401 (registers "eager", the fallback of backend="auto")
