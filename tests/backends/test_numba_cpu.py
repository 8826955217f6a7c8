"""The numba backend against the rules evaluated directly (`Rule.step` on tensors, as the eager backend does).

Every compiled variant costs about 1.5 s the first time (then it loads from the disk cache), so the
float32 tests cover every variant and the other dtypes cover every rule with its default flags.
"""

import importlib
import io
import subprocess
import sys
import textwrap
import tokenize
import weakref

import numpy as np
import pytest
import torch
from tests.backends.kernel_cases import VARIANTS, assert_all_close, reference, setup

from optimlab.backends import BACKENDS, numba_cpu
from optimlab.kernels import numba_runtime, workers
from optimlab.rules import RULES, primitives

#: One configuration per rule, for the dtype tests (the first momentum step is a variant of its own too).
PER_RULE = ["sgd", "momentum", "adagrad", "rmsprop-centered-momentum-maximize", "adam"]

#: Empty, tiny, odd, an offset (unaligned) view each, and one spanning several chunks; in all more than
#: `PARALLEL_MIN` elements, so the pass is shared between threads.
SIZES = (3, 0, 1, 1030, 2 * numba_cpu.CHUNK + 7)
BACKEND = numba_cpu.BACKEND


def _setup(name, sizes=SIZES, dtype=torch.float32, state_dtype=None, seed=0):
    return setup(name, sizes, dtype, state_dtype, seed)


def _assert_close(actual, expected, **tolerance):
    assert_all_close(actual, expected, equal_nan=True, **tolerance)


def _run_and_compare(name, steps=(1, 2, 3), dtype=torch.float32, state_dtype=None, tolerance=None, **setup):
    rule, hyper, params, states, generator = _setup(name, dtype=dtype, state_dtype=state_dtype, **setup)
    compute = torch.float64 if torch.float64 in (dtype, state_dtype) else torch.float32
    # float32: the kernel rounds `1 - alpha` in float32, torch in float64 before the cast, so results differ by
    # ulps; near-cancelling elements (θ − η·b with |θ| ≈ 10) need an absolute tolerance of a few ulps at 10.
    tolerance = tolerance or {"rtol": 1e-5, "atol": 1e-5}
    for step in steps:
        grads = [torch.randn(param.shape, generator=generator).to(dtype) for param in params]  # new addresses
        expected_params, expected_states = reference(rule, hyper, params, grads, states, step, compute=compute)
        addresses = [tensor.data_ptr() for tensor in params + [t for state in states for t in state]]
        BACKEND.step(rule, hyper, rule.coefficients(step, **hyper), params, grads, states)
        assert [tensor.data_ptr() for tensor in params + [t for state in states for t in state]] == addresses
        _assert_close(params, expected_params, **tolerance)
        for state, expected in zip(states, expected_states, strict=True):
            _assert_close(state, expected, **tolerance)
        # continue from the reference so that each step is compared from the same start
        for tensor, value in zip(params, expected_params, strict=True):
            tensor.copy_(value)
        for state, expected in zip(states, expected_states, strict=True):
            for tensor, value in zip(state, expected, strict=True):
                tensor.copy_(value)


@pytest.mark.parametrize("name", VARIANTS)
def test_float32_matches_the_rule_over_three_steps(name):
    _run_and_compare(name)


@pytest.mark.parametrize("name", PER_RULE)
def test_float64_matches_the_rule(name):
    _run_and_compare(name, steps=(1, 2), dtype=torch.float64, tolerance={"rtol": 1e-12, "atol": 1e-14})


@pytest.mark.parametrize("name", PER_RULE)
def test_bfloat16_params_are_computed_in_float32_and_rounded_once(name):
    # The same float32 result rounded to bfloat16 — up to one bfloat16 ulp where the float32 values differ
    # by an ulp right at a rounding boundary.
    _run_and_compare(name, steps=(1, 2), dtype=torch.bfloat16, sizes=(7, 1500), tolerance={"rtol": 8e-3, "atol": 1e-5})


@pytest.mark.parametrize("name", PER_RULE[1:])
def test_bfloat16_state_for_float32_params(name):
    _run_and_compare(name, steps=(1, 2), state_dtype=torch.bfloat16, sizes=(5, 1100),
                     tolerance={"rtol": 8e-3, "atol": 1e-6})


