"""optimlab.torch against torch.optim, step for step: the cases of PyTorch's own `optim_inputs`.

Each case runs 100 steps on the suite's small MLP with random data. Both optimizers see the *same*
gradients (computed on torch.optim's model, copied to optimlab's params), so the comparison measures the
optimizers, not the loss surface's amplification of rounding. Params, every state tensor, `step` (exactly)
and the group hyperparameters schedulers change must match: float32 within rtol 1e-6, float64 within
rtol 1e-12, each with an absolute floor of rtol × the tensor's largest magnitude — an element that
crosses zero has no meaningful relative error, while a one-ulp rounding difference per step (PyTorch fuses
`addcdiv`, the rule writes `param - step_size * (exp_avg / denom)`) accumulates over the steps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.optim import lr_scheduler

import optimlab.torch

STEPS = 100
RTOL = {torch.float32: 1e-6, torch.float64: 1e-12}

Scheduler = Callable[[torch.optim.Optimizer], Any]


def case(ours: str, kwargs: dict[str, Any] | None = None, *, torch_name: str | None = None,
         torch_kwargs: dict[str, Any] | None = None, groups: tuple[dict[str, Any], dict[str, Any]] | None = None,
         scheduler: Scheduler | None = None, id: str) -> Any:  # noqa: A002 (pytest's name)
    """One comparison: optimlab's `ours(**kwargs)` against `torch.optim.<torch_name>(**kwargs, **torch_kwargs)`."""
    return pytest.param(ours, kwargs or {}, torch_name or ours, torch_kwargs or {}, groups, scheduler,
                        id=f"{ours}-{id}")


def tensor_lr(value: float) -> torch.Tensor:
    return torch.tensor(value)


