"""Fused CPU kernels compiled from the rules with Numba: one multi-threaded pass per param group.

Each kernel is `rule.specialize(NATIVE, njit)` — the rule's own code object, compiled — called once per
element from a generated *driver* that only moves data: it reads each element of the param, gradient and
state, calls the rule, and stores the results, in place, through the tensors' data pointers. The driver
covers every tensor of a group in one call over a table of chunks, so ten thousand small tensors cost one
launch; big passes are shared between threads (see `_Workers`).

Why a generated driver: Numba's on-disk cache (`cache=True`) needs a real source file, and the driver must
name its element types (float32, float64, or bfloat16 stored as uint16 bits) at compile time. The file is
written once into the kernel cache directory, named by a hash of the rule's bytecode, so a changed rule
gets a fresh file and never a stale cached kernel. The driver's source holds no arithmetic besides the
optional `grad / grad_scale` and addressing; all of the math is `update`, the rule.

Precision follows PyTorch: float32 and bfloat16 params compute in float32 (bfloat16 loads are exact, stores
round to nearest even, NaN → 0x7FC0, as `c10::BFloat16` does), float64 in float64. The per-step
coefficients enter as `optimlab.kernels.numba_scalars.Scalar`, which behaves like a Python float in torch:
`1 - beta2` is computed in float64 and cast to float32 only where it meets a tensor element. Division by
zero gives ±inf/NaN as in torch (`error_model="numpy"`).

The pointer, size and chunk tables of a group (`_Layout`) are built once: `NumbaCPU.step` keeps the last few
and checks on every call, by C-level passes over the tensors, that the params and state are still where the
tables say, as large and of the same dtypes; the PyTorch front end gets its own (`NumbaCPU.prepare`) and
checks them itself (docs/reliability.md). Per step the Python work is then two passes over the gradients
(contiguity, data pointers).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import itertools
import operator
import os
import queue
import sys
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from ..rules import Rule
from . import register

#: Elements per chunk: a tensor is cut into chunks so that a big one spreads over every core.
CHUNK = 1 << 15
#: Pieces (runs of consecutive chunks, equal in elements) per thread: the unit threads take work in.
PIECES_PER_THREAD = 4
#: Below this many elements a pass runs on the calling thread alone: waking helpers would cost more.
PARALLEL_MIN = 1 << 16

_DTYPES = {torch.float32: "float32", torch.float64: "float64", torch.bfloat16: "bfloat16"}


def cache_directory() -> Path:
    """Where generated drivers (and, unless NUMBA_CACHE_DIR says otherwise, their compiled code) live."""
    configured = os.environ.get("OPTIMLAB_KERNEL_CACHE")
    base = Path(configured) if configured else Path.home() / ".cache" / "optimlab" / "kernels"
    try:
        base.mkdir(parents=True, exist_ok=True)
        if os.access(base, os.W_OK):
            return base
    except OSError:
        pass
    fallback = Path(tempfile.gettempdir()) / f"optimlab-kernels-{os.getuid()}"
    fallback.mkdir(parents=True, exist_ok=True)
    return fallback


# --- natives and bit-level helpers, compiled lazily so importing this module does not import Numba ---------

def _native_sqrt(x):
    return np.sqrt(x)


def _native_maximum(a, b):
    # torch.maximum propagates a NaN from either side
    return a if (a > b or a != a) else b


def _native_lerp(start, end, weight):
    # torch.lerp's two-sided formula: weight = 1 returns `end` exactly
    if abs(weight) < 0.5:
        return start + weight * (end - start)
    return end - (end - start) * (1 - weight)


@functools.cache
def _numba_support() -> dict[str, Any]:
    """The driver's pointer and bfloat16 helpers (LLVM intrinsics)."""
    from llvmlite import ir
    from numba import types as nb
    from numba.core import cgutils
    from numba.extending import intrinsic

    @intrinsic
    def address(typingctx, integer):
        """An integer data pointer (`Tensor.data_ptr()`) as a `void*` for `numba.carray`."""
        if not isinstance(integer, nb.Integer):
            return None

        def codegen(context, builder, signature, arguments):
            return builder.inttoptr(arguments[0], cgutils.voidptr_t)

        return nb.voidptr(integer), codegen

    @intrinsic
    def bfloat16_to_float32(typingctx, bits):
        """Exact widening: the bfloat16 bits are the high half of the float32."""
        if bits != nb.uint16:
            return None

        def codegen(context, builder, signature, arguments):
            wide = builder.zext(arguments[0], ir.IntType(32))
            return builder.bitcast(builder.shl(wide, ir.Constant(ir.IntType(32), 16)), ir.FloatType())

        return nb.float32(bits), codegen

    @intrinsic
    def float32_to_bfloat16(typingctx, value):
        """Round to nearest even, NaN → 0x7FC0: `c10::BFloat16`'s `round_to_nearest_even`."""
        if value != nb.float32:
            return None

        def codegen(context, builder, signature, arguments):
            i32 = ir.IntType(32)
            bits = builder.bitcast(arguments[0], i32)
            lowest_kept = builder.and_(builder.lshr(bits, ir.Constant(i32, 16)), ir.Constant(i32, 1))
            rounded = builder.lshr(builder.add(bits, builder.add(lowest_kept, ir.Constant(i32, 0x7FFF))),
                                   ir.Constant(i32, 16))
            is_nan = builder.fcmp_unordered("uno", arguments[0], arguments[0])
            result = builder.select(is_nan, ir.Constant(i32, 0x7FC0), rounded)
            return builder.trunc(result, ir.IntType(16))

        return nb.uint16(value), codegen

    return {"address": address, "bfloat16_to_float32": bfloat16_to_float32,
            "float32_to_bfloat16": float32_to_bfloat16}


