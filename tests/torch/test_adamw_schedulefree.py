"""`optimlab.torch.AdamWScheduleFree` against the reference's step written out in float64
(`schedulefree_reference`) on every backend, and against the `schedulefree` package's `AdamWScheduleFree` (a dev
dependency) step for step, for state dicts both ways and train()/eval()."""

import copy

import numpy as np
import pytest
import schedulefree
import torch
from tests.rules import schedulefree_reference as reference

import optimlab.torch

STEPS = 30
CONFIGS = reference.CONFIGS
RTOL = {torch.float32: 1e-5, torch.float64: 1e-12}


def _problem(dtype, steps=STEPS, seed=0):
    generator = torch.Generator().manual_seed(seed)
    shapes = [(7,), (3, 4), (1,)]
    params = [torch.randn(shape, generator=generator, dtype=dtype) for shape in shapes]
    grads = [[torch.randn(shape, generator=generator, dtype=dtype) for shape in shapes] for _ in range(steps)]
    return params, grads


def _run(cls, params, grads, **config):
    params = [param.clone().requires_grad_() for param in params]
    optimizer = cls(params, **config)
    optimizer.train()
    for step_grads in grads:
        for param, grad in zip(params, step_grads, strict=True):
            param.grad = grad.clone()  # (the package divides the gradient in place)
        optimizer.step()
    return optimizer, params


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", CONFIGS)
def test_equals_the_float64_reference_on_every_backend(backend, name, dtype):
    params, grads = _problem(dtype)
    group, states = reference.new_group(**CONFIGS[name]), [{} for _ in params]
    expected = [param.double().numpy().copy() for param in params]
    for step_grads in grads:
        reference.step(group, expected, [grad.double().numpy() for grad in step_grads], states)
    optimizer, actual = _run(optimlab.torch.AdamWScheduleFree, params, grads, **CONFIGS[name], backend=backend)
    for param, want, state in zip(actual, expected, states, strict=True):
        np.testing.assert_allclose(param.detach().double().numpy(), want, rtol=RTOL[dtype], atol=RTOL[dtype] * 1e-2)
        np.testing.assert_allclose(optimizer.state[param]["z"].double().numpy(), state["z"], rtol=RTOL[dtype],
                                   atol=RTOL[dtype] * 1e-2)
    assert {key: optimizer.param_groups[0][key] for key in ("k", "weight_sum", "lr_max", "scheduled_lr")} \
        == pytest.approx({key: group[key] for key in ("k", "weight_sum", "lr_max", "scheduled_lr")}, rel=1e-15)


