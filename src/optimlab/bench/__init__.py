"""Race optimlab's fused CPU kernels against `torch.optim`, fairly: same process, same tensors, interleaved.

Every contender of a case updates the same params from the same grads: ours as the backend call the PyTorch
front end makes per param group ("optimlab": the kernel plus the backend's per-step host work), ours through
the drop-in `optimlab.torch` class (what a user gets, front-end bookkeeping included), and torch's
forloop/foreach/fused implementations where they exist on CPU. Repetitions go round-robin (ours, forloop,
foreach, fused, ours, …, the starting contender rotating) so that a noisy neighbour or a frequency change
hits every contender alike, and the median is reported. Throughput is counted in *useful* bytes — what an
ideal fused kernel must read and write per step (param, grad and active state read; param and state
written) — and compared with the in-place streaming bandwidth of this machine measured in the same run
(`a.add_(b)` on buffers far larger than the caches).
"""

from __future__ import annotations

import gc
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .._extras import requires_extra

with requires_extra("optimlab.bench"):
    import torch

from ..backends import BACKENDS
from ..rules import lookup


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    shapes: tuple[tuple[int, ...], ...]

    @property
    def numel(self) -> int:
        return sum(math.prod(shape) for shape in self.shapes)


def gpt2_small_shapes(vocab: int = 50257, context: int = 1024, width: int = 768, layers: int = 12) -> tuple:
    """GPT-2 small's 148 parameter tensors (124.4 M values): embeddings, 12 blocks, final layer norm."""
    shapes: list[tuple[int, ...]] = [(vocab, width), (context, width)]
    for _ in range(layers):
        shapes += [(width,), (width,),                       # ln_1 weight, bias
                   (width, 3 * width), (3 * width,),         # attn.c_attn
                   (width, width), (width,),                 # attn.c_proj
                   (width,), (width,),                       # ln_2
                   (width, 4 * width), (4 * width,),         # mlp.c_fc
                   (4 * width, width), (width,)]             # mlp.c_proj
    shapes += [(width,), (width,)]                           # ln_f
    return tuple(shapes)


def workloads(quick: bool = False) -> dict[str, Workload]:
    """(a) GPT-2 small's shapes, (b) 10,000 tensors of 1,000, (c) one 16 M tensor; `quick`: tiny versions.

    The quick ones keep the kind of each workload (GPT-2's mix of shapes, many equal small tensors, one big
    one) at sizes that fit in a cache: a smoke test of the harness, whose timings mean nothing.
    """
    if quick:
        return {"gpt2": Workload("gpt2", "GPT-2-small-shaped, 2 blocks: 28 tiny tensors",
                                 gpt2_small_shapes(256, 32, 16, layers=2)),
                "many": Workload("many", "100 tensors × 1,000", ((1000,),) * 100),
                "large": Workload("large", "one 64 K tensor", ((1 << 16,),))}
    return {"gpt2": Workload("gpt2", "GPT-2 small: 148 tensors, 124.4 M", gpt2_small_shapes()),
            "many": Workload("many", "10,000 tensors × 1,000", ((1000,),) * 10_000),
            "large": Workload("large", "one 16 M tensor", ((1 << 24,),))}


@dataclass(frozen=True)
class Case:
    """One optimizer configuration, as optimlab spells it and as torch.optim does."""

    name: str
    optimizer: str
    overrides: dict[str, Any]
    torch_class: str
    torch_kwargs: dict[str, Any]
    state_dtype: torch.dtype | None = None