def test_bfloat16_state_halves_the_state_memory_and_rounds_to_nearest_even():
    rule, hyper, params, states, generator = _setup("adam", sizes=(5, 1100), state_dtype=torch.bfloat16)
    grads = [torch.randn(param.shape, generator=generator) for param in params]
    expected_params, expected_states = reference(rule, hyper, params, grads, states, 1)
    BACKEND.step(rule, hyper, rule.coefficients(1, **hyper), params, grads, states)
    _assert_close(params, expected_params, rtol=1e-5, atol=1e-6)
    for state, expected in zip(states, expected_states, strict=True):
        assert all(tensor.element_size() == 2 for tensor in state)
        # the float32 values agree to an ulp (see `_run_and_compare`), so rounding them agrees bit for bit
        # except where that ulp straddles a bfloat16 rounding boundary: then by one bfloat16 ulp
        for got, want in zip(state, expected, strict=True):
            assert (got == want).float().mean() > 0.99
            torch.testing.assert_close(got, want, rtol=2**-7, atol=0)


def test_bfloat16_conversions_are_torchs_bit_for_bit():
    import numba

    widen = numba_runtime.driver_helper("bfloat16_to_float32")
    narrow = numba_runtime.driver_helper("float32_to_bfloat16")

    @numba.njit
    def round_trip(values, bits, widened):
        for i in range(values.shape[0]):
            bits[i] = narrow(values[i])
            widened[i] = widen(bits[i])

    special = [0.0, -0.0, 1.0, np.inf, -np.inf, np.nan, -np.nan, 1e-40, -1e-45, 3.4e38,
               1.00390625, 1.01171875, 1.0039063, 1.0039062]  # ties to even both ways, just above/below a tie
    rng = np.random.default_rng(0)
    values = np.concatenate([np.array(special, np.float32),
                             rng.integers(0, 2**32, 10000, dtype=np.uint64).astype(np.uint32).view(np.float32)])
    bits, widened = np.empty(len(values), np.uint16), np.empty(len(values), np.float32)
    round_trip(values, bits, widened)
    expected = torch.from_numpy(values).to(torch.bfloat16)
    nan = np.isnan(values)
    # NaN stays NaN (as the canonical 0x7FC0 of `c10::BFloat16`; torch's vectorized cast writes 0xFFFF)
    assert np.array_equal(bits[~nan], expected.view(torch.int16).numpy().view(np.uint16)[~nan])
    assert (bits[nan] == 0x7FC0).all()
    assert np.array_equal(widened, expected.float().numpy(), equal_nan=True)


@pytest.mark.parametrize("name", ["sgd", "momentum", "adagrad", "rmsprop-centered-momentum-maximize", "adam",
                                  "adam-amsgrad-decay"])
def test_nonfinite_gradients_behave_as_in_eager(name):
    rule, hyper, params, states, generator = _setup(name, sizes=(6, 2000))
    for step in (1, 2):
        grads = [torch.randn(param.shape, generator=generator) for param in params]
        grads[0][:3] = torch.tensor([float("nan"), float("inf"), -float("inf")])
        grads[1][::97] = float("inf")
        grads[1][5::101] = float("nan")
        expected_params, expected_states = reference(rule, hyper, params, grads, states, step)
        BACKEND.step(rule, hyper, rule.coefficients(step, **hyper), params, grads, states)
        for got, want in zip(params + sum(states, []), expected_params + sum(expected_states, []), strict=True):
            assert torch.equal(got.isnan(), want.isnan())
            assert torch.equal(got.isinf(), want.isinf())
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, equal_nan=True)


def test_zero_over_zero_is_nan_not_an_error():
    """With eps = 0 a zero gradient gives 0 / 0: NaN, as torch computes it (no ZeroDivisionError)."""
    rule, hyper, params, states, _ = _setup("adagrad", sizes=(4, 3000))
    hyper = {**hyper, "eps": 0.0}
    grads = [torch.zeros_like(param) for param in params]
    expected_params, _ = reference(rule, hyper, params, grads, states, 1)
    BACKEND.step(rule, hyper, rule.coefficients(1, **hyper), params, grads, states)
    assert all(bool(param.isnan().all()) for param in params if param.numel())
    _assert_close(params, expected_params)


@pytest.mark.parametrize("as_tensor", [False, True], ids=["float", "tensor"])
def test_grad_scale_divides_the_gradients_and_leaves_them_alone(as_tensor):
    rule, hyper, params, states, generator = _setup("adam")
    grads = [torch.randn(param.shape, generator=generator) * 1024 for param in params]
    originals = [grad.clone() for grad in grads]
    expected_params, _ = reference(rule, hyper, params, grads, states, 1, grad_scale=1024.0)
    scale = torch.tensor(1024.0) if as_tensor else 1024.0
    BACKEND.step(rule, hyper, rule.coefficients(1, **hyper), params, grads, states, grad_scale=scale)
    _assert_close(params, expected_params, rtol=1e-5, atol=1e-6)
    _assert_close(grads, originals, rtol=0, atol=0)


