"""State dicts in and out of optimlab's PyTorch optimizers: checked whole before loading, completed after.

`check(optimizer, state_dict)` raises `ValueError` for a state dict that does not fit the optimizer (group or
param counts, missing or invalid hyperparameters, missing state, wrong shapes or dtype kinds), before
`load_state_dict` changes anything: `torch.optim` loads many of these and fails in the middle of a later step.
`complete(optimizer)` runs in `__setstate__`: it gives the groups of a state dict written by `torch.optim` (or
an older PyTorch) the keys it lacks, makes `step` and per-param scalar state tensors, and applies
`state_dtype`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch.optim.optimizer import _get_scalar_dtype

if TYPE_CHECKING:
    from .optimizer import Optimizer

#: Group keys optimlab adds to PyTorch's; a state dict without them (written by `torch.optim`) gets the
#: optimizer's own settings.
OPTIMLAB_KEYS = ("eps_root", "backend", "state_dtype", "skip_nonfinite")


def complete(optimizer: Optimizer) -> None:
    """Fill group keys a loaded state dict lacks, make `step` (and scalar state) tensors, apply `state_dtype`.

    Keys of later PyTorch versions get PyTorch's values (`setstate_defaults`), optimlab's own keys
    (`OPTIMLAB_KEYS`) this optimizer's settings.
    """
    for group in optimizer.param_groups:
        for key, value in {**optimizer.defaults, **optimizer.setstate_defaults}.items():
            group.setdefault(key, value)
        scalars = ("step", *optimizer.rule_for(group)[0].scalar_state)
        for param in group["params"]:
            param_state = optimizer.state.get(param)
            if not param_state:
                continue
            for key in scalars:
                if key in param_state and not torch.is_tensor(param_state[key]):
                    param_state[key] = torch.tensor(float(param_state[key]), dtype=_get_scalar_dtype())
            if group["state_dtype"] is not None and not param.is_complex():
                for key, value in param_state.items():
                    if key not in scalars and torch.is_tensor(value):
                        param_state[key] = value.to(group["state_dtype"])


def check(optimizer: Optimizer, state_dict: Mapping[str, Any]) -> None:
    """Raise `ValueError` where `state_dict` does not fit `optimizer` (nothing is changed)."""
    if not isinstance(state_dict, Mapping) or not {"state", "param_groups"} <= set(state_dict):
        raise ValueError("Invalid state_dict: expected a mapping with keys 'state' and 'param_groups'")
    saved_groups, saved_state = state_dict["param_groups"], state_dict["state"]
    if len(saved_groups) != len(optimizer.param_groups):
        raise ValueError(f"Invalid state_dict: {len(saved_groups)} param groups, this optimizer has "
                         f"{len(optimizer.param_groups)}")
    params_by_id = {}
    for index, (saved, group) in enumerate(zip(saved_groups, optimizer.param_groups, strict=True)):
        if not isinstance(saved, Mapping):
            raise ValueError(f"Invalid state_dict: param group {index} is a {type(saved).__name__}, not a mapping")
        if len(saved.get("params", ())) != len(group["params"]):
            raise ValueError(f"Invalid state_dict: param group {index} has {len(saved.get('params', ()))} "
                             f"params, this optimizer's has {len(group['params'])}")
        missing = [key for key in optimizer.defaults if key not in saved and key not in OPTIMLAB_KEYS
                   and key not in optimizer.setstate_defaults]
        if missing:
            raise ValueError(f"Invalid state_dict: param group {index} lacks {missing}")
        merged = {**optimizer.defaults, **optimizer.setstate_defaults, **saved, "backend": group["backend"]}
        try:
            optimizer._validate_group(merged)
        except (TypeError, ValueError) as error:
            raise ValueError(f"Invalid state_dict: param group {index}: {error}") from error
        rule, hyperparameters = optimizer.rule_for(merged)
        for saved_id, param in zip(saved["params"], group["params"], strict=True):
            part = rule.rule_for_shape(tuple(param.shape))  # (Adafactor: factored state for matrices)
            params_by_id[saved_id] = (index, param, part.active_state(hyperparameters), part,
                                      part.scalar_state)
    for saved_id, param_state in saved_state.items():
        if saved_id not in params_by_id:
            raise ValueError(f"Invalid state_dict: state for param {saved_id!r}, which no param group holds")
        index, param, active, part, scalars = params_by_id[saved_id]
        where = f"state of param {saved_id!r} (group {index})"
        if not isinstance(param_state, Mapping):
            raise ValueError(f"Invalid state_dict: {where} is a {type(param_state).__name__}, not a mapping")
        if param_state:
            required = (("step",) if optimizer.counts_steps else ()) + tuple(active) + tuple(scalars)
            missing = [key for key in required if param_state.get(key) is None]
            if missing:
                raise ValueError(f"Invalid state_dict: {where} lacks {missing}")
        for key, value in param_state.items():
            # other keys are kept as they are, as `torch.optim` keeps them: no step reads them
            if key in scalars:
                _check_scalar_state(where, key, value)
            elif key == "step" or key in part.state_names or key in part.axis_state:
                _check_state_value(where, key, value, param, part.state_shape(key, tuple(param.shape)))


def _check_scalar_state(where: str, key: str, value: Any) -> None:
    """Per-param scalar state (NAdam's `mu_product`): a finite real number or a one-element real tensor."""
    number = value.item() if torch.is_tensor(value) and value.numel() == 1 and not value.is_complex() else value
    if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number):
        raise ValueError(f"Invalid state_dict: {where}: {key} must be a finite number, got {value!r}")


def _check_state_value(where: str, key: str, value: Any, param: torch.Tensor, shape: tuple[int, ...]) -> None:
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
    if tuple(value.shape) != shape:
        expected = "the param" if shape == tuple(param.shape) else f"expected {shape} for the param"
        raise ValueError(f"Invalid state_dict: {where}: {key} has shape {tuple(value.shape)}, "
                         f"{expected} {tuple(param.shape)}")
    kind_ok = value.is_complex() if param.is_complex() else value.is_floating_point()
    if not kind_ok:
        raise ValueError(f"Invalid state_dict: {where}: {key} has dtype {value.dtype}, the param {param.dtype}")
