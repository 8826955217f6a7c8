"""Front-end overhead of `optimlab.torch` on many small tensors: `Adam.step()` against the backend call alone.

The bench's "many" workload (10,000 tensors × 1,000 elements) is where the drop-in class's per-tensor Python
bookkeeping shows: the numba kernel itself takes a few milliseconds there, so anything the front end does
per tensor per step is visible. This script times both (medians of interleaved repetitions, gradients set
once as in `optimlab bench`) and, with `--profile`, prints the front end's top cProfile entries.

    .venv/bin/python benchmarks/frontend_overhead.py [--tensors 10000] [--numel 1000] [--reps 15] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import time

import torch

import optimlab.torch as optimlab_torch
from optimlab.bench import CASES, OursRunner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tensors", type=int, default=10_000)
    parser.add_argument("--numel", type=int, default=1_000)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--profile", action="store_true", help="print the front end's top cProfile entries")
    arguments = parser.parse_args()

    generator = torch.Generator().manual_seed(0)
    params = [torch.randn(arguments.numel, generator=generator).requires_grad_() for _ in range(arguments.tensors)]
    for param in params:
        param.grad = torch.randn(param.shape, generator=generator) * 1e-2
    backend_only = OursRunner(CASES["adam"], params)
    front_end = optimlab_torch.Adam(params, backend="numba")
    contenders = {"backend call": backend_only.step, "optimlab.torch.Adam.step()": front_end.step}
    times: dict[str, list[float]] = {name: [] for name in contenders}
    with torch.no_grad():
        for step in contenders.values():  # warm-up: compile or load the kernel, build the cached tables
            step()
            step()
        for _ in range(arguments.reps):  # interleaved, so load on a shared machine hits both alike
            for name, step in contenders.items():
                start = time.perf_counter()
                step()
                times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(values) * 1e3 for name, values in times.items()}
    print(f"{arguments.tensors} tensors x {arguments.numel} elements, Adam (numba), median of {arguments.reps}:")
    for name, milliseconds in medians.items():
        print(f"  {name:<28} {milliseconds:8.2f} ms")
    overhead = medians["optimlab.torch.Adam.step()"] - medians["backend call"]
    print(f"  {'front-end overhead':<28} {overhead:8.2f} ms ({overhead * 1e3 / arguments.tensors:.2f} µs per tensor)")
    if arguments.profile:
        profiler = cProfile.Profile()
        with torch.no_grad():
            profiler.enable()
            for _ in range(5):
                front_end.step()
            profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main()
