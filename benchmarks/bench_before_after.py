"""`optimlab bench`'s cases, this checkout against an older commit, interleaved in one process.

Issue 13's acceptance asks that the benchmark table does not get slower. Two runs of `optimlab bench` minutes
apart on a shared machine differ by more than any change to the code, so this script races both versions in
the same repetitions: it imports `src/optimlab` at `--before` (default e45cbf6, the commit before issue 13's
refactors) as the package `optimlab_before` (`plan_checks.import_before`), and for each case and workload
times, round-robin with the starting contender rotating (`optimlab.bench.interleaved`), on the same params
and gradients: the backend call of each version ("before", "after": `optimlab.bench.OursRunner`, what the
table's "optimlab" column times), the drop-in class of each version ("before.torch", "after.torch": the
"via optimlab.torch" column), and torch.optim's variants. It prints a Markdown table of the medians, the
after/before ratios (below 1: this checkout is faster) and each version's ratio to the fastest torch
variant, as the table's "vs best ref"; every ratio is the median over repetitions of the ratio of two
timings taken in the same repetition.

    .venv/bin/python benchmarks/bench_before_after.py [--before e45cbf6] [-o adam ...] [-w gpt2 ...] [--reps 9]
                                                      [--quick]
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from optimlab import bench

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plan_checks import import_before  # noqa: E402  (a script beside this one)

#: The cases compared, this checkout's name -> the older commit's: every case of e45cbf6's table (its
#: `sgd-momentum` is this checkout's `momentum`); Lion, NAdam and LAMB came after it.
CASES = {"sgd": "sgd", "momentum": "sgd-momentum", "nesterov": "nesterov", "adagrad": "adagrad",
         "rmsprop": "rmsprop", "rmsprop-centered": "rmsprop-centered", "adam": "adam", "adam-amsgrad": "adam-amsgrad",
         "adamw": "adamw", "adam-bf16-state": "adam-bf16-state"}


def compare(before: object, case_name: str, params: list[torch.Tensor], repetitions: int,
            warmup: int) -> dict[str, list[float]]:
    """Ms per step of both versions and of torch's variants, each repetition every contender once, in turn."""
    case, old_case = bench.CASES[case_name], before.CASES[CASES[case_name]]
    contenders = {"before": before.OursRunner(old_case, params).step,
                  "after": bench.OursRunner(case, params).step,
                  "before.torch": before.front_end_optimizer(old_case, params, "numba").step,
                  "after.torch": bench.front_end_optimizer(case, params, "numba").step}
    for variant in bench.VARIANTS:
        optimizer = bench.reference_optimizer(case, params, variant)
        if optimizer is not None:
            contenders[variant] = optimizer.step
    times: dict[str, list[float]] = {name: [] for name in contenders}
    with torch.no_grad():
        for _ in range(warmup):
            for run in contenders.values():
                run()
        for order in bench.rotations(list(contenders), repetitions):
            for name in order:
                times[name].append(bench.wall_seconds(contenders[name]) * 1e3)
    return times


def ratio(times: dict[str, list[float]], numerator: str, denominator: str) -> float:
    """The median over repetitions of numerator / denominator, the two timed in the same repetition."""
    return statistics.median(a / b for a, b in zip(times[numerator], times[denominator], strict=True))


def _load() -> str:
    """The 1, 5 and 15 minute load averages: how busy the machine was (the ratios are meant to survive it)."""
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="e45cbf6", help="the commit to compare against (default e45cbf6)")
    parser.add_argument("-o", "--optimizer", action="append", choices=list(CASES), help="default: all ten")
    parser.add_argument("-w", "--workload", action="append", choices=["gpt2", "many", "large"],
                        help="default: all three")
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="the tiny workloads of `optimlab bench --quick`")
    arguments = parser.parse_args()
    workloads = bench.workloads(arguments.quick)

    with tempfile.TemporaryDirectory() as directory:
        import_before(arguments.before, Path(directory))
        before = importlib.import_module("optimlab_before.bench")
        info = bench.machine()
        print(f"before: {arguments.before}; after: this checkout; {info['cpu']}, {info['cores']} cores, torch "
              f"{info['torch']} with {info['torch_threads']} threads, numba {info['numba']} with "
              f"{info['numba_threads']}; {arguments.reps} interleaved repetitions: medians in ms, "
              "medians of per-repetition ratios"
              + (" (a smoke run: tiny workloads, the timings mean nothing)" if arguments.quick else ""))
        print(f"load average at the start: {_load()}")
        print()
        print("| workload | optimizer | before | after | after / before | before.torch | after.torch "
              "| after.torch / before.torch | best torch | vs best torch, before → after |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for workload_name in arguments.workload or list(workloads):
            generator = torch.Generator().manual_seed(0)
            params = [torch.randn(shape, generator=generator).requires_grad_()
                      for shape in workloads[workload_name].shapes]
            for param in params:
                param.grad = torch.randn(param.shape, generator=generator) * 1e-2
            for case_name in arguments.optimizer or list(CASES):
                times = compare(before, case_name, params, arguments.reps, arguments.warmup)
                ms = {name: statistics.median(values) for name, values in times.items()}
                best = min((name for name in bench.VARIANTS if name in ms), key=ms.get)
                print(f"| {workload_name} | {case_name} | {ms['before']:.3g} | {ms['after']:.3g} "
                      f"| {ratio(times, 'after', 'before'):.2f} | {ms['before.torch']:.3g} | {ms['after.torch']:.3g} "
                      f"| {ratio(times, 'after.torch', 'before.torch'):.2f} | {ms[best]:.3g} ({best}) "
                      f"| {ratio(times, best, 'before'):.2f}× → {ratio(times, best, 'after'):.2f}× |", flush=True)
                gc.collect()
            del params
            gc.collect()
        print()
        print(f"load average at the end: {_load()}")


if __name__ == "__main__":
    main()