#: (rule name, compute dtype) → the rule's update compiled by `Rule.specialize`, for the generated drivers.
_SPECIALIZED: dict[tuple[str, str], Any] = {}


def specialize(rule: Rule, compute: str) -> Any:
    """`rule.update` as a Numba function, for a driver computing in `compute` ("float32" or "float64").

    `Rule.specialize` rebuilds it from the rule's own code object; every function is inlined into the
    driver (`inline="always"`) so that, with the structural flags constant, LLVM vectorizes the loop.
    The element type comes from the driver's arguments; one specialization serves both precisions.
    """
    import numba

    def wrap(function: Any) -> Any:
        # error_model="numpy": x / 0 is ±inf or NaN as in torch, never a ZeroDivisionError (whose check
        # in the loop would also stop LLVM from vectorizing it)
        return numba.njit(inline="always", error_model="numpy")(function)

    natives = {"sqrt": _native_sqrt, "maximum": _native_maximum, "lerp": _native_lerp}
    kernel = rule.specialize({name: wrap(native) for name, native in natives.items()}, wrap)
    _SPECIALIZED[rule.name, compute] = kernel
    return kernel


def specialized_update(rule_name: str, compute: str) -> Any:
    """The compiled rule a generated driver calls (registered by `specialize` before the import)."""
    return _SPECIALIZED[rule_name, compute]


def driver_helper(name: str) -> Any:
    """One of the pointer/bfloat16 helpers, for the generated drivers."""
    return _numba_support()[name]


# --- driver source --------------------------------------------------------------------------------------

_STORAGE = {"float32": ("np.float32", 4), "float64": ("np.float64", 8), "bfloat16": ("np.uint16", 2)}


class Variant(NamedTuple):
    """What a compiled driver is specialized on: element types and the structural (boolean) settings.

    Flags are compile-time constants so that each variant is a branch-free loop LLVM can vectorize; the
    cost is one compile (≈ 1.5 s, then cached on disk) per combination actually used.
    """

    param_kind: str
    state_kind: str
    flags: tuple[tuple[str, bool], ...]
    active: tuple[bool, ...]
    has_grad_scale: bool
    #: per non-flag coefficient: "python" (a float) or "float32"/"float64" (a 0-dim tensor's dtype)
    scalar_kinds: tuple[str, ...]

    @property
    def compute(self) -> str:
        return "float64" if "float64" in (self.param_kind, self.state_kind) else "float32"


