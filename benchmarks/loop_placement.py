"""Where the SGD kernel's loop lands in memory, not what it does: the 4-6 % of SGD on gpt2 in `bench_before_after`.

`bench_before_after.py` finds every row of the table at or below 1.01 of e45cbf6 but one: plain SGD on the
gpt2 workload, 1.04-1.06. This script shows where that comes from. It compiles, in one process, the Numba
driver both versions generate for that case (SGD, float32, no weight decay, no grad scale) from their own
`driver_source`, and copies of this checkout's driver with 1..`--pads` inert per-chunk branches added
before the element loop (`if grad_scale == -1.0: ...`, never taken: grad_scale is 1.0), which change where
the compiler places the hot loop and nothing it executes. Every contender runs the same chunk table over
the same DRAM-resident params and gradients (default: the gpt2 workload's 124 M elements, far beyond the
caches), on one thread, interleaved (`optimlab.bench.rotations`), beside torch's `_foreach_add_` (the same
update) and the machine's streaming roofline (`optimlab.bench.roofline`), both measured in the same run.
The control is a second compile of this checkout's driver, a function of its own at another address: what it
shares with the first is its layout, nothing else.

It prints, per contender, the median ms per pass, the median per-repetition ratio to this checkout's driver
(`after`), the hot loop's offset in the compiled function and its length (with objdump), and whether its
instructions equal `after`'s but for register numbers. On the Intel Xeon this was written on (2026-12-03),
the hot loops of `before`, `after` and every pad are the same instructions; `after` and e45cbf6's differ
only in where LLVM placed the loop (e45cbf6's rule had a runtime `weight_decay != 0` test, which LLVM
unswitched, where this checkout's has the derived flag `use_weight_decay`); `after` and its second compile
are 3-5 % slower than `before` and than every padded copy: an effect of the layout on this CPU, not of work
the new kernel does.

    .venv/bin/python benchmarks/loop_placement.py [--before e45cbf6] [--pads 4] [--reps 15] [--numel N]
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from optimlab import bench
from optimlab.backends import numba_cpu
from optimlab.kernels.plan import ChunkTable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plan_checks import import_before  # noqa: E402  (a script beside this one)

#: Where the inert branches go: the line that opens the element loop of the generated driver.
ELEMENT_LOOP = "        for i in range(size):\n"


def compiled(source: str, name: str) -> Any:
    """The `step` of a generated driver module, compiled from `source` here (not from any disk cache)."""
    namespace: dict[str, Any] = {"__name__": "loop_placement_" + re.sub(r"\W", "_", name)}
    exec(compile(source.replace("cache=True, ", ""), f"<loop_placement {name}>", "exec"), namespace)  # noqa: S102
    return namespace["step"]


def padded(source: str, count: int) -> str:
    """`source` with `count` per-chunk branches before the element loop that never run (grad_scale is 1.0)."""
    if ELEMENT_LOOP not in source:
        raise ValueError("the generated driver has no element loop where this script expects it")
    branches = "".join(f"        if grad_scale == {-1.0 - j!r}:\n"
                       f"            _ol_e_param[0] = _ol_e_param[0] + np.float32({j + 1})\n" for j in range(count))
    return source.replace(ELEMENT_LOOP, branches + ELEMENT_LOOP, 1)


def sgd_sources(before_commit: str, directory: Path) -> dict[str, str]:
    """The two versions' generated driver for SGD (float32, lr only: no weight decay, no grad scale)."""
    after_rule, _ = bench.CASES["sgd"].rule()
    after_variant = numba_cpu.Variant("float32", "float32", (("use_weight_decay", False), ("maximize", False)),
                                      (), False, ("python", "python"))
    import_before(before_commit, directory)
    old_numba = importlib.import_module("optimlab_before.backends.numba_cpu")
    old_rule = importlib.import_module("optimlab_before.rules").lookup("sgd")[0]
    old_variant = old_numba.Variant("float32", "float32", (("maximize", False),), (), False, ("python", "python"))
    old_numba.specialize(old_rule, "float32")  # the compiled rule each generated module imports
    numba_cpu.specialize(after_rule, "float32")
    return {"before": old_numba.driver_source(old_rule, old_variant),
            "after": numba_cpu.driver_source(after_rule, after_variant)}


def _without_registers(instruction: str) -> str:
    """An instruction with register numbers (not the vector registers' widths), zero displacements and jump
    targets blanked out."""
    instruction = re.sub(r"%([xyz]mm)\d+", r"%\1", instruction)
    instruction = re.sub(r"%(?![xyz]mm\b)[a-z][a-z0-9]*", "%r", instruction).replace("0x0(", "(")
    return re.sub(r"^(j[a-z]+\s+)0x[0-9a-f]+$", r"\1L", instruction)


