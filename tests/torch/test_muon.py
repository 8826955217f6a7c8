"""optimlab.torch.Muon against torch.optim.Muon step for step, checkpoints both ways; its tensor stage on the
backends (the fused ones decline it, `auto` falls back to eager) and on DTensor shards (refused)."""

import copy
import inspect

import pytest
import torch

import optimlab.torch
from optimlab.backends import BACKENDS, resolve
from optimlab.rules.muon import RULE

STEPS = 10
#: float32: the momentum and the bfloat16 Newton–Schulz are torch's bit for bit (see
#: `test_with_gradients_of_their_own_the_momentum_is_torchs_bit_for_bit`); θ ← θ − η_adj O rounds twice where
#: torch's `add_(O, alpha=-η_adj)` fuses (one float32 ulp per step), and a gradient that then differs in its last
#: bit can round to another bfloat16 in Newton–Schulz.
TOLERANCE = {torch.float32: {"rtol": 1e-5, "atol": 1e-6}, torch.float64: {"rtol": 1e-12, "atol": 1e-14}}
CASES = [
    pytest.param({"lr": 0.02}, id="defaults"),
    pytest.param({"lr": 0.02, "nesterov": False, "weight_decay": 0.0, "momentum": 0.9}, id="plain-momentum"),
    pytest.param({"lr": 0.05, "weight_decay": 0.01, "adjust_lr_fn": "original"}, id="original"),
    pytest.param({"lr": 0.05, "adjust_lr_fn": "match_rms_adamw"}, id="match_rms_adamw"),
]


def _model(dtype):
    """Two matrices: 10 × 6 (tall) and 3 × 10 (wide)."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 10, bias=False), torch.nn.Tanh(),
                               torch.nn.Linear(10, 3, bias=False)).to(dtype)


def _train(model, optimizer, steps, dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        inputs = torch.randn(16, 6, generator=generator, dtype=dtype)
        targets = torch.randn(16, 3, generator=generator, dtype=dtype)
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(inputs), targets).backward()
        optimizer.step()


def _assert_same(ours, theirs, dtype, what):
    for index, (mine, reference) in enumerate(zip(ours, theirs, strict=True)):
        torch.testing.assert_close(mine, reference, **TOLERANCE[dtype],
                                   msg=lambda text, index=index: f"{what} {index}: {text}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kwargs", CASES)
def test_matches_torch_optim_muon(dtype, kwargs):
    reference_model, model = _model(dtype), _model(dtype)
    reference = torch.optim.Muon(reference_model.parameters(), **kwargs)
    optimizer = optimlab.torch.Muon(model.parameters(), **kwargs)
    _train(reference_model, reference, STEPS, dtype)
    _train(model, optimizer, STEPS, dtype)
    _assert_same(model.parameters(), reference_model.parameters(), dtype, "param")
    _assert_same([optimizer.state[param]["momentum_buffer"] for param in model.parameters()],
                 [reference.state[param]["momentum_buffer"] for param in reference_model.parameters()], dtype, "buffer")
    assert all(set(optimizer.state[param]) == {"momentum_buffer"} for param in model.parameters())
    assert optimizer._plans[0].backend.name == "eager"  # `auto` fell back past the fused backends


def test_with_gradients_of_their_own_the_momentum_is_torchs_bit_for_bit():
    """Gradients that do not depend on the params: the buffers are torch's exactly, and the params differ by the
    fused multiply-add of torch's `add_` alone (a float32 ulp per step)."""
    generator = torch.Generator().manual_seed(1)
    start = [torch.randn(7, 4, generator=generator), torch.randn(4, 7, generator=generator)]
    theirs = [torch.nn.Parameter(tensor.clone()) for tensor in start]
    ours = [torch.nn.Parameter(tensor.clone()) for tensor in start]
    reference, optimizer = torch.optim.Muon(theirs, lr=0.02), optimlab.torch.Muon(ours, lr=0.02)
    for _ in range(STEPS):
        for mine, reference_param in zip(ours, theirs, strict=True):
            reference_param.grad = torch.randn(mine.shape, generator=generator)
            mine.grad = reference_param.grad.clone()
        reference.step()
        optimizer.step()
    for mine, reference_param in zip(ours, theirs, strict=True):
        state, reference_state = optimizer.state[mine], reference.state[reference_param]
        assert torch.equal(state["momentum_buffer"], reference_state["momentum_buffer"])
        torch.testing.assert_close(mine, reference_param, rtol=0, atol=STEPS * 2 ** -22)