LR = 1e-3
CASES = {case.name: case for case in (
    Case("sgd", "sgd", {"lr": LR}, "SGD", {"lr": LR}),
    Case("sgd-momentum", "momentum", {"lr": LR, "momentum": 0.9}, "SGD", {"lr": LR, "momentum": 0.9}),
    Case("nesterov", "nesterov", {"lr": LR, "momentum": 0.9}, "SGD", {"lr": LR, "momentum": 0.9, "nesterov": True}),
    Case("adagrad", "adagrad", {"lr": LR}, "Adagrad", {"lr": LR}),
    Case("rmsprop", "rmsprop", {"lr": LR}, "RMSprop", {"lr": LR}),
    Case("rmsprop-centered", "rmsprop", {"lr": LR, "centered": True}, "RMSprop", {"lr": LR, "centered": True}),
    Case("adam", "adam", {"lr": LR}, "Adam", {"lr": LR}),
    Case("adam-amsgrad", "adam", {"lr": LR, "amsgrad": True}, "Adam", {"lr": LR, "amsgrad": True}),
    Case("adamw", "adamw", {"lr": LR}, "AdamW", {"lr": LR}),
    Case("adam-bf16-state", "adam", {"lr": LR}, "Adam", {"lr": LR}, state_dtype=torch.bfloat16),
)}
TORCH_VARIANTS = ("forloop", "foreach", "fused")
#: The cases a quick run takes unless others are named: a stateless rule and Adam (each a kernel to compile).
QUICK_CASES = ("sgd", "adam")
#: What a quick run's table, Markdown and JSON say about its numbers.
SMOKE_NOTE = "smoke run (--quick): tiny workloads, to check that everything runs; these timings mean nothing"


@dataclass
class Result:
    workload: str
    case: str
    tensors: int
    numel: int
    bytes_per_step: int
    state_bytes: dict[str, int]
    median_ms: dict[str, float]
    best_torch: str | None = None
    speedup: float | None = None
    gbps: float | None = None
    roofline_fraction: float | None = None


@dataclass
class Report:
    """The results of a run; `smoke` marks a quick run, whose numbers mean nothing (`SMOKE_NOTE`)."""

    machine: dict[str, Any]
    roofline_gbps: float
    results: list[Result] = field(default_factory=list)
    smoke: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"machine": self.machine, "roofline_gbps": self.roofline_gbps, "smoke": self.smoke,
                **({"note": SMOKE_NOTE} if self.smoke else {}),
                "results": [asdict(result) for result in self.results]}


def machine() -> dict[str, Any]:
    """CPU model and core counts, for the record next to the numbers."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import numba

    return {"cpu": model, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "numba_threads": numba.get_num_threads(), "torch": torch.__version__, "numba": numba.__version__}


def rotations(contenders: Sequence[str], repetitions: int) -> list[list[str]]:
    """The order of each repetition: every contender once, the first one rotating from repetition to repetition.

    Each contender follows every other equally often: whoever runs right after torch finds its OpenMP
    threads still spinning for a few milliseconds, and that cost should not always fall on the same one.
    """
    count = len(contenders)
    return [[contenders[(repetition + offset) % count] for offset in range(count)]
            for repetition in range(repetitions)]


def wall_seconds(run: Callable[[], Any]) -> float:
    """Seconds one call of `run` takes, by the host's clock."""
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def interleaved(contenders: dict[str, Callable[[], Any]], repetitions: int, warmup: int,
                seconds_per_call: Callable[[Callable[[], Any]], float] = wall_seconds,
                settle: Callable[[], None] = lambda: None) -> dict[str, float]:
    """Median seconds per call of each contender, repetitions taken round-robin (`rotations`).

    `seconds_per_call` times one contender (the host's clock here; CUDA events on a GPU), `settle` runs after
    the warm-up (a device synchronization on a GPU).
    """
    for _ in range(warmup):
        for run in contenders.values():
            run()
    settle()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for order in rotations(list(contenders), repetitions):
        for name in order:
            times[name].append(seconds_per_call(contenders[name]))
    return {name: statistics.median(values) for name, values in times.items()}


def roofline(numel: int, repetitions: int = 7) -> float:
    """In-place streaming bandwidth in GB/s: `a.add_(b)` reads two buffers and writes one."""
    a, b = torch.ones(numel), torch.ones(numel)
    seconds = interleaved({"add_": lambda: a.add_(b)}, repetitions, warmup=2)["add_"]
    return 3 * a.element_size() * numel / seconds / 1e9


@dataclass(frozen=True)
class Platform:
    """Where a benchmark runs and how it is timed: the CPU (`cpu_platform`) or a GPU (`bench.cuda`).

    `backend` is the optimlab backend raced against torch, `roofline()` the memory bandwidth in GB/s measured
    in the same run, `interleave` an `interleaved` with the platform's clock, `release` frees cached memory
    between cases.
    """

    device: str
    backend: str
    machine: dict[str, Any]
    roofline: Callable[[], float]
    interleave: Callable[[dict[str, Callable[[], Any]], int, int], dict[str, float]] = interleaved
    release: Callable[[], None] = lambda: None


