"""How a rule runs on PyTorch tensors: the backend contract and the registry.

A backend applies one rule to a list of tensors in place. The PyTorch front end (`optimlab.torch`) does
everything else — param groups, state creation, step counting, AMP's `found_inf`, complex params (it
passes `torch.view_as_real` views, so backends only ever see real tensors), sparse gradients — and calls

    backend.step(rule, hyperparameters, coefficients, params, grads, states, grad_scale=None)

once per param group and distinct step count, where

* `params`, `grads`: lists of real, same-device tensors; `params[i]` and `states[i]` are updated in place,
* `states[i]`: the param's state tensors in `rule.active_state(hyperparameters)` order (possibly in a
  lower-precision `state_dtype` than the param: results are rounded to nearest-even on store),
* `coefficients`: `rule.coefficients(step, **hyperparameters)`, Python scalars or 0-dim tensors,
* `grad_scale`: where not None, gradients are divided by it before the rule (AMP's fused unscale);
  `grads` themselves are left as they are.

A backend that caches data pointers between calls checks on every call that the tensors are still where
they were, as large (`state.share_memory_()` or `param.data = ...` move them) and keys nothing on the
`id()` of an object that may be freed. It may also offer `prepare(rule, hyperparameters, params, states)`,
tables whose `step(coefficients, grads, grad_scale)` runs them without those checks: the PyTorch front end
uses it and checks every step itself that params and state are at the same data pointers and gradients of
the params' sizes (docs/reliability.md).

`supports(...)` returns None when the backend can take the work, else a one-line reason; `backend="auto"`
picks the first registered backend that supports it, and an explicitly named backend that cannot raises
that reason as an error. `resolve(name, rule, hyperparameters, params, state_dtype)` makes that choice.

Backends register themselves on import: `optimlab.backends.eager` (always there, last for `auto`), and
optionally `numba_cpu` and `triton_gpu`, which the PyTorch front end tries to import (ahead of eager).
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
             grad_scale: Any = None) -> None:
        """Apply `rule.update` to every (param, grad, state) in place."""


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
            reasons.append(f"{backend.name}: {reason}")
        raise ValueError(f"no registered backend can run {rule.name} here ({'; '.join(reasons) or 'none registered'})")
    backend = BACKENDS.get(name)
    if backend is None:
        raise ValueError(f"Invalid backend: {name!r} (expected 'auto' or one of {sorted(BACKENDS)})")
    reason = backend.supports(rule, hyperparameters, params, state_dtype)
    if reason is not None:
        raise ValueError(f"backend {name!r} cannot run {rule.name} here: {reason}")
    return backend