CASES = [
    # SGD: PyTorch's optim_inputs_func_sgd
    case("SGD", {"lr": 0.01}, id="default"),
    case("SGD", {"lr": tensor_lr(0.01)}, id="tensor_lr"),
    case("SGD", {"lr": 0.01, "weight_decay": 0.1, "maximize": True}, id="weight_decay_maximize"),
    case("SGD", {"lr": 0.01, "momentum": 0.9}, id="momentum"),
    case("SGD", {"lr": 0.01, "momentum": 0.9, "dampening": 0.5, "weight_decay": 0.1}, id="dampening"),
    case("SGD", {"lr": 0.01, "momentum": 0.9, "nesterov": True, "weight_decay": 0.1}, id="nesterov"),
    case("SGD", {"lr": 0.01, "momentum": 0.9, "maximize": True}, id="momentum_maximize"),
    case("SGD", {"lr": 0.01, "momentum": 0.9}, groups=({"lr": 0.03, "momentum": 0.5}, {}), id="groups"),
    case("Momentum", {"lr": 0.01}, torch_name="SGD", torch_kwargs={"momentum": 0.9}, id="default"),
    # Adagrad
    case("Adagrad", {}, id="default"),
    case("Adagrad", {"lr": tensor_lr(0.01)}, id="tensor_lr"),
    case("Adagrad", {"lr": 0.1, "lr_decay": 0.01, "weight_decay": 0.1}, id="lr_decay_weight_decay"),
    case("Adagrad", {"initial_accumulator_value": 0.1, "maximize": True}, id="initial_accumulator_maximize"),
    case("Adagrad", {"lr": 0.1}, groups=({"lr": 0.01, "lr_decay": 0.1}, {}), id="groups"),
    # RMSprop
    case("RMSprop", {}, id="default"),
    case("RMSprop", {"lr": tensor_lr(0.01)}, id="tensor_lr"),
    case("RMSprop", {"weight_decay": 0.1, "maximize": True}, id="weight_decay_maximize"),
    case("RMSprop", {"centered": True}, id="centered"),
    case("RMSprop", {"momentum": 0.5}, id="momentum"),
    case("RMSprop", {"centered": True, "momentum": 0.5, "weight_decay": 0.1}, id="centered_momentum"),
    case("RMSprop", {}, groups=({"lr": 0.001, "alpha": 0.9}, {"centered": True}), id="groups"),
    # Adam
    case("Adam", {}, id="default"),
    case("Adam", {"lr": tensor_lr(0.01)}, id="tensor_lr"),
    case("Adam", {"lr": 0.01, "betas": (0.8, 0.99), "weight_decay": 0.1}, id="betas_weight_decay"),
    case("Adam", {"lr": 0.01, "amsgrad": True}, id="amsgrad"),
    case("Adam", {"lr": 0.01, "amsgrad": True, "maximize": True, "weight_decay": 0.1}, id="amsgrad_maximize"),
    case("Adam", {"lr": 0.01, "decoupled_weight_decay": True, "weight_decay": 0.1}, id="decoupled"),
    case("Adam", {"lr": 0.01}, groups=({"lr": 0.001, "amsgrad": True}, {"betas": (0.5, 0.9)}), id="groups"),
    # AdamW
    case("AdamW", {}, id="default"),
    case("AdamW", {"lr": tensor_lr(0.01)}, id="tensor_lr"),
    case("AdamW", {"lr": 0.01, "weight_decay": 0.1, "amsgrad": True}, id="amsgrad"),
    case("AdamW", {"lr": 0.01, "maximize": True}, id="maximize"),
    case("AdamW", {"lr": 0.01}, groups=({"weight_decay": 0.5}, {"lr": 0.001}), id="groups"),
    # NAdam: PyTorch's optim_inputs_func_nadam (CPU configurations), plus a tensor lr and two groups
    case("NAdam", {}, id="default"),
    case("NAdam", {"lr": 1e-3}, id="non_default_lr"),
    case("NAdam", {"lr": tensor_lr(0.01)}, id="tensor_lr"),
    case("NAdam", {"momentum_decay": 6e-3}, id="momentum_decay"),
    case("NAdam", {"weight_decay": 0.1}, id="weight_decay"),
    case("NAdam", {"weight_decay": 0.1, "momentum_decay": 6e-3}, id="weight_decay_momentum_decay"),
    case("NAdam", {"weight_decay": 0.1, "momentum_decay": 6e-3, "decoupled_weight_decay": True}, id="decoupled"),
    case("NAdam", {"weight_decay": 0.1, "maximize": True}, id="maximize"),
    case("NAdam", {"lr": 0.01}, groups=({"lr": 0.001, "momentum_decay": 0.01}, {"betas": (0.5, 0.9)}), id="groups"),
    case("NAdam", {"lr": 0.01}, scheduler=lambda o: lr_scheduler.CosineAnnealingLR(o, 30), id="CosineAnnealingLR"),
    # every scheduler kind of torch.optim.lr_scheduler
    case("Adam", {"lr": 0.01}, scheduler=lambda o: lr_scheduler.StepLR(o, 10, gamma=0.5), id="StepLR"),
    case("SGD", {"lr": 0.05}, scheduler=lambda o: lr_scheduler.MultiStepLR(o, [20, 60], gamma=0.3), id="MultiStepLR"),
    case("RMSprop", {}, scheduler=lambda o: lr_scheduler.ExponentialLR(o, 0.97), id="ExponentialLR"),
    case("AdamW", {"lr": 0.01}, scheduler=lambda o: lr_scheduler.CosineAnnealingLR(o, 50), id="CosineAnnealingLR"),
    case("AdamW", {"lr": 0.01}, scheduler=lambda o: lr_scheduler.CosineAnnealingWarmRestarts(o, 10, 2),
         id="CosineAnnealingWarmRestarts"),
    case("Adagrad", {"lr": 0.1}, scheduler=lambda o: lr_scheduler.LambdaLR(o, lambda epoch: 1 / (1 + epoch)),
         id="LambdaLR"),
    case("SGD", {"lr": 0.01, "momentum": 0.9},
         scheduler=lambda o: lr_scheduler.MultiplicativeLR(o, lambda epoch: 0.99), id="MultiplicativeLR"),
    case("Adam", {"lr": 0.01}, scheduler=lambda o: lr_scheduler.LinearLR(o, 0.1, 1.0, 30), id="LinearLR"),
    case("Adam", {"lr": 0.01}, scheduler=lambda o: lr_scheduler.ConstantLR(o, 0.5, 40), id="ConstantLR"),
    case("RMSprop", {"momentum": 0.5}, scheduler=lambda o: lr_scheduler.PolynomialLR(o, 80, 2.0),
         id="PolynomialLR"),
    case("Adam", {"lr": 0.01}, scheduler=lambda o: lr_scheduler.OneCycleLR(o, 0.05, total_steps=STEPS),
         id="OneCycleLR_betas"),
    case("SGD", {"lr": 0.01, "momentum": 0.9, "nesterov": True},
         scheduler=lambda o: lr_scheduler.OneCycleLR(o, 0.05, total_steps=STEPS, three_phase=True),
         id="OneCycleLR_momentum"),
    case("RMSprop", {"momentum": 0.5}, scheduler=lambda o: lr_scheduler.OneCycleLR(o, 0.01, total_steps=STEPS),
         id="OneCycleLR_momentum"),
    case("SGD", {"lr": 0.01, "momentum": 0.9},
         scheduler=lambda o: lr_scheduler.CyclicLR(o, 0.001, 0.05, step_size_up=10, mode="triangular2"),
         id="CyclicLR_momentum"),
    case("AdamW", {"lr": 0.01}, scheduler=lambda o: lr_scheduler.CyclicLR(o, 0.001, 0.01, step_size_up=15),
         id="CyclicLR_betas"),
    case("Adam", {"lr": 0.05}, scheduler=lambda o: lr_scheduler.ReduceLROnPlateau(o, factor=0.5, patience=2),
         id="ReduceLROnPlateau"),
    case("SGD", {"lr": 0.05, "momentum": 0.5},
         scheduler=lambda o: lr_scheduler.SequentialLR(o, [lr_scheduler.LinearLR(o, 0.1, total_iters=20),
                                                           lr_scheduler.ExponentialLR(o, 0.98)], milestones=[20]),
         id="SequentialLR"),
    case("Adam", {"lr": 0.01},
         scheduler=lambda o: lr_scheduler.ChainedScheduler([lr_scheduler.ConstantLR(o, 0.5, 30),
                                                            lr_scheduler.ExponentialLR(o, 0.98)]),
         id="ChainedScheduler"),
    case("Adam", {"lr": tensor_lr(0.01)}, scheduler=lambda o: lr_scheduler.CosineAnnealingLR(o, 30),
         id="tensor_lr_CosineAnnealingLR"),
]

