"""The triton backend, run by Triton's CPU interpreter, against the rules evaluated directly (`Rule.step`).

Each test sets `TRITON_INTERPRET=1` for itself only (Triton reads it when a kernel is created or launched,
and the backend caches interpreted and compiled kernels apart), so other tests in the process are unaffected.
The last tests compile kernels for sm_90 without a GPU (`triton_gpu.ptx`): what the interpreter cannot check.
"""

import pytest
import torch
from tests.backends.kernel_cases import VARIANTS, assert_all_close, configure, reference, setup

from optimlab.backends import BACKENDS
from optimlab.rules import OPTIMIZERS

triton_gpu = pytest.importorskip("optimlab.backends.triton_gpu")
pytest.importorskip("triton")

#: An empty tensor, tails shorter than a block, several blocks, and an unaligned (offset) view.
SIZES = (3, 0, 1, 1030, 2500)


@pytest.fixture(autouse=True)
def interpret(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def _setup(name, sizes=SIZES, dtype=torch.float32, state_dtype=None, seed=0):
    return setup(name, sizes, dtype, state_dtype, seed)



@pytest.mark.parametrize("name", VARIANTS)
def test_matches_the_rule_over_three_steps(name):
    rule, hyper, params, states, generator = _setup(name)
    expected_params = [param.clone() for param in params]
    expected_states = [[tensor.clone() for tensor in state] for state in states]
    for step in (1, 2, 3):
        grads = [torch.randn(param.shape, generator=generator) for param in params]  # new addresses each step
        expected_params, expected_states = reference(rule, hyper, expected_params, grads, expected_states, step)
        triton_gpu.BACKEND.step(rule, hyper, rule.coefficients(step, **hyper), params, grads, states)
        assert_all_close(params, expected_params, rtol=1e-5, atol=1e-6)
        for state, expected in zip(states, expected_states, strict=True):
            assert_all_close(state, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["adamw", "rmsprop-centered-momentum-maximize", "momentum"])
def test_half_precision_params_computed_in_float32(name, dtype):
    rule, hyper, params, states, generator = _setup(name, sizes=(7, 1500), dtype=dtype)
    grads = [torch.randn(param.shape, generator=generator).to(dtype) for param in params]
    expected_params, expected_states = reference(rule, hyper, params, grads, states, 1)
    triton_gpu.BACKEND.step(rule, hyper, rule.coefficients(1, **hyper), params, grads, states)
    assert all(param.dtype == dtype for param in params)
    assert_all_close(params, expected_params)  # within one rounding of the float32 result
    for state, expected in zip(states, expected_states, strict=True):
        assert_all_close(state, expected)


@pytest.mark.parametrize("name", ["adam-amsgrad-decay", "rmsprop-centered-momentum-maximize", "nesterov-maximize",
                                  "adagrad-decay-eps-root"])
def test_float64_params_compute_in_float64(name):
    rule, hyper, params, states, generator = _setup(name, dtype=torch.float64)
    for step in (1, 2):
        grads = [torch.randn(param.shape, generator=generator, dtype=torch.float64) for param in params]
        expected_params, expected_states = reference(rule, hyper, params, grads, states, step)
        triton_gpu.BACKEND.step(rule, hyper, rule.coefficients(step, **hyper), params, grads, states,
                                grad_scale=1.0)
        assert_all_close(params, expected_params, rtol=1e-13, atol=1e-15)
        for state, expected in zip(states, expected_states, strict=True):
            assert_all_close(state, expected, rtol=1e-13, atol=1e-15)


def test_bfloat16_state_for_float32_params_rounds_to_nearest_even():
    rule, hyper, params, states, generator = _setup("adam", sizes=(5, 1100), state_dtype=torch.bfloat16)
    grads = [torch.randn(param.shape, generator=generator) for param in params]
    expected_params, expected_states = reference(rule, hyper, params, grads, states, 1)
    triton_gpu.BACKEND.step(rule, hyper, rule.coefficients(1, **hyper), params, grads, states)
    assert_all_close(params, expected_params, rtol=1e-5, atol=1e-6)
    for state, expected in zip(states, expected_states, strict=True):
        assert all(tensor.dtype == torch.bfloat16 for tensor in state)
        assert_all_close(state, expected, rtol=0, atol=0)  # the same float32 values, rounded the same way


@pytest.mark.parametrize("as_tensor", [False, True], ids=["float", "tensor"])
def test_grad_scale_divides_the_gradients_and_leaves_them_alone(as_tensor):
    rule, hyper, params, states, generator = _setup("adam")
    grads = [torch.randn(param.shape, generator=generator) * 1024 for param in params]
    originals = [grad.clone() for grad in grads]
    expected_params, _ = reference(rule, hyper, params, grads, states, 1, grad_scale=1024.0)
    scale = torch.tensor(1024.0) if as_tensor else 1024.0
    triton_gpu.BACKEND.step(rule, hyper, rule.coefficients(1, **hyper), params, grads, states, grad_scale=scale)
    assert_all_close(params, expected_params, rtol=1e-5, atol=1e-6)
    assert_all_close(grads, originals, rtol=0, atol=0)


@pytest.mark.parametrize("found", [0.0, 1.0])
def test_found_inf_skips_the_update_on_the_device(found):
    rule, hyper, params, states, generator = _setup("adam")
    grads = [torch.randn(param.shape, generator=generator) for param in params]
    before = [param.clone() for param in params]
    expected_params, _ = reference(rule, hyper, params, grads, states, 1)
    triton_gpu.BACKEND.step(rule, hyper, rule.coefficients(1, **hyper), params, grads, states,
                            found_inf=torch.tensor(found))
    assert_all_close(params, before if found else expected_params, rtol=1e-5, atol=1e-6)
    assert all(bool((tensor == 0).all()) for state in states for tensor in state) == bool(found)


def test_tensor_lr_and_new_lr_values_reuse_the_compiled_kernel():
    rule, hyper, params, states, generator = _setup("adamw", sizes=(9, 40))
    backend = triton_gpu.TritonBackend()
    compiled = None
    for step, lr in enumerate((0.1, 0.05, 0.02), start=1):
        tensor_hyper = {**hyper, "lr": torch.tensor(lr)}
        grads = [torch.randn(param.shape, generator=generator) for param in params]
        expected_params, expected_states = reference(rule, {**hyper, "lr": lr}, params, grads, states, step)
        backend.step(rule, tensor_hyper, rule.coefficients(step, **tensor_hyper), params, grads, states)
        assert_all_close(params, expected_params, rtol=1e-5, atol=1e-6)
        compiled = compiled or dict(backend._kernels)
        assert backend._kernels == compiled  # the lr value is loaded in the kernel, not compiled in


@pytest.mark.parametrize("name", ["momentum", "adam-amsgrad-decay", "adagrad-decay-eps-root"])
def test_a_tensor_step_count_is_read_on_the_device(name):
    """A 0-dim tensor step (PyTorch's `capturable`) makes every step-derived coefficient, `first_step` too, a tensor."""
    rule, hyper, params, states, generator = _setup(name)
    expected_params, expected_states = [param.clone() for param in params], [list(state) for state in states]
    for step in (1, 2):
        grads = [torch.randn(param.shape, generator=generator) for param in params]
        expected_params, expected_states = reference(rule, hyper, expected_params, grads, expected_states, step)
        coefficients = rule.coefficients(torch.tensor(float(step)), **hyper)
        triton_gpu.BACKEND.step(rule, hyper, coefficients, params, grads, states)
        assert_all_close(params, expected_params, rtol=1e-5, atol=1e-6)


def test_float64_params_with_a_float32_tensor_lr_do_its_scalar_arithmetic_in_float32():
    """As PyTorch: `1 - lr * weight_decay` with a float32 0-dim lr stays float32 before it meets the params."""
    rule, hyper, params, states, generator = _setup("adamw", sizes=(5, 70), dtype=torch.float64)
    tensor_hyper = {**hyper, "lr": torch.tensor(0.01), "weight_decay": 0.1}
    grads = [torch.randn(param.shape, generator=generator, dtype=torch.float64) for param in params]
    expected_params, _ = reference(rule, tensor_hyper, params, grads, states, 1)
    triton_gpu.BACKEND.step(rule, tensor_hyper, rule.coefficients(1, **tensor_hyper), params, grads, states)
    assert_all_close(params, expected_params, rtol=1e-13, atol=1e-15)


def test_large_tensors_take_the_large_block():
    rule, hyper, params, states, generator = _setup("adam", sizes=(triton_gpu.LARGE_TENSOR + 5,))
    grads = [torch.randn(param.shape, generator=generator) for param in params]
    expected_params, _ = reference(rule, hyper, params, grads, states, 1)
    triton_gpu.BACKEND.step(rule, hyper, rule.coefficients(1, **hyper), params, grads, states)
    assert_all_close(params, expected_params, rtol=1e-5, atol=1e-6)


def test_mixed_dtypes_in_one_group():
    rule, hyper, params, states, generator = _setup("sgd", sizes=(4, 6))
    params[1] = params[1].to(torch.bfloat16)
    grads = [torch.randn(param.shape, generator=generator).to(param.dtype) for param in params]
    expected_params, _ = reference(rule, hyper, params, grads, states, 1)
    triton_gpu.BACKEND.step(rule, hyper, rule.coefficients(1, **hyper), params, grads, states)
    assert_all_close(params, expected_params)


def test_a_gradient_of_the_wrong_size_is_refused_before_any_launch():
    rule, hyper, params, states, generator = _setup("sgd", sizes=(4, 6))
    backend = triton_gpu.TritonBackend()
    backend.step(rule, hyper, rule.coefficients(1, **hyper), params, [torch.ones(4), torch.ones(6)], states)
    before = [param.clone() for param in params]
    with pytest.raises(ValueError, match="size and dtype"):
        backend.step(rule, hyper, rule.coefficients(2, **hyper), params, [torch.ones(4), torch.ones(5)], states)
    assert_all_close(params, before, rtol=0, atol=0)


def test_kernels_run_the_rules_own_code():
    rule, hyper, params, states, generator = _setup("rmsprop-centered")
    backend = triton_gpu.TritonBackend()
    backend.step(rule, hyper, rule.coefficients(1, **hyper), params, [torch.ones_like(p) for p in params], states)
    (((held_rule, *_), update),) = backend._updates.items()
    assert held_rule is rule  # the key keeps its rule alive: it cannot be taken over by another rule
    assert getattr(update, "fn", update).__code__ is rule.update.__code__  # a JITFunction on a GPU


def test_registered_as_triton_ahead_of_eager():
    """`backend="auto"` tries it before the eager fallback (numba, CPU-only, may come first: it declines CUDA)."""
    from optimlab.backends import eager

    assert BACKENDS["triton"] is triton_gpu.BACKEND
    assert list(BACKENDS).index("triton") < list(BACKENDS).index(eager.BACKEND.name)


def test_supports_cpu_tensors_only_when_interpreting(monkeypatch):
    rule, hyper, params, _, _ = _setup("adam")
    assert triton_gpu.BACKEND.supports(rule, hyper, params, None) is None
    assert triton_gpu.BACKEND.supports(rule, hyper, params, torch.bfloat16) is None
    monkeypatch.delenv("TRITON_INTERPRET")
    assert "CUDA" in triton_gpu.BACKEND.supports(rule, hyper, params, None)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert "CUDA" in triton_gpu.BACKEND.supports(rule, hyper, params, None)


@pytest.mark.parametrize("param, reason", [
    (torch.zeros(3, dtype=torch.int32), "int32"),
    (torch.zeros(3, 4).t(), "contiguous"),
])
def test_supports_names_what_it_cannot_take(param, reason):
    rule, hyper, _, _, _ = _setup("adam")
    assert reason in triton_gpu.BACKEND.supports(rule, hyper, [param], None)


def test_without_triton_it_declines(monkeypatch):
    monkeypatch.setattr(triton_gpu, "_triton", lambda: None)
    rule, hyper, params, _, _ = _setup("adam")
    assert "pip install optimlab[gpu]" in triton_gpu.BACKEND.supports(rule, hyper, params, None)


def _nvidia_backend_present():
    import triton.backends

    return "nvidia" in triton.backends.backends


@pytest.mark.skipif(not _nvidia_backend_present(), reason="Triton's NVIDIA backend is not installed")
@pytest.mark.parametrize("name", ["sgd-decay-maximize", "momentum", "adagrad-decay-eps-root",
                                  "rmsprop-centered-momentum-maximize", "adamw-amsgrad-maximize"])
def test_compiles_for_a_gpu_with_vectorized_access(name):
    """What the interpreter cannot check: Triton's compiler accepts the rule, and full chunks use 128-bit loads."""
    rule, hyper = configure(name)
    code = triton_gpu.ptx(rule, hyper, state_dtype="bfloat16")
    assert "ld.global.v4.b32" in code
    assert "sqrt.approx" not in code


@pytest.mark.skipif(not _nvidia_backend_present(), reason="Triton's NVIDIA backend is not installed")
@pytest.mark.parametrize("name", ["momentum", "adam-amsgrad-decay"])
def test_tensor_coefficients_compile_for_a_gpu(name):
    """With a tensor step, `if first_step:` is a branch taken on the device: Triton must accept it."""
    rule, hyper = configure(name)
    assert "ld.global.v4.b32" in triton_gpu.ptx(rule, hyper, step=torch.tensor(2.0))


@pytest.mark.skipif(not _nvidia_backend_present(), reason="Triton's NVIDIA backend is not installed")
def test_a_rule_with_group_state_compiles_for_a_gpu():
    """`ptx` takes the first step's coefficients with the group state advanced once (Schedule-Free's c)."""
    rule = OPTIMIZERS["adamw_schedulefree"][0]
    assert "ld.global.v4.b32" in triton_gpu.ptx(rule, rule.defaults(weight_decay=0.1))


@pytest.mark.skipif(not _nvidia_backend_present(), reason="Triton's NVIDIA backend is not installed")
def test_tails_vectorize_when_every_size_is_a_multiple_of_four():
    """10,000 tensors of 1,000: every chunk is a tail, and still loads 128 bits at a time."""
    rule, _ = OPTIMIZERS["adam"]
    full_chunks_only = triton_gpu.ptx(rule, rule.defaults(), large=False).count("ld.global.v4.b32")
    assert triton_gpu.ptx(rule, rule.defaults(), large=False, numel_multiple=8).count("ld.global.v4.b32") \
        == 2 * full_chunks_only


@pytest.mark.skipif(not _nvidia_backend_present(), reason="Triton's NVIDIA backend is not installed")
def test_float64_compiles_to_exact_float64_arithmetic():
    rule, _ = OPTIMIZERS["adam"]
    code = triton_gpu.ptx(rule, rule.defaults(amsgrad=True), dtype="float64")
    assert "sqrt.rn.f64" in code and "div.rn.f64" in code and "ld.global.v2.b64" in code


@pytest.mark.skipif(not _nvidia_backend_present(), reason="Triton's NVIDIA backend is not installed")
def test_unaligned_tensors_compile_without_vector_hints():
    rule, _ = OPTIMIZERS["adam"]
    assert "ld.global.v4" not in triton_gpu.ptx(rule, rule.defaults(), aligned=False)


@pytest.mark.skipif(not _nvidia_backend_present(), reason="Triton's NVIDIA backend is not installed")
def test_a_rule_with_scalar_state_compiles_for_a_gpu():
    """NAdam: its coefficients come from the advanced `mu_product` (ptx starts it from the initial value)."""
    rule, _ = OPTIMIZERS["nadam"]
    assert "ld.global.v4.b32" in triton_gpu.ptx(rule, rule.defaults(weight_decay=0.1))


@pytest.mark.skipif(not _nvidia_backend_present(), reason="Triton's NVIDIA backend is not installed")
@pytest.mark.parametrize("stage", ["update", "reduce"])
def test_a_reducing_rule_compiles_for_a_gpu(stage):
    """LAMB's reduce kernel (row sums by `tl.reduce`) and its update kernel (per-tensor trust ratio loads)."""
    rule, _ = OPTIMIZERS["lamb"]
    assert "ld.global.v4.b32" in triton_gpu.ptx(rule, rule.defaults(weight_decay=0.1), stage=stage)


def test_state_that_no_longer_fits_its_param_is_refused_before_anything_changes():
    """A state tensor replaced by a smaller one after a step: the kernel wrote the param's size into it."""
    rule, hyper, params, states, generator = _setup("adam", sizes=(1000, 5))
    backend = triton_gpu.TritonBackend()
    grads = [torch.randn(param.shape, generator=generator) for param in params]
    backend.step(rule, hyper, rule.coefficients(1, **hyper), params, grads, states)
    states[0][1].data = torch.zeros(10)
    before = [tensor.clone() for tensor in params]
    with pytest.raises(ValueError, match=r"param 0 has 1000 elements, its gradient and state \[1000, 1000, 10\]"):
        backend.step(rule, hyper, rule.coefficients(2, **hyper), params, grads, states)
    assert all(torch.equal(param, saved) for param, saved in zip(params, before, strict=True))


@pytest.mark.skipif(not _nvidia_backend_present(), reason="Triton's NVIDIA backend is not installed")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("stage", ["update", "reduce", "axis_reduce"])
def test_row_and_column_reductions_compile_for_a_gpu(stage, dtype):
    """Adafactor's factored rule (stage (b)): the row and column kernel adds with atomics, the update and reduce
    kernels gather each element's row and column values, and full chunks still load 128 bits at a time."""
    from optimlab.rules.adafactor import FACTORED, RULE

    code = triton_gpu.ptx(FACTORED, RULE.defaults(weight_decay=0.1), dtype=dtype, stage=stage)
    assert ("atom.global" in code) == (stage == "axis_reduce")
    assert "ld.global.v4" in code or "ld.global.v2.b64" in code
