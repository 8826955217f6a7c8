"""optimlab.torch.Lion against the `lion-pytorch` package's Lion, step for step on every backend."""

import lion_pytorch
import pytest
import torch
from tests.torch.test_equivalence import RTOL, STEPS, assert_close

import optimlab.torch

CASES = [
    pytest.param({"lr": 1e-3}, id="default-betas"),
    pytest.param({"lr": 3e-3, "betas": (0.8, 0.95), "weight_decay": 0.1}, id="betas-weight_decay"),
    pytest.param({"lr": 1e-3, "betas": (0.0, 0.5)}, id="sign_of_the_gradient"),
]


def _grouped(tensors, lr):
    """Two groups, the first at twice the learning rate."""
    return [{"params": tensors[:2], "lr": 2 * lr}, {"params": tensors[2:]}]


def _pair(mlp, batches, backend, dtype, kwargs, groups=False):
    model = mlp(dtype)
    params = list(model.parameters())
    ours = [param.detach().clone().requires_grad_() for param in params]

    def grouped(tensors):
        return _grouped(tensors, kwargs["lr"]) if groups else tensors

    reference = lion_pytorch.Lion(grouped(params), **kwargs)
    optimizer = optimlab.torch.Lion(grouped(ours), backend=backend, **kwargs)
    for inputs, targets in batches(STEPS, dtype):
        reference.zero_grad()
        torch.nn.functional.mse_loss(model(inputs), targets).backward()
        for param, our_param in zip(params, ours, strict=True):
            our_param.grad = param.grad.clone()
        reference.step()
        optimizer.step()
    return reference, optimizer, params, ours


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kwargs", CASES)
def test_matches_lion_pytorch(mlp, batches, backend, dtype, kwargs):
    reference, optimizer, params, ours = _pair(mlp, batches, backend, dtype, kwargs)
    for index, (param, our_param) in enumerate(zip(params, ours, strict=True)):
        assert_close(our_param.detach(), param.detach(), RTOL[dtype], f"param {index}")
        assert_close(optimizer.state[our_param]["exp_avg"], reference.state[param]["exp_avg"], RTOL[dtype],
                     f"exp_avg {index}")
        assert set(optimizer.state[our_param]) == set(reference.state[param]) == {"exp_avg"}


def test_groups_and_state_dicts_interchange_both_ways(mlp, batches, backend):
    reference, optimizer, params, ours = _pair(mlp, batches, backend, torch.float64, {"lr": 1e-3}, groups=True)
    for param, our_param in zip(params, ours, strict=True):
        assert_close(our_param.detach(), param.detach(), RTOL[torch.float64], "param")
    theirs = lion_pytorch.Lion(_grouped([torch.nn.Parameter(param.detach().clone()) for param in params], 1.0))
    theirs.load_state_dict(optimizer.state_dict())
    mine = optimlab.torch.Lion(_grouped([torch.nn.Parameter(param.detach().clone()) for param in params], 1.0),
                               backend=backend)
    mine.load_state_dict(reference.state_dict())
    for loaded in (theirs, mine):
        assert loaded.param_groups[0]["lr"] == 2e-3
        for index, state in enumerate(loaded.state_dict()["state"].values()):
            torch.testing.assert_close(state["exp_avg"], reference.state_dict()["state"][index]["exp_avg"])


def test_signature_and_defaults():
    optimizer = optimlab.torch.Lion([torch.nn.Parameter(torch.ones(2))])
    assert {key: optimizer.defaults[key] for key in ("lr", "betas", "weight_decay")} == \
        {"lr": 1e-4, "betas": (0.9, 0.99), "weight_decay": 0.0}
    with pytest.raises(ValueError, match="Invalid betas"):
        optimlab.torch.Lion([torch.nn.Parameter(torch.ones(2))], betas=(0.9, 1.5))