def hot_loop(step: Any) -> tuple[int, int, list[str]] | None:
    """Offset and length in bytes of the compiled function's vector loop, and its instructions
    (`_without_registers`); None without objdump."""
    objdump = shutil.which("objdump")
    if objdump is None:
        return None
    compiled_function = step.overloads[step.signatures[0]]
    address = compiled_function.library.get_pointer_to_function(compiled_function.fndesc.llvm_func_name)
    with tempfile.NamedTemporaryFile(suffix=".bin") as file:
        file.write(ctypes.string_at(address, 4096))
        file.flush()
        listing = subprocess.run([objdump, "-D", "-b", "binary", "-mi386:x86-64", file.name],
                                 capture_output=True, text=True, check=True).stdout
    lines = [line.split("\t") for line in listing.splitlines() if re.match(r"\s+[0-9a-f]+:\t", line)]
    instructions = [(int(parts[0].strip().rstrip(":"), 16), parts[-1].strip()) for parts in lines if len(parts) == 3]
    for position, (offset, text) in enumerate(instructions):
        if text.startswith("vmovups %ymm"):  # the first wide store: inside the hot loop
            for index, (end_offset, end_text) in enumerate(instructions[position:position + 16], position):
                match = re.match(r"jne\s+0x([0-9a-f]+)", end_text)
                if match and int(match.group(1), 16) < offset:
                    start = int(match.group(1), 16)
                    body = [_without_registers(text) for at, text in instructions if start <= at <= end_offset]
                    return start, instructions[index + 1][0] - start, body
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="e45cbf6", help="the commit to compare against (default e45cbf6)")
    parser.add_argument("--pads", type=int, default=4, help="padded copies of this checkout's driver (default 4)")
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--numel", type=int, default=None,
                        help="one tensor of this many elements instead of the gpt2 workload's 148 tensors")
    arguments = parser.parse_args()
    torch.set_num_threads(1)

    shapes = ((arguments.numel,),) if arguments.numel else bench.workloads()["gpt2"].shapes
    generator = torch.Generator().manual_seed(0)
    params = [torch.randn(shape, generator=generator).flatten() for shape in shapes]
    grads = [torch.randn(param.shape, generator=generator) * 1e-2 for param in params]
    table = ChunkTable.build(np.array([param.numel() for param in params]), numba_cpu.CHUNK)
    call = (0, len(table.chunk_tensor), np.array([param.data_ptr() for param in params], np.int64),
            np.array([grad.data_ptr() for grad in grads], np.int64), np.zeros((0, len(params)), np.int64),
            table.sizes, table.chunk_tensor, table.chunk_start, table.chunk_stop, 1.0, 1e-3, 0.0)

    with tempfile.TemporaryDirectory() as directory:
        sources = sgd_sources(arguments.before, Path(directory))
        # the control: the same source compiled again, a function of its own at another address
        sources["after, compiled again"] = sources["after"]
        sources.update({f"after+{count}": padded(sources["after"], count) for count in range(1, arguments.pads + 1)})
        steps = {name: compiled(source, name) for name, source in sources.items()}
        for step in steps.values():
            step(*call)  # compile
        contenders = {name: (lambda step=step: step(*call)) for name, step in steps.items()}
        contenders["torch._foreach_add_"] = lambda: torch._foreach_add_(params, grads, alpha=-1e-3)
        times: dict[str, list[float]] = {name: [] for name in contenders}
        for order in bench.rotations(list(contenders), arguments.reps):
            for name in order:
                times[name].append(bench.wall_seconds(contenders[name]) * 1e3)
        roofline = bench.roofline(1 << 27)
        numel = sum(param.numel() for param in params)
        info = bench.machine()
        print(f"SGD pass over {len(params)} tensors, {numel / 1e6:.1f} M float32 elements, one thread, "
              f"{arguments.reps} interleaved repetitions; {info['cpu']}; before: {arguments.before}")
        print(f"streaming roofline (a.add_(b), same run): {roofline:.1f} GB/s; a pass moves 12 bytes per element")
        print()
        print("| contender | ms | / after | GB/s | hot loop at | loop bytes | same instructions as after |")
        print("|---|---|---|---|---|---|---|")
        loops = {name: hot_loop(step) for name, step in steps.items()}
        for name in contenders:
            ms = statistics.median(times[name])
            ratio = statistics.median(a / b for a, b in zip(times[name], times["after"], strict=True))
            loop = loops.get(name)
            where = (f"{loop[0]:#x}", str(loop[1]), "yes" if loop[2] == loops["after"][2] else "no") \
                if loop and loops["after"] else ("", "", "")
            print(f"| {name} | {ms:.1f} | {ratio:.3f} | {12 * numel / ms / 1e6:.1f} | " + " | ".join(where) + " |")


if __name__ == "__main__":
    main()