#: the package's release here predates `inner_momentum`
PACKAGE_CONFIGS = [name for name in CONFIGS if "inner_momentum" not in CONFIGS[name]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", PACKAGE_CONFIGS)
def test_equals_the_schedulefree_package_step_for_step(backend, name, dtype):
    """In train mode and after `eval()` (x), on its foreach and its per-param path."""
    params, grads = _problem(dtype)
    for foreach in (False, True):
        want_optimizer, want = _run(schedulefree.AdamWScheduleFree, params, grads, **CONFIGS[name], foreach=foreach)
        optimizer, actual = _run(optimlab.torch.AdamWScheduleFree, params, grads, **CONFIGS[name], backend=backend)
        for mode in ("train", "eval"):
            getattr(want_optimizer, mode)()
            getattr(optimizer, mode)()
            for param, expected in zip(actual, want, strict=True):
                torch.testing.assert_close(param, expected, rtol=RTOL[dtype], atol=RTOL[dtype] * 1e-2)
        # the group state in the same keys, computed in the same Python float arithmetic: equal
        assert {key: optimizer.param_groups[0][key] for key in want_optimizer.defaults if key != "foreach"} \
            == {key: want_optimizer.param_groups[0][key] for key in want_optimizer.defaults if key != "foreach"}


def test_state_dicts_interchange_with_the_reference_both_ways():
    params, grads = _problem(torch.float64)
    reference_optimizer, reference_params = _run(schedulefree.AdamWScheduleFree, params, grads[:5], lr=0.05,
                                                 warmup_steps=3)
    ours_params = [param.detach().clone().requires_grad_() for param in reference_params]
    ours = optimlab.torch.AdamWScheduleFree(ours_params, lr=0.05, warmup_steps=3, backend="eager")
    ours.load_state_dict(copy.deepcopy(reference_optimizer.state_dict()))
    assert ours.param_groups[0]["k"] == 5 and ours.param_groups[0]["train_mode"] is True
    for optimizer, step_params in ((reference_optimizer, reference_params), (ours, ours_params)):
        for step_grads in grads[5:]:
            for param, grad in zip(step_params, step_grads, strict=True):
                param.grad = grad.clone()
            optimizer.step()
    for param, expected in zip(ours_params, reference_params, strict=True):
        torch.testing.assert_close(param, expected, rtol=1e-12, atol=1e-14)
    back_params = [param.detach().clone().requires_grad_() for param in ours_params]
    back = schedulefree.AdamWScheduleFree(back_params, lr=0.05, warmup_steps=3)
    back.load_state_dict(copy.deepcopy(ours.state_dict()))
    assert back.param_groups[0]["k"] == STEPS
    for optimizer in (back, ours):
        optimizer.eval()
    for param, expected in zip(back_params, ours_params, strict=True):
        torch.testing.assert_close(param, expected, rtol=0, atol=0)


def test_train_and_eval_round_trip_and_do_nothing_twice():
    params, grads = _problem(torch.float64)
    optimizer, actual = _run(optimlab.torch.AdamWScheduleFree, params, grads[:4], lr=0.1, backend="eager")
    y = [param.detach().clone() for param in actual]
    optimizer.eval()
    optimizer.eval()  # already in eval mode: nothing
    x = [param.detach().clone() for param in actual]
    for param_x, param_y, param in zip(x, y, actual, strict=True):
        z = optimizer.state[param]["z"]
        torch.testing.assert_close(param_x, param_y + (1 - 1 / 0.9) * (z - param_y), rtol=1e-14, atol=1e-15)
    optimizer.train()
    optimizer.train()
    for param, param_y in zip(actual, y, strict=True):
        torch.testing.assert_close(param.detach(), param_y, rtol=1e-12, atol=1e-14)


def test_step_in_eval_mode_raises_and_changes_nothing():
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = optimlab.torch.AdamWScheduleFree([param], backend="eager")
    param.grad = torch.ones(3)
    with pytest.raises(RuntimeError, match="train mode"):
        optimizer.step()  # a new optimizer is in eval mode, as the reference's
    assert optimizer.param_groups[0]["k"] == 0 and not optimizer.state
    torch.testing.assert_close(param.detach(), torch.ones(3))


def test_a_failed_step_changes_nothing(monkeypatch, backend):
    params, grads = _problem(torch.float32, steps=3)
    optimizer, actual = _run(optimlab.torch.AdamWScheduleFree, params, grads[:2], lr=0.1, backend=backend)
    group_before = {key: value for key, value in optimizer.param_groups[0].items() if key != "params"}
    params_before = [param.detach().clone() for param in actual]
    z_before = [optimizer.state[param]["z"].clone() for param in actual]
    plan = next(iter(optimizer._plans.values()))

    def failing(*args, **kwargs):
        raise RuntimeError("backend failure")

    for name in ("step", "prepare"):
        monkeypatch.setattr(plan.backend, name, failing, raising=False)
    if plan.prepared is not None:
        monkeypatch.setattr(plan.prepared, "step", failing)
    for param, grad in zip(actual, grads[2], strict=True):
        param.grad = grad.clone()
    with pytest.raises(RuntimeError, match="backend failure"):
        optimizer.step()
    assert {key: value for key, value in optimizer.param_groups[0].items() if key != "params"} == group_before
    for param, before, z in zip(actual, params_before, z_before, strict=True):
        torch.testing.assert_close(param.detach(), before, rtol=0, atol=0)
        torch.testing.assert_close(optimizer.state[param]["z"], z, rtol=0, atol=0)


@pytest.mark.parametrize("skip", ["found_inf", "skip_nonfinite"])
def test_a_skipped_step_does_not_advance_the_group_state(skip):
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = optimlab.torch.AdamWScheduleFree([param], backend="eager", skip_nonfinite=skip == "skip_nonfinite")
    optimizer.train()
    if skip == "found_inf":
        optimizer.found_inf = torch.ones(())
        param.grad = torch.ones(3)
    else:
        param.grad = torch.tensor([1.0, float("inf"), 0.0])
    optimizer.step()
    assert optimizer.param_groups[0]["k"] == 0 and optimizer.param_groups[0]["weight_sum"] == 0.0
    torch.testing.assert_close(param.detach(), torch.ones(3))


def test_z_starts_as_the_param_in_state_dtype():
    param = torch.nn.Parameter(torch.linspace(-1, 1, 4))
    optimizer = optimlab.torch.AdamWScheduleFree([param], lr=0.0, backend="eager", state_dtype=torch.float64)
    optimizer.train()
    param.grad = torch.ones(4)
    optimizer.step()  # lr 0: nothing moves, z is the param
    assert optimizer.state[param]["z"].dtype == torch.float64
    torch.testing.assert_close(optimizer.state[param]["z"], torch.linspace(-1, 1, 4, dtype=torch.float64))


@pytest.mark.parametrize("bad, message", [({"k": -1}, "Invalid k"), ({"train_mode": 1}, "Invalid train_mode"),
                                          ({"weight_sum": float("nan")}, "Invalid weight_sum")])
def test_a_state_dict_with_invalid_group_state_is_refused_and_changes_nothing(bad, message):
    param = torch.nn.Parameter(torch.ones(2))
    optimizer = optimlab.torch.AdamWScheduleFree([param], backend="eager")
    state_dict = optimizer.state_dict()
    state_dict["param_groups"][0].update(bad)
    with pytest.raises(ValueError, match=message):
        optimizer.load_state_dict(state_dict)
    assert optimizer.param_groups[0]["k"] == 0 and optimizer.param_groups[0]["train_mode"] is False


def test_a_tensor_lr_steps_as_the_package_and_its_state_dict_loads_back():
    """With `lr=torch.tensor(...)` the group state becomes tensors (the package's too); its checkpoints load."""
    runs = []
    for cls, extra in ((schedulefree.AdamWScheduleFree, {}), (optimlab.torch.AdamWScheduleFree, {"backend": "eager"})):
        params, grads = _problem(torch.float64, steps=3)
        runs.append(_run(cls, params, grads, lr=torch.tensor(0.01, dtype=torch.float64), **extra))
    (want_optimizer, want), (optimizer, actual) = runs
    for param, expected in zip(actual, want, strict=True):
        torch.testing.assert_close(param, expected, rtol=1e-12, atol=1e-14)
    optimizer.load_state_dict(optimizer.state_dict())
    assert torch.is_tensor(optimizer.param_groups[0]["weight_sum"])


def test_a_group_without_gradients_advances_its_state_as_the_package_does(backend):
    """The package advances every group's k, W and γ_max each step, also one none of whose params has a gradient."""
    runs = []
    for cls, extra in ((schedulefree.AdamWScheduleFree, {}), (optimlab.torch.AdamWScheduleFree, {"backend": backend})):
        params, grads = _problem(torch.float64, steps=6)
        params = [param.clone().requires_grad_() for param in params]
        optimizer = cls([{"params": params[:2]}, {"params": params[2:], "lr": 0.05}], warmup_steps=4, **extra)
        optimizer.train()
        for step, step_grads in enumerate(grads):
            for index, (param, grad) in enumerate(zip(params, step_grads, strict=True)):
                param.grad = grad.clone() if index < 2 or step >= 3 else None  # group 1 idle for 3 steps
            optimizer.step()
        runs.append((optimizer, params))
    (want_optimizer, want), (optimizer, actual) = runs
    for param, expected in zip(actual, want, strict=True):
        torch.testing.assert_close(param, expected, rtol=1e-12, atol=1e-14)
    keys = ("k", "weight_sum", "lr_max", "scheduled_lr")
    assert [{key: group[key] for key in keys} for group in optimizer.param_groups] \
        == [{key: group[key] for key in keys} for group in want_optimizer.param_groups]