def test_checkpoints_interchange_both_ways():
    dtype = torch.float64
    reference_model, model = _model(dtype), _model(dtype)
    reference = torch.optim.Muon(reference_model.parameters(), lr=0.02, momentum=0.9)
    optimizer = optimlab.torch.Muon(model.parameters(), lr=0.02, momentum=0.9)
    _train(reference_model, reference, 3, dtype)
    _train(model, optimizer, 3, dtype)
    # swap: each continues from the other's checkpoint, and both still agree with the uninterrupted pair
    swapped_reference_model, swapped_model = _model(dtype), _model(dtype)
    swapped_reference_model.load_state_dict(model.state_dict())
    swapped_model.load_state_dict(reference_model.state_dict())
    swapped_reference = torch.optim.Muon(swapped_reference_model.parameters())
    swapped = optimlab.torch.Muon(swapped_model.parameters())
    # (copies, as a checkpoint on disk is: a loaded state dict's tensors of the right dtype are used as they are)
    swapped_reference.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    swapped.load_state_dict(copy.deepcopy(reference.state_dict()))
    assert swapped.param_groups[0]["momentum"] == swapped_reference.param_groups[0]["momentum"] == 0.9
    for each_model, each in ((reference_model, reference), (model, optimizer), (swapped_reference_model,
                                                                                swapped_reference),
                             (swapped_model, swapped)):
        _train(each_model, each, 3, dtype, seed=1)
    for continued in (swapped_model, swapped_reference_model, model):
        _assert_same(continued.parameters(), reference_model.parameters(), dtype, "param")


def test_signature_and_defaults_are_torchs():
    ours = inspect.signature(optimlab.torch.Muon.__init__).parameters
    theirs = inspect.signature(torch.optim.Muon.__init__).parameters
    assert [(name, ours[name].default) for name in theirs] == [(name, each.default) for name, each in theirs.items()]
    assert [name for name in ours if name not in theirs] == ["backend", "state_dtype", "skip_nonfinite"]


def test_a_named_fused_backend_declines_with_its_reason_and_nothing_changes():
    param = torch.nn.Parameter(torch.ones(3, 2))
    param.grad = torch.ones(3, 2)
    optimizer = optimlab.torch.Muon([param], backend="numba")
    with pytest.raises(ValueError, match=r"^backend 'numba' cannot run muon here: .*tensor stage \(matrix math\)$"):
        optimizer.step()
    assert torch.equal(param.detach(), torch.ones(3, 2)) and not optimizer.state


def test_a_plan_rebuilt_for_another_backend_resolves_it_again():
    """Switching a group's backend rebuilds its plan: to "numba" it is refused before anything changes, back to
    "auto" it runs on eager again."""
    param = torch.nn.Parameter(torch.ones(3, 2))
    optimizer = optimlab.torch.Muon([param], lr=0.1)
    param.grad = torch.ones(3, 2)
    optimizer.step()
    after_one, buffer = param.detach().clone(), optimizer.state[param]["momentum_buffer"].clone()
    optimizer.param_groups[0]["backend"] = "numba"
    with pytest.raises(ValueError, match="tensor stage"):
        optimizer.step()
    assert torch.equal(param.detach(), after_one) and torch.equal(optimizer.state[param]["momentum_buffer"], buffer)
    optimizer.param_groups[0]["backend"] = "auto"
    optimizer.step()
    assert not torch.equal(param.detach(), after_one) and optimizer._plans[0].backend.name == "eager"
    assert resolve("auto", RULE, RULE.defaults(), [param], None).name == "eager"