def _load(kind: str, compute: str, expression: str) -> str:
    if kind == "bfloat16":
        widened = f"bfloat16_to_float32({expression})"
        return widened if compute == "float32" else f"np.float64({widened})"
    return expression if kind == compute else f"np.{compute}({expression})"


def _store(kind: str, expression: str) -> str:
    if kind == "bfloat16":
        return f"float32_to_bfloat16(np.float32({expression}))"  # via float32, as torch's double → BFloat16
    return f"np.{kind}({expression})"


def driver_source(rule: Rule, variant: Variant) -> str:
    """The generated module for one variant: a `step` that loops, loads, calls `update`, stores. No math."""
    compute = variant.compute
    flags = dict(variant.flags)
    scalars = [name for name in rule.coefficient_names if name not in flags]
    active = [name for name, used in zip(rule.state_names, variant.active, strict=True) if used]
    locals_ = {"first", "last", "chunk", "tensor", "start", "size", "i", "param", "grad", "update", "np"}
    clashes = locals_ & set(rule.coefficient_names + rule.state_names)
    if clashes:
        raise ValueError(f"{rule.name}: names {sorted(clashes)} clash with the driver's locals")

    def view(name: str, pointer: str, kind: str) -> str:
        storage, itemsize = _STORAGE[kind]
        return f"        {name} = carray(address({pointer} + {itemsize} * start), size, {storage})"

    grad = _load(variant.param_kind, compute, "grad[i]")
    arguments = [_load(variant.param_kind, compute, "param[i]"),
                 f"{grad} / python_scalar(grad_scale)" if variant.has_grad_scale else grad]
    arguments += [_load(variant.state_kind, compute, f"{name}[i]") if name in active else f"np.{compute}(0.0)"
                  for name in rule.state_names]
    kinds = dict(zip(scalars, variant.scalar_kinds, strict=True))
    arguments += [repr(flags[name]) if name in flags
                  else f"{'python' if kinds[name] == 'python' else 'tensor'}_scalar({name})"
                  for name in rule.coefficient_names]
    results = ["new_param"] + [f"new_{name}" if name in active else "_" for name in rule.state_names]
    lines = [
        f'"""Generated by optimlab.backends.numba_cpu for rule {rule.name!r}: {variant.param_kind} params, '
        f"{variant.state_kind} state,",
        f"{', '.join(f'{name}={value}' for name, value in variant.flags) or 'no flags'}, "
        f"grad_scale {'on' if variant.has_grad_scale else 'off'}.",
        "",
        "Loops, loads and stores only: the math is `update`, the rule's own code compiled by `Rule.specialize`.",
        '"""',
        "import numpy as np",
        "from numba import carray, njit",
        "",
        "from optimlab.backends.numba_cpu import driver_helper, specialized_update",
        "from optimlab.kernels.numba_scalars import python_scalar, tensor_scalar",
        "",
        f"update = specialized_update({rule.name!r}, {compute!r})",
        "address = driver_helper('address')",
        "bfloat16_to_float32 = driver_helper('bfloat16_to_float32')",
        "float32_to_bfloat16 = driver_helper('float32_to_bfloat16')",
        "",
        "",
        "@njit(cache=True, nogil=True, error_model='numpy')",
        f"def step(first, last, param_ptrs, grad_ptrs, state_ptrs, sizes, chunk_tensor, chunk_start, chunk_stop, "
        f"grad_scale{''.join(', ' + name for name in scalars)}):",
        "    for chunk in range(first, last):",
        "        tensor = chunk_tensor[chunk]",
        "        start = chunk_start[chunk]",
        "        size = np.uint64(chunk_stop[chunk] - start)  # unsigned: no negative-index checks in the loop",
        view("param", "param_ptrs[tensor]", variant.param_kind),
        view("grad", "grad_ptrs[tensor]", variant.param_kind),
    ]
    lines += [view(name, f"state_ptrs[{rule.state_names.index(name)}, tensor]", variant.state_kind)
              for name in active]
    lines += ["        for i in range(size):",
              f"            {', '.join(results)}, = update({', '.join(arguments)})",
              f"            param[i] = {_store(variant.param_kind, 'new_param')}"]
    lines += [f"            {name}[i] = {_store(variant.state_kind, f'new_{name}')}" for name in active]
    return "\n".join(lines) + "\n"


