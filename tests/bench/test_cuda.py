"""The GPU benchmark's schedule and its refusal without CUDA (the timings themselves need a GPU)."""

import pytest
import torch

from optimlab import bench
from optimlab.bench import cuda


def test_each_repetition_runs_every_contender_once_starting_elsewhere():
    assert bench.rotations(["optimlab", "foreach", "fused"], 4) == [
        ["optimlab", "foreach", "fused"], ["foreach", "fused", "optimlab"],
        ["fused", "optimlab", "foreach"], ["optimlab", "foreach", "fused"]]


def test_torch_variants_are_probed_on_the_params_device():
    """Where torch has no implementation on that device (fused RMSprop), the contender is left out."""
    params = [torch.zeros(3, requires_grad=True)]
    assert bench.reference_optimizer(bench.CASES["rmsprop"], params, "fused") is None
    assert isinstance(bench.reference_optimizer(bench.CASES["adam"], params, "foreach"), torch.optim.Adam)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_without_cuda_it_refuses_in_one_line():
    with pytest.raises(cuda.CudaUnavailable) as error:
        cuda.run(["adam"], ["many"], quick=True)
    assert "CUDA is not available" in str(error.value)
    assert "\n" not in str(error.value)


class _FakeEvent:
    """Stands in for `torch.cuda.Event`: a burst of 2 ms."""

    def __init__(self, enable_timing):
        pass

    def record(self):
        pass

    def synchronize(self):
        pass

    def elapsed_time(self, end):
        return 2.0


def test_a_quick_run_fills_the_cpu_benchmarks_report(monkeypatch):
    """The whole harness, on CPU tensors through Triton's interpreter, with CUDA's clock stubbed."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(cuda, "DEVICE", "cpu")
    monkeypatch.setattr(cuda, "COPY_BYTES", 1 << 20)
    monkeypatch.setattr(cuda, "require_cuda", lambda: None)
    monkeypatch.setattr(torch.cuda, "Event", _FakeEvent)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda: "stub GPU")
    report = cuda.run(["adam", "rmsprop"], ["many"], repetitions=1, warmup=1, quick=True, burst=1)
    assert report.machine["gpu"] == "stub GPU"
    assert report.roofline_gbps == pytest.approx(2 * (1 << 20) / (2e-3 / 5) / 1e9)  # a burst is 5 copies
    adam, rmsprop = report.results
    assert set(adam.median_ms) == {"optimlab", "optimlab.torch", "forloop", "foreach", "fused"}
    assert "fused" not in rmsprop.median_ms
    assert adam.speedup == pytest.approx(1.0) and 0 < adam.roofline_fraction
