"""Fused CPU kernels compiled from the rules with Numba: one multi-threaded pass per param group.

Each kernel is `rule.specialize(NATIVE, njit)` — the rule's own code object, compiled — called once per
element from a generated *driver* that only moves data: it reads each element of the param, gradient and
state, calls the rule, and stores the results, in place, through the tensors' data pointers. The driver
covers every tensor of a group in one call over a table of chunks, so ten thousand small tensors cost one
launch; big passes are shared between threads (see `_Workers`).

Why a generated driver: it must name its element types (float32, float64, or bfloat16 stored as uint16
bits) at compile time. Its module is named by a hash of its source, the rule's bytecode and the Numba and
Python versions, and compiled from the source in memory; only Numba's compiled code is kept on disk, in
the kernel cache (`optimlab.backends.kernel_cache`, which says when that directory is trusted), so a
changed rule never runs a stale kernel. The driver's source holds no arithmetic besides the optional
`grad / grad_scale` and addressing; all of the math is `update`, the rule.

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
import itertools
import linecache
import operator
import os
import queue
import sys
import threading
import types
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from ..rules import Rule
from ..rules.base import rebind
from . import register

#: Elements per chunk: a tensor is cut into chunks so that a big one spreads over every core.
CHUNK = 1 << 15
#: Pieces (runs of consecutive chunks, equal in elements) per thread: the unit threads take work in.
PIECES_PER_THREAD = 4
#: Below this many elements a pass runs on the calling thread alone: waking helpers would cost more.
PARALLEL_MIN = 1 << 16

_DTYPES = {torch.float32: "float32", torch.float64: "float64", torch.bfloat16: "bfloat16"}


# --- natives and bit-level helpers, compiled lazily so importing this module does not import Numba ---------

def _native_sqrt(x):
    return np.sqrt(x)


# `element_of` (optimlab.kernels.numba_scalars, bound in `specialize`) gives a coefficient the element's type
# where a native selects between the two: both branches of a Numba conditional must have one type.

def _native_maximum(a, b):
    # torch.maximum propagates a NaN from either side
    a, b = element_of(a, b), element_of(b, a)  # noqa: F821
    return a if (a > b or a != a) else b


def _native_minimum(a, b):
    # torch.minimum propagates a NaN from either side
    a, b = element_of(a, b), element_of(b, a)  # noqa: F821
    return a if (a < b or a != a) else b


def _native_where(condition, a, b):
    a, b = element_of(a, b), element_of(b, a)  # noqa: F821
    return a if condition else b


def _native_sign(x):
    # in x's own type (np.sign of a float32 is a float32); NaN gives 0 as torch.sign, not NumPy's NaN
    return np.sign(x) if x == x else np.float32(0.0)


def _native_abs(x):
    # the builtin: Numba's `abs` also takes the coefficients' `Scalar` type (np.abs does not)
    return abs(x)


#: What a rule's natives (`primitives.NATIVE`) mean in a Numba kernel.
_NATIVES = {"sqrt": _native_sqrt, "maximum": _native_maximum, "minimum": _native_minimum,
            "where": _native_where, "sign": _native_sign, "abs": _native_abs}


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

    from ..kernels.numba_scalars import element_of

    natives = {name: wrap(rebind(native, {"element_of": element_of})) for name, native in _NATIVES.items()}
    kernel = rule.specialize(natives, wrap)
    _SPECIALIZED[rule.name, compute] = kernel
    if rule.reductions:
        _SPECIALIZED[rule.name + ".reduce", compute] = rule.specialize(natives, wrap, "reduce")
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
    # The rule's names only ever appear behind the `_ol_` prefix (which rules may not use, see
    # `Rule`), so none of them can capture or shadow one of the driver's own names.
    ours = {name: f"_ol_{name}" for name in (*rule.state_names, *rule.coefficient_names, *rule.tensor_coefficients)}

    def view(name: str, pointer: str, kind: str) -> str:
        storage, itemsize = _STORAGE[kind]
        return f"        {ours.get(name, name)} = carray(address({pointer} + {itemsize} * start), size, {storage})"

    grad = _load(variant.param_kind, compute, "grad[i]")
    arguments = [_load(variant.param_kind, compute, "param[i]"),
                 f"{grad} / python_scalar(grad_scale)" if variant.has_grad_scale else grad]
    arguments += [_load(variant.state_kind, compute, f"{ours[name]}[i]") if name in active else f"np.{compute}(0.0)"
                  for name in rule.state_names]
    kinds = dict(zip(scalars, variant.scalar_kinds, strict=True))
    arguments += [repr(flags[name]) if name in flags
                  else f"{'python' if kinds[name] == 'python' else 'tensor'}_scalar({ours[name]})"
                  for name in rule.coefficient_names]
    # per-tensor coefficients (stage (a)): one float64 per tensor, computed on the host by `rule.finish`
    tensor_arguments = [f"python_scalar({ours[name]}[tensor])" for name in rule.tensor_coefficients]
    results = ["new_param"] + [f"new_{ours[name]}" if name in active else "_" for name in rule.state_names]
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
        "@njit(nogil=True, error_model='numpy')",
        f"def step(first, last, param_ptrs, grad_ptrs, state_ptrs, sizes, chunk_tensor, chunk_start, chunk_stop, "
        f"grad_scale{''.join(', ' + ours[name] for name in (*scalars, *rule.tensor_coefficients))}):",
    ]
    chunk_views = [
        "    for chunk in range(first, last):",
        "        tensor = chunk_tensor[chunk]",
        "        start = chunk_start[chunk]",
        "        size = np.uint64(chunk_stop[chunk] - start)  # unsigned: no negative-index checks in the loop",
        view("param", "param_ptrs[tensor]", variant.param_kind),
        view("grad", "grad_ptrs[tensor]", variant.param_kind),
        *(view(name, f"state_ptrs[{rule.state_names.index(name)}, tensor]", variant.state_kind) for name in active),
    ]
    lines += chunk_views
    lines += ["        for i in range(size):",
              f"            {', '.join(results)}, = update({', '.join(arguments + tensor_arguments)})",
              f"            param[i] = {_store(variant.param_kind, 'new_param')}"]
    lines += [f"            {ours[name]}[i] = {_store(variant.state_kind, f'new_{ours[name]}')}" for name in active]
    if rule.reductions:
        # The reduce pass: over the same chunks, each chunk's sums of `rule.reduce`'s terms (in float64)
        sums = [f"_ol_sum_{index}" for index in range(len(rule.reductions))]
        terms = [f"_ol_term_{index}" for index in range(len(rule.reductions))]
        lines += ["", "", f"reduce = specialized_update({rule.name + '.reduce'!r}, {compute!r})", "", "",
                  "@njit(nogil=True, error_model='numpy')",
                  f"def reduce_step(first, last, param_ptrs, grad_ptrs, state_ptrs, sizes, chunk_tensor, chunk_start, "
                  f"chunk_stop, grad_scale, partial{''.join(', ' + ours[name] for name in scalars)}):",
                  *chunk_views,
                  *(f"        {total} = 0.0" for total in sums),
                  "        for i in range(size):",
                  f"            {', '.join(terms)}, = reduce({', '.join(arguments)})",
                  *(f"            {total} += {term}" for total, term in zip(sums, terms, strict=True)),
                  *(f"        partial[chunk, {index}] = {total}" for index, total in enumerate(sums))]
    return "\n".join(lines) + "\n"


def _code_fingerprint(code: Any) -> list[Any]:
    parts: list[Any] = [code.co_code, code.co_names, code.co_varnames]
    for constant in code.co_consts:
        parts.extend(_code_fingerprint(constant) if hasattr(constant, "co_code") else [repr(constant)])
    return parts


#: (rule, variant) → compiled driver (rules hash by identity; the key keeps the rule alive)
_DRIVERS: dict[tuple[Rule, Variant], Any] = {}
#: (rule, variant) → the compiled reduce pass of a rule with reductions (the same module as its driver)
_REDUCERS: dict[tuple[Rule, Variant], Any] = {}
#: Held while a driver is built, so that threads stepping the same new variant build it once. Reentrant, so
#: that a thread forking while it builds one gets past `_wait_for_compiles`.
_BUILDING = threading.RLock()
#: The locks `_wait_for_compiles` took before a fork (guarded by `_BUILDING`), released after it.
_HELD_OVER_FORK: list[Any] = []


def _wait_for_compiles() -> None:
    """Before `os.fork()`: wait until no other thread builds or compiles a driver, and hold that.

    A forked child has only the forking thread. A lock that another thread of the parent held at the fork
    never opens in the child: ours while that thread built a driver, or Numba's global compiler lock, held
    while Numba and LLVM compile (a driver compiles on its first call), and the child's first compile would
    wait forever. So the fork waits for compiles in flight; locks are taken in this order everywhere.
    """
    _BUILDING.acquire()
    held = [_BUILDING]
    compiler_lock = sys.modules.get("numba.core.compiler_lock")
    if compiler_lock is not None:  # not imported yet: nothing compiles
        compiler_lock.global_compiler_lock.acquire()
        held.append(compiler_lock.global_compiler_lock)
    _HELD_OVER_FORK[:] = held


def _release_after_fork() -> None:
    """After `os.fork()`, in the parent and in the child: release what `_wait_for_compiles` took."""
    held = _HELD_OVER_FORK[:]
    _HELD_OVER_FORK.clear()
    for lock in reversed(held):
        lock.release()


os.register_at_fork(before=_wait_for_compiles, after_in_parent=_release_after_fork,
                    after_in_child=_release_after_fork)


def driver(rule: Rule, variant: Variant) -> Any:
    """The driver for `variant`: built on first call, its compiled code loaded from the kernel cache if there.

    Thread-safe: one thread builds a driver while the others wait for it, and its module enters
    `sys.modules` only once it is fully executed.
    """
    key = (rule, variant)
    if key not in _DRIVERS:
        with _BUILDING:
            if key not in _DRIVERS:
                module = _build_driver(rule, variant)
                if rule.reductions:  # before the driver: a thread that finds the driver finds its reducer
                    _REDUCERS[key] = module.reduce_step
                _DRIVERS[key] = module.step
    return _DRIVERS[key]


def _build_driver(rule: Rule, variant: Variant) -> types.ModuleType:
    """Generate, hash and execute the driver's module (from memory: its source is never read from disk).

    The module is named by a hash of the source, the rule's and helpers' bytecode, the natives and the
    Numba and Python versions, so an edited rule never runs a stale cached kernel. Its compiled code is
    cached only in a trusted directory (`kernel_cache.trusted_directory`).
    """
    import numba

    from ..kernels import numba_scalars
    from ..rules import primitives
    from .kernel_cache import DriverCache, trusted_directory

    specialize(rule, variant.compute)  # (re)registered for this rule object before its driver imports it
    source = driver_source(rule, variant)
    functions = [rule.update, *([rule.reduce] if rule.reductions else []), *rule.helpers.values(),
                 *primitives.FORMULAS.values(), *_NATIVES.values()]
    fingerprint = [numba.__version__, sys.version, source, Path(numba_scalars.__file__).read_text()]
    fingerprint += [_code_fingerprint(function.__code__) for function in functions]
    digest = hashlib.sha256(repr(fingerprint).encode()).hexdigest()[:20]
    module_name = f"optimlab_kernel_{rule.name}_{digest}"
    module = sys.modules.get(module_name)
    if module is None:
        module = types.ModuleType(module_name)
        filename = f"<optimlab driver {module_name}>"
        # tracebacks, `inspect` and Numba's error messages read the generated source from here
        linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
        exec(compile(source, filename, "exec"), module.__dict__)  # our own generated source
        directory = trusted_directory()
        if directory is not None:  # what `cache=True` would set, trusted
            module.step._cache = DriverCache(module.step, directory)
            if rule.reductions:
                module.reduce_step._cache = DriverCache(module.reduce_step, directory)
        sys.modules[module_name] = module  # Numba rebuilds a cached kernel's environment from it, by name
    return module


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

    def step(self, coefficients: Mapping[str, Any], grads: Sequence[torch.Tensor], grad_scale: Any = None,
             all_reduce: Any = None) -> None:
        """One fused, in-place pass over the params and state the tables describe, with `grads` of the params'
        sizes and dtypes (the caller checked); their data pointers are read here, on every call. A rule with
        reductions first runs its reduce pass over the same chunks (`tensor_coefficients`)."""
        if torch.cuda.is_initialized() and not all(map(_is_cpu, grads)):
            raise ValueError("numba: every gradient must be a CPU tensor")
        if not all(map(_is_contiguous, grads)):
            grads = [grad.contiguous() for grad in grads]
        grad_pointers = np.fromiter(map(_data_ptr, grads), np.int64, len(grads))
        if not np.all((grad_pointers != 0) | (self.sizes == 0)):
            raise ValueError("numba: a gradient has no data (a meta tensor?)")
        threads = torch.get_num_threads()  # as many threads as torch's own CPU kernels use
        if threads != self.threads:
            self.splits = [(split, _pieces(split.chunk_sizes, threads)) for split in self._splits]
            self.threads = threads
        rule = self.rule
        flags = tuple((name, bool(coefficients[name])) for name in rule.flags)
        scalars, kinds = _scalars(coefficients[name] for name in rule.coefficient_names if name not in rule.flags)
        scale = 1.0 if grad_scale is None else float(grad_scale)
        per_tensor = self.tensor_coefficients(grad_pointers, scale, scalars, flags, kinds, grad_scale is not None,
                                              all_reduce) if rule.reductions else None
        for index, (split, pieces) in enumerate(self.splits):
            variant = Variant(split.param_kind, split.state_kind, flags, split.used, grad_scale is not None, kinds)
            run = _DRIVERS.get((rule, variant)) or driver(rule, variant)
            arguments = (*self._pointers(split, grad_pointers), *split.tables, scale, *scalars,
                         *(per_tensor[index] if per_tensor else ()))
            if len(pieces) == 1:
                run(*pieces[0], *arguments)
            else:
                _WORKERS.run(pieces, run, arguments, threads - 1)

    def _pointers(self, split: _Split, grad_pointers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The split's params' and gradients' data pointers."""
        if split.selection is None:
            return self.param_pointers, grad_pointers
        return self.param_pointers[split.selection], grad_pointers[split.selection]

    def tensor_coefficients(self, grad_pointers: np.ndarray, scale: float, scalars: list[Any], flags: tuple,
                            kinds: tuple[str, ...], has_grad_scale: bool, all_reduce: Any) -> list[list[np.ndarray]]:
        """Stage (a): per-tensor sums of `rule.reduce`'s terms over the chunk table, `rule.finish`ed on the host.

        Each chunk's sums (float64) go to a row of `partial`; rows add up per tensor (an empty tensor has no
        chunk and sums to 0). `all_reduce` (the front end's, for DTensor shards) sees one row per param.
        Returns, per split, one float64 array per tensor coefficient, indexed by the split's tensors.
        """
        rule = self.rule
        sums = np.zeros((len(self.param_pointers), len(rule.reductions)))
        for split, pieces in self.splits:
            variant = Variant(split.param_kind, split.state_kind, flags, split.used, has_grad_scale, kinds)
            if (rule, variant) not in _REDUCERS:
                driver(rule, variant)
            chunk_tensor = split.tables[2]
            partial = np.zeros((len(chunk_tensor), len(rule.reductions)))
            arguments = (*self._pointers(split, grad_pointers), *split.tables, scale, partial, *scalars)
            if len(pieces) == 1:  # each chunk writes its own row of `partial`: pieces may run in parallel
                _REDUCERS[rule, variant](*pieces[0], *arguments)
            else:
                _WORKERS.run(pieces, _REDUCERS[rule, variant], arguments, self.threads - 1)
            split_sums = np.zeros((len(split.tables[1]), len(rule.reductions)))
            np.add.at(split_sums, chunk_tensor, partial)
            sums[slice(None) if split.selection is None else split.selection] = split_sums
        if all_reduce is not None:
            sums = all_reduce(torch.from_numpy(sums)).numpy()
        finished = rule.finish(*sums.T)
        columns = [np.broadcast_to(np.asarray(finished[name], dtype=np.float64), len(sums))
                   for name in rule.tensor_coefficients]
        return [[np.ascontiguousarray(column if split.selection is None else column[split.selection])
                 for column in columns] for split, _ in self.splits]


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
    thread takes the next piece of one shared `_Pass`, and the caller waits only for pieces already taken,
    so a helper the OS has not scheduled yet delays nothing: the caller does its share instead.

    Helper threads do not survive `os.fork()`: a child forgets its parent's and starts its own on demand.
    """

    def __init__(self) -> None:
        self._inboxes: list[queue.SimpleQueue] = []
        self._starting = threading.Lock()
        os.register_at_fork(after_in_child=functools.partial(_forget_helpers, weakref.ref(self)))

    def run(self, pieces: Sequence[tuple[int, int]], work: Any, arguments: tuple, helpers: int) -> None:
        """`work(first, last, *arguments)` for every piece, on this thread and up to `helpers` others.

        If a piece raises, on any thread, or Ctrl-C interrupts the caller, no further piece is started and
        the pieces helpers are running are waited for, so nothing writes once this returns or raises.
        """
        work_pass = _Pass(pieces, work, arguments)
        try:
            for inbox in self._helpers(helpers):
                inbox.put(work_pass.help)
            work_pass.work_here()
        finally:
            work_pass.stop_and_wait()
        work_pass.raise_first_error()

    def _helpers(self, count: int) -> list[queue.SimpleQueue]:
        with self._starting:  # two threads stepping at once start the missing helpers once
            while len(self._inboxes) < count:
                inbox: queue.SimpleQueue = queue.SimpleQueue()
                threading.Thread(target=self._serve, args=(inbox,), daemon=True, name="optimlab-numba").start()
                self._inboxes.append(inbox)
            return self._inboxes[:count]

    def _after_fork(self) -> None:
        # only the forking thread exists in the child: work queued for the parent's helpers would pile up
        self._inboxes = []
        self._starting = threading.Lock()

    @staticmethod
    def _serve(inbox: queue.SimpleQueue) -> None:
        while True:
            inbox.get()()


def _forget_helpers(workers: weakref.ref) -> None:
    if (alive := workers()) is not None:
        alive._after_fork()


class _Pass:
    """One pass's pieces, handed out one at a time to whichever thread asks, until done or stopped."""

    def __init__(self, pieces: Sequence[tuple[int, int]], work: Any, arguments: tuple) -> None:
        self._pieces = iter(pieces)
        self._work, self._arguments = work, arguments
        self._lock = threading.Lock()
        self._helpers_idle = threading.Condition(self._lock)
        self._stopped = False
        self._helpers_running = 0  # pieces taken by helpers and not finished yet
        self._errors: list[BaseException] = []

    def _take(self, by_helper: bool) -> tuple[int, int] | None:
        with self._lock:
            piece = None if self._stopped else next(self._pieces, None)
            if piece is not None and by_helper:
                self._helpers_running += 1
            return piece

    def help(self) -> None:
        """A helper's share: pieces until none is left or the pass is stopped; errors go to the caller."""
        while (piece := self._take(by_helper=True)) is not None:
            try:
                self._work(*piece, *self._arguments)
            except BaseException as error:  # noqa: B036 (re-raised on the calling thread)
                with self._lock:
                    self._errors.append(error)
                    self._stopped = True
            finally:
                with self._lock:
                    self._helpers_running -= 1
                    if self._helpers_running == 0:
                        self._helpers_idle.notify_all()

    def work_here(self) -> None:
        """The calling thread's share; an exception (Ctrl-C too) propagates to `_Workers.run`."""
        while (piece := self._take(by_helper=False)) is not None:
            self._work(*piece, *self._arguments)

    def stop_and_wait(self) -> None:
        """Start no more pieces and wait for the helpers' running ones: after this nothing writes.

        A piece is short, so the wait goes on through Ctrl-C; the interrupt is raised once it is over.
        """
        interrupted = None
        while True:
            try:
                with self._lock:
                    self._stopped = True
                    while self._helpers_running:
                        self._helpers_idle.wait()
                break
            except BaseException as error:  # noqa: B036 (raised below, once the helpers are idle)
                interrupted = interrupted or error
        if interrupted is not None:
            raise interrupted

    def raise_first_error(self) -> None:
        if self._errors:
            raise self._errors[0]


