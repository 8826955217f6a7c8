"""The GPU benchmark's arithmetic and its refusal without CUDA (the timings themselves need a GPU)."""

import pytest
import torch

from optimlab.bench import cuda


def test_gpt2_small_has_its_124m_parameters_in_148_tensors():
    shapes = cuda.gpt2_small_shapes()
    assert len(shapes) == 148
    assert sum(torch.Size(shape).numel() for shape in shapes) == 124_439_808


@pytest.mark.parametrize("optimizer, streams", [("adam", 7), ("adamw", 7), ("sgd", 5), ("adagrad", 5),
                                                ("rmsprop", 5)])
def test_a_step_reads_param_grad_state_and_writes_param_state(optimizer, streams):
    assert cuda.bytes_per_step(optimizer, 1000, 4) == 1000 * 4 * streams
    assert cuda.bytes_per_step(optimizer, 1000, 2) == 1000 * 2 * streams


def test_each_round_runs_every_contender_once_starting_elsewhere():
    rounds = cuda.interleaved(["a", "b", "c"], 4)
    assert rounds == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]


def test_table_shows_optimlabs_speedup_over_each_torch_variant():
    rows = [cuda.Row("gpt2-small", "adam", cuda.COPY, 1.0, 3000.0, 1.0),
            cuda.Row("gpt2-small", "adam", cuda.OURS, 2.0, 1500.0, 0.5),
            cuda.Row("gpt2-small", "adam", "torch fused", 3.0, 1000.0, 1 / 3)]
    assert cuda.speedups(rows) == {("gpt2-small", "adam", "torch fused"): 1.5}
    text = cuda.table(rows)
    assert "1.50×" in text and "50%" in text and len(text.splitlines()) == 5


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_without_cuda_it_refuses_in_one_line():
    with pytest.raises(cuda.CudaUnavailable) as error:
        cuda.run(["10k-small"], ["adam"])
    assert "CUDA is not available" in str(error.value)
    assert "\n" not in str(error.value)
