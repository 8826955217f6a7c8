"""optimlab.torch.Adafactor against torch.optim.Adafactor step for step on every backend (the factored second
moment of matrices is the contract's stage (b), row and column reductions), checkpoints both ways, failed steps,
DTensor shards' state layout, and the params no backend takes (complex, DTensors placed as Partial)."""

import copy
import inspect

import pytest
import torch

import optimlab.torch
from optimlab.backends import BACKENDS
from optimlab.rules.adafactor import FACTORED, RULE

#: float32: sums of g² where torch squares a norm, 1/√v where torch calls rsqrt, the RMS values in float32 where
#: torch takes them to Python floats: a few ulps per step.
TOLERANCE = {torch.float32: {"rtol": 2e-5, "atol": 1e-6}, torch.float64: {"rtol": 1e-12, "atol": 1e-14}}
CASES = [
    pytest.param({}, id="defaults"),
    pytest.param({"lr": 0.05, "weight_decay": 0.1}, id="weight_decay"),
    pytest.param({"lr": 0.03, "maximize": True, "d": 1.5, "beta2_decay": -0.5, "eps": (1e-5, 1e-2)},
                 id="maximize-eps"),
]
#: a matrix, a stack of matrices, a single row and a single column, a vector and a 0-dim param
SHAPES = [(5, 4), (2, 3, 4), (1, 6), (6, 1), (7,), ()]


def _params(dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(shape, generator=generator, dtype=dtype)) for shape in SHAPES]


def _gradients(params, seed):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(param.shape, generator=generator, dtype=param.dtype) for param in params]


def _run(pairs, steps, seed=1, schedulers=()):
    for step in range(steps):
        for params, optimizer in pairs:
            for param, grad in zip(params, _gradients(params, seed + step), strict=True):
                param.grad = grad
            optimizer.step()
        for scheduler in schedulers:
            scheduler.step()


def _assert_same(ours, theirs, mine, reference, dtype):
    for index, (param, expected) in enumerate(zip(ours, theirs, strict=True)):
        torch.testing.assert_close(param.detach(), expected.detach(), **TOLERANCE[dtype],
                                   msg=lambda text, where=f"param {index} {tuple(expected.shape)}": f"{where}: {text}")
        state, expected_state = mine.state[param], reference.state[expected]
        assert sorted(state) == sorted(expected_state)
        for key, value in expected_state.items():
            assert state[key].shape == value.shape and state[key].dtype == value.dtype, key
            torch.testing.assert_close(state[key], value, **TOLERANCE[dtype],
                                       msg=lambda text, where=f"param {index} state {key}": f"{where}: {text}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kwargs", CASES)
def test_matches_torch_optim_adafactor(backend, dtype, kwargs):
    ours, theirs = _params(dtype), _params(dtype)
    mine = optimlab.torch.Adafactor(ours, backend=backend, **kwargs)
    reference = torch.optim.Adafactor(theirs, **kwargs)
    _run([(ours, mine), (theirs, reference)], steps=6)
    _assert_same(ours, theirs, mine, reference, dtype)


def test_an_lr_schedule_moves_the_relative_step_and_the_decay_as_torchs(backend):
    ours, theirs = _params(torch.float32), _params(torch.float32)
    mine = optimlab.torch.Adafactor(ours, lr=0.5, weight_decay=0.1, backend=backend)
    reference = torch.optim.Adafactor(theirs, lr=0.5, weight_decay=0.1)
    schedulers = [torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.1)
                  for optimizer in (mine, reference)]
    _run([(ours, mine), (theirs, reference)], steps=6, schedulers=schedulers)
    _assert_same(ours, theirs, mine, reference, torch.float32)


def test_the_backends_run_the_factored_rule_and_not_eager_in_their_place(backend):
    """`auto` aside, a named backend takes matrices itself (stage (b) is not a fallback to eager)."""
    assert BACKENDS[backend].supports(FACTORED, RULE.defaults(), [torch.zeros(3, 4)], None) is None