def _code_fingerprint(code: Any) -> list[Any]:
    parts: list[Any] = [code.co_code, code.co_names, code.co_varnames]
    for constant in code.co_consts:
        parts.extend(_code_fingerprint(constant) if hasattr(constant, "co_code") else [repr(constant)])
    return parts


#: (id(rule), variant) → (rule, compiled driver); rules are unhashable (their hyperparameters are a dict)
_DRIVERS: dict[tuple[int, Variant], tuple[Rule, Any]] = {}


def driver(rule: Rule, variant: Variant) -> Any:
    """The driver for `variant`, compiled on first call or loaded from the on-disk cache.

    Its source file is named by a hash of the source, the rule's and helpers' bytecode, the natives and
    the Numba and Python versions, so an edited rule never runs a stale cached kernel.
    """
    key = (id(rule), variant)
    if key in _DRIVERS:
        return _DRIVERS[key][1]
    import numba

    from ..rules import primitives

    specialize(rule, variant.compute)  # (re)registered for this rule object before its driver imports it
    source = driver_source(rule, variant)
    from ..kernels import numba_scalars

    functions = [rule.update, *primitives.HELPERS.values(), _native_sqrt, _native_maximum, _native_lerp]
    fingerprint = [numba.__version__, sys.version, source, Path(numba_scalars.__file__).read_text()]
    fingerprint += [_code_fingerprint(function.__code__) for function in functions]
    digest = hashlib.sha256(repr(fingerprint).encode()).hexdigest()[:20]
    module_name = f"optimlab_kernel_{rule.name}_{digest}"
    path = cache_directory() / f"{module_name}.py"
    if not path.exists() or path.read_text() != source:
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(source)
        partial.replace(path)  # atomic: a concurrent process never imports half a file
    module = sys.modules.get(module_name)
    if module is None:
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # Numba's cache re-imports a cached function's module by name
        spec.loader.exec_module(module)
    _DRIVERS[key] = (rule, module.step)
    return module.step


# --- the per-group pointer table ------------------------------------------------------------------------

