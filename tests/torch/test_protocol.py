"""The rest of the torch.optim protocol: AMP's GradScaler, closures, hooks, sparse and complex gradients,
low-precision params and state, skip_nonfinite, hyperparameter validation, backend choice."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

import optimlab
import optimlab.torch
from optimlab.backends import BACKENDS, resolve
from optimlab.rules import RULES

ALL = ["SGD", "Momentum", "Adagrad", "RMSprop", "Adam", "AdamW"]
TORCH_EQUIVALENT = {"Momentum": ("SGD", {"momentum": 0.9})}


def pair(name: str, params, backend: str, **kwargs):
    """optimlab's `name` on `params` and torch.optim's equivalent on a copy: (ours, theirs, their params)."""
    torch_name, extra = TORCH_EQUIVALENT.get(name, (name, {}))
    copies = [param.detach().clone().requires_grad_() for param in params]
    return (getattr(optimlab.torch, name)(params, backend=backend, **kwargs),
            getattr(torch.optim, torch_name)(copies, **kwargs, **extra), copies)


# --- AMP ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["SGD", "Adam", "RMSprop"])
def test_grad_scaler_unscales_and_skips_inf_steps_as_torch_does(mlp, batches, backend, name):
    model, twin = mlp(torch.float64), mlp(torch.float64)
    ours = getattr(optimlab.torch, name)(model.parameters(), lr=0.01, backend=backend)
    theirs = getattr(torch.optim, name)(twin.parameters(), lr=0.01)
    scalers = [torch.amp.GradScaler("cpu", init_scale=2.0 ** 12, growth_interval=3) for _ in range(2)]
    for step, (inputs, targets) in enumerate(batches(12, torch.float64)):
        for net, optimizer, scaler in ((model, ours, scalers[0]), (twin, theirs, scalers[1])):
            optimizer.zero_grad()
            scaler.scale(torch.nn.functional.mse_loss(net(inputs), targets)).backward()
            if step == 5:
                net[0].weight.grad[0, 0] = float("inf")
            scaler.step(optimizer)
            scaler.update()
        assert scalers[0].get_scale() == scalers[1].get_scale()
    assert scalers[0].get_scale() < 2.0 ** 12 * 2 ** 3  # one backoff happened
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    if name != "SGD":
        assert float(ours.state[model[0].weight]["step"]) == 11  # the inf step did not count


def test_inf_step_under_grad_scaler_leaves_params_and_state_untouched(mlp, backend):
    model = mlp()
    optimizer = optimlab.torch.Adam(model.parameters(), backend=backend)
    scaler = torch.amp.GradScaler("cpu")
    scaler.scale(model(torch.ones(2, 8)).sum()).backward()
    scaler.step(optimizer)
    scaler.update()
    before = [param.detach().clone() for param in model.parameters()]
    state = {key: value.clone() for key, value in optimizer.state[model[0].weight].items()}
    optimizer.zero_grad()
    scaler.scale(model(torch.ones(2, 8)).sum()).backward()
    model[2].bias.grad[0] = float("nan")
    scaler.step(optimizer)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert all(torch.equal(value, optimizer.state[model[0].weight][key]) for key, value in state.items())
    assert not hasattr(optimizer, "found_inf")  # the scaler cleans up after itself


def test_explicit_unscale_then_step_does_not_divide_twice(mlp):
    model, twin = mlp(torch.float64), mlp(torch.float64)
    ours = optimlab.torch.Adam(model.parameters(), lr=0.01, backend="eager")
    theirs = torch.optim.Adam(twin.parameters(), lr=0.01)
    for net, optimizer in ((model, ours), (twin, theirs)):
        scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
        scaler.scale(net(torch.ones(3, 8, dtype=torch.float64)).square().sum()).backward()
        scaler.unscale_(optimizer)  # e.g. for gradient clipping
        torch.nn.utils.clip_grad_norm_(net.parameters(), 0.5)
        scaler.step(optimizer)
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


# --- closures and hooks ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ALL)
def test_closure_is_reevaluated_with_grad_enabled(mlp, backend, name):
    model, twin = mlp(torch.float64), mlp(torch.float64)
    torch_name, extra = TORCH_EQUIVALENT.get(name, (name, {}))
    ours = getattr(optimlab.torch, name)(model.parameters(), lr=0.01, backend=backend)
    theirs = getattr(torch.optim, torch_name)(twin.parameters(), lr=0.01, **extra)
    inputs, targets = torch.randn(4, 8, dtype=torch.float64), torch.randn(4, 4, dtype=torch.float64)

    def closure_for(net, optimizer):
        def closure():
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(net(inputs), targets)
            loss.backward()
            return loss
        return closure

    for _ in range(5):
        with torch.no_grad():  # step() must turn grad back on for the closure
            loss = ours.step(closure_for(model, ours))
            expected = theirs.step(closure_for(twin, theirs))
        torch.testing.assert_close(loss.detach(), expected.detach(), rtol=1e-12, atol=0)
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_step_hooks_fire_and_zero_grad_clears(mlp):
    model = mlp()
    optimizer = optimlab.torch.AdamW(model.parameters(), backend="eager")
    calls = []
    optimizer.register_step_pre_hook(lambda opt, args, kwargs: calls.append("pre"))
    optimizer.register_step_post_hook(lambda opt, args, kwargs: calls.append("post"))
    handle = register_optimizer_step_post_hook(lambda opt, args, kwargs: calls.append("global"))
    try:
        model(torch.ones(1, 8)).sum().backward()
        optimizer.step()
    finally:
        handle.remove()
    assert calls == ["pre", "post", "global"]
    optimizer.zero_grad()
    assert all(param.grad is None for param in model.parameters())


def test_add_param_group_validates_and_steps(mlp):
    model = mlp()
    optimizer = optimlab.torch.Adam(model[0].parameters(), backend="eager")
    with pytest.raises(ValueError, match="betas"):
        optimizer.add_param_group({"params": model[2].parameters(), "betas": (0.9, 1.5)})
    assert len(optimizer.param_groups) == 1
    optimizer.add_param_group({"params": model[2].parameters(), "lr": 0.1, "amsgrad": True})
    model(torch.ones(1, 8)).sum().backward()
    optimizer.step()
    assert set(optimizer.state[model[2].weight]) == {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}


# --- sparse and complex gradients ---------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [{}, {"lr_decay": 0.1, "initial_accumulator_value": 0.5, "maximize": True}])
def test_sparse_adagrad_matches_torch(backend, kwargs):
    torch.manual_seed(0)
    ours_embedding = torch.nn.Embedding(10, 3, sparse=True, dtype=torch.float64)
    their_embedding = torch.nn.Embedding(10, 3, sparse=True, dtype=torch.float64)
    their_embedding.load_state_dict(ours_embedding.state_dict())
    ours = optimlab.torch.Adagrad(ours_embedding.parameters(), lr=0.1, backend=backend, **kwargs)
    theirs = torch.optim.Adagrad(their_embedding.parameters(), lr=0.1, **kwargs)
    for step in range(20):
        indices = torch.tensor([step % 10, (3 * step) % 10, step % 10, 7])  # repeats: coalesced as torch does
        for embedding, optimizer in ((ours_embedding, ours), (their_embedding, theirs)):
            optimizer.zero_grad()
            embedding(indices).square().sum().backward()
            optimizer.step()
    torch.testing.assert_close(ours_embedding.weight, their_embedding.weight, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(ours.state[ours_embedding.weight]["sum"], theirs.state[their_embedding.weight]["sum"],
                               rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", ["SGD", "RMSprop", "Adam", "AdamW"])
def test_sparse_gradients_raise_like_torch_and_change_nothing(name):
    embedding = torch.nn.Embedding(4, 2, sparse=True)
    optimizer = getattr(optimlab.torch, name)(embedding.parameters(), backend="eager")
    embedding(torch.tensor([1])).sum().backward()
    before = embedding.weight.detach().clone()
    with pytest.raises(RuntimeError, match="does not support sparse gradients"):
        optimizer.step()
    assert torch.equal(embedding.weight, before)
    assert not optimizer.state


def test_sparse_adagrad_with_weight_decay_raises():
    embedding = torch.nn.Embedding(4, 2, sparse=True)
    optimizer = optimlab.torch.Adagrad(embedding.parameters(), weight_decay=0.1, backend="eager")
    embedding(torch.tensor([1])).sum().backward()
    with pytest.raises(RuntimeError, match="weight_decay option is not compatible with sparse gradients"):
        optimizer.step()
    assert float(optimizer.state[embedding.weight]["step"]) == 0


@pytest.mark.parametrize("name", ALL)
def test_complex_params_match_torch(backend, name):
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(3, 4, dtype=torch.complex128, generator=generator).requires_grad_()
    kwargs = {"lr": 0.01, "weight_decay": 0.1} | ({"amsgrad": True} if name.startswith("Adam") else {}) \
        | ({"centered": True, "momentum": 0.5} if name == "RMSprop" else {})
    ours, theirs, (their_weight,) = pair(name, [weight], backend, **kwargs)
    for _ in range(20):
        inputs = torch.randn(4, 2, dtype=torch.complex128, generator=generator)
        for param, optimizer in ((weight, ours), (their_weight, theirs)):
            optimizer.zero_grad()
            (param @ inputs).abs().square().sum().backward()
            optimizer.step()
    torch.testing.assert_close(weight, their_weight, rtol=1e-12, atol=1e-14)
    for key, value in theirs.state[their_weight].items():
        assert ours.state[weight][key].dtype == value.dtype
        torch.testing.assert_close(ours.state[weight][key], value, rtol=1e-12, atol=1e-14)


# --- precision ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ALL)
def test_low_precision_params_follow_torch(mlp, batches, name, dtype):
    model = mlp(dtype)
    ours, theirs, copies = pair(name, list(model.parameters()), "eager", lr=0.01)
    reference = mlp(torch.float32)
    for inputs, targets in batches(10):
        reference.zero_grad()
        torch.nn.functional.mse_loss(reference(inputs), targets).backward()
        for param, copy, source in zip(model.parameters(), copies, reference.parameters(), strict=True):
            param.grad, copy.grad = source.grad.to(dtype), source.grad.to(dtype)
        ours.step()
        theirs.step()
    for param, copy in zip(model.parameters(), copies, strict=True):
        assert param.dtype == dtype
        # within two ulps at the tensor's scale: both round every operation to `dtype`, not always alike
        ulp = 2.0 ** -7 if dtype == torch.bfloat16 else 2.0 ** -10
        torch.testing.assert_close(param.float(), copy.float(), rtol=2 * ulp, atol=2 * ulp * float(copy.abs().max()))


def test_bfloat16_state_is_float32_math_rounded_on_store(mlp, batches):
    model = mlp()
    copies = [param.detach().clone().requires_grad_() for param in model.parameters()]
    theirs = torch.optim.Adam(copies, lr=0.01)
    ours = optimlab.torch.Adam(model.parameters(), lr=0.01, backend="eager", state_dtype=torch.bfloat16)
    for inputs, targets in batches(20):
        model.zero_grad()
        torch.nn.functional.mse_loss(model(inputs), targets).backward()
        for param, copy in zip(model.parameters(), copies, strict=True):
            copy.grad = param.grad.clone()
        ours.step()
        theirs.step()
        for state in theirs.state.values():  # torch.optim with its state rounded to bfloat16 after each step
            for key in ("exp_avg", "exp_avg_sq"):
                state[key].copy_(state[key].bfloat16())
    for param, copy in zip(model.parameters(), copies, strict=True):
        assert ours.state[param]["exp_avg"].dtype == torch.bfloat16
        assert param.dtype == torch.float32
        torch.testing.assert_close(param, copy, rtol=1e-5, atol=1e-5 * float(copy.abs().max()))
        for key in ("exp_avg", "exp_avg_sq"):  # equal up to one bfloat16 rounding
            torch.testing.assert_close(ours.state[param][key].float(), theirs.state[copy][key], rtol=2 ** -7,
                                       atol=2 ** -7 * float(theirs.state[copy][key].abs().max()))


# --- non-finite gradients -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ALL)
def test_skip_nonfinite_leaves_everything_untouched_and_counts(mlp, backend, name):
    model = mlp()
    optimizer = getattr(optimlab.torch, name)(model.parameters(), lr=0.01, backend=backend, skip_nonfinite=True)
    model(torch.ones(2, 8)).sum().backward()
    optimizer.step()
    before = [param.detach().clone() for param in model.parameters()]
    state = {param: {key: value.clone() for key, value in optimizer.state[param].items()}
             for param in model.parameters()}
    model[0].bias.grad[3] = float("nan")
    optimizer.step()
    model[0].bias.grad[3] = float("-inf")
    optimizer.step()
    assert optimizer.skipped_steps == 2
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    for param, saved in state.items():
        assert all(torch.equal(value, optimizer.state[param][key]) for key, value in saved.items())
    model[0].bias.grad[3] = 1.0
    optimizer.step()
    assert optimizer.skipped_steps == 2
    assert not torch.equal(before[1], model[0].bias)


@pytest.mark.parametrize("name", ALL)
def test_by_default_nan_propagates_as_in_torch(backend, name):
    param = torch.ones(3, requires_grad=True)
    ours, theirs, (copy,) = pair(name, [param], backend, lr=0.01)
    for tensor in (param, copy):
        tensor.grad = torch.tensor([1.0, float("nan"), 2.0])
    ours.step()
    theirs.step()
    torch.testing.assert_close(param, copy, equal_nan=True)
    assert param[1].isnan() and ours.skipped_steps == 0


# --- validation, names, backends --------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "kwargs", "message"), [
    ("Adam", {"lr": -1.0}, "Invalid lr: -1.0"),
    ("Adam", {"betas": (0.9, 1.0)}, r"Invalid betas\[1\]: 1.0"),
    ("AdamW", {"eps": -1e-8}, "Invalid eps: -1e-08"),
    ("Adam", {"weight_decay": float("nan")}, "Invalid weight_decay: nan"),
    ("SGD", {"momentum": -0.1}, "Invalid momentum: -0.1"),
    ("SGD", {"nesterov": True}, "Invalid nesterov"),
    ("SGD", {"momentum": 0.9, "dampening": 2.0}, "Invalid dampening: 2.0"),
    ("RMSprop", {"alpha": 1.0}, "Invalid alpha: 1.0"),
    ("Adagrad", {"lr_decay": -0.5}, "Invalid lr_decay: -0.5"),
    ("Adam", {"eps_root": -1.0}, "Invalid eps_root: -1.0"),
    ("Adam", {"backend": "nope"}, "Invalid backend: 'nope'"),
    ("Adam", {"state_dtype": torch.int8}, "Invalid state_dtype"),
    ("Adam", {"skip_nonfinite": 1}, "Invalid skip_nonfinite: 1"),
    ("Adam", {"capturable": True}, "Invalid capturable"),
])
def test_invalid_hyperparameters_name_argument_and_value(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        getattr(optimlab.torch, name)([torch.zeros(2, requires_grad=True)], **kwargs)


def test_signatures_and_defaults_are_torchs():
    param = [torch.zeros(2, requires_grad=True)]
    for name in ("SGD", "Adagrad", "RMSprop", "Adam", "AdamW"):
        ours, theirs = getattr(optimlab.torch, name)(param), getattr(torch.optim, name)(param)
        assert {key: ours.defaults[key] for key in theirs.defaults} == theirs.defaults
        assert isinstance(ours, torch.optim.Optimizer)
    assert optimlab.torch.Momentum(param).defaults["momentum"] == 0.9


def test_create_by_name_and_top_level_exports():
    param = [torch.zeros(2, requires_grad=True)]
    optimizer = optimlab.torch.create("AdamW", param, lr=3e-4)
    assert type(optimizer) is optimlab.torch.AdamW and optimizer.defaults["lr"] == 3e-4
    assert optimlab.torch.create("nesterov", param).defaults["nesterov"] is True
    assert optimlab.AdamW is optimlab.torch.AdamW and optimlab.create is optimlab.torch.create
    with pytest.raises(ValueError, match="Invalid optimizer: 'nope'"):
        optimlab.torch.create("nope", param)


def test_import_optimlab_does_not_import_torch():
    code = "import sys, optimlab; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_auto_picks_the_first_backend_that_supports_the_work():
    rule, hyperparameters = RULES["adam"], RULES["adam"].defaults()
    for params in ([torch.zeros(2)], [torch.zeros(2, dtype=torch.float16)]):
        chosen = resolve("auto", rule, hyperparameters, params, None)
        supporting = [name for name in optimlab.torch.backends()
                      if BACKENDS[name].supports(rule, hyperparameters, params, None) is None]
        assert chosen.name == supporting[0]
    assert optimlab.torch.backends()[-1] == "eager"
    assert resolve("eager", rule, hyperparameters, params, None) is BACKENDS["eager"]
    with pytest.raises(ValueError, match="Invalid backend: 'nope'"):
        resolve("nope", rule, hyperparameters, params, None)


def test_the_default_backend_is_auto_and_runs_the_same_rule(mlp):
    model = mlp(torch.float64)
    copies = [param.detach().clone().requires_grad_() for param in model.parameters()]
    ours, theirs = optimlab.torch.Adam(model.parameters(), lr=0.01), torch.optim.Adam(copies, lr=0.01)
    assert ours.param_groups[0]["backend"] == "auto"
    for _ in range(3):
        model.zero_grad()
        model(torch.ones(2, 8, dtype=torch.float64)).square().sum().backward()
        for param, copy in zip(model.parameters(), copies, strict=True):
            copy.grad = param.grad.clone()
        ours.step()
        theirs.step()
    for param, copy in zip(model.parameters(), copies, strict=True):
        torch.testing.assert_close(param, copy, rtol=1e-12, atol=1e-14)


def test_a_named_backend_that_cannot_run_the_work_says_why():
    if "numba" not in optimlab.torch.backends():
        pytest.skip("numba backend not registered")
    param = torch.zeros(2, dtype=torch.float16, requires_grad=True)
    optimizer = optimlab.torch.Adam([param], backend="numba")
    param.grad = torch.ones(2, dtype=torch.float16)
    with pytest.raises(ValueError, match=r"^backend 'numba' cannot run adam here: dtype torch.float16 not supported"):
        optimizer.step()
    assert not optimizer.state  # refused before anything changed


def test_reasons_name_each_backend_once(monkeypatch):
    """A backend's reason already starting with its own name ("numba: ...") is not prefixed again: the
    message read "numba: numba: dtype ..." for `auto` when no backend could run the work."""
    from optimlab import backends

    class Declines:
        def __init__(self, name, reason):
            self.name, self.reason = name, reason

        def supports(self, rule, hyperparameters, params, state_dtype):
            return self.reason

    monkeypatch.setattr(backends, "BACKENDS", {"fake": Declines("fake", "fake: only on Tuesdays"),
                                               "other": Declines("other", "needs a GPU")})
    rule = RULES["adam"]
    with pytest.raises(ValueError) as refused:
        backends.resolve("auto", rule, rule.defaults(), [torch.zeros(2)], torch.float32)
    assert str(refused.value) == "no registered backend can run adam here (fake: only on Tuesdays; other: needs a GPU)"
    with pytest.raises(ValueError) as named:
        backends.resolve("fake", rule, rule.defaults(), [torch.zeros(2)], torch.float32)
    assert str(named.value) == "backend 'fake' cannot run adam here: only on Tuesdays"


def test_state_dtype_is_refused_for_complex_params_before_the_step():
    param = torch.ones(2, dtype=torch.complex64, requires_grad=True)
    optimizer = optimlab.torch.Adam([param], backend="eager", state_dtype=torch.bfloat16)
    param.grad = torch.ones_like(param)
    with pytest.raises(ValueError, match="Invalid state_dtype"):
        optimizer.step()
    assert torch.equal(param, torch.ones_like(param)) and not optimizer.state
