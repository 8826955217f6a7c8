"""`optimlab bench`: optimlab's fused CPU kernels against their references (torch.optim's where torch has the
optimizer), interleaved in one process."""

from __future__ import annotations

import json

import typer

from ..rules import REGISTRY
from .app import app, error_console, fail, print_table

_WORKLOADS = ("gpt2", "many", "large")
_OPTIMIZER_HELP = (f"case to run (repeatable; default all): a registered optimizer ({', '.join(REGISTRY)}) or a "
                   "configuration of one (rmsprop-centered, adam-amsgrad, adam-bf16-state)")


@app.command(epilog="""Examples:\n\n
  optimlab bench --quick                          # a smoke run: tiny sizes, seconds; timings mean nothing\n\n
  optimlab bench -o adam -o adamw -w gpt2 --reps 9\n\n
  optimlab bench --markdown > perf.md             # the table README's Performance section shows\n\n
  optimlab bench --json > bench.json\n\n
  optimlab bench --device cuda                    # the triton backend on a GPU (optimlab.bench.cuda)""")
def bench(
    optimizer: list[str] = typer.Option(None, "--optimizer", "-o", help=_OPTIMIZER_HELP),
    workload: list[str] = typer.Option(None, "--workload", "-w",
                                       help="gpt2 (GPT-2 small's 148 tensors), many (10,000 × 1,000), "
                                            "large (one 16 M tensor); repeatable, default all"),
    reps: int = typer.Option(5, "--reps", help="timed repetitions per contender, taken round-robin"),
    warmup: int = typer.Option(2, "--warmup", help="untimed steps per contender first (compiles kernels)"),
    torch_variant: list[str] = typer.Option(None, "--torch-variant",
                                            help="the reference's forloop, foreach, fused (repeatable; "
                                                 "default all that exist)"),
    quick: bool = typer.Option(False, "--quick", help="a smoke run: sgd and adam (unless -o names others) on tiny "
                                                      "workloads, 3 repetitions; checks that it runs, the "
                                                      "timings mean nothing"),
    device: str = typer.Option("cpu", "--device", help="cpu (numba backend) or cuda (triton backend)"),
    as_json: bool = typer.Option(False, "--json", help="print the results as JSON"),
    as_markdown: bool = typer.Option(False, "--markdown", help="print a Markdown table"),
) -> None:
    """Time optimlab (numba backend) and its reference's forloop, foreach and fused steps side by side.

    Each registered optimizer is a case, raced against torch.optim's class, lion-pytorch's Lion, or for LAMB
    a foreach LAMB written from the paper (optimlab.bench.references).

    Reports the median time per step, the ratio to the fastest reference variant (above 1: optimlab is faster),
    the useful bytes moved per second and their fraction of this machine's in-place streaming bandwidth
    measured in the same run, and the optimizer state's size.
    """
    from .. import bench as benchmark

    cases = optimizer or list(benchmark.QUICK_CASES if quick else benchmark.CASES)
    unknown = [name for name in cases if name not in benchmark.CASES]
    if unknown:
        fail(f"unknown optimizer case {', '.join(unknown)} (expected some of {', '.join(benchmark.CASES)})")
    workloads = workload or list(_WORKLOADS)
    unknown = [name for name in workloads if name not in _WORKLOADS]
    if unknown:
        fail(f"unknown workload {', '.join(unknown)} (expected some of {', '.join(_WORKLOADS)})")
    variants = torch_variant or list(benchmark.VARIANTS)
    unknown = [name for name in variants if name not in benchmark.VARIANTS]
    if unknown:
        fail(f"unknown torch variant {', '.join(unknown)} (expected some of {', '.join(benchmark.VARIANTS)})")
    if device not in ("cpu", "cuda"):
        fail(f"unknown device {device} (expected cpu or cuda)")
    if reps < 1 or warmup < 0:
        fail(f"--reps must be >= 1 and --warmup >= 0 (got {reps}, {warmup})")
    if quick:
        reps = min(reps, 3)
        warmup = min(warmup, 2)  # two steps: the momentum rule's first step is a kernel of its own

    run = benchmark.run
    if device == "cuda":
        from ..bench import cuda

        try:
            cuda.require_cuda()
        except cuda.CudaUnavailable as error:
            fail(str(error))
        run = cuda.run
    # progress on stderr, so that --json and --markdown output stays clean
    with error_console.status("benchmarking…") as status:
        report = run(cases, workloads, repetitions=reps, warmup=warmup, quick=quick, variants=variants,
                     progress=lambda message: status.update(f"benchmarking {message}…"))
    if as_json:
        typer.echo(json.dumps(report.as_dict(), indent=2))
    elif as_markdown:
        typer.echo(benchmark.markdown(report), nl=False)
    else:
        _print_table(benchmark, report)
    if report.smoke:  # on stderr too, whatever the format: the numbers above must not be quoted
        error_console.print(f"note: {benchmark.SMOKE_NOTE}", highlight=False, soft_wrap=True)


def _print_table(benchmark, report) -> None:
    header, body = benchmark.rows(report)
    info = report.machine
    caption = ("median ms per step (optimlab: the backend call; via optimlab.torch: the drop-in class); "
               "vs best ref > 1: optimlab faster; GB/s of useful traffic; references: "
               f"{benchmark.references(report)}")
    title = (f"optimlab vs its references — {info['cpu']}, {info['cores']} cores, "
             f"roofline {report.roofline_gbps:.1f} GB/s")
    print_table(f"{title} — a smoke run: these timings mean nothing" if report.smoke else title, header, body,
                key_columns=2, justify=["left" if index < 2 else "right" for index in range(len(header))],
                caption=caption)