class _Layout:
    """Everything about a param group that does not change between steps: sizes, chunks, state pointers.

    Params are split by (param dtype, state dtype), one driver launch each; a group has one split normally.
    The tables hold the state tensors' data pointers and the params' sizes: a layout is valid only while the
    state tensors stay where they were (`share_memory_()` and `state.data = ...` move them) and the params,
    gradients and state keep their sizes and dtypes. `NumbaCPU.step` checks that on every call (`fits`);
    the PyTorch front end checks it itself and calls `step` on the layout `NumbaCPU.prepare` made. A layout
    holds no tensor: nothing of it outlives a freed tensor or is found again through a reused `id()`.
    """

    def __init__(self, rule: Rule, params: Sequence[torch.Tensor], states: Sequence[Sequence[torch.Tensor]],
                 active: tuple[str, ...]) -> None:
        if len(states) != len(params) or any(len(state) != len(active) for state in states):
            raise ValueError(f"numba: {rule.name} expects state tensors {active} per param")
        self.rule = rule
        self.active = active
        flat_states = list(itertools.chain.from_iterable(states))
        self.param_dtypes = tuple(param.dtype for param in params)
        self.sizes = np.array([param.numel() for param in params], dtype=np.int64)
        self.param_pointers = np.fromiter(map(_data_ptr, params), np.int64, len(params))
        self.state_pointers = np.fromiter(map(_data_ptr, flat_states), np.int64, len(flat_states))
        self.state_bytes = np.fromiter(map(_nbytes_of, flat_states), np.int64, len(flat_states))
        used = tuple(name in active for name in rule.state_names)
        by_kinds: dict[tuple[str, str], list[int]] = {}
        for index, (param, state) in enumerate(zip(params, states, strict=True)):
            for tensor in (param, *state):
                if tensor.device.type != "cpu" or tensor.layout != torch.strided or tensor.dtype not in _DTYPES \
                        or not tensor.is_contiguous():
                    raise ValueError(f"numba: cannot run a {param.dtype} param on {param.device} with state "
                                     f"{[(str(t.dtype), str(t.device)) for t in state]} (dense, contiguous CPU "
                                     "float32/float64/bfloat16 tensors only); use backend='eager'")
                if tensor.numel() != param.numel():
                    raise ValueError(f"numba: param {index} has {param.numel()} elements, its state "
                                     f"{tensor.numel()}")
            state_dtype = state[0].dtype if len(state) else param.dtype
            if any(tensor.dtype != state_dtype for tensor in state):
                raise ValueError(f"numba: param {index}'s state tensors have different dtypes")
            by_kinds.setdefault((_DTYPES[param.dtype], _DTYPES[state_dtype]), []).append(index)
        self._splits = []
        for (param_kind, state_kind), indices in by_kinds.items():
            sizes = self.sizes[indices]
            state_pointers = np.zeros((len(rule.state_names), len(indices)), dtype=np.int64)
            for column, i in enumerate(indices):
                for name, tensor in zip(active, states[i], strict=True):
                    state_pointers[rule.state_names.index(name), column] = tensor.data_ptr()
            counts = (sizes + CHUNK - 1) // CHUNK
            chunk_tensor = np.repeat(np.arange(len(indices), dtype=np.int64), counts)
            first_chunk = np.repeat(np.cumsum(counts) - counts, counts)
            chunk_start = (np.arange(len(chunk_tensor), dtype=np.int64) - first_chunk) * CHUNK
            chunk_stop = np.minimum(chunk_start + CHUNK, sizes[chunk_tensor])
            selection = None if len(indices) == len(params) else np.array(indices, dtype=np.int64)
            self._splits.append(_Split(param_kind, state_kind, used, selection,
                                       (state_pointers, sizes, chunk_tensor, chunk_start, chunk_stop),
                                       chunk_stop - chunk_start))
        self.threads = 0
        self.splits: list[tuple[_Split, list[tuple[int, int]]]] = []

    def fits(self, params: Sequence[torch.Tensor], states: Sequence[Sequence[torch.Tensor]]) -> bool:
        """Whether these params (at the tables' data pointers) and state are what the tables describe: as
        large, of the same dtypes, the state at the same addresses (C-level passes over the tensors)."""
        flat_states = list(itertools.chain.from_iterable(states))
        count = len(flat_states)
        return (count == len(self.state_pointers) and tuple(map(_dtype_of, params)) == self.param_dtypes
                and np.array_equal(np.fromiter(map(_numel, params), np.int64, len(params)), self.sizes)
                and np.array_equal(np.fromiter(map(_data_ptr, flat_states), np.int64, count), self.state_pointers)
                and np.array_equal(np.fromiter(map(_nbytes_of, flat_states), np.int64, count), self.state_bytes))

    def step(self, coefficients: Mapping[str, Any], grads: Sequence[torch.Tensor], grad_scale: Any = None) -> None:
        """One fused, in-place pass over the params and state the tables describe, with `grads` of the params'
        sizes and dtypes (the caller checked); their data pointers are read here, on every call."""
        if torch.cuda.is_initialized() and not all(map(_is_cpu, grads)):
            raise ValueError("numba: every gradient must be a CPU tensor")
        if not all(map(_is_contiguous, grads)):
            grads = [grad.contiguous() for grad in grads]
        grad_pointers = np.fromiter(map(_data_ptr, grads), np.int64, len(grads))
        if not np.all((grad_pointers != 0) | (self.sizes == 0)):
            raise ValueError("numba: a gradient has no data (a meta tensor?)")
        param_pointers = self.param_pointers
        threads = torch.get_num_threads()  # as many threads as torch's own CPU kernels use
        if threads != self.threads:
            self.splits = [(split, _pieces(split.chunk_sizes, threads)) for split in self._splits]
            self.threads = threads
        rule = self.rule
        flags = tuple((name, value) for name, value in coefficients.items() if isinstance(value, bool))
        scalars, kinds = _scalars(coefficients[name] for name in rule.coefficient_names)
        scale = 1.0 if grad_scale is None else float(grad_scale)
        for split, pieces in self.splits:
            variant = Variant(split.param_kind, split.state_kind, flags, split.used, grad_scale is not None, kinds)
            run = _DRIVERS.get((id(rule), variant))
            run = run[1] if run is not None else driver(rule, variant)
            selection = split.selection
            arguments = (param_pointers if selection is None else param_pointers[selection],
                         grad_pointers if selection is None else grad_pointers[selection],
                         *split.tables, scale, *scalars)
            if len(pieces) == 1:
                run(*pieces[0], *arguments)
            else:
                _WORKERS.run(pieces, run, arguments, threads - 1)


