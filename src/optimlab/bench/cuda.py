"""`optimlab bench --device cuda`: the triton backend against `torch.optim` on a GPU, with the HBM roofline.

The same cases, workloads and report as the CPU benchmark (`optimlab.bench`), timed the GPU's way: every
contender (optimlab's triton backend called directly and through the drop-in `optimlab.torch` class;
torch's for-loop, foreach and fused implementations where they exist on CUDA) updates the same params from
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

import gc
import statistics
from collections.abc import Callable, Sequence
from typing import Any

import torch

from . import CASES, TORCH_VARIANTS, Case, OursRunner, Report, Result, bytes_per_step, machine, workloads

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


def rotations(contenders: Sequence[str], repetitions: int) -> list[list[str]]:
    """The order of each repetition: every contender once, the first one rotating from repetition to repetition."""
    count = len(contenders)
    return [[contenders[(repetition + offset) % count] for offset in range(count)]
            for repetition in range(repetitions)]


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
    """Median seconds per call of each contender; repetitions round-robin, the starting contender rotating."""
    for _ in range(warmup):
        for run in contenders.values():
            run()
    torch.cuda.synchronize()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for order in rotations(list(contenders), repetitions):
        for name in order:
            times[name].append(_burst_seconds(contenders[name], burst))
    return {name: statistics.median(values) for name, values in times.items()}


def roofline(repetitions: int = 7) -> float:
    """HBM bandwidth in GB/s: a device-to-device copy of `COPY_BYTES`, bytes read plus bytes written."""
    source = torch.empty(COPY_BYTES // 4, dtype=torch.float32, device=DEVICE)
    target = torch.empty_like(source)
    seconds = _interleaved({"copy": lambda: target.copy_(source)}, repetitions, warmup=2, burst=5)["copy"]
    return 2 * COPY_BYTES / seconds / 1e9


class TritonRunner(OursRunner):
    """`OursRunner` on the triton backend: what the PyTorch front end calls per param group."""

    def __init__(self, case: Case, params: Sequence[torch.Tensor]) -> None:
        from ..backends import triton_gpu

        super().__init__(case, params)
        self.backend = triton_gpu.BACKEND


def front_end_optimizer(case: Case, params: Sequence[torch.Tensor]) -> torch.optim.Optimizer:
    """The drop-in `optimlab.torch` class on the triton backend."""
    import optimlab.torch as optimlab_torch

    return getattr(optimlab_torch, case.torch_class)(params, **case.torch_kwargs, backend="triton",
                                                      state_dtype=case.state_dtype)


def torch_optimizer(case: Case, params: Sequence[torch.Tensor], variant: str) -> torch.optim.Optimizer | None:
    """torch.optim's implementation `variant` on the params' device, or None where torch has none there."""
    flags = {"forloop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}[variant]
    cls = getattr(torch.optim, case.torch_class)
    probe = torch.zeros(2, device=params[0].device, requires_grad=True)
    probe.grad = torch.ones_like(probe)
    try:
        cls([probe], **case.torch_kwargs, **flags).step()
    except (TypeError, RuntimeError, ValueError):
        return None
    return cls(params, **case.torch_kwargs, **flags)


def run(case_names: Sequence[str], workload_names: Sequence[str], repetitions: int = 5, warmup: int = 2,
        quick: bool = False, variants: Sequence[str] = TORCH_VARIANTS,
        progress: Callable[[str], None] = lambda message: None, burst: int = 10) -> Report:
    """`optimlab.bench.run` on the GPU: the same cases, workloads and `Report`, timed with CUDA events.

    Raises `CudaUnavailable` (one line) where there is no GPU to time.
    """
    require_cuda()
    import triton

    available = workloads(quick)
    info = {**machine(), "gpu": torch.cuda.get_device_name(), "cuda": torch.version.cuda,
            "triton": triton.__version__}
    report = Report(machine=info, roofline_gbps=roofline())
    for workload_name in workload_names:
        workload = available[workload_name]
        generator = torch.Generator(device=DEVICE).manual_seed(0)
        params = [torch.randn(shape, generator=generator, device=DEVICE).requires_grad_()
                  for shape in workload.shapes]
        for param in params:
            param.grad = torch.randn(param.shape, generator=generator, device=DEVICE) * 1e-2
        for case_name in case_names:
            case = CASES[case_name]
            progress(f"{workload_name} / {case_name}")
            ours = TritonRunner(case, params)
            front_end = front_end_optimizer(case, params)
            contenders: dict[str, Callable[[], Any]] = {"optimlab": ours.step, "optimlab.torch": front_end.step}
            torch_optimizers = {}
            for variant in variants:
                optimizer = torch_optimizer(case, params, variant)
                if optimizer is not None:
                    torch_optimizers[variant] = optimizer
                    contenders[variant] = optimizer.step
            with torch.no_grad():
                medians = _interleaved(contenders, repetitions, warmup, burst)
            result = Result(workload=workload_name, case=case_name, tensors=len(params), numel=workload.numel,
                            bytes_per_step=bytes_per_step(case, workload),
                            state_bytes={"optimlab": ours.state_bytes(),
                                         **{name: _state_bytes(opt) for name, opt in torch_optimizers.items()}},
                            median_ms={name: seconds * 1e3 for name, seconds in medians.items()})
            torch_times = {name: ms for name, ms in result.median_ms.items() if name in TORCH_VARIANTS}
            if torch_times:
                result.best_torch = min(torch_times, key=torch_times.get)
                result.speedup = torch_times[result.best_torch] / result.median_ms["optimlab"]
            result.gbps = result.bytes_per_step / (result.median_ms["optimlab"] / 1e3) / 1e9
            report.results.append(result)
            del ours, front_end, contenders, torch_optimizers
            gc.collect()
            torch.cuda.empty_cache()
        del params
        gc.collect()
        torch.cuda.empty_cache()
    report.roofline_gbps = max(report.roofline_gbps, roofline())
    for result in report.results:
        result.roofline_fraction = result.gbps / report.roofline_gbps
    return report


def _state_bytes(optimizer: torch.optim.Optimizer) -> int:
    return sum(value.numel() * value.element_size() for state in optimizer.state.values()
               for key, value in state.items() if torch.is_tensor(value) and key != "step")


__all__ = ["COPY_BYTES", "CudaUnavailable", "TritonRunner", "front_end_optimizer", "require_cuda", "roofline",
           "rotations", "run", "torch_optimizer"]
