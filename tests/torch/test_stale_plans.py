"""Tensors that change under a plan between steps: every step must see it, as `torch.optim` would.

A group's plan and the fused backends' tables hold data pointers. State moved after a step (`share_memory_()`,
`state[k].data = ...`), a param grown through `param.data = ...` or a gradient of another dtype or size set
through `param.grad.data = ...` must rebuild the plan or raise torch's error with nothing changed — never
write through a stale pointer. `backend="auto"` chooses again when params change dtype or layout, and nothing
is found again through the `id()` of a freed tensor.

The scenarios that wrote through freed memory before (a segfault, or silent corruption) run in a child process
per backend, so that a regression fails these tests instead of killing the suite.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import optimlab.torch

REPOSITORY = Path(__file__).resolve().parents[2]
RTOL = 1e-6


def twins(backend: str, cls: str = "Adam", sizes=((4, 3), (5,)), **kwargs):
    """The same params under `torch.optim.<cls>` and optimlab's, with the same gradients set."""
    generator = torch.Generator().manual_seed(0)
    reference = [torch.randn(size, generator=generator).requires_grad_() for size in sizes]
    ours = [param.detach().clone().requires_grad_() for param in reference]
    for param, copy_ in zip(reference, ours, strict=True):
        param.grad = torch.randn(param.shape, generator=generator)
        copy_.grad = param.grad.clone()
    return (reference, getattr(torch.optim, cls)(reference, lr=0.1, **kwargs), ours,
            getattr(optimlab.torch, cls)(ours, lr=0.1, backend=backend, **kwargs))


def assert_same(reference_params, reference, params, optimizer, rtol=RTOL):
    for expected, actual in zip(reference_params, params, strict=True):
        torch.testing.assert_close(actual.detach(), expected.detach(), rtol=rtol, atol=rtol)
    expected_state, actual_state = reference.state_dict()["state"], optimizer.state_dict()["state"]
    assert expected_state.keys() == actual_state.keys()
    for index, state in expected_state.items():
        for key, value in state.items():
            torch.testing.assert_close(actual_state[index][key], value, rtol=rtol, atol=rtol)


def snapshot(params, optimizer):
    return [param.detach().clone() for param in params], copy.deepcopy(optimizer.state_dict())


def assert_unchanged(before, params, optimizer):
    saved_params, saved_state = before
    for saved, param in zip(saved_params, params, strict=True):
        assert param.shape == saved.shape and torch.equal(param.detach(), saved)
    state = optimizer.state_dict()["state"]
    assert state.keys() == saved_state["state"].keys()
    for index, values in saved_state["state"].items():
        for key, value in values.items():
            assert torch.equal(state[index][key], value), f"state {key} of param {index} changed"


# --- the scenarios that wrote through freed or foreign memory before, run in a child process ----------------

def state_shared_after_a_step(backend: str) -> None:
    """The Hogwild pattern, after a first step: `share_memory_()` moves each state tensor's storage."""
    reference_params, reference, params, optimizer = twins(backend)
    for _ in range(2):
        reference.step()
        optimizer.step()
        for state in (*reference.state.values(), *optimizer.state.values()):
            for value in state.values():
                value.share_memory_()
    reference.step()
    optimizer.step()
    assert_same(reference_params, reference, params, optimizer)


def state_data_replaced_after_a_step(backend: str) -> None:
    reference_params, reference, params, optimizer = twins(backend, "RMSprop", momentum=0.5)
    reference.step()
    optimizer.step()
    for each in (reference, optimizer):
        for state in each.state.values():
            state["square_avg"].data = state["square_avg"].clone()
            state["momentum_buffer"].data = state["momentum_buffer"] * 0.5
    reference.step()
    optimizer.step()
    assert_same(reference_params, reference, params, optimizer)


def param_grown_after_its_state_exists(backend: str) -> None:
    """torch.optim raises a size mismatch; before, the fused backend wrote the new size into the old state."""
    reference_params, reference, params, optimizer = twins(backend, sizes=((1000,), (5,)))
    reference.step()
    optimizer.step()
    for param in (reference_params[0], params[0]):
        param.data = torch.randn(100_000)
        param.grad = torch.randn(100_000)
    with pytest.raises(RuntimeError, match="size"):
        reference.step()
    before = snapshot(params, optimizer)
    with pytest.raises(RuntimeError, match="size of param 0 of its group .* must match the size of its state"):
        optimizer.step()
    assert_unchanged(before, params, optimizer)


def gradient_resized_through_data(backend: str) -> None:
    reference_params, reference, params, optimizer = twins(backend, sizes=((1000,), (5,)))
    reference.step()
    optimizer.step()
    for param in (reference_params[0], params[0]):
        param.grad.data = torch.randn(10)
    with pytest.raises(RuntimeError, match="size"):
        reference.step()
    before = snapshot(params, optimizer)
    with pytest.raises(RuntimeError, match="size of param 0 of its group .* must match the size of its gradient"):
        optimizer.step()
    assert_unchanged(before, params, optimizer)