class _Split(NamedTuple):
    param_kind: str
    state_kind: str
    used: tuple[bool, ...]
    selection: np.ndarray | None
    tables: tuple[np.ndarray, ...]
    chunk_sizes: np.ndarray


def _pieces(chunk_sizes: np.ndarray, threads: int) -> list[tuple[int, int]]:
    """Cut the chunks into runs of about equal elements, `PIECES_PER_THREAD` per thread (one if small)."""
    total = int(chunk_sizes.sum())
    if threads == 1 or total < PARALLEL_MIN:
        return [(0, len(chunk_sizes))]
    ends = np.cumsum(chunk_sizes)
    targets = np.arange(1, threads * PIECES_PER_THREAD) * (total / (threads * PIECES_PER_THREAD))
    bounds = np.unique(np.concatenate([[0], np.searchsorted(ends, targets, side="right"), [len(chunk_sizes)]]))
    return [(int(first), int(last)) for first, last in zip(bounds[:-1], bounds[1:], strict=True) if last > first]


class _Workers:
    """Helper threads for a pass, in a work-sharing scheme where the calling thread works too.

    Numba's own `parallel=True` launches were measured at ~8 ms instead of 0.1 ms on 2 cores beside torch:
    Numba's OpenMP runtime and torch's (a second copy) each keep idle threads spinning for milliseconds, and
    a statically scheduled launch waits for its slowest thread. Here helpers block without spinning, every
    thread takes the next piece from one shared iterator, and the caller waits only for pieces already
    taken, so a helper the OS has not scheduled yet delays nothing: the caller does its share instead.
    """

    def __init__(self) -> None:
        self._inboxes: list[queue.SimpleQueue] = []

    def run(self, pieces: Sequence[tuple[int, int]], work: Any, arguments: tuple, helpers: int) -> None:
        """`work(first, last, *arguments)` for every piece, on this thread and up to `helpers` others."""
        while len(self._inboxes) < helpers:
            inbox: queue.SimpleQueue = queue.SimpleQueue()
            threading.Thread(target=self._serve, args=(inbox,), daemon=True, name="optimlab-numba").start()
            self._inboxes.append(inbox)
        shared, finished, done, errors = iter(pieces), itertools.count(1), threading.Event(), []

        def drain() -> None:
            for first, last in shared:  # a list iterator: `next` is atomic under the GIL
                try:
                    work(first, last, *arguments)
                except BaseException as error:  # noqa: B036 (re-raised on the calling thread)
                    errors.append(error)
                if next(finished) == len(pieces):
                    done.set()

        for inbox in self._inboxes[:helpers]:
            inbox.put(drain)
        drain()
        done.wait()
        if errors:
            raise errors[0]

    @staticmethod
    def _serve(inbox: queue.SimpleQueue) -> None:
        while True:
            inbox.get()()


_WORKERS = _Workers()


def _scalars(values: Any) -> tuple[list[Any], tuple[str, ...]]:
    """The non-flag coefficients as launch arguments, and their kinds (see `optimlab.kernels.numba_scalars`)."""
    arguments, kinds = [], []
    for value in values:
        if isinstance(value, bool):
            continue
        if isinstance(value, torch.Tensor) and value.dtype == torch.float32:
            arguments.append(np.float32(value.item()))
            kinds.append("float32")
        elif isinstance(value, torch.Tensor) and value.dtype == torch.float64:
            arguments.append(value.item())
            kinds.append("float64")
        else:
            arguments.append(float(value))
            kinds.append("python")
    return arguments, tuple(kinds)


_data_ptr = torch.Tensor.data_ptr
_is_contiguous = torch.Tensor.is_contiguous
_numel = torch.Tensor.numel
_dtype_of = operator.attrgetter("dtype")
_nbytes_of = operator.attrgetter("nbytes")
_is_cpu = operator.attrgetter("is_cpu")