def test_triton_declines_the_tensor_stage_too(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # (else it declines CPU tensors first)
    reason = BACKENDS["triton"].supports(RULE, RULE.defaults(), [torch.ones(3, 2)], None)
    assert "tensor stage" in reason


def test_a_step_that_fails_in_the_tensor_stage_changes_nothing():
    """A param that stopped being a matrix (`.data = ...` before its first step): every param's Newton–Schulz
    runs before any update, so the group is left as it was, and the state the step created is dropped."""
    first, second = torch.nn.Parameter(torch.ones(3, 2)), torch.nn.Parameter(torch.ones(2, 2))
    optimizer = optimlab.torch.Muon([first, second], lr=0.1)
    second.data = torch.ones(4)
    first.grad, second.grad = torch.ones(3, 2), torch.ones(4)
    with pytest.raises(ValueError, match=r"Muon orthogonalizes 2-D matrices, got a tensor of shape \(4,\)"):
        optimizer.step()
    assert torch.equal(first.detach(), torch.ones(3, 2)) and not optimizer.state


@pytest.mark.parametrize(("make", "error", "message"), [
    (lambda: torch.nn.Parameter(torch.ones(3)), ValueError,
     r"Muon only supports 2D parameters whereas we found a parameter with size: torch.Size\(\[3\]\)"),
    (lambda: torch.nn.Parameter(torch.ones(2, 2, dtype=torch.complex64)), RuntimeError,
     "Muon does not support complex parameters"),
])
def test_torchs_errors(make, error, message):
    for optimizer_class in (torch.optim.Muon, optimlab.torch.Muon):
        with pytest.raises(error, match=message):
            param = make()
            optimizer = optimizer_class([param])
            param.grad = torch.ones_like(param)
            optimizer.step()


def test_a_group_added_later_is_checked_as_the_constructor_checks():
    """torch checks only the constructor's params and fails in the step for others; optimlab refuses them when
    they are added."""
    optimizer = optimlab.torch.Muon([torch.nn.Parameter(torch.ones(2, 2))])
    with pytest.raises(ValueError, match="Muon only supports 2D parameters"):
        optimizer.add_param_group({"params": [torch.nn.Parameter(torch.ones(3))]})
    assert len(optimizer.param_groups) == 1


def test_bfloat16_params_with_plain_momentum_keep_their_average():
    """torch's Muon normalizes the momentum buffer itself here (its Newton–Schulz divides its input in place,
    and `bfloat16()` of a bfloat16 buffer is the buffer); optimlab keeps B = μB + (1 − μ)g, as documented."""
    param = torch.nn.Parameter(torch.zeros(3, 4, dtype=torch.bfloat16))
    optimizer = optimlab.torch.Muon([param], nesterov=False, momentum=0.5)
    param.grad = torch.full((3, 4), 2.0, dtype=torch.bfloat16)
    optimizer.step()
    assert torch.equal(optimizer.state[param]["momentum_buffer"], torch.ones(3, 4, dtype=torch.bfloat16))


def test_sharded_dtensor_params_are_refused_replicated_ones_run(mesh):
    """A shard holds part of a matrix, and Newton–Schulz needs all of it: no backend takes it, the error says why."""
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    sharded = torch.nn.Parameter(distribute_tensor(torch.ones(4, 6), mesh, [Shard(0)]))
    sharded.grad = distribute_tensor(torch.ones(4, 6), mesh, [Shard(0)])
    optimizer = optimlab.torch.Muon([sharded])
    with pytest.raises(ValueError, match="a sharded DTensor param holds part of one"):
        optimizer.step()
    assert not optimizer.state
    replicated = distribute_tensor(torch.ones(4, 6), mesh, [Replicate()])
    assert BACKENDS["eager"].supports(RULE, RULE.defaults(), [replicated], None) is None