def cpu_platform(quick: bool = False) -> Platform:
    """The numba backend on this machine's CPU, timed by the host's clock."""
    buffer = (1 << 20) if quick else (1 << 26)  # 256 MB per buffer: beyond any cache (a quick run: 4 MB, anything)
    return Platform(device="cpu", backend="numba", machine=machine(), roofline=lambda: roofline(buffer))


class OursRunner:
    """One optimlab optimizer on a backend: what the PyTorch front end calls, per param group."""

    def __init__(self, case: Case, params: Sequence[torch.Tensor], backend: str = "numba") -> None:
        from ..torch.optimizer import load_optional_backends

        load_optional_backends()
        self.rule, defaults = lookup(case.optimizer)
        self.hyperparameters = self.rule.defaults(**{**defaults, **case.overrides})
        self.params = list(params)
        self.states = [[torch.full_like(param, self.rule.initial_state(name, self.hyperparameters),
                                        dtype=case.state_dtype or param.dtype)
                        for name in self.rule.active_state(self.hyperparameters)] for param in self.params]
        self.backend = BACKENDS[backend]
        # The tensors are this runner's and never move: the backend's prepared tables stay valid (see
        # `optimlab.backends`), as they do for the PyTorch front end, which checks that every step.
        prepare = getattr(self.backend, "prepare", None)
        self.prepared = prepare(self.rule, self.hyperparameters, self.params, self.states) if prepare else None
        self.count = 0

    def state_bytes(self) -> int:
        return sum(tensor.numel() * tensor.element_size() for state in self.states for tensor in state)

    def step(self) -> None:
        self.count += 1
        coefficients = self.rule.coefficients(self.count, **self.hyperparameters)
        grads = [param.grad for param in self.params]
        if self.prepared is not None:
            self.prepared.step(coefficients, grads)
        else:
            self.backend.step(self.rule, self.hyperparameters, coefficients, self.params, grads, self.states)


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


def front_end_optimizer(case: Case, params: Sequence[torch.Tensor], backend: str) -> torch.optim.Optimizer:
    """The drop-in `optimlab.torch` class on `backend`."""
    import optimlab.torch as optimlab_torch

    return getattr(optimlab_torch, case.torch_class)(params, **case.torch_kwargs, backend=backend,
                                                      state_dtype=case.state_dtype)


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of a torch optimizer's per-element state (its `step` counters left out)."""
    return sum(value.numel() * value.element_size() for state in optimizer.state.values()
               for key, value in state.items() if torch.is_tensor(value) and key != "step")


def bytes_per_step(case: Case, workload: Workload) -> int:
    """Useful traffic of one step: param + grad + active state read, param + state written."""
    rule, defaults = lookup(case.optimizer)
    states = len(rule.active_state(rule.defaults(**{**defaults, **case.overrides})))
    state_size = 2 if case.state_dtype == torch.bfloat16 else 4
    return workload.numel * (3 * 4 + 2 * states * state_size)


def run(case_names: Sequence[str], workload_names: Sequence[str], repetitions: int = 5, warmup: int = 2,
        quick: bool = False, variants: Sequence[str] = TORCH_VARIANTS,
        progress: Callable[[str], None] = lambda message: None, platform: Platform | None = None) -> Report:
    """Benchmark each case on each workload on `platform` (default: the CPU); see the module docstring.

    `quick` is a smoke run: the tiny `workloads(quick=True)`, torch on one thread (OpenMP threads waiting for
    a busy core cost seconds there and measure nothing) and no garbage collection between cases.
    """
    threads = torch.get_num_threads()
    if quick:
        torch.set_num_threads(1)
    try:
        return _measure(case_names, workload_names, repetitions, warmup, quick, variants, progress,
                        platform or cpu_platform(quick))
    finally:
        torch.set_num_threads(threads)