class NumbaCPU:
    """The fused CPU backend (see the module docstring); registered as "numba", first for `auto`."""

    name = "numba"

    #: Layouts `step` keeps for callers of the plain contract, most recent last (one per param group).
    LAYOUTS_KEPT = 8

    def __init__(self) -> None:
        self._layouts: list[_Layout] = []

    def supports(self, rule: Rule, hyperparameters: Mapping[str, Any], params: Sequence[Any],
                 state_dtype: Any) -> str | None:
        """None if every param is a dense, contiguous CPU float32/float64/bfloat16 tensor.

        The PyTorch front end asks when it (re)builds a group's plan: on the first step, and when a param's
        dtype, shape, device or layout changed since (it checks those every step).
        """
        if state_dtype is not None and state_dtype not in _DTYPES:
            return f"numba: state dtype {state_dtype} not supported (float32, float64, bfloat16)"
        for param in params:
            if not isinstance(param, torch.Tensor):
                return f"numba: expected torch tensors, got {type(param).__name__}"
            if param.device.type != "cpu":
                return f"numba: runs on CPU tensors only, got a tensor on {param.device}"
            if param.layout != torch.strided:
                return f"numba: dense tensors only, got layout {param.layout}"
            if param.dtype not in _DTYPES:
                return f"numba: dtype {param.dtype} not supported (float32, float64, bfloat16)"
            if not param.is_contiguous():
                return "numba: contiguous tensors only"
        return None

    def prepare(self, rule: Rule, hyperparameters: Mapping[str, Any], params: Sequence[torch.Tensor],
                states: Sequence[Sequence[torch.Tensor]]) -> _Layout:
        """The tables for these params and state, whose `step(coefficients, grads, grad_scale)` runs them.

        They hold the params' and state tensors' data pointers and sizes: valid while every one of those
        tensors is where it was, as large and of the same dtype, and the gradients have the params' sizes and
        dtypes (what `_Layout.fits` checks), which the caller checks before each `step`.
        """
        return _Layout(rule, params, states, rule.active_state(hyperparameters))

    def step(self, rule: Rule, hyperparameters: Mapping[str, Any], coefficients: Mapping[str, Any],
             params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor],
             states: Sequence[Sequence[torch.Tensor]], grad_scale: Any = None) -> None:
        """One fused, in-place pass of `rule.update` over the whole group (one launch per dtype pair).

        Checks what it writes through on every call: the tables of the last few groups are reused while their
        state tensors are where they were, as large, and params and gradients have the tables' sizes and dtypes.
        """
        if not params:
            return
        active = rule.active_state(hyperparameters)
        if len(grads) != len(params):
            raise ValueError(f"numba: {len(params)} params and {len(grads)} gradients")
        count = len(params)
        param_pointers = np.fromiter(map(_data_ptr, params), np.int64, count)
        layout = next((layout for layout in reversed(self._layouts) if layout.rule is rule
                       and layout.active == active and np.array_equal(layout.param_pointers, param_pointers)), None)
        if layout is None or not layout.fits(params, states):
            layout = _Layout(rule, params, states, active)
            self._layouts = [*self._layouts[1 - self.LAYOUTS_KEPT:], layout]
        if not (tuple(map(_dtype_of, grads)) == layout.param_dtypes and all(map(_is_cpu, grads))
                and np.array_equal(np.fromiter(map(_numel, grads), np.int64, count), layout.sizes)):
            for param, grad in zip(params, grads, strict=True):
                if grad.numel() != param.numel() or grad.dtype != param.dtype or grad.device != param.device:
                    raise ValueError(f"numba: a gradient of {grad.numel()} {grad.dtype} elements on {grad.device} "
                                     f"for a param of {param.numel()} {param.dtype} on {param.device}")
        layout.step(coefficients, grads, grad_scale)


BACKEND = register(NumbaCPU(), first=True)

__all__ = ["BACKEND", "CHUNK", "PARALLEL_MIN", "PIECES_PER_THREAD", "NumbaCPU", "Variant", "cache_directory",
           "driver", "driver_source", "specialize"]
