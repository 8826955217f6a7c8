"""What the kernel-level backend tests share: every structural variant, tensors to run it on, the reference.

Each compiled backend (Numba, Triton) is checked against `rule.step` evaluated directly on tensors.
"""

import torch

from optimlab.rules import OPTIMIZERS

#: Every rule and every structural variant (each distinct set of flags is its own compiled kernel).
VARIANTS = {
    "sgd": ("sgd", {"lr": 0.1}),
    "sgd-decay-maximize": ("sgd", {"lr": 0.1, "weight_decay": 0.1, "maximize": True}),
    "momentum": ("momentum", {"lr": 0.05, "momentum": 0.9}),
    "momentum-dampening-decay": ("momentum", {"lr": 0.05, "momentum": 0.8, "dampening": 0.3, "weight_decay": 0.01}),
    "nesterov-maximize": ("nesterov", {"lr": 0.05, "momentum": 0.9, "maximize": True}),
    "adagrad": ("adagrad", {"lr": 0.1}),
    "adagrad-decay-eps-root": ("adagrad", {"lr": 0.1, "lr_decay": 0.1, "eps_root": 1e-8, "weight_decay": 0.01,
                                           "initial_accumulator_value": 0.1}),
    "rmsprop": ("rmsprop", {"lr": 0.01}),
    "rmsprop-centered": ("rmsprop", {"lr": 0.01, "alpha": 0.9, "centered": True}),
    "rmsprop-momentum": ("rmsprop", {"lr": 0.01, "momentum": 0.5, "weight_decay": 0.01}),
    "rmsprop-centered-momentum-maximize": ("rmsprop", {"lr": 0.01, "centered": True, "momentum": 0.5,
                                                       "eps_root": 1e-8, "maximize": True}),
    "adam": ("adam", {"lr": 0.01}),
    "adam-amsgrad-decay": ("adam", {"lr": 0.01, "amsgrad": True, "weight_decay": 0.01}),
    "adam-maximize-eps-root": ("adam", {"lr": 0.01, "maximize": True, "eps": 0.0, "eps_root": 1e-8}),
    "adamw": ("adamw", {"lr": 0.01}),
    "adamw-amsgrad-maximize": ("adamw", {"lr": 0.01, "amsgrad": True, "maximize": True, "betas": (0.8, 0.99)}),
    "lion-decay": ("lion", {"lr": 0.01, "weight_decay": 0.1, "betas": (0.8, 0.95)}),
}


def configure(name):
    """The rule and validated hyperparameters of variant `name`."""
    optimizer, settings = VARIANTS[name]
    rule, overrides = OPTIMIZERS[optimizer]
    return rule, rule.defaults(**{**overrides, **settings})


def setup(name, sizes, dtype=torch.float32, state_dtype=None, seed=0):
    """Variant `name` with one param per size (each an offset, unaligned view) and its fresh state."""
    rule, hyper = configure(name)
    generator = torch.Generator().manual_seed(seed)
    params = [torch.randn(size + 1, generator=generator).to(dtype)[1:] for size in sizes]
    states = [[torch.full_like(param, rule.initial_state(state, hyper), dtype=state_dtype or dtype)
               for state in rule.active_state(hyper)] for param in params]
    return rule, hyper, params, states, generator


def reference(rule, hyper, params, grads, states, step, grad_scale=1.0, compute=None):
    """`rule.step` on copies in `compute` (default: float64 for float64 params, else float32), rounded back."""
    active = rule.active_state(hyper)
    new_params, new_states = [], []
    for param, grad, state in zip(params, grads, states, strict=True):
        dtype = compute or (torch.float64 if param.dtype == torch.float64 else torch.float32)
        new_param, new_state = rule.step(param.to(dtype), grad.to(dtype) / grad_scale,
                                         {n: s.to(dtype) for n, s in zip(active, state, strict=True)}, step, hyper)
        new_params.append(new_param.to(param.dtype))
        new_states.append([new_state[n].to(s.dtype) for n, s in zip(active, state, strict=True)])
    return new_params, new_states


def assert_all_close(actual, expected, **tolerance):
    """`torch.testing.assert_close` on each pair of two equally long lists."""
    for got, want in zip(actual, expected, strict=True):
        torch.testing.assert_close(got, want, **tolerance)
