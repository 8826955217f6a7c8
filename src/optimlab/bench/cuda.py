"""`optimlab bench --device cuda`: the triton backend against `torch.optim` on a GPU, with the HBM roofline.

The same cases, workloads and report as the CPU benchmark (`optimlab.bench`), timed the GPU's way: every
contender (optimlab's triton backend called directly and through the drop-in `optimlab.torch` class;
the reference's for-loop, foreach and fused implementations where they exist on CUDA) updates the same params from
the same grads, and repetitions go round-robin with the starting
contender rotating, each repetition a burst of steps between two CUDA events, so clock boosts, thermal drift
and other tenants hit all of them alike; the median is reported. A burst measures the steady state: where a
step is bound by the host (10,000 small tensors), the GPU waits for it and the events show it.

The roofline is this GPU's measured HBM bandwidth, in the same run (before and after the cases, the better
of the two): a device-to-device copy of a 1 GiB buffer, counting the bytes read and written. An optimizer
step must read param, grad and state and write param and state (`optimlab.bench.bytes_per_step`);
"% roofline" is how close a step comes to moving those bytes at that rate.

Targets (issue 9): ≥ 1.0× torch fused for Adam, AdamW, SGD, Adagrad; ≥ 2× torch's best RMSprop;
≥ 85 % of the roofline on GPT-2 small; ≥ 3× torch fused on 10,000 small tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from .. import bench
from . import VARIANTS, Platform, Report, interleaved, machine

#: The roofline's copy buffer: far beyond any cache (H100: 50 MB of L2).
COPY_BYTES = 1 << 30
#: Where the tensors live (a test points it at the CPU, with Triton's interpreter and CUDA's timing stubbed).
DEVICE = "cuda"


class CudaUnavailable(RuntimeError):
    """The GPU benchmark cannot run here; the message is one line saying why."""


def require_cuda() -> None:
    """Raise `CudaUnavailable` (one line) unless a CUDA GPU and compiled Triton kernels are available."""
    from ..backends import triton_gpu

    if not torch.cuda.is_available():
        raise CudaUnavailable("CUDA is not available (torch.cuda.is_available() is False): "
                              "`optimlab bench --device cuda` needs an NVIDIA GPU")
    if triton_gpu._triton() is None:
        raise CudaUnavailable("triton is not installed: pip install 'optimlab[gpu]'")
    if triton_gpu.interpreting():
        raise CudaUnavailable("TRITON_INTERPRET=1 is set: unset it to time compiled kernels")


def _burst_seconds(run: Callable[[], Any], burst: int) -> float:
    """Seconds per call of `run`, over `burst` calls between two CUDA events."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(burst):
        run()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / burst


def _interleaved(contenders: dict[str, Callable[[], Any]], repetitions: int, warmup: int,
                 burst: int) -> dict[str, float]:
    """`optimlab.bench.interleaved` timed by CUDA events, each repetition a burst of `burst` calls."""
    return interleaved(contenders, repetitions, warmup, lambda run: _burst_seconds(run, burst),
                       settle=lambda: torch.cuda.synchronize())


def roofline(repetitions: int = 7) -> float:
    """HBM bandwidth in GB/s: a device-to-device copy of `COPY_BYTES`, bytes read plus bytes written."""
    source = torch.empty(COPY_BYTES // 4, dtype=torch.float32, device=DEVICE)
    target = torch.empty_like(source)
    seconds = _interleaved({"copy": lambda: target.copy_(source)}, repetitions, warmup=2, burst=5)["copy"]
    return 2 * COPY_BYTES / seconds / 1e9


def run(case_names: Sequence[str], workload_names: Sequence[str], repetitions: int = 5, warmup: int = 2,
        quick: bool = False, variants: Sequence[str] = VARIANTS,
        progress: Callable[[str], None] = lambda message: None, burst: int = 10) -> Report:
    """`optimlab.bench.run` on the GPU: the same cases, workloads and `Report`, timed with CUDA events.

    Raises `CudaUnavailable` (one line) where there is no GPU to time.
    """
    require_cuda()
    import triton

    platform = Platform(
        device=DEVICE, backend="triton",
        machine={**machine(), "gpu": torch.cuda.get_device_name(), "cuda": torch.version.cuda,
                 "triton": triton.__version__},
        roofline=roofline,
        interleave=lambda contenders, repetitions, warmup: _interleaved(contenders, repetitions, warmup, burst),
        release=lambda: torch.cuda.empty_cache())
    return bench.run(case_names, workload_names, repetitions, warmup, quick, variants, progress, platform)


__all__ = ["COPY_BYTES", "CudaUnavailable", "require_cuda", "roofline", "run"]