def test_tensor_coefficients_and_new_values_reuse_the_compiled_driver():
    rule, hyper, params, states, generator = _setup("adamw", sizes=(9, 40))
    compiled = None
    for step, lr in enumerate((0.1, 0.05, 0.02), start=1):
        tensor_hyper = {**hyper, "lr": torch.tensor(lr)}
        grads = [torch.randn(param.shape, generator=generator) for param in params]
        expected_params, _ = reference(rule, {**hyper, "lr": lr}, params, grads, states, step)
        BACKEND.step(rule, tensor_hyper, rule.coefficients(step, **tensor_hyper), params, grads, states)
        _assert_close(params, expected_params, rtol=1e-5, atol=1e-6)
        compiled = compiled or set(numba_cpu._DRIVERS)
        assert set(numba_cpu._DRIVERS) == compiled  # lr is a launch argument, not compiled in


def test_mixed_dtypes_in_one_group_and_a_non_contiguous_grad():
    rule, hyper, params, states, generator = _setup("sgd", sizes=(4, 6, 8))
    params[1] = params[1].to(torch.float64)
    grads = [torch.randn(param.shape, generator=generator).to(param.dtype) for param in params]
    grads[2] = torch.randn(8, 2, generator=generator)[:, 0]  # a strided gradient
    expected_params, _ = reference(rule, hyper, params, grads, states, 1, compute=torch.float64)
    BACKEND.step(rule, hyper, rule.coefficients(1, **hyper), params, grads, states)
    _assert_close(params, expected_params, rtol=1e-6, atol=1e-7)


def test_new_state_tensors_and_replaced_param_data_are_picked_up():
    """The cached pointer table follows `load_state_dict`-style replacement and `param.data = ...`."""
    rule, hyper, params, states, generator = _setup("adam", sizes=(10, 20))
    for step in (1, 2, 3):
        if step == 2:
            states = [[tensor.clone() for tensor in state] for state in states]
        if step == 3:
            params[0].data = params[0].data.clone()
        grads = [torch.randn(param.shape, generator=generator) for param in params]
        expected_params, expected_states = reference(rule, hyper, params, grads, states, step)
        BACKEND.step(rule, hyper, rule.coefficients(step, **hyper), params, grads, states)
        _assert_close(params, expected_params, rtol=1e-5, atol=1e-6)
        _assert_close(sum(states, []), sum(expected_states, []), rtol=1e-5, atol=1e-6)


def test_work_is_shared_in_pieces_of_equal_size():
    sizes = np.array([numba_cpu.CHUNK] * 30 + [100] * 50)
    pieces = workers.pieces(sizes, threads=2)
    assert pieces[0][0] == 0 and pieces[-1][1] == len(sizes)
    assert all(last == first for (_, last), (first, _) in zip(pieces[:-1], pieces[1:], strict=True))  # no gaps
    assert len(pieces) == 2 * workers.PIECES_PER_THREAD
    assert workers.pieces(np.array([100] * 5), threads=2) == [(0, 5)]  # small: one piece, no helpers


def test_cached_tables_follow_moved_state_and_keep_no_tensor_alive():
    """`share_memory_()` moves a state tensor's storage after the tables were built: the next step must write
    to the new place (it wrote through the freed pointer before), and the tables hold no tensor."""
    rule, hyper, params, states, generator = _setup("adam", sizes=(10, 20))
    backend = numba_cpu.NumbaCPU()
    for step in (1, 2, 3):
        if step == 2:
            for tensor in states[0]:
                tensor.share_memory_()
        if step == 3:
            states[1][1].data = states[1][1].clone()
        grads = [torch.randn(param.shape, generator=generator) for param in params]
        expected_params, expected_states = reference(rule, hyper, params, grads, states, step)
        backend.step(rule, hyper, rule.coefficients(step, **hyper), params, grads, states)
        _assert_close(params, expected_params, rtol=1e-5, atol=1e-6)
        _assert_close(sum(states, []), sum(expected_states, []), rtol=1e-5, atol=1e-6)
    watcher = weakref.ref(states[0][0])
    del states
    assert watcher() is None


