"""What a rule is: one pure elementwise update function plus the facts backends need to run it."""

from __future__ import annotations

import functools
import inspect
import math
import numbers
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from . import primitives


@dataclass(frozen=True)
class Rule:
    """An optimizer's math, written once.

    `update(param, grad, *state, *coefficients) -> (param, *state)` is a pure elementwise function written
    with plain arithmetic and the names in `primitives`. Its parameters after `param, grad` are first the
    per-element state, named exactly as PyTorch names it (`state_names`, e.g. `exp_avg`), then per-step
    scalars, which `coefficients(step, **hyperparameters)` computes once per step on the host. Backends
    evaluate `update` directly (NumPy, PyTorch eager) or compile it (`specialize`), never re-write it.

    `active_state(hyperparameters)` names the state a configuration uses (e.g. `max_exp_avg_sq` only with
    AMSGrad); the others are passed as `None` (a dummy scalar in compiled kernels) and never read.
    `initial_state(name, hyperparameters)` is the value a state tensor starts at (0, or Adagrad's
    `initial_accumulator_value`). `trace(...)` returns the intermediate quantities the notes compute by hand.
    """

    name: str
    update: Callable[..., tuple]
    coefficients: Callable[..., dict[str, Any]]
    hyperparameters: Mapping[str, Any]
    state_names: tuple[str, ...]
    active_state: Callable[[Mapping[str, Any]], tuple[str, ...]]
    validate: Callable[[Mapping[str, Any]], None]
    trace: Callable[..., dict[str, Any]]
    initial_state: Callable[[str, Mapping[str, Any]], float] = lambda name, hyperparameters: 0.0

    @functools.cached_property
    def coefficient_names(self) -> tuple[str, ...]:
        """The per-step scalar arguments of `update`, in order (read once from its signature)."""
        parameters = list(inspect.signature(self.update).parameters)
        return tuple(parameters[2 + len(self.state_names):])

    def defaults(self, **overrides: Any) -> dict[str, Any]:
        """The hyperparameters with PyTorch's defaults, `overrides` applied, validated."""
        unknown = set(overrides) - set(self.hyperparameters)
        if unknown:
            raise TypeError(f"{self.name}: unexpected hyperparameter(s) {sorted(unknown)}; "
                            f"expected some of {sorted(self.hyperparameters)}")
        merged = {**self.hyperparameters, **overrides}
        self.validate(merged)
        return merged

    def step(self, param: Any, grad: Any, state: Mapping[str, Any], step: int,
             hyperparameters: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
        """One update evaluated directly (NumPy arrays, tensors, floats): `(new_param, new_state)`.

        `state` maps the active state names to values; `step` counts from 1.
        """
        coefficients = self.coefficients(step, **hyperparameters)
        active = self.active_state(hyperparameters)
        arguments = [state[name] if name in active else None for name in self.state_names]
        new_param, *new_state = self.update(param, grad, *arguments,
                                            *(coefficients[name] for name in self.coefficient_names))
        updated = zip(self.state_names, new_state, strict=True)
        return new_param, {name: value for name, value in updated if name in active}

    def specialize(self, native: Mapping[str, Any], wrap: Callable[[Callable], Any] = lambda f: f) -> Any:
        """`update` re-bound to a backend's natives and wrapped (e.g. by `numba.njit` or `triton.jit`).

        The function object is rebuilt from the rule's own code object with new globals, so a kernel runs
        the very bytecode (Numba) or source (Triton) of the rule: there is no second copy of the math.
        """
        missing = set(primitives.NATIVE) - set(native)
        if missing:
            raise ValueError(f"backend must provide natives {sorted(missing)}")
        namespace: dict[str, Any] = dict(native)
        for name, helper in primitives.HELPERS.items():
            namespace[name] = wrap(rebind(helper, namespace))
        return wrap(rebind(self.update, namespace))


def rebind(function: Callable, namespace: Mapping[str, Any]) -> Callable:
    """A copy of `function` (same code object) whose global names resolve in `namespace` first."""
    rebound = types.FunctionType(function.__code__, {**function.__globals__, **namespace},
                                 function.__name__, function.__defaults__, function.__closure__)
    rebound.__kwdefaults__ = function.__kwdefaults__
    rebound.__qualname__ = function.__qualname__
    rebound.__module__ = function.__module__
    rebound.__doc__ = function.__doc__
    return rebound


# --- validation: each raises ValueError naming the argument and the value ---------------------------------

def _as_float(name: str, value: Any) -> float:
    # a one-element tensor of any shape is a number, as torch.optim takes `lr=torch.tensor([1e-3])`
    is_scalar_tensor = hasattr(value, "numel") and value.numel() == 1 and not value.is_complex()
    if isinstance(value, bool) or not (isinstance(value, numbers.Real) or is_scalar_tensor):
        raise ValueError(f"Invalid {name}: {value!r} (expected a real number)")
    try:
        number = float(value)
    except OverflowError:  # an int beyond float's range, e.g. 10**400
        shown = f"an integer of {math.floor(math.log10(abs(value))) + 1} digits" if isinstance(value, int) else value
        raise ValueError(f"Invalid {name}: {shown} (must be a finite number)") from None
    if math.isnan(number):
        raise ValueError(f"Invalid {name}: {value!r} (must not be NaN)")
    return number


def check_nonnegative(name: str, value: Any) -> None:
    """`value` is a finite real number >= 0 (a learning rate, ε, a decay)."""
    if not 0.0 <= _as_float(name, value) < math.inf:
        raise ValueError(f"Invalid {name}: {value!r} (must be a finite number >= 0)")


def check_unit_interval(name: str, value: Any) -> None:
    """`value` is in [0, 1): a decay rate such as β, ρ or momentum."""
    if not 0.0 <= _as_float(name, value) < 1.0:
        raise ValueError(f"Invalid {name}: {value!r} (must be in [0, 1))")


def check_closed_unit_interval(name: str, value: Any) -> None:
    """`value` is in [0, 1] (dampening)."""
    if not 0.0 <= _as_float(name, value) <= 1.0:
        raise ValueError(f"Invalid {name}: {value!r} (must be in [0, 1])")


def check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"Invalid {name}: {value!r} (expected True or False)")


def check_betas(name: str, value: Any) -> None:
    if not (isinstance(value, (tuple, list)) and len(value) == 2):
        raise ValueError(f"Invalid {name}: {value!r} (expected a pair (beta1, beta2))")
    check_unit_interval(f"{name}[0]", value[0])
    check_unit_interval(f"{name}[1]", value[1])
