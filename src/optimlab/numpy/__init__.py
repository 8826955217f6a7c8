"""NumPy optimizers with *Deep Learning from Scratch*'s interface: `opt.update(params, grads)`.

    >>> import numpy as np, optimlab.numpy as onp
    >>> params = {"W": np.ones(3)}
    >>> opt = onp.Adam(lr=0.1)
    >>> opt.update(params, {"W": np.array([1.0, -2.0, 0.5])})   # params["W"] is updated in place
    >>> opt.state["W"]["exp_avg"]                                # state is inspectable, PyTorch's names

`params`/`grads` are dicts of arrays (matched by key) or lists of arrays (matched by position). Every rule
comes from `optimlab.rules`, so these optimizers compute exactly what the PyTorch ones do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..rules import REGISTRY, Entry, Rule, lookup


class Optimizer:
    """Base class: holds one rule, its validated hyperparameters, and per-array state.

    A subclass names a registered optimizer (`optimizer_name`), or sets `rule` to a rule of its own.
    """

    optimizer_name: str = ""
    rule: Rule
    default_lr: float = 0.01

    def __init__(self, lr: float | None = None, **hyperparameters: Any) -> None:
        rule, overrides = lookup(self.optimizer_name) if self.optimizer_name else (self.rule, {})
        self.rule = rule
        settings = {**overrides, **hyperparameters, "lr": self.default_lr if lr is None else lr}
        self.hyperparameters: dict[str, Any] = rule.defaults(**settings)
        self.state: dict[Any, dict[str, Any]] = {}
        #: group-level state (Schedule-Free's `k`, `weight_sum`, ...): the arrays of every call are one group
        self.group_state: dict[str, Any] = rule.initial_group_state(self.hyperparameters)

    def update(self, params: Mapping[Any, np.ndarray] | Sequence[np.ndarray],
               grads: Mapping[Any, np.ndarray] | Sequence[np.ndarray]) -> None:
        """Apply one step to every array in `params`, in place: the arrays of one call are one param group
        (`Rule.step_group`: a group reduction, such as clipping's global norm, spans all of them)."""
        items = _pairs(params, grads)
        states = [self.state.get(key) or self._initial_state(param) for key, param, _ in items]
        names = (*self.rule.active_state(self.hyperparameters), *self.rule.scalar_state)
        steps = [state["step"] + 1 for state in states]
        results = self.rule.step_group([param for _, param, _ in items], [grad for _, _, grad in items],
                                       [{name: state[name] for name in names} for state in states], steps,
                                       self.hyperparameters, group_state=self.group_state)
        for (key, param, _), state, step, (new_param, new_state) in zip(items, states, steps, results, strict=True):
            self.state[key] = state
            param[...] = new_param
            for name, value in new_state.items():
                if name in self.rule.group_state:
                    self.group_state[name] = value
                elif name in self.rule.scalar_state:  # per-array scalars (NAdam's mu_product): Python floats
                    state[name] = value
                else:
                    state[name][...] = value
            state["step"] = step

    def _initial_state(self, param: np.ndarray) -> dict[str, Any]:
        state: dict[str, Any] = {"step": 0}
        for name in self.rule.active_state(self.hyperparameters):
            state[name] = self.rule.initial_tensor(name, param, self.hyperparameters)
        for name in self.rule.scalar_state:
            state[name] = float(self.rule.initial_state(name, self.hyperparameters))
        return state

    def __repr__(self) -> str:
        settings = ", ".join(f"{key}={value!r}" for key, value in self.hyperparameters.items())
        return f"{type(self).__name__}({settings})"


def _pairs(params, grads):
    if isinstance(params, Mapping):
        if not isinstance(grads, Mapping):
            raise TypeError("params is a dict, so grads must be a dict with the same keys")
        missing = [key for key in params if key not in grads]
        if missing:
            raise KeyError(f"grads has no entry for param(s) {missing}")
        items = [(key, params[key], grads[key]) for key in params]
    else:
        params, grads = list(params), list(grads)
        if len(params) != len(grads):
            raise ValueError(f"Invalid grads: {len(grads)} arrays for {len(params)} params")
        items = [(index, param, grad) for index, (param, grad) in enumerate(zip(params, grads, strict=True))]
    for key, param, grad in items:
        if not isinstance(param, np.ndarray) or not np.issubdtype(param.dtype, np.floating):
            raise TypeError(f"param {key!r} must be a floating-point NumPy array, got {type(param).__name__}"
                            f"{'' if not isinstance(param, np.ndarray) else ' of ' + str(param.dtype)}")
        if np.shape(grad) != param.shape:
            raise ValueError(f"Invalid grad for {key!r}: shape {np.shape(grad)} != param shape {param.shape}")
    return items


def _optimizer_class(entry: Entry) -> type[Optimizer]:
    """The NumPy class of a registry entry: its name, its one-line docstring, its default learning rate."""
    return type(entry.numpy_class, (Optimizer,), {"__doc__": entry.summary, "__module__": __name__,
                                                  "optimizer_name": entry.name, "default_lr": entry.numpy_lr})


#: One class per registered optimizer (`optimlab.rules.registry`): `optimlab.numpy.Adam`, ...
_CLASSES: dict[str, type[Optimizer]] = {name: _optimizer_class(entry) for name, entry in REGISTRY.items()}
globals().update({cls.__name__: cls for cls in _CLASSES.values()})


def create(name: str, **hyperparameters: Any) -> Optimizer:
    """An optimizer by name: `create("adam", lr=0.1)`; names are those of `optimlab.rules.OPTIMIZERS`."""
    lookup(name)
    return _CLASSES[name.lower()](**hyperparameters)


__all__ = ["Optimizer", "create", *(cls.__name__ for cls in _CLASSES.values())]