def test_a_gradient_or_state_of_another_size_is_refused_before_anything_changes():
    rule, hyper, params, states, generator = _setup("adam", sizes=(10, 20))
    backend = numba_cpu.NumbaCPU()
    grads = [torch.randn(param.shape, generator=generator) for param in params]
    backend.step(rule, hyper, rule.coefficients(1, **hyper), params, grads, states)
    before = [tensor.clone() for tensor in params + sum(states, [])]
    with pytest.raises(ValueError, match="gradient of 5 torch.float32 elements"):
        backend.step(rule, hyper, rule.coefficients(2, **hyper), params, [grads[0], torch.ones(5)], states)
    with pytest.raises(ValueError, match="gradient of 10 torch.float64"):
        backend.step(rule, hyper, rule.coefficients(2, **hyper), params, [grads[0].double(), grads[1]], states)
    states[1][0].data = torch.zeros(5)  # a smaller state tensor, maybe where a freed one was
    with pytest.raises(ValueError, match="param 1 has 20 elements, its state 5"):
        backend.step(rule, hyper, rule.coefficients(2, **hyper), params, grads, states)
    assert all(torch.equal(a, b) for a, b in zip(params + sum(states, [])[:2], before, strict=False))


def test_the_kernel_is_the_rules_own_code_and_the_driver_holds_no_math():
    rule = RULES["rmsprop"]
    flags = (("use_weight_decay", False), ("centered", True), ("use_momentum", False), ("maximize", False))
    variant = numba_cpu.Variant("float32", "float32", flags, (True, True, False), False, ("python",) * 6)
    run = numba_cpu.driver(rule, variant)
    update = sys.modules[run.py_func.__module__].update
    assert update.py_func.__code__ is rule.update.__code__  # the rule's own code object, compiled
    source = numba_cpu.driver_source(rule, variant)
    assert sum(line.count(" update(") for line in source.splitlines()) == 1
    arithmetic = {"+", "-", "*", "/", "**", "lerp", *primitives.NATIVE}
    for addressing in ("+ 4 * start", "chunk_stop[chunk] - start"):  # the only arithmetic a driver does
        source = source.replace(addressing, "")
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    assert [(token.start[0], token.string) for token in tokens
            if token.type in (tokenize.OP, tokenize.NAME) and token.string in arithmetic] == []


def test_registered_as_numba_and_chosen_by_auto_for_cpu_tensors():
    rule, hyper, params, _, _ = _setup("adam")
    assert BACKENDS["numba"] is BACKEND
    chosen = next(backend for backend in BACKENDS.values() if backend.supports(rule, hyper, params, None) is None)
    assert chosen is BACKEND


@pytest.mark.parametrize("param, state_dtype, reason", [
    (torch.zeros(3, dtype=torch.float16), None, "float16"),
    (torch.zeros(3, dtype=torch.int64), None, "int64"),
    (torch.zeros(3, 4).t(), None, "contiguous"),
    (torch.zeros(3, 3).to_sparse(), None, "dense"),
    (torch.zeros(3, device="meta"), None, "CPU"),
    (torch.zeros(3), torch.float16, "state dtype"),
])
def test_supports_names_what_it_cannot_take(param, state_dtype, reason):
    rule, hyper, _, _, _ = _setup("adam")
    assert reason in BACKEND.supports(rule, hyper, [param], state_dtype)


def test_compiled_drivers_load_from_the_disk_cache_in_a_new_process():
    script = textwrap.dedent("""
        import torch
        from optimlab.backends import numba_cpu
        from optimlab.rules import RULES
        rule = RULES["sgd"]
        hyper = rule.defaults(lr=0.1)
        params, grads = [torch.ones(4)], [torch.ones(4)]
        for _ in range(2):  # the first process may compile; the second must hit the cache
            numba_cpu.BACKEND.step(rule, hyper, rule.coefficients(1, **hyper), params, grads, [[]])
        (run,) = list(numba_cpu._DRIVERS.values())
        print(sum(run.stats.cache_hits.values()), sum(run.stats.cache_misses.values()))
    """)
    outputs = [subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
               for _ in range(2)]
    hits, misses = map(int, outputs[-1].split())
    assert (hits, misses) == (1, 0)


@pytest.mark.parametrize("module", ["numba_runtime", "numba_scalars"])
def test_an_edit_to_the_kernels_runtime_renames_every_driver(monkeypatch, module):
    """The intrinsics every driver compiles in (`address`, the bfloat16 conversions, the scalar kinds) are part
    of its cached machine code: editing them alone must not let a process load kernels compiled before."""
    from pathlib import Path

    rule = RULES["sgd"]
    source = numba_cpu.driver_source(rule, numba_cpu.Variant(
        "float32", "float32", (("use_weight_decay", False), ("maximize", False)), (), False, ("python",) * 2))
    before = numba_cpu.driver_module_name(rule, source)
    edited = Path(importlib.import_module(f"optimlab.kernels.{module}").__file__)
    original_read_text = Path.read_text
    monkeypatch.setattr(Path, "read_text", lambda path, *arguments, **options: original_read_text(
        path, *arguments, **options) + ("\n# edited" if path == edited else ""))
    assert numba_cpu.driver_module_name(rule, source) != before