def _measure(case_names: Sequence[str], workload_names: Sequence[str], repetitions: int, warmup: int, quick: bool,
             variants: Sequence[str], progress: Callable[[str], None], platform: Platform) -> Report:
    available = workloads(quick)
    report = Report(machine=platform.machine, roofline_gbps=platform.roofline(), smoke=quick)
    for workload_name in workload_names:
        workload = available[workload_name]
        generator = torch.Generator(device=platform.device).manual_seed(0)
        params = [torch.randn(shape, generator=generator, device=platform.device).requires_grad_()
                  for shape in workload.shapes]
        for param in params:
            param.grad = torch.randn(param.shape, generator=generator, device=platform.device) * 1e-2
        for case_name in case_names:
            case = CASES[case_name]
            progress(f"{workload_name} / {case_name}")
            ours = OursRunner(case, params, platform.backend)
            front_end = front_end_optimizer(case, params, platform.backend)
            contenders: dict[str, Callable[[], Any]] = {"optimlab": ours.step, "optimlab.torch": front_end.step}
            torch_optimizers = {}
            for variant in variants:
                optimizer = torch_optimizer(case, params, variant)
                if optimizer is not None:
                    torch_optimizers[variant] = optimizer
                    contenders[variant] = optimizer.step
            with torch.no_grad():
                medians = platform.interleave(contenders, repetitions, warmup)
            result = Result(workload=workload_name, case=case_name, tensors=len(params), numel=workload.numel,
                            bytes_per_step=bytes_per_step(case, workload),
                            state_bytes={"optimlab": ours.state_bytes(),
                                         **{name: state_bytes(opt) for name, opt in torch_optimizers.items()}},
                            median_ms={name: seconds * 1e3 for name, seconds in medians.items()})
            torch_times = {name: ms for name, ms in result.median_ms.items() if name in TORCH_VARIANTS}
            if torch_times:
                result.best_torch = min(torch_times, key=torch_times.get)
                result.speedup = torch_times[result.best_torch] / result.median_ms["optimlab"]
            result.gbps = result.bytes_per_step / (result.median_ms["optimlab"] / 1e3) / 1e9
            report.results.append(result)
            del ours, front_end, contenders, torch_optimizers
            if not quick:
                gc.collect()
            platform.release()
        del params
        if not quick:
            gc.collect()
        platform.release()
    # measured again at the end: the roofline is the better of the two, like the medians a fair best case
    report.roofline_gbps = max(report.roofline_gbps, platform.roofline())
    for result in report.results:
        result.roofline_fraction = result.gbps / report.roofline_gbps
    return report


def _format_ms(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.3g}" if value < 10 else f"{value:.0f}"


def rows(report: Report) -> tuple[list[str], list[list[str]]]:
    """The table's header and rows, shared by the rich table and the Markdown output."""
    header = ["workload", "optimizer", "optimlab ms", "via optimlab.torch", *TORCH_VARIANTS,
              "vs best torch", "GB/s", "roofline", "state MB ours/torch"]
    body = []
    for result in report.results:
        torch_state = max((value for name, value in result.state_bytes.items() if name != "optimlab"), default=0)
        body.append([result.workload, result.case, _format_ms(result.median_ms["optimlab"]),
                     _format_ms(result.median_ms.get("optimlab.torch")),
                     *(_format_ms(result.median_ms.get(name)) for name in TORCH_VARIANTS),
                     "—" if result.speedup is None else f"{result.speedup:.2f}× ({result.best_torch})",
                     f"{result.gbps:.1f}", f"{100 * result.roofline_fraction:.0f} %",
                     f"{result.state_bytes['optimlab'] / 1e6:.0f} / {torch_state / 1e6:.0f}"])
    return header, body


def markdown(report: Report) -> str:
    """The report as a Markdown table with the machine it ran on."""
    header, body = rows(report)
    info = report.machine
    lines = [f"**{SMOKE_NOTE}.**", ""] if report.smoke else []
    lines += [f"Machine: {info['cpu']}, {info['cores']} cores (torch {info['torch']} with {info['torch_threads']} "
              f"threads, numba {info['numba']} with {info['numba_threads']}); in-place roofline "
              f"(`a.add_(b)`, same run): {report.roofline_gbps:.1f} GB/s.", "",
              "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines) + "\n"


__all__ = ["CASES", "QUICK_CASES", "SMOKE_NOTE", "TORCH_VARIANTS", "Case", "OursRunner", "Report", "Result",
           "Workload", "bytes_per_step", "gpt2_small_shapes", "machine", "markdown", "roofline", "rows", "run",
           "workloads"]
