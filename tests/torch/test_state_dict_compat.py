"""Arguments and state dicts torch.optim accepts: taken as torch takes them, or refused at load, never mid-step."""

from __future__ import annotations

import copy

import pytest
import torch

import optimlab.torch

_SINCE_1_X = ("maximize", "foreach", "differentiable")

#: optimlab/torch.optim class, arguments with newer group keys away from their defaults, and the group keys
#: PyTorch added to that class over the years (its `__setstate__` fills them in state dicts that lack them).
CLASSES = [
    pytest.param("SGD", {"lr": 0.01, "momentum": 0.9, "nesterov": True, "maximize": True},
                 ("nesterov", *_SINCE_1_X, "fused"), id="SGD"),
    pytest.param("Adagrad", {"lr": 0.1, "maximize": True}, (*_SINCE_1_X, "fused"), id="Adagrad"),
    pytest.param("RMSprop", {"lr": 0.01, "centered": True, "momentum": 0.5, "maximize": True},
                 ("momentum", "centered", *_SINCE_1_X, "capturable"), id="RMSprop"),
    pytest.param("Adam", {"lr": 0.01, "amsgrad": True, "maximize": True},
                 ("amsgrad", *_SINCE_1_X, "capturable", "fused", "decoupled_weight_decay"), id="Adam"),
    pytest.param("AdamW", {"lr": 0.01, "amsgrad": True, "maximize": True},
                 ("amsgrad", *_SINCE_1_X, "capturable", "fused", "decoupled_weight_decay"), id="AdamW"),
]


def make_params(seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 3, generator=generator, dtype=torch.float64).requires_grad_(),
            torch.randn(3, generator=generator, dtype=torch.float64).requires_grad_()]


def clones(params: list[torch.Tensor]) -> list[torch.Tensor]:
    return [param.detach().clone().requires_grad_() for param in params]


def run(optimizer: torch.optim.Optimizer, params: list[torch.Tensor], steps: int, seed: int = 1) -> None:
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for param in params:
            param.grad = torch.randn(param.shape, generator=generator, dtype=param.dtype)
        optimizer.step()


def assert_same(ours: list[torch.Tensor], theirs: list[torch.Tensor]) -> None:
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)


# --- item: lr as a one-element tensor ----------------------------------------------------------------

@pytest.mark.parametrize("shape", [(1,), (1, 1)], ids=["1-D", "2-D"])
@pytest.mark.parametrize("name", ["SGD", "Adam", "RMSprop"])
def test_lr_as_a_one_element_tensor_is_taken_as_in_torch(backend, name, shape):
    ours = make_params()
    theirs = clones(ours)
    lr = torch.full(shape, 0.01, dtype=torch.float64)
    optimizer = getattr(optimlab.torch, name)(ours, lr=lr.clone(), backend=backend)
    reference = getattr(torch.optim, name)(theirs, lr=lr.clone())
    run(optimizer, ours, 3)
    run(reference, theirs, 3)
    assert_same(ours, theirs)
    assert optimizer.param_groups[0]["lr"].shape == reference.param_groups[0]["lr"].shape == shape


def test_lr_beyond_floats_range_is_a_value_error_naming_lr():
    with pytest.raises(ValueError, match=r"Invalid lr: an integer of 401 digits"):
        optimlab.torch.Adam(make_params(), lr=10**400)
    optimizer = optimlab.torch.Adam(make_params())
    state_dict = optimizer.state_dict()
    state_dict["param_groups"][0]["lr"] = 10**400
    with pytest.raises(ValueError, match=r"Invalid state_dict: param group 0: Invalid lr"):
        optimizer.load_state_dict(state_dict)


# --- item: state dicts of older PyTorch versions ------------------------------------------------------