def state_shrunk_through_data(backend: str) -> None:
    """A state tensor replaced by a smaller one: torch raises a size mismatch; the fused backend wrote past it."""
    reference_params, reference, params, optimizer = twins(backend, sizes=((1000,), (5,)))
    reference.step()
    optimizer.step()
    for each, param in ((reference, reference_params[0]), (optimizer, params[0])):
        each.state[param]["exp_avg_sq"].data = torch.zeros(10)
    with pytest.raises(RuntimeError, match="size"):
        reference.step()
    before = snapshot(params, optimizer)
    with pytest.raises(RuntimeError, match="size of param 0 of its group .* its state 'exp_avg_sq' \\(10,\\)"):
        optimizer.step()
    assert_unchanged(before, params, optimizer)


CHILD_SCENARIOS: dict[str, Callable[[str], None]] = {
    function.__name__: function for function in (state_shared_after_a_step, state_data_replaced_after_a_step,
                                                 param_grown_after_its_state_exists, gradient_resized_through_data,
                                                 state_shrunk_through_data)}


@pytest.fixture(scope="module")
def child_outcomes() -> dict[str, dict[str, str]]:
    """Every child scenario on every backend of the suite, in one child process (one import of torch)."""
    from tests.torch.conftest import TEST_BACKENDS

    env = {**os.environ, "PYTHONPATH": str(REPOSITORY)}
    result = subprocess.run([sys.executable, __file__, *TEST_BACKENDS], capture_output=True, text=True, env=env,
                            cwd=REPOSITORY, timeout=600)
    assert result.returncode == 0, f"the child died ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_moved_or_resized_tensors_in_a_child_process(backend, child_outcomes):
    assert child_outcomes[backend] == dict.fromkeys(CHILD_SCENARIOS, "ok")


# --- in process ---------------------------------------------------------------------------------------

def test_a_gradient_of_another_dtype_raises_torchs_error_and_changes_nothing(backend):
    reference_params, reference, params, optimizer = twins(backend)
    reference.step()
    optimizer.step()
    for param in (reference_params[1], params[1]):
        param.grad.data = param.grad.double()
    with pytest.raises(RuntimeError, match="dtype"):
        reference.step()
    before = snapshot(params, optimizer)
    with pytest.raises(RuntimeError, match="param 1 of its group and its gradient to have the same dtype"):
        optimizer.step()
    assert_unchanged(before, params, optimizer)


def conv_twins(backend: str, cls: str, **kwargs):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 4 * 4, 2))
    twin = copy.deepcopy(model)
    return (model, getattr(torch.optim, cls)(model.parameters(), lr=0.01, **kwargs),
            twin, getattr(optimlab.torch, cls)(twin.parameters(), lr=0.01, backend=backend, **kwargs))


def train(models_and_optimizers, steps: int, dtype=torch.float32) -> None:
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        inputs = torch.randn(2, 3, 6, 6, generator=generator).to(dtype)
        for model, optimizer in models_and_optimizers:
            optimizer.zero_grad()
            model(inputs.clone(memory_format=torch.channels_last)).square().sum().backward()
            optimizer.step()


def test_auto_chooses_again_after_channels_last():
    """numba runs contiguous params only: after `model.to(memory_format=torch.channels_last)` auto falls back to
    eager, as it would have on the first step; it raised "numba: cannot run ..." on every later step."""
    model, reference, twin, optimizer = conv_twins("auto", "Adam")
    train([(model, reference), (twin, optimizer)], 2)
    model.to(memory_format=torch.channels_last)
    twin.to(memory_format=torch.channels_last)
    train([(model, reference), (twin, optimizer)], 3)
    assert_same(list(model.parameters()), reference, list(twin.parameters()), optimizer)


def test_auto_chooses_again_after_half():
    """SGD with momentum keeps working in torch.optim after `model.half()` (its float32 buffers promote)."""
    model, reference, twin, optimizer = conv_twins("auto", "SGD", momentum=0.9)
    train([(model, reference), (twin, optimizer)], 2)
    model.half()
    twin.half()
    train([(model, reference), (twin, optimizer)], 3, dtype=torch.float16)
    # torch adds float16 gradients into float32 buffers, the rule computes in the param's float16
    assert_same(list(model.parameters()), reference, list(twin.parameters()), optimizer, rtol=2e-3)
    assert all(param.dtype == torch.float16 for param in twin.parameters())


def test_a_named_backend_that_cannot_run_the_changed_params_says_so(backend):
    if backend == "eager":
        pytest.skip("eager runs any layout")
    model, _, twin, optimizer = conv_twins(backend, "Adam")
    train([(twin, optimizer)], 1)
    twin.to(memory_format=torch.channels_last)
    before = snapshot(list(twin.parameters()), optimizer)
    with pytest.raises(ValueError, match=f"backend {backend!r} cannot run adam here: .*contiguous"):
        train([(twin, optimizer)], 1)
    assert_unchanged(before, list(twin.parameters()), optimizer)


