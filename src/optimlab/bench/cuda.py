"""`optimlab bench --device cuda`: the triton backend against `torch.optim` on a GPU, with the roofline.

For each workload (GPT-2 small's 148 parameter tensors; 10,000 small tensors) and optimizer, every
contender — optimlab's triton backend and torch's fused, foreach and for-loop implementations, where
torch has them — owns its own params, gradients and state, and they are timed *interleaved*: round after
round, each takes its turn (in rotating order) for a burst of steps timed with CUDA events, so clock
boosts, thermal drift and other tenants hit all of them alike; the median round is reported.

The roofline is measured in the same run, as one more contender: a large device-to-device copy, whose
bytes read + written per second is the HBM bandwidth this GPU actually delivers. An optimizer step must
read param, gradient and state and write param and state, so its floor is that many bytes at that rate;
"% HBM" is how close a step comes to it.

Targets (issue 9): ≥ 1.0× torch fused for Adam, AdamW, SGD, Adagrad; ≥ 2× torch's best RMSprop;
≥ 85 % of HBM bandwidth on GPT-2 small; ≥ 3× torch fused on 10,000 small tensors.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..rules import lookup


class CudaUnavailable(RuntimeError):
    """The GPU benchmark cannot run here; the message is one line saying why."""


def gpt2_small_shapes() -> list[tuple[int, ...]]:
    """GPT-2 small's parameter shapes (124,439,808 elements; the LM head is tied to the embedding)."""
    vocabulary, positions, width, layers = 50257, 1024, 768, 12
    block = [(width,), (width,), (width, 3 * width), (3 * width,), (width, width), (width,),
             (width,), (width,), (width, 4 * width), (4 * width,), (4 * width, width), (width,)]
    return [(vocabulary, width), (positions, width), *block * layers, (width,), (width,)]


#: Workload name → parameter shapes.
WORKLOADS: dict[str, list[tuple[int, ...]]] = {
    "gpt2-small": gpt2_small_shapes(),
    "10k-small": [(512,)] * 10_000,
}

#: Optimizer name → (torch.optim class name, its arguments, optimlab optimizer name, optimlab arguments).
OPTIMIZERS: dict[str, tuple[str, dict[str, Any], str, dict[str, Any]]] = {
    "adam": ("Adam", {"lr": 1e-3}, "adam", {"lr": 1e-3}),
    "adamw": ("AdamW", {"lr": 1e-3}, "adamw", {"lr": 1e-3}),
    "sgd": ("SGD", {"lr": 1e-3, "momentum": 0.9}, "momentum", {"lr": 1e-3, "momentum": 0.9}),
    "adagrad": ("Adagrad", {"lr": 1e-2}, "adagrad", {"lr": 1e-2}),
    "rmsprop": ("RMSprop", {"lr": 1e-2}, "rmsprop", {"lr": 1e-2}),
}

#: torch.optim implementations, by the constructor flags that select them.
TORCH_VARIANTS = {"torch fused": {"fused": True}, "torch foreach": {"foreach": True},
                  "torch for-loop": {"foreach": False}}
OURS = "optimlab triton"
COPY = "HBM copy"


def require_cuda() -> None:
    """Raise `CudaUnavailable` (one line) unless a CUDA GPU and compiled Triton kernels are available."""
    import torch

    from ..backends import triton_gpu

    if not torch.cuda.is_available():
        raise CudaUnavailable("CUDA is not available (torch.cuda.is_available() is False): "
                              "`optimlab bench --device cuda` needs an NVIDIA GPU")
    if triton_gpu._triton() is None:
        raise CudaUnavailable("triton is not installed: pip install optimlab[gpu]")
    if triton_gpu.interpreting():
        raise CudaUnavailable("TRITON_INTERPRET=1 is set: unset it to benchmark compiled kernels")


def state_count(optimizer: str) -> int:
    """How many state tensors per param the benchmarked configuration of `optimizer` keeps."""
    rule, overrides = lookup(OPTIMIZERS[optimizer][2])
    return len(rule.active_state(rule.defaults(**{**overrides, **OPTIMIZERS[optimizer][3]})))


def bytes_per_step(optimizer: str, numel: int, itemsize: int) -> int:
    """The HBM traffic of one step: read param, gradient and state; write param and state."""
    states = state_count(optimizer)
    return numel * itemsize * ((2 + states) + (1 + states))


def interleaved(contenders: Sequence[str], rounds: int) -> list[list[str]]:
    """The order of each round: every contender once, the starting one rotating from round to round."""
    count = len(contenders)
    return [[contenders[(start + offset) % count] for offset in range(count)]
            for start in (round_index % count for round_index in range(rounds))]


@dataclass(frozen=True)
class Row:
    """One contender's result on one workload: median milliseconds per step, bandwidth and its share."""

    workload: str
    optimizer: str
    contender: str
    milliseconds: float
    gigabytes_per_second: float
    hbm_fraction: float


def _optimlab_step(name: str, params: list[Any], grads: list[Any]) -> Callable[[], None]:
    """A step of optimlab's triton backend: what the PyTorch front end does per step, minus its bookkeeping."""
    import torch

    from ..backends import triton_gpu

    rule, overrides = lookup(OPTIMIZERS[name][2])
    hyper = rule.defaults(**{**overrides, **OPTIMIZERS[name][3]})
    active = rule.active_state(hyper)
    states = [[torch.full_like(param, rule.initial_state(state, hyper)) for state in active] for param in params]
    counter = [0]

    def step() -> None:
        counter[0] += 1
        coefficients = rule.coefficients(counter[0], **hyper)
        triton_gpu.BACKEND.step(rule, hyper, coefficients, params, grads, states)

    return step