#: The cases that also run in float64 (every optimizer and variant; schedulers are dtype-blind).
FLOAT64 = [param for param in CASES if param.values[5] is None]

#: float32 cases that get a wider tolerance, and why. PyTorch's vectorized float32 `sqrt` on CPU is not
#: correctly rounded (~16% of inputs differ by an ulp from the float64 root rounded); fused backends compute
#: the correctly rounded root, and eager, which runs torch's ops in its own order and grouping, lands on
#: other ulps too where the CPU has AVX-512 (seen on an Intel Xeon with AVX-512, not on the AMD EPYC with
#: AVX2 of earlier runs). RMSprop with a momentum
#: OneCycleLR cycles is the case that amplifies it most (1/√s for small s): one element in 64 ends 6–10% past
#: the 1e-6 floor, so these cases are held to 4x the float32 tolerance on every backend (still a failing
#: test for any real error).
FLOAT32_SQRT_SENSITIVE = {"RMSprop-OneCycleLR_momentum"}
SQRT_SENSITIVE_FACTOR = 4


def fresh(kwargs: dict[str, Any]) -> dict[str, Any]:
    """`kwargs` with tensors copied: schedulers update a tensor lr in place."""
    return {key: value.clone() if isinstance(value, torch.Tensor) else value for key, value in kwargs.items()}


def param_groups(params: list[torch.Tensor], groups: tuple[dict[str, Any], dict[str, Any]] | None) -> list[Any]:
    if groups is None:
        return params
    return [{"params": params[:2], **fresh(groups[0])}, {"params": params[2:], **fresh(groups[1])}]


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float, what: str) -> None:
    floor = rtol * float(expected.abs().max()) if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=floor, msg=lambda message: f"{what}: {message}")


def run_pair(mlp: Callable, batches: Callable, ours: str, kwargs: dict[str, Any], torch_name: str,
             torch_kwargs: dict[str, Any], groups: Any, scheduler: Scheduler | None, backend: str,
             dtype: torch.dtype, steps: int = STEPS):
    """`steps` steps of torch.optim and optimlab on the same gradients: (reference, ours, params, our params)."""
    model = mlp(dtype)
    params = list(model.parameters())
    our_params = [param.detach().clone().requires_grad_() for param in params]
    reference = getattr(torch.optim, torch_name)(param_groups(params, groups), **fresh(kwargs), **torch_kwargs)
    optimizer = getattr(optimlab.torch, ours)(param_groups(our_params, groups), backend=backend, **fresh(kwargs))
    schedulers = [scheduler(reference), scheduler(optimizer)] if scheduler else []
    for inputs, targets in batches(steps, dtype):
        reference.zero_grad()
        loss = torch.nn.functional.mse_loss(model(inputs), targets)
        loss.backward()
        for param, ours_param in zip(params, our_params, strict=True):
            ours_param.grad = param.grad.clone()
        reference.step()
        optimizer.step()
        for each in schedulers:
            each.step(loss.item()) if isinstance(each, lr_scheduler.ReduceLROnPlateau) else each.step()
    return reference, optimizer, params, our_params


