"""`optimlab.torch.AdamWScheduleFree` against the reference's step (`schedulefree_reference`, float64) on every
backend, and against a transcription of `schedulefree.AdamWScheduleFree` for state dicts and train()/eval()."""

import copy

import numpy as np
import pytest
import torch
from tests.rules import schedulefree_reference as reference

import optimlab.torch

STEPS = 30
CONFIGS = {
    "defaults": {},
    "warmup": {"lr": 0.05, "warmup_steps": 7},
    "weight_decay": {"lr": 0.02, "weight_decay": 0.1},
    "polynomial": {"lr": 0.02, "r": 1.5, "weight_lr_power": 1.0, "warmup_steps": 3},
    "inner_momentum": {"lr": 0.03, "inner_momentum": 0.9, "weight_decay": 0.01},
}
RTOL = {torch.float32: 1e-5, torch.float64: 1e-12}


class TranscribedAdamWScheduleFree(torch.optim.Optimizer):
    """`schedulefree.AdamWScheduleFree` (its per-param loop), transcribed: the package is not installable here."""

    def __init__(self, params, lr=0.0025, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, warmup_steps=0, r=0.0,
                 weight_lr_power=2.0, inner_momentum=0.0, foreach=False):
        defaults = dict(lr=lr, betas=betas, eps=eps, r=r, k=0, warmup_steps=warmup_steps, train_mode=False,
                        weight_sum=0.0, lr_max=-1.0, scheduled_lr=0.0, weight_lr_power=weight_lr_power,
                        weight_decay=weight_decay, inner_momentum=inner_momentum, foreach=foreach)
        super().__init__(params, defaults)

    @torch.no_grad()
    def eval(self):
        for group in self.param_groups:
            if group["train_mode"]:
                for p in group["params"]:
                    if "z" in self.state[p]:
                        p.lerp_(end=self.state[p]["z"].to(p.device), weight=1 - 1 / group["betas"][0])
                group["train_mode"] = False

    @torch.no_grad()
    def train(self):
        for group in self.param_groups:
            if not group["train_mode"]:
                for p in group["params"]:
                    if "z" in self.state[p]:
                        p.lerp_(end=self.state[p]["z"].to(p.device), weight=1 - group["betas"][0])
                group["train_mode"] = True

    @torch.no_grad()
    def step(self, closure=None):
        if not self.param_groups[0]["train_mode"]:
            raise Exception("Optimizer was not in train mode when step is called.")
        for group in self.param_groups:
            eps, (beta1, beta2), decay, k = group["eps"], group["betas"], group["weight_decay"], group["k"]
            r, warmup_steps, weight_lr_power = group["r"], group["warmup_steps"], group["weight_lr_power"]
            inner_momentum = group["inner_momentum"]
            sched = (k + 1) / warmup_steps if k < warmup_steps else 1.0
            bias_correction2 = 1 - beta2 ** (k + 1)
            bias_correction1 = 1 - inner_momentum ** (k + 1)
            lr = group["lr"] * sched
            group["scheduled_lr"] = lr
            lr_max = group["lr_max"] = max(lr, group["lr_max"])
            weight = ((k + 1) ** r) * (lr_max ** weight_lr_power)
            weight_sum = group["weight_sum"] = group["weight_sum"] + weight
            try:
                ckp1 = weight / weight_sum
            except ZeroDivisionError:
                ckp1 = 0
            for p in [p for p in group["params"] if p.grad is not None]:
                state = self.state[p]
                if "z" not in state:
                    state["z"] = torch.clone(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    if inner_momentum != 0:
                        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                y, grad, z, exp_avg_sq = p, p.grad.clone(), state["z"], state["exp_avg_sq"]
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denom = exp_avg_sq.div(bias_correction2).sqrt_().add_(eps)
                if inner_momentum != 0:
                    exp_avg = state["exp_avg"]
                    exp_avg.mul_(inner_momentum).add_(grad, alpha=1 - inner_momentum)
                    grad_normalized = exp_avg.div(bias_correction1).div_(denom)
                else:
                    grad_normalized = grad.div_(denom)
                if decay != 0:
                    grad_normalized.add_(y, alpha=decay)
                y.lerp_(end=z, weight=ckp1)
                y.add_(grad_normalized, alpha=lr * (beta1 * (1 - ckp1) - 1))
                z.sub_(grad_normalized, alpha=lr)
            group["k"] = k + 1


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
            param.grad = grad.clone()
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


@pytest.mark.parametrize("name", ["defaults", "warmup", "inner_momentum"])
def test_eager_float32_equals_the_transcribed_reference_closely(name):
    params, grads = _problem(torch.float32)
    want_optimizer, want = _run(TranscribedAdamWScheduleFree, params, grads, **CONFIGS[name])
    optimizer, actual = _run(optimlab.torch.AdamWScheduleFree, params, grads, **CONFIGS[name], backend="eager")
    want_optimizer.eval()
    optimizer.eval()
    for param, expected in zip(actual, want, strict=True):
        torch.testing.assert_close(param, expected, rtol=2e-6, atol=1e-7)


def test_state_dicts_interchange_with_the_reference_both_ways():
    params, grads = _problem(torch.float64)
    reference_optimizer, reference_params = _run(TranscribedAdamWScheduleFree, params, grads[:5], lr=0.05,
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
    back = TranscribedAdamWScheduleFree(back_params, lr=0.05, warmup_steps=3)
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