def test_checkpoints_interchange_both_ways():
    dtype = torch.float32
    ours, theirs = _params(dtype), _params(dtype)
    mine = optimlab.torch.Adafactor(ours, lr=0.05, weight_decay=0.1)
    reference = torch.optim.Adafactor(theirs, lr=0.05, weight_decay=0.1)
    _run([(ours, mine)], steps=3)
    with torch.no_grad():
        for param, source in zip(theirs, ours, strict=True):
            param.copy_(source)
    reference.load_state_dict(copy.deepcopy(mine.state_dict()))  # optimlab → torch
    assert reference.state[theirs[0]]["row_var"].shape == (5, 1)
    _run([(ours, mine), (theirs, reference)], steps=3, seed=10)
    _assert_same(ours, theirs, mine, reference, dtype)

    again = _params(dtype)
    with torch.no_grad():
        for param, source in zip(again, theirs, strict=True):
            param.copy_(source)
    loaded = optimlab.torch.Adafactor(again, lr=0.05, weight_decay=0.1)
    loaded.load_state_dict(copy.deepcopy(reference.state_dict()))  # torch → optimlab
    assert loaded.state[again[0]]["step"].dtype == torch.float32 and loaded.state[again[0]]["step"].item() == 6
    _run([(again, loaded), (theirs, reference)], steps=3, seed=20)
    _assert_same(again, theirs, loaded, reference, dtype)


def test_a_checkpoint_with_state_of_the_wrong_shape_is_refused_and_nothing_changes():
    params = _params(torch.float32)
    optimizer = optimlab.torch.Adafactor(params)
    _run([(params, optimizer)], steps=1)
    state_dict = copy.deepcopy(optimizer.state_dict())
    state_dict["state"][0]["row_var"] = torch.zeros(5, 4)
    before = copy.deepcopy(optimizer.state_dict())
    with pytest.raises(ValueError, match=r"row_var has shape \(5, 4\), expected \(5, 1\) for the param \(5, 4\)"):
        optimizer.load_state_dict(state_dict)
    after = optimizer.state_dict()
    for index, state in before["state"].items():
        for key, value in state.items():
            torch.testing.assert_close(after["state"][index][key], value, rtol=0, atol=0)


def test_a_step_that_fails_changes_nothing(backend):
    params = _params(torch.float32)
    optimizer = optimlab.torch.Adafactor(params, backend=backend)
    _run([(params, optimizer)], steps=2)
    values = [param.detach().clone() for param in params]
    state = copy.deepcopy(optimizer.state_dict())
    optimizer.state[params[1]]["col_var"] = torch.zeros(2, 1, 3)  # of another shape: torch's step would fail
    for param, grad in zip(params, _gradients(params, 5), strict=True):
        param.grad = grad
    with pytest.raises(RuntimeError, match="must match the size of its state 'col_var'"):
        optimizer.step()
    for param, value in zip(params, values, strict=True):
        torch.testing.assert_close(param.detach(), value, rtol=0, atol=0)
    for index, saved in state["state"].items():
        for key, value in saved.items():
            if (index, key) != (1, "col_var"):
                torch.testing.assert_close(optimizer.state[params[index]][key], value, rtol=0, atol=0)


def test_signature_and_defaults_are_torchs():
    ours = inspect.signature(optimlab.torch.Adafactor).parameters
    theirs = inspect.signature(torch.optim.Adafactor).parameters
    for name, parameter in theirs.items():
        assert ours[name].default == parameter.default and ours[name].kind == parameter.kind, name


def test_eps1_none_takes_the_first_params_dtype_for_the_whole_group_as_torch():
    """torch resolves ε1 from the first param with a gradient and keeps it for the group's float64 params too."""
    ours = [torch.nn.Parameter(torch.full((3, 2), 1e-4)), torch.nn.Parameter(torch.full((4,), 1e-5,
                                                                                         dtype=torch.float64))]
    theirs = [torch.nn.Parameter(param.detach().clone()) for param in ours]
    mine, reference = optimlab.torch.Adafactor(ours), torch.optim.Adafactor(theirs)
    for params, optimizer in ((ours, mine), (theirs, reference)):
        params[0].grad, params[1].grad = torch.full((3, 2), 1e-9), torch.full((4,), 1e-9, dtype=torch.float64)
        optimizer.step()
    for param, expected in zip(ours, theirs, strict=True):
        torch.testing.assert_close(param.detach(), expected.detach(), rtol=1e-6, atol=0)