@pytest.mark.parametrize(("name", "kwargs", "newer_keys"), CLASSES)
def test_state_dict_lacking_newer_group_keys_loads_as_in_torch(backend, name, kwargs, newer_keys):
    source = make_params()
    writer = getattr(torch.optim, name)(source, **kwargs)
    run(writer, source, 2)
    old = copy.deepcopy(writer.state_dict())
    for group in old["param_groups"]:
        for key in newer_keys:
            del group[key]
    ours, theirs = clones(source), clones(source)
    optimizer = getattr(optimlab.torch, name)(ours, backend=backend, **kwargs)
    reference = getattr(torch.optim, name)(theirs, **kwargs)
    optimizer.load_state_dict(copy.deepcopy(old))
    reference.load_state_dict(copy.deepcopy(old))
    for group, torch_group in zip(optimizer.param_groups, reference.param_groups, strict=True):
        assert {key: group[key] for key in torch_group if key != "params"} == \
            {key: value for key, value in torch_group.items() if key != "params"}
        assert group["backend"] == backend  # optimlab's own keys: this optimizer's settings, as before
    run(optimizer, ours, 2)
    run(reference, theirs, 2)
    assert_same(ours, theirs)


# --- item: state dicts that load but could not be stepped ---------------------------------------------

def adam_state_dict(params: list[torch.Tensor]) -> dict:
    """A torch.optim Adam state dict after two steps, with the params in two groups."""
    writer = torch.optim.Adam([{"params": params[:1]}, {"params": params[1:], "lr": 0.1}], lr=0.01)
    run(writer, params, 2)
    return copy.deepcopy(writer.state_dict())


def two_group_adam(cls, params, **options):
    return cls([{"params": params[:1]}, {"params": params[1:], "lr": 0.1}], lr=0.01, **options)


@pytest.mark.parametrize("dtype", [torch.int64, torch.float64])
def test_step_of_another_dtype_loads_and_steps_as_in_torch(backend, dtype):
    source = make_params()
    state_dict = adam_state_dict(source)
    for state in state_dict["state"].values():
        state["step"] = state["step"].to(dtype)
    ours, theirs = clones(source), clones(source)
    optimizer = two_group_adam(optimlab.torch.Adam, ours, backend=backend)
    reference = two_group_adam(torch.optim.Adam, theirs)
    optimizer.load_state_dict(copy.deepcopy(state_dict))
    reference.load_state_dict(copy.deepcopy(state_dict))
    run(optimizer, ours, 2)
    run(reference, theirs, 2)
    assert_same(ours, theirs)
    for mine, torchs in zip(ours, theirs, strict=True):
        assert optimizer.state[mine]["step"].dtype == reference.state[torchs]["step"].dtype == dtype
        assert optimizer.state[mine]["step"].item() == reference.state[torchs]["step"].item() == 4


def test_extra_per_param_state_is_kept_as_in_torch(backend):
    source = make_params()
    state_dict = adam_state_dict(source)
    state_dict["state"][0]["updates_skipped"] = 3  # (not a string: torch's load turns iterables into new ones)
    state_dict["state"][0]["ema"] = torch.zeros(7, dtype=torch.float64)
    ours, theirs = clones(source), clones(source)
    optimizer = two_group_adam(optimlab.torch.Adam, ours, backend=backend)
    reference = two_group_adam(torch.optim.Adam, theirs)
    optimizer.load_state_dict(copy.deepcopy(state_dict))
    reference.load_state_dict(copy.deepcopy(state_dict))
    run(optimizer, ours, 2)
    run(reference, theirs, 2)
    assert_same(ours, theirs)
    assert optimizer.state[ours[0]]["updates_skipped"] == reference.state[theirs[0]]["updates_skipped"] == 3
    assert torch.equal(optimizer.state[ours[0]]["ema"], reference.state[theirs[0]]["ema"])


def test_a_sparse_state_tensor_is_refused_at_load_and_changes_nothing(backend):
    source = make_params()
    optimizer = two_group_adam(optimlab.torch.Adam, source, backend=backend)
    run(optimizer, source, 1)
    before = copy.deepcopy(optimizer.state_dict())
    state_dict = copy.deepcopy(before)
    state_dict["state"][1]["exp_avg"] = state_dict["state"][1]["exp_avg"].to_sparse()
    with pytest.raises(ValueError, match=r"state of param 1 \(group 1\): exp_avg is a torch.sparse_coo tensor"):
        optimizer.load_state_dict(state_dict)
    after = optimizer.state_dict()
    assert after["param_groups"] == before["param_groups"]
    for index, state in before["state"].items():
        for key, value in state.items():
            assert torch.equal(after["state"][index][key], value)
    run(optimizer, source, 1)  # and it still steps
