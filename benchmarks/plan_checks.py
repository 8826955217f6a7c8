"""The per-step checks' cost on many small tensors: this checkout's `Adam.step()` against an older commit's.

Every step, the PyTorch front end checks what its backend writes through (data pointers, sizes, dtypes,
layouts of params, gradients and state) before anything changes (see docs/reliability.md). This script
measures what that costs where it costs most, 10,000 tensors × 1,000 elements (Adam, numba backend,
gradients set once as in `optimlab bench`): it extracts `src/optimlab` at `--before` (by default e45cbf6,
the last commit without the checks) from git into a temporary package, imports it beside this checkout's
`optimlab`, and times both optimizers' steps interleaved in one process, so that load on a shared machine
hits both alike. It prints, for wall-clock time and for the calling thread's CPU time (which scheduling
delays on a busy machine do not inflate; with `--threads 1` it is all of a step's work), the medians and the
median of the per-repetition ratios (after / before, each pair measured back to back). `--before HEAD` times
this checkout against itself: the spread that is noise.

    .venv/bin/python benchmarks/plan_checks.py [--before e45cbf6] [--tensors 10000] [--numel 1000] [--reps 31]
                                               [--threads N]
"""

from __future__ import annotations

import argparse
import importlib
import io
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

import optimlab.torch as optimlab_torch

REPOSITORY = Path(__file__).resolve().parent.parent


def import_before(commit: str, directory: Path) -> object:
    """`optimlab.torch` as it was at `commit`, imported as the package `optimlab_before`.

    The old tree's absolute `optimlab.` imports (the generated kernels' source names its module) are renamed,
    so the two versions share nothing but third-party modules.
    """
    archive = subprocess.run(["git", "-C", str(REPOSITORY), "archive", commit, "src/optimlab"],
                             check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(directory, filter="data")
    package = directory / "optimlab_before"
    (directory / "src" / "optimlab").rename(package)
    for path in package.rglob("*.py"):
        source = path.read_text()
        path.write_text(source.replace("optimlab.", "optimlab_before.").replace("import optimlab\n",
                                                                                "import optimlab_before\n"))
    sys.path.insert(0, str(directory))
    return importlib.import_module("optimlab_before.torch")


def make_params(tensors: int, numel: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    params = [torch.randn(numel, generator=generator).requires_grad_() for _ in range(tensors)]
    for param in params:
        param.grad = torch.randn(param.shape, generator=generator) * 1e-2
    return params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="e45cbf6", help="the commit to compare against (default e45cbf6)")
    parser.add_argument("--tensors", type=int, default=10_000)
    parser.add_argument("--numel", type=int, default=1_000)
    parser.add_argument("--reps", type=int, default=31)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    arguments = parser.parse_args()
    if arguments.threads:
        torch.set_num_threads(arguments.threads)

    with tempfile.TemporaryDirectory() as directory:
        before = import_before(arguments.before, Path(directory))
        contenders = {f"before ({arguments.before})": before.Adam(make_params(arguments.tensors, arguments.numel),
                                                                  backend="numba"),
                      "after (this checkout)": optimlab_torch.Adam(make_params(arguments.tensors, arguments.numel),
                                                                   backend="numba")}
        clocks = {"wall": time.perf_counter, "CPU": time.thread_time}
        times: dict[tuple[str, str], list[float]] = {(clock, name): [] for clock in clocks for name in contenders}
        with torch.no_grad():
            for optimizer in contenders.values():  # warm-up: compile or load the kernels, build the plans
                optimizer.step()
                optimizer.step()
            order = list(contenders.items())
            for _ in range(arguments.reps):
                order.reverse()  # each goes first half the time: neither always runs right after the other
                for name, optimizer in order:
                    started = {clock: read() for clock, read in clocks.items()}
                    optimizer.step()
                    for clock, read in clocks.items():
                        times[clock, name].append(read() - started[clock])
    print(f"{arguments.tensors} tensors x {arguments.numel} elements, Adam (numba, {torch.get_num_threads()} "
          f"threads), Adam.step(), {arguments.reps} interleaved repetitions:")
    before_name, after_name = contenders
    for clock in clocks:
        before_ms, after_ms = (statistics.median(times[clock, name]) * 1e3 for name in contenders)
        ratios = [after / before for before, after in zip(times[clock, before_name], times[clock, after_name],
                                                            strict=True)]
        print(f"  {clock:>4}: {before_name} {before_ms:7.2f} ms, {after_name} {after_ms:7.2f} ms (medians); "
              f"ratio of medians {after_ms / before_ms:.3f}, median ratio {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
