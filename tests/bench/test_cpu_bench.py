"""`optimlab bench` (CPU): the smoke run works end to end and the numbers are self-consistent. No timings."""

import io
import json
import math
from importlib import import_module

import pytest
from rich.cells import cell_len
from rich.console import Console
from typer.testing import CliRunner

from optimlab.bench import (
    CASES,
    QUICK_CASES,
    SMOKE_NOTE,
    VARIANTS,
    Platform,
    bytes_per_step,
    gpt2_small_shapes,
    machine,
    markdown,
    run,
    workloads,
)
from optimlab.cli import app

cli_app = import_module("optimlab.cli.app")  # the module: `optimlab.cli.app` the attribute is the Typer app


def test_gpt2_small_is_148_tensors_and_124_4_million_values():
    shapes = gpt2_small_shapes()
    assert len(shapes) == 148
    assert sum(math.prod(shape) for shape in shapes) == 124_439_808


def test_workloads_are_the_issues_three():
    full = workloads()
    assert len(full["many"].shapes) == 10_000 and full["many"].numel == 10_000_000
    assert full["large"].numel == 16 * 2**20


def test_useful_bytes_count_param_grad_and_state_traffic():
    workload = workloads(quick=True)["large"]
    assert bytes_per_step(CASES["sgd"], workload) == workload.numel * 12            # p, g read; p written
    assert bytes_per_step(CASES["adam"], workload) == workload.numel * (12 + 16)    # + m, v read and written
    assert bytes_per_step(CASES["adam-bf16-state"], workload) == workload.numel * (12 + 8)
    # LAMB's norms are complete before any element is updated: param, grad and state are read twice
    assert bytes_per_step(CASES["lamb"], workload) == workload.numel * (12 + 16 + 8 + 8)


def test_quick_run_is_a_labelled_smoke_run_of_the_quick_cases_on_every_workload():
    result = CliRunner().invoke(app, ["bench", "--quick", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["smoke"] is True and report["note"] == SMOKE_NOTE and "mean nothing" in SMOKE_NOTE
    assert result.stderr.strip() == f"note: {SMOKE_NOTE}"
    assert report["machine"]["cores"] >= 1 and report["roofline_gbps"] > 0
    rows = {(row["workload"], row["case"]): row for row in report["results"]}
    assert set(rows) == {(workload, case) for workload in ("gpt2", "many", "large") for case in QUICK_CASES}
    for row in rows.values():
        assert {"optimlab", "optimlab.torch"} <= set(row["median_ms"]) <= {"optimlab", "optimlab.torch",
                                                                            *VARIANTS}
        assert all(value > 0 for value in row["median_ms"].values())
        best = min(row["median_ms"][name] for name in VARIANTS if name in row["median_ms"])
        assert row["speedup"] == pytest.approx(best / row["median_ms"]["optimlab"])


def test_named_cases_run_in_a_quick_run_too():
    result = CliRunner().invoke(app, ["bench", "--quick", "--json", "-o", "rmsprop", "-o", "adam-bf16-state",
                                      "-w", "many"])
    assert result.exit_code == 0, result.output
    rows = {row["case"]: row for row in json.loads(result.stdout)["results"]}
    assert "fused" not in rows["rmsprop"]["median_ms"]  # torch has no fused RMSprop on CPU
    bf16 = rows["adam-bf16-state"]["state_bytes"]
    assert bf16["optimlab"] * 2 == bf16["fused"]  # bf16 state: half of torch's fp32 state


def test_the_optimizers_beyond_torch_optim_run_against_their_references():
    result = CliRunner().invoke(app, ["bench", "--quick", "--json", "-o", "nadam", "-o", "lion", "-o", "lamb",
                                      "-o", "adamw_schedulefree", "-w", "many"])
    assert result.exit_code == 0, result.output
    rows = {row["case"]: row for row in json.loads(result.stdout)["results"]}
    assert rows["nadam"]["reference"] == "torch.optim.NAdam" and "fused" not in rows["nadam"]["median_ms"]
    assert rows["lion"]["reference"].startswith("lion-pytorch ")
    assert {"forloop", "foreach"} <= set(rows["lion"]["median_ms"])
    assert rows["lamb"]["reference"].startswith("optimlab.bench.references.ForeachLAMB")
    assert set(rows["lamb"]["median_ms"]) == {"optimlab", "optimlab.torch", "foreach"}
    assert rows["adamw_schedulefree"]["reference"].startswith("schedulefree ")  # (put in train mode to step)
    assert {"forloop", "foreach"} <= set(rows["adamw_schedulefree"]["median_ms"])
    for row in rows.values():
        assert row["speedup"] == pytest.approx(row["median_ms"][row["best_reference"]] / row["median_ms"]["optimlab"])
        assert row["state_bytes"]["optimlab"] == row["state_bytes"][row["best_reference"]]  # both fp32 state


def test_the_table_fits_80_columns_and_names_the_references(monkeypatch):
    buffer = io.StringIO()
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setattr(cli_app, "console", Console(file=buffer, force_terminal=True, color_system=None))
    result = CliRunner().invoke(app, ["bench", "--quick", "-o", "sgd", "-o", "lamb", "-w", "large"])
    assert result.exit_code == 0, result.output
    text = buffer.getvalue()
    assert max(cell_len(line) for line in text.splitlines()) <= 80
    assert text.count("│ large    │ lamb") >= 2  # split into parts, each repeating the workload and the case
    assert "ForeachLAMB" in text and "torch.optim.SGD" in text


def test_a_full_run_is_not_labelled_a_smoke_run():
    report = run(["sgd"], ["large"], repetitions=1, warmup=0, variants=["foreach"],
                 platform=Platform("cpu", "numba", machine(), roofline=lambda: 1.0))
    assert report.smoke is False and "note" not in report.as_dict() and SMOKE_NOTE not in markdown(report)


def test_markdown_output_is_a_table():
    result = CliRunner().invoke(app, ["bench", "--quick", "--markdown", "-o", "sgd", "-w", "large",
                                      "--torch-variant", "foreach"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"**{SMOKE_NOTE}.**"
    assert lines[2].startswith("Machine: ")
    assert lines[4].startswith("| workload | optimizer | optimlab ms")
    assert len([line for line in lines if line.startswith("| large | sgd |")]) == 1


@pytest.mark.parametrize("arguments, message", [
    (["-o", "sgd-nesterov"], "unknown optimizer case sgd-nesterov"),
    (["-w", "huge"], "unknown workload huge"),
    (["--torch-variant", "jit"], "unknown torch variant jit"),
    (["--reps", "0"], "--reps must be >= 1"),
    (["--device", "tpu"], "unknown device tpu"),
])
def test_mistakes_print_one_line_and_exit_2(arguments, message):
    result = CliRunner().invoke(app, ["bench", "--quick", *arguments])
    assert result.exit_code == 2
    assert message in result.output


def test_device_cuda_without_a_gpu_refuses_in_one_line():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: `--device cuda` would run")
    result = CliRunner().invoke(app, ["bench", "--quick", "--device", "cuda"])
    assert result.exit_code == 2
    assert "CUDA" in result.output or "triton" in result.output