def assert_same(reference: torch.optim.Optimizer, optimizer: torch.optim.Optimizer, params: list[torch.Tensor],
                our_params: list[torch.Tensor], rtol: float) -> None:
    """Params, state (PyTorch's keys, `step` exactly) and group hyperparameters match."""
    for index, (param, ours_param) in enumerate(zip(params, our_params, strict=True)):
        assert_close(ours_param.detach(), param.detach(), rtol, f"param {index}")
    expected, actual = reference.state_dict(), optimizer.state_dict()
    assert {key for key, value in actual["state"].items() if value} == \
        {key for key, value in expected["state"].items() if value}
    for index, expected_state in expected["state"].items():
        actual_state = actual["state"][index]
        assert set(actual_state) == set(expected_state), f"state keys of param {index}"
        for key, value in expected_state.items():
            if key == "step":
                assert torch.equal(actual_state[key], value), f"step of param {index}"
                assert actual_state[key].dtype == value.dtype
            else:
                assert_close(actual_state[key], value, rtol, f"state {key} of param {index}")
    for expected_group, actual_group in zip(expected["param_groups"], actual["param_groups"], strict=True):
        for key, value in expected_group.items():
            if key in ("momentum", "betas", "lr", "initial_lr", "alpha", "momentum_decay"):
                torch.testing.assert_close(torch.as_tensor(actual_group[key], dtype=torch.float64),
                                           torch.as_tensor(value, dtype=torch.float64), rtol=1e-12, atol=0,
                                           msg=lambda message, key=key: f"group key {key}: {message}")


@pytest.mark.parametrize(("ours", "kwargs", "torch_name", "torch_kwargs", "groups", "scheduler"), CASES)
def test_float32_matches_torch_optim(request, mlp, batches, backend, ours, kwargs, torch_name, torch_kwargs,
                                     groups, scheduler):
    rtol = RTOL[torch.float32]
    if request.node.callspec.id.split("-", 1)[1] in FLOAT32_SQRT_SENSITIVE:
        rtol *= SQRT_SENSITIVE_FACTOR
    reference, optimizer, params, our_params = run_pair(mlp, batches, ours, kwargs, torch_name, torch_kwargs,
                                                        groups, scheduler, backend, torch.float32)
    assert_same(reference, optimizer, params, our_params, rtol)


@pytest.mark.parametrize(("ours", "kwargs", "torch_name", "torch_kwargs", "groups", "scheduler"), FLOAT64)
def test_float64_matches_torch_optim(mlp, batches, backend, ours, kwargs, torch_name, torch_kwargs, groups,
                                     scheduler):
    reference, optimizer, params, our_params = run_pair(mlp, batches, ours, kwargs, torch_name, torch_kwargs,
                                                        groups, scheduler, backend, torch.float64)
    assert_same(reference, optimizer, params, our_params, RTOL[torch.float64])


@pytest.mark.parametrize(("ours", "torch_name", "kwargs"), [
    ("SGD", "SGD", {"lr": 0.05, "momentum": 0.9, "nesterov": True}), ("Adagrad", "Adagrad", {"lr": 0.05}),
    ("RMSprop", "RMSprop", {"lr": 0.001, "centered": True}), ("Adam", "Adam", {"lr": 0.01}),
    ("AdamW", "AdamW", {"lr": 0.01}),
])
def test_swapping_the_class_changes_nothing_else(mlp, batches, backend, ours, torch_name, kwargs):
    """Each optimizer trains its own model, gradients and all: the one-line swap, in float64."""
    model, twin = mlp(torch.float64), mlp(torch.float64)
    reference = getattr(torch.optim, torch_name)(twin.parameters(), **kwargs)
    optimizer = getattr(optimlab.torch, ours)(model.parameters(), backend=backend, **kwargs)
    for inputs, targets in batches(STEPS, torch.float64):
        for net, each in ((twin, reference), (model, optimizer)):
            each.zero_grad()
            torch.nn.functional.mse_loss(net(inputs), targets).backward()
            each.step()
    assert_same(reference, optimizer, list(twin.parameters()), list(model.parameters()), RTOL[torch.float64])