_WORKERS = _Workers()


def _scalars(values: Any) -> tuple[list[Any], tuple[str, ...]]:
    """The non-flag coefficients as launch arguments, and their kinds (see `optimlab.kernels.numba_scalars`)."""
    arguments, kinds = [], []
    for value in values:
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


# --- step counters ---------------------------------------------------------------------------------------

@functools.cache
def _counter_loops() -> tuple[Any, Any]:
    """Two loops over float32 scalars by data pointer: `peek` (each value + 1 into `counts`) and `store`.

    Compiled in memory once per process (≈ 0.3 s), never cached on disk: counting steps must work wherever
    the optimizer does, read-only installs and unwritable homes included.
    """
    import numba

    address = driver_helper("address")

    @numba.njit(nogil=True)
    def peek(pointers: np.ndarray, counts: np.ndarray) -> None:
        for i in range(pointers.size):
            counts[i] = numba.carray(address(pointers[i]), 1, np.float32)[0] + np.float32(1.0)

    @numba.njit(nogil=True)
    def store(pointers: np.ndarray, counts: np.ndarray) -> None:
        for i in range(pointers.size):
            numba.carray(address(pointers[i]), 1, np.float32)[0] = counts[i]

    return peek, store


def _is_float32_scalar(tensor: Any) -> bool:
    """A plain CPU float32 one-element tensor whose storage holds that element (safe to write by pointer)."""
    return (type(tensor) is torch.Tensor and tensor.device.type == "cpu" and tensor.dtype == torch.float32
            and tensor.layout == torch.strided and tensor.numel() == 1
            and tensor.untyped_storage().nbytes() >= 4 * (tensor.storage_offset() + 1))