def test_torchs_errors():
    with pytest.raises(ValueError, match="Tensor lr must be 1-element"):
        optimlab.torch.Adafactor([torch.zeros(2, requires_grad=True)], lr=torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match="Invalid beta2_decay"):
        optimlab.torch.Adafactor([torch.zeros(2, requires_grad=True)], beta2_decay=0.1)
    with pytest.raises(ValueError, match="Invalid d"):
        optimlab.torch.Adafactor([torch.zeros(2, requires_grad=True)], d=0.5)
    param = torch.nn.Parameter(torch.zeros(2, 2, dtype=torch.complex64))
    param.grad = torch.ones_like(param)
    optimizer = optimlab.torch.Adafactor([param])
    with pytest.raises(RuntimeError, match="Adafactor does not support complex parameters"):
        optimizer.step()
    assert not optimizer.state


def test_a_sharded_matrix_keeps_row_var_sharded_with_its_rows_and_col_var_replicated(mesh):
    """FSDP2's Shard(0) of a matrix: each rank keeps its rows' `row_var` and the whole `col_var` (the values are
    checked against torch in real process groups: tests/distributed, `fsdp2_adafactor`)."""
    from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor

    sharded = torch.nn.Parameter(distribute_tensor(torch.ones(5, 6), mesh, [Shard(0)]))
    sharded.grad = distribute_tensor(torch.ones(5, 6), mesh, [Shard(0)])
    stack = torch.nn.Parameter(distribute_tensor(torch.ones(3, 2, 4), mesh, [Shard(0)]))
    stack.grad = distribute_tensor(torch.ones(3, 2, 4), mesh, [Shard(0)])
    optimizer = optimlab.torch.Adafactor([sharded, stack], backend="eager")
    optimizer.step()
    state = optimizer.state[sharded]
    assert isinstance(state["row_var"], DTensor) and isinstance(state["col_var"], DTensor)
    assert (state["row_var"].shape, tuple(state["row_var"].placements)) == ((5, 1), (Shard(0),))
    assert state["row_var"].to_local().shape == (3, 1)  # rank 0's rows of 5 (torch.chunk: 3 and 2)
    assert (state["col_var"].shape, tuple(state["col_var"].placements)) == ((1, 6), (Replicate(),))
    assert state["col_var"].to_local().shape == (1, 6)
    # a stack sharded along its leading axis: whole matrices in each rank, both factors sharded with them
    assert tuple(optimizer.state[stack]["row_var"].placements) == (Shard(0),)
    assert tuple(optimizer.state[stack]["col_var"].placements) == (Shard(0),)
    assert optimizer.state[stack]["col_var"].to_local().shape == (2, 1, 4)


def test_a_dtensor_matrix_placed_other_than_shard_or_replicate_is_refused_and_nothing_changes(mesh):
    from torch.distributed.tensor import DTensor, Partial

    param = torch.nn.Parameter(DTensor.from_local(torch.ones(4, 6), mesh, [Partial()], run_check=False))
    param.grad = DTensor.from_local(torch.ones(4, 6), mesh, [Partial()], run_check=False)
    optimizer = optimlab.torch.Adafactor([param])
    with pytest.raises(ValueError, match="Shard and Replicate placements only"):
        optimizer.step()
    assert not optimizer.state


def test_state_of_a_sharded_matrix_placed_as_the_param_is_refused(mesh):
    """`col_var` of a Shard(0) matrix must be replicated: placed as the param, each rank would hold part of it."""
    from torch.distributed.tensor import Shard, distribute_tensor

    param = torch.nn.Parameter(distribute_tensor(torch.ones(4, 6), mesh, [Shard(0)]))
    param.grad = distribute_tensor(torch.ones(4, 6), mesh, [Shard(0)])
    optimizer = optimlab.torch.Adafactor([param], backend="eager")
    optimizer.state[param]["step"] = torch.tensor(0.0)
    optimizer.state[param]["row_var"] = distribute_tensor(torch.zeros(4, 1), mesh, [Shard(0)])
    optimizer.state[param]["col_var"] = distribute_tensor(torch.zeros(1, 6), mesh, [Shard(0)])
    with pytest.raises(ValueError, match="expected"):
        optimizer.step()
    assert torch.equal(param.to_local(), torch.ones(2, 6))