def _torch_step(name: str, flags: dict[str, bool], params: list[Any], grads: list[Any]) -> Callable[[], None] | None:
    """A `torch.optim` step with `flags` (fused/foreach), or None where torch has no such implementation."""
    import torch

    class_name, arguments, _, _ = OPTIMIZERS[name]
    leaves = [torch.nn.Parameter(param) for param in params]
    for leaf, grad in zip(leaves, grads, strict=True):
        leaf.grad = grad
    try:
        optimizer = getattr(torch.optim, class_name)(leaves, **arguments, **flags)
        optimizer.step()
    except (RuntimeError, ValueError, TypeError):
        return None
    return optimizer.step


def _copy_step(gigabytes: float) -> tuple[Callable[[], None], int]:
    """A device-to-device copy of `gigabytes`, and the bytes it moves (read + written)."""
    import torch

    source = torch.empty(int(gigabytes * 2**30) // 4, dtype=torch.float32, device="cuda")
    target = torch.empty_like(source)
    return (lambda: target.copy_(source)), 2 * source.numel() * source.element_size()


def _milliseconds(step: Callable[[], None], steps: int) -> float:
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(steps):
        step()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / steps


def run(workloads: Sequence[str] = tuple(WORKLOADS), optimizers: Sequence[str] = tuple(OPTIMIZERS), *,
        dtype: str = "float32", rounds: int = 7, steps: int = 20, warmup: int = 3,
        copy_gigabytes: float = 1.0) -> list[Row]:
    """Time every contender, interleaved, on each workload and optimizer; the copy row is the roofline."""
    require_cuda()
    import torch

    torch_dtype = getattr(torch, dtype)
    itemsize = torch.empty((), dtype=torch_dtype).element_size()
    rows: list[Row] = []
    for workload in workloads:
        shapes = WORKLOADS[workload]
        numel = sum(torch.Size(shape).numel() for shape in shapes)
        for optimizer in optimizers:
            generator = torch.Generator(device="cuda").manual_seed(0)
            grads = [torch.randn(shape, device="cuda", dtype=torch_dtype, generator=generator) for shape in shapes]
            initial = [torch.randn(shape, device="cuda", dtype=torch_dtype, generator=generator) for shape in shapes]
            contenders: dict[str, Callable[[], None]] = {
                OURS: _optimlab_step(optimizer, [param.clone() for param in initial], grads)}
            for label, flags in TORCH_VARIANTS.items():
                step = _torch_step(optimizer, flags, [param.clone() for param in initial], grads)
                if step is not None:
                    contenders[label] = step
            contenders[COPY], copy_bytes = _copy_step(copy_gigabytes)
            for step in contenders.values():
                for _ in range(warmup):
                    step()
            torch.cuda.synchronize()
            times: dict[str, list[float]] = {label: [] for label in contenders}
            for order in interleaved(list(contenders), rounds):
                for label in order:
                    times[label].append(_milliseconds(contenders[label], steps))
            copy_ms = statistics.median(times.pop(COPY))
            bandwidth = copy_bytes / copy_ms / 1e6  # GB/s
            traffic = bytes_per_step(optimizer, numel, itemsize)
            rows.append(Row(workload, optimizer, COPY, copy_ms, bandwidth, 1.0))
            for label, samples in times.items():
                milliseconds = statistics.median(samples)
                achieved = traffic / milliseconds / 1e6
                rows.append(Row(workload, optimizer, label, milliseconds, achieved, achieved / bandwidth))
            del contenders, grads, initial
            torch.cuda.empty_cache()
    return rows


def speedups(rows: Sequence[Row]) -> dict[tuple[str, str, str], float]:
    """(workload, optimizer, torch contender) → how many times faster optimlab's step is than torch's."""
    ours = {(row.workload, row.optimizer): row.milliseconds for row in rows if row.contender == OURS}
    return {(row.workload, row.optimizer, row.contender): row.milliseconds / ours[row.workload, row.optimizer]
            for row in rows if row.contender in TORCH_VARIANTS and (row.workload, row.optimizer) in ours}


def table(rows: Sequence[Row]) -> str:
    """The results as aligned text: one line per contender, optimlab's speedup against each torch variant."""
    factor = speedups(rows)
    header = f"{'workload':<11} {'optimizer':<9} {'contender':<16} {'ms/step':>9} {'GB/s':>8} {'% HBM':>6} " \
             f"{'optimlab ×':>10}"
    lines = [header, "-" * len(header)]
    for row in rows:
        speedup = factor.get((row.workload, row.optimizer, row.contender))
        lines.append(f"{row.workload:<11} {row.optimizer:<9} {row.contender:<16} {row.milliseconds:>9.3f} "
                     f"{row.gigabytes_per_second:>8.0f} {100 * row.hbm_fraction:>5.0f}% "
                     f"{'' if speedup is None else f'{speedup:.2f}×':>10}")
    return "\n".join(lines)


__all__ = ["COPY", "OPTIMIZERS", "OURS", "WORKLOADS", "CudaUnavailable", "Row", "bytes_per_step",
           "gpt2_small_shapes", "interleaved", "require_cuda", "run", "speedups", "table"]