class _StepCounters:
    """float32 `step` tensors advanced through their data pointers (see `optimlab.torch._counters`).

    The same semantics as the portable `torch._foreach_add_(counters, 1)` (float32 `x + 1`, `_version`
    one up per step) for ≈ 0.2 µs per counter instead of ≈ 4 µs: the front end's largest per-tensor cost.
    """

    def __init__(self, tensors: Sequence[torch.Tensor]) -> None:
        self.tensors = list(tensors)
        self.pointers = np.fromiter(map(_data_ptr, self.tensors), np.int64, len(self.tensors))
        self.counts = np.empty(len(self.tensors), np.float32)

    def moved(self) -> bool:
        """Whether a counter's storage moved (`.data =`, `share_memory_`): then these pointers are stale."""
        return not np.array_equal(np.fromiter(map(_data_ptr, self.tensors), np.int64, len(self.tensors)),
                                  self.pointers)

    def next_counts(self) -> list[float]:
        """Each counter + 1 in float32, nothing written."""
        _counter_loops()[0](self.pointers, self.counts)
        return self.counts.tolist()

    def advance(self) -> None:
        """Store the values `next_counts` returned and bump each counter's `_version`, as `step_t += 1` does."""
        _counter_loops()[1](self.pointers, self.counts)
        torch.autograd.graph.increment_version(self.tensors)


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
             states: Sequence[Sequence[torch.Tensor]], grad_scale: Any = None,
             all_reduce: Any = None) -> None:
        """One fused, in-place pass of `rule.update` over the whole group (one launch per dtype pair).

        A rule with reductions first runs its reduce pass over the same chunks (`_Layout.tensor_coefficients`).
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
        layout.step(coefficients, grads, grad_scale, all_reduce)

    def step_counters(self, counters: Sequence[torch.Tensor]) -> _StepCounters | None:
        """Compiled `step` counters when every one is a plain float32 CPU scalar, else None (the portable way)."""
        if not all(map(_is_float32_scalar, counters)):
            return None
        return _StepCounters(counters)


BACKEND = register(NumbaCPU(), first=True)

__all__ = ["BACKEND", "CHUNK", "PARALLEL_MIN", "PIECES_PER_THREAD", "NumbaCPU", "Variant", "driver",
           "driver_source", "specialize"]
