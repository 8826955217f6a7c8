"""Shared fixtures for the PyTorch front end's tests.

`TEST_BACKENDS` lists the backends every backend-parametrized test runs through: by default eager, numba and
triton. To run another backend through the whole suite, add its registered name to `DEFAULT_BACKENDS` (one
line). For one run, `OPTIMLAB_TEST_BACKENDS=eager` (or `numba,triton`) runs those instead of the default;
a name that is not a backend stops the run with an error naming it and the valid ones. A backend that is not
registered on this machine (its dependency missing, or Triton without CUDA or `TRITON_INTERPRET=1`) is
skipped, not failed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest
import torch

from optimlab.backends import BACKENDS
from optimlab.rules import RULES
from optimlab.torch import backends

DEFAULT_BACKENDS = (
    "eager",
    "numba",
    "triton",  # its GPU kernels, run on CPU tensors by Triton's interpreter (see `backend`)
)


def selected_backends(variable: str | None, known: Iterable[str]) -> list[str]:
    """The backends `OPTIMLAB_TEST_BACKENDS` names (comma-separated), or `DEFAULT_BACKENDS` when it is unset or
    empty; `ValueError` naming the value and the valid names for a name that is not in `known`."""
    names = [name.strip() for name in (variable or "").split(",") if name.strip()]
    valid = sorted(set(known))
    unknown = [name for name in names if name not in valid]
    if unknown:
        raise ValueError(f"OPTIMLAB_TEST_BACKENDS={variable!r}: unknown backend {', '.join(map(repr, unknown))} "
                         f"(expected comma-separated names from {', '.join(valid)})")
    return list(dict.fromkeys(names)) or list(DEFAULT_BACKENDS)


try:
    TEST_BACKENDS = selected_backends(os.environ.get("OPTIMLAB_TEST_BACKENDS"), [*DEFAULT_BACKENDS, *backends()])
    _SELECTION_ERROR = None
except ValueError as error:
    TEST_BACKENDS, _SELECTION_ERROR = [], str(error)


def pytest_configure(config: pytest.Config) -> None:
    """Stop the run before any test on a mistyped `OPTIMLAB_TEST_BACKENDS` (one line: `ERROR: ...`)."""
    if _SELECTION_ERROR is not None:
        raise pytest.UsageError(_SELECTION_ERROR)


@pytest.fixture(params=TEST_BACKENDS)
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """A registered backend name from `TEST_BACKENDS`."""
    if request.param == "triton":
        monkeypatch.setenv("TRITON_INTERPRET", "1")  # read when a kernel is made or launched: this test only
    if request.param not in backends():
        pytest.skip(f"backend {request.param!r} is not registered here")
    reason = BACKENDS[request.param].supports(RULES["adam"], RULES["adam"].defaults(), [torch.zeros(1)], None)
    if reason is not None:
        pytest.skip(f"backend {request.param!r} cannot run CPU tensors here: {reason}")
    return request.param


def make_mlp(dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.nn.Module:
    """The suite's small model: 8 → 16 → 4 with a tanh."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4)).to(dtype)


def make_batches(count: int, dtype: torch.dtype = torch.float32, seed: int = 1) -> Iterator[tuple[Any, Any]]:
    """`count` random (input, target) pairs, the same on every call."""
    generator = torch.Generator().manual_seed(seed)
    for _ in range(count):
        yield (torch.randn(5, 8, generator=generator, dtype=dtype),
               torch.randn(5, 4, generator=generator, dtype=dtype))


@pytest.fixture
def mlp() -> Callable[..., torch.nn.Module]:
    """`mlp(dtype=..., seed=...)`: the suite's small model, 8 → 16 → 4."""
    return make_mlp


@pytest.fixture
def batches() -> Callable[..., Iterator[tuple[Any, Any]]]:
    """`batches(count, dtype=..., seed=...)`: the same random (input, target) pairs on every call."""
    return make_batches


@pytest.fixture
def mesh():
    """A two-rank device mesh in this one process (torch's fake process group: no communication)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.testing._internal.distributed.fake_pg import FakeStore

    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=2)
    try:
        yield init_device_mesh("cpu", (2,))
    finally:
        dist.destroy_process_group()
