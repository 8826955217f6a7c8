"""Race optimlab's fused CPU kernels against their references, fairly: same process, same tensors, interleaved.

The cases are the registry's (`optimlab.rules.REGISTRY`: every registered optimizer at its defaults, lr
1e-3) and a few configurations of them (`CONFIGURATIONS`); each is raced against its reference
(`references.REFERENCES`: torch.optim's class where torch has one, the `lion-pytorch` package for Lion, the
`schedulefree` package for Schedule-Free AdamW, a foreach LAMB written from the paper). Optimizers with a
train mode (Schedule-Free) are put in it before they step. Every contender of a case updates the same params
from the same grads: ours as the backend call the PyTorch front end makes per param group ("optimlab": the kernel plus
the backend's per-step host work), ours through the drop-in `optimlab.torch` class (what a user gets,
front-end bookkeeping included), and the reference's forloop/foreach/fused implementations where they
exist on the device. Repetitions go round-robin (ours, forloop, foreach, fused, ours, …, the starting
contender rotating) so that a noisy neighbour or a frequency change hits every contender alike, and the
median is reported. Throughput is counted in *useful* bytes — what an ideal fused kernel must read and
write per step (param, grad and active state read; param and state written) — and compared with the
in-place streaming bandwidth of this machine measured in the same run (`a.add_(b)` on buffers far larger
than the caches).
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
from ..rules import REGISTRY, Rule
from .references import NO_REFERENCE, REFERENCES, VARIANTS, Reference, in_train_mode


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
    """One configuration of a registered optimizer, given alike to the drop-in class and to its reference.

    `arguments` go to `optimlab.torch.create(optimizer, ...)` and to each of `reference`'s variants;
    `state_dtype` only to optimlab (its `state_dtype=torch.bfloat16` state against torch's fp32 state).
    """

    name: str
    optimizer: str
    arguments: dict[str, Any]
    reference: Reference
    state_dtype: torch.dtype | None = None

    def rule(self) -> tuple[Rule, dict[str, Any]]:
        """The rule and the full hyperparameters the drop-in class runs for these arguments."""
        import optimlab.torch as optimlab_torch

        optimizer = optimlab_torch.create(self.optimizer, [torch.zeros(1, requires_grad=True)], **self.arguments)
        rule, hyperparameters = optimizer.rule_for(optimizer.param_groups[0])
        return rule, rule.defaults(**hyperparameters)


LR = 1e-3
#: Configurations raced besides each optimizer's defaults: (case, registered optimizer, arguments, state dtype).
CONFIGURATIONS: tuple[tuple[str, str, dict[str, Any], torch.dtype | None], ...] = (
    ("rmsprop-centered", "rmsprop", {"centered": True}, None),
    ("adam-amsgrad", "adam", {"amsgrad": True}, None),
    ("adam-bf16-state", "adam", {}, torch.bfloat16),
)


def registered_cases() -> dict[str, Case]:
    """One case per entry of `optimlab.rules.REGISTRY` (its name, its defaults at lr 1e-3, its reference from
    `references.REFERENCES`), each followed by its `CONFIGURATIONS`."""
    cases = {}
    for name in REGISTRY:
        reference = REFERENCES.get(name, NO_REFERENCE)
        cases[name] = Case(name, name, {"lr": LR, **reference.arguments}, reference)
        for case_name, optimizer, arguments, state_dtype in CONFIGURATIONS:
            if optimizer == name:
                cases[case_name] = Case(case_name, name, {"lr": LR, **reference.arguments, **arguments}, reference,
                                        state_dtype)
    return cases


CASES = registered_cases()
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
    #: what the case is raced against (`Reference.label`), its fastest variant and the ratio to it
    reference: str = NO_REFERENCE.label
    best_reference: str | None = None
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
        self.rule, self.hyperparameters = case.rule()
        self.params = list(params)
        self.states = [[self._initial(name, param, case.state_dtype or param.dtype)
                        for name in self.rule.active_state(self.hyperparameters)] for param in self.params]
        self.backend = BACKENDS[backend]
        # The tensors are this runner's and never move: the backend's prepared tables stay valid (see
        # `optimlab.backends`), as they do for the PyTorch front end, which checks that every step.
        prepare = getattr(self.backend, "prepare", None)
        self.prepared = prepare(self.rule, self.hyperparameters, self.params, self.states) if prepare else None
        self.count = 0
        # per-param scalar state (NAdam's Π_t): the same for every param, which all step together
        self.scalar_state = self.rule.initial_scalar_state(self.hyperparameters)
        # the group state (Schedule-Free's k, W, γ_max): the params are one group
        self.group_state = self.rule.initial_group_state(self.hyperparameters)

    def _initial(self, name: str, param: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """State `name` before the first step: a copy of the param (`state_from_param`) or a constant."""
        if name in self.rule.state_from_param:
            return param.detach().to(dtype=dtype, copy=True)
        return torch.full_like(param, self.rule.initial_state(name, self.hyperparameters), dtype=dtype)

    def state_bytes(self) -> int:
        return sum(tensor.numel() * tensor.element_size() for state in self.states for tensor in state)

    def step(self) -> None:
        self.count += 1
        self.scalar_state = self.rule.advance_scalar_state(self.count, self.scalar_state, self.hyperparameters)
        self.group_state = self.rule.advance_group_state(self.group_state, self.hyperparameters)
        coefficients = self.rule.coefficients(self.count, **self.hyperparameters, **self.scalar_state,
                                              **self.group_state)
        grads = [param.grad for param in self.params]
        if self.prepared is not None:
            self.prepared.step(coefficients, grads)
        else:
            self.backend.step(self.rule, self.hyperparameters, coefficients, self.params, grads, self.states)


def reference_optimizer(case: Case, params: Sequence[torch.Tensor], variant: str) -> torch.optim.Optimizer | None:
    """The case's reference in form `variant` on the params' device, or None where it has none there
    (no such variant, or torch refuses it on that device: fused RMSprop)."""
    make = case.reference.variants.get(variant)
    if make is None:
        return None
    probe = torch.zeros(2, device=params[0].device, requires_grad=True)
    probe.grad = torch.ones_like(probe)
    try:
        in_train_mode(make([probe], **case.arguments)).step()
    except (TypeError, RuntimeError, ValueError):
        return None
    return in_train_mode(make(params, **case.arguments))


def front_end_optimizer(case: Case, params: Sequence[torch.Tensor], backend: str) -> torch.optim.Optimizer:
    """The drop-in `optimlab.torch` class on `backend` (`optimlab.torch.create`: the registry's class)."""
    import optimlab.torch as optimlab_torch

    return in_train_mode(optimlab_torch.create(case.optimizer, params, **case.arguments, backend=backend,
                                               state_dtype=case.state_dtype))


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of an optimizer's per-element state (0-dim tensors, its `step` counters and NAdam's `mu_product`,
    left out)."""
    return sum(value.numel() * value.element_size() for state in optimizer.state.values()
               for value in state.values() if torch.is_tensor(value) and value.dim() > 0)


def bytes_per_step(case: Case, workload: Workload) -> int:
    """Useful traffic of one step: param + grad + active state read, param + state written.

    A rule with per-tensor reductions (LAMB) reads param, grad and state once more: its per-tensor sums
    (the trust ratio's norms) must be complete before the first element is updated.
    """
    rule, hyperparameters = case.rule()
    states = len(rule.active_state(hyperparameters))
    state_size = 2 if case.state_dtype == torch.bfloat16 else 4
    reads = 2 * 4 + states * state_size
    writes = 4 + states * state_size
    return workload.numel * ((2 if rule.reductions else 1) * reads + writes)


def run(case_names: Sequence[str], workload_names: Sequence[str], repetitions: int = 5, warmup: int = 2,
        quick: bool = False, variants: Sequence[str] = VARIANTS,
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
            references = {}
            for variant in variants:
                optimizer = reference_optimizer(case, params, variant)
                if optimizer is not None:
                    references[variant] = optimizer
                    contenders[variant] = optimizer.step
            with torch.no_grad():
                medians = platform.interleave(contenders, repetitions, warmup)
            result = Result(workload=workload_name, case=case_name, tensors=len(params), numel=workload.numel,
                            bytes_per_step=bytes_per_step(case, workload),
                            state_bytes={"optimlab": ours.state_bytes(),
                                         **{name: state_bytes(opt) for name, opt in references.items()}},
                            median_ms={name: seconds * 1e3 for name, seconds in medians.items()},
                            reference=case.reference.label)
            reference_times = {name: ms for name, ms in result.median_ms.items() if name in VARIANTS}
            if reference_times:
                result.best_reference = min(reference_times, key=reference_times.get)
                result.speedup = reference_times[result.best_reference] / result.median_ms["optimlab"]
            result.gbps = result.bytes_per_step / (result.median_ms["optimlab"] / 1e3) / 1e9
            report.results.append(result)
            del ours, front_end, contenders, references
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
    header = ["workload", "optimizer", "optimlab ms", "via optimlab.torch", *VARIANTS,
              "vs best ref", "GB/s", "roofline", "state MB ours/ref"]
    body = []
    for result in report.results:
        reference_state = max((value for name, value in result.state_bytes.items() if name != "optimlab"),
                              default=None)
        body.append([result.workload, result.case, _format_ms(result.median_ms["optimlab"]),
                     _format_ms(result.median_ms.get("optimlab.torch")),
                     *(_format_ms(result.median_ms.get(name)) for name in VARIANTS),
                     "—" if result.speedup is None else f"{result.speedup:.2f}× ({result.best_reference})",
                     f"{result.gbps:.1f}", f"{100 * result.roofline_fraction:.0f} %",
                     f"{result.state_bytes['optimlab'] / 1e6:.0f} / "
                     + ("—" if reference_state is None else f"{reference_state / 1e6:.0f}")])
    return header, body


def references(report: Report) -> str:
    """What the report's cases were raced against: each reference with its cases, in the table's order."""
    cases: dict[str, list[str]] = {}
    for result in report.results:
        names = cases.setdefault(result.reference, [])
        if result.case not in names:
            names.append(result.case)
    return "; ".join(f"{label}: {', '.join(names)}" for label, names in cases.items())


def markdown(report: Report) -> str:
    """The report as a Markdown table with the machine it ran on."""
    header, body = rows(report)
    info = report.machine
    lines = [f"**{SMOKE_NOTE}.**", ""] if report.smoke else []
    lines += [f"Machine: {info['cpu']}, {info['cores']} cores (torch {info['torch']} with {info['torch_threads']} "
              f"threads, numba {info['numba']} with {info['numba_threads']}); in-place roofline "
              f"(`a.add_(b)`, same run): {report.roofline_gbps:.1f} GB/s. References (vs best ref: the "
              f"fastest of their forloop, foreach and fused variants): {references(report)}.", "",
              "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines) + "\n"


__all__ = ["CASES", "CONFIGURATIONS", "QUICK_CASES", "SMOKE_NOTE", "VARIANTS", "Case", "OursRunner", "Report",
           "Result", "Workload", "bytes_per_step", "gpt2_small_shapes", "machine", "markdown", "reference_optimizer",
           "references", "registered_cases", "roofline", "rows", "run", "workloads"]