def test_a_freed_params_id_never_routes_new_params():
    """numba remembered the ids of the params it last accepted: a float16 or non-contiguous param taking a
    freed param's id was sent to it (which then refused it) within a few allocations."""
    for attempt in range(10):
        param = torch.zeros(8, requires_grad=True)
        param.grad = torch.ones(8)
        optimizer = optimlab.torch.SGD([param], lr=0.1)
        optimizer.step()
        del param, optimizer  # freed at once: the next tensor may take the param's id
        odd = torch.zeros(8, dtype=torch.float16, requires_grad=True) if attempt % 2 else \
            torch.zeros(8, 2).t().requires_grad_()
        odd.grad = torch.ones_like(odd)
        optimizer = optimlab.torch.SGD([odd], lr=0.1)
        optimizer.step()
        torch.testing.assert_close(odd.detach(), torch.full_like(odd, -0.1))


def main(backends: list[str]) -> None:
    """Run the child scenarios on each of `backends` that is registered here and print their outcomes as JSON
    (the child's side of `test_moved_or_resized_tensors_in_a_child_process`)."""
    os.environ["TRITON_INTERPRET"] = "1"  # the triton backend on CPU tensors; the others are named explicitly
    outcomes: dict[str, dict[str, str]] = {}
    for backend in backends:
        if backend not in optimlab.torch.backends():
            continue
        outcomes[backend] = {}
        for name, scenario in CHILD_SCENARIOS.items():
            try:
                scenario(backend)
                outcomes[backend][name] = "ok"
            except Exception as error:  # noqa: BLE001 (reported to the parent)
                outcomes[backend][name] = f"{type(error).__name__}: {error}"
    print(json.dumps(outcomes))


if __name__ == "__main__":
    main(sys.argv[1:])


STATE_EDITS = {
    # a state tensor replaced by another object (same shape: only its identity tells)
    "a value replaced": lambda optimizer, params: optimizer.state[params[0]].__setitem__(
        "exp_avg", torch.full_like(optimizer.state[params[0]]["exp_avg"], 0.5)),
    # two params' state dicts swapped: the same objects, the same count, in another order
    "two params' state swapped": lambda optimizer, params: optimizer.state.update(
        {params[0]: optimizer.state[params[1]], params[1]: optimizer.state[params[0]]}),
    # a state dict replaced by a copy holding the same tensors
    "a state dict copied": lambda optimizer, params: optimizer.state.__setitem__(
        params[1], dict(optimizer.state[params[1]])),
    "the whole state rebound": lambda optimizer, params: setattr(optimizer, "state", type(optimizer.state)(
        dict, {param: {name: value.clone() for name, value in state.items()}
               for param, state in optimizer.state.items()})),
}


@pytest.mark.parametrize("edit", list(STATE_EDITS))
def test_state_replaced_between_steps_is_what_the_next_step_uses(backend, edit):
    """The plan's state snapshot is compared by identity, object by object: an edit that keeps the number of
    objects (a swap, a copy, a replaced value) is seen like one that does not."""
    reference_params, reference, params, optimizer = twins(backend, sizes=((4, 3), (4, 3)))
    for _ in range(2):
        reference.step()
        optimizer.step()
    STATE_EDITS[edit](reference, reference_params)
    STATE_EDITS[edit](optimizer, params)
    for _ in range(2):
        reference.step()
        optimizer.step()
    for expected, actual in zip(reference_params, params, strict=True):
        torch.testing.assert_close(actual, expected, rtol=RTOL, atol=1e-7)
    for expected, actual in zip(reference_params, params, strict=True):
        for name, value in reference.state[expected].items():
            torch.testing.assert_close(optimizer.state[actual][name], value, rtol=RTOL, atol=1e-7)


@pytest.mark.parametrize("cls, kwargs, name", [("Adagrad", {"initial_accumulator_value": 0.25}, "sum"),
                                               ("Adam", {}, "exp_avg")])
def test_a_groups_state_is_created_as_views_of_one_buffer_in_the_constructor_and_in_a_step(backend, cls, kwargs,
                                                                                           name):
    """Adagrad creates its state in its constructor, the others in their first step: both ways, a group's plain
    params get their state as views of one buffer per name (their metadata together: the per-step pointer
    pass stays cheap, docs/reliability.md), with torch's values."""
    reference_params, reference, params, optimizer = twins(backend, cls, sizes=((4, 3), (5,), (2, 2)), **kwargs)
    if cls == "Adam":
        reference.step()
        optimizer.step()
    storages = {optimizer.state[param][name].untyped_storage().data_ptr() for param in params}
    assert len(storages) == 1
    for expected, actual in zip(reference_params, params, strict=True):
        torch.testing.assert_close(optimizer.state[actual][name], reference.state[expected][name])
    reference.step()
    optimizer.step()
    for expected, actual in zip(reference_params, params, strict=True):
        torch.testing.assert_close(actual, expected, rtol=RTOL, atol=1e-7)
