"""State dicts interchange with torch.optim both ways, mid-training; bad state dicts change nothing."""

from __future__ import annotations

import copy
import io
from typing import Any

import pytest
import torch

import optimlab.torch

#: optimlab class, torch.optim class, arguments that make every state tensor matter.
PAIRS = [
    pytest.param("SGD", "SGD", {"lr": 0.01, "momentum": 0.9, "nesterov": True}, id="SGD"),
    pytest.param("Adagrad", "Adagrad", {"lr": 0.1, "lr_decay": 0.01}, id="Adagrad"),
    pytest.param("RMSprop", "RMSprop", {"centered": True, "momentum": 0.5}, id="RMSprop"),
    pytest.param("Adam", "Adam", {"lr": 0.01, "amsgrad": True}, id="Adam"),
    pytest.param("AdamW", "AdamW", {"lr": 0.01, "weight_decay": 0.1}, id="AdamW"),
    pytest.param("NAdam", "NAdam", {"lr": 0.01, "weight_decay": 0.1, "momentum_decay": 6e-3}, id="NAdam"),
    pytest.param("NAdam", "NAdam", {"lr": 0.01, "weight_decay": 0.1, "decoupled_weight_decay": True},
                 id="NAdam-decoupled"),
]


def round_trip(state_dict: dict[str, Any]) -> dict[str, Any]:
    """`torch.save` then `torch.load` (PyTorch's default `weights_only=True`)."""
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer)


def train(optimizers: list[torch.optim.Optimizer], params: list[list[torch.Tensor]],
          model_and_data: tuple[torch.nn.Module, list]) -> None:
    """Steps every optimizer on the same gradients, computed by the model on the data."""
    model, data = model_and_data
    for inputs, targets in data:
        model.zero_grad()
        torch.nn.functional.mse_loss(model(inputs), targets).backward()
        grads = [param.grad for param in model.parameters()]
        for optimizer, group in zip(optimizers, params, strict=True):
            for param, grad in zip(group, grads, strict=True):
                param.grad = grad.clone()
            optimizer.step()
        with torch.no_grad():  # the gradient source follows the first optimizer's params
            for source, param in zip(model.parameters(), params[0], strict=True):
                source.copy_(param)


def copies(model: torch.nn.Module) -> list[torch.Tensor]:
    return [param.detach().clone().requires_grad_() for param in model.parameters()]


def assert_same_params(first: list[torch.Tensor], second: list[torch.Tensor]) -> None:
    for a, b in zip(first, second, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(("ours", "theirs", "kwargs"), PAIRS)
def test_torch_checkpoint_resumes_in_optimlab_and_back(mlp, batches, backend, ours, theirs, kwargs):
    model = mlp(torch.float64)
    data = list(batches(150, torch.float64))
    torch_params = copies(model)
    reference = getattr(torch.optim, theirs)(torch_params, **kwargs)
    train([reference], [torch_params], (model, data[:50]))

    # torch.optim → optimlab, 50 more steps beside the uninterrupted torch.optim run
    our_params = [param.detach().clone().requires_grad_() for param in torch_params]
    optimizer = getattr(optimlab.torch, ours)(our_params, backend=backend, **kwargs)
    optimizer.load_state_dict(round_trip(reference.state_dict()))
    assert optimizer.param_groups[0]["backend"] == backend
    train([reference, optimizer], [torch_params, our_params], (model, data[50:100]))
    assert_same_params(our_params, torch_params)

    # optimlab → torch.optim, 50 more steps
    resumed_params = [param.detach().clone().requires_grad_() for param in our_params]
    resumed = getattr(torch.optim, theirs)(resumed_params, **kwargs)
    resumed.load_state_dict(round_trip(optimizer.state_dict()))
    train([optimizer, resumed, reference], [our_params, resumed_params, torch_params], (model, data[100:]))
    assert_same_params(resumed_params, our_params)
    assert_same_params(torch_params, our_params)
    for index, state in reference.state_dict()["state"].items():
        for key, value in state.items():
            # torch.optim's own load casts NAdam's `mu_product` (not `step`) to the param's dtype, as ours does
            torch.testing.assert_close(optimizer.state_dict()["state"][index][key], value, rtol=1e-12, atol=1e-15,
                                       check_dtype=key != "mu_product")
            assert resumed.state_dict()["state"][index][key].dtype == optimizer.state_dict()["state"][index][key].dtype


@pytest.mark.parametrize(("value", "message"), [(None, r"lacks \['mu_product'\]"),
                                                (torch.tensor(float("nan")), "mu_product must be a finite number"),
                                                ("1.0", "mu_product must be a finite number")])
def test_nadam_checks_its_scalar_state_and_keeps_it_float32(mlp, value, message):
    """`mu_product` is per-param scalar state: a 0-dim float32 tensor like `step`, even under a `state_dtype`."""
    model = mlp()
    optimizer = optimlab.torch.NAdam(model.parameters(), backend="eager", state_dtype=torch.bfloat16)
    model(torch.ones(2, 8)).sum().backward()
    optimizer.step()
    saved = round_trip(optimizer.state_dict())
    state = saved["state"][0]
    assert state["mu_product"].shape == () and state["mu_product"].dtype == torch.float32
    assert state["exp_avg"].dtype == torch.bfloat16
    fresh = optimlab.torch.NAdam(mlp().parameters(), backend="eager", state_dtype=torch.bfloat16)
    fresh.load_state_dict(saved)
    assert all(each["mu_product"].dtype == torch.float32 for each in fresh.state.values())
    broken = copy.deepcopy(saved)
    if value is None:
        del broken["state"][0]["mu_product"]
    else:
        broken["state"][0]["mu_product"] = value
    with pytest.raises(ValueError, match=message):
        fresh.load_state_dict(broken)


def test_state_dtype_survives_save_and_load(mlp):
    model = mlp()
    optimizer = optimlab.torch.Adam(model.parameters(), backend="eager", state_dtype=torch.bfloat16)
    model(torch.ones(2, 8)).sum().backward()
    optimizer.step()
    saved = round_trip(optimizer.state_dict())
    assert saved["param_groups"][0]["state_dtype"] is torch.bfloat16
    fresh = optimlab.torch.Adam(mlp().parameters(), backend="eager")
    fresh.load_state_dict(saved)
    assert all(state["exp_avg"].dtype == torch.bfloat16 for state in fresh.state.values())
    theirs = torch.optim.Adam(mlp().parameters())
    theirs.load_state_dict(saved)  # torch.optim casts state to the params' dtype and ignores our keys
    assert all(state["exp_avg"].dtype == torch.float32 for state in theirs.state.values())


def test_each_group_keeps_its_backend_across_a_load(mlp):
    saved = optimlab.torch.Adam(mlp().parameters(), backend="eager").state_dict()
    saved["param_groups"][0]["backend"] = "a backend this machine lacks"
    optimizer = optimlab.torch.Adam(mlp().parameters(), backend="auto")
    optimizer.load_state_dict(saved)
    assert optimizer.param_groups[0]["backend"] == "auto"


def _snapshot(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    return copy.deepcopy(optimizer.state_dict())


def _trained(mlp) -> torch.optim.Optimizer:
    model = mlp()
    optimizer = optimlab.torch.Adam(model.parameters(), lr=0.01, backend="eager", amsgrad=True)
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.ones(2, 8)).square().sum().backward()
        optimizer.step()
    return optimizer


def _break(kind: str, state_dict: dict[str, Any]) -> dict[str, Any]:
    broken = copy.deepcopy(state_dict)
    if kind == "group count":
        broken["param_groups"].append(dict(broken["param_groups"][0], params=[]))
    elif kind == "param count":
        broken["param_groups"][0]["params"] = broken["param_groups"][0]["params"][:-1]
    elif kind == "shape":
        broken["state"][1]["exp_avg"] = torch.zeros(3)
    elif kind == "missing state":
        del broken["state"][2]["max_exp_avg_sq"]
    elif kind == "missing step":
        del broken["state"][0]["step"]
    elif kind == "missing hyperparameter":
        del broken["param_groups"][0]["betas"]
    elif kind == "invalid hyperparameter":
        broken["param_groups"][0]["lr"] = -1.0
    elif kind == "integer state":
        broken["state"][3]["exp_avg_sq"] = broken["state"][3]["exp_avg_sq"].long()
    elif kind == "complex state":
        broken["state"][3]["exp_avg"] = broken["state"][3]["exp_avg"].to(torch.complex64)
    elif kind == "unknown param":
        broken["state"][99] = {}
    elif kind == "not a state dict":
        broken = {"param_groups": broken["param_groups"]}
    return broken


@pytest.mark.parametrize("kind", ["group count", "param count", "shape", "missing state", "missing step",
                                  "missing hyperparameter", "invalid hyperparameter", "integer state",
                                  "complex state", "unknown param", "not a state dict"])
def test_a_malformed_state_dict_raises_and_changes_nothing(mlp, kind):
    optimizer = _trained(mlp)
    other = _trained(mlp)
    other.param_groups[0]["lr"] = 0.5  # so that a partial load would show
    before = _snapshot(optimizer)
    with pytest.raises(ValueError, match="Invalid state_dict"):
        optimizer.load_state_dict(_break(kind, other.state_dict()))
    after = _snapshot(optimizer)
    assert after["param_groups"] == before["param_groups"]
    for index, state in before["state"].items():
        for key, value in state.items():
            assert torch.equal(after["state"][index][key], value)
