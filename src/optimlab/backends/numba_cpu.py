"""Fused CPU kernels compiled from the rules with Numba: one multi-threaded pass per param group.

Each kernel is `rule.specialize(NATIVE, njit)` — the rule's own code object, compiled — called once per
element from a generated *driver* that only moves data: it reads each element of the param, gradient and
state, calls the rule, and stores the results, in place, through the tensors' data pointers. The driver
covers every tensor of a group in one call over a table of chunks, so ten thousand small tensors cost one
launch; big passes are shared between threads (`optimlab.kernels.workers`).

Why a generated driver: it must name its element types (float32, float64, or bfloat16 stored as uint16
bits) at compile time. Which state, flags and scalars it passes, and its chunk table, come from the kernel
plan the Triton backend uses too (`optimlab.kernels.plan`). Its module is named by a hash of its source, the
rule's bytecode and the Numba and Python versions, and compiled from the source in memory; only Numba's
compiled code is kept on disk, in the kernel cache (`optimlab.backends.kernel_cache`, which says when that
directory is trusted), so a changed rule never runs a stale kernel. The driver's source holds no arithmetic
besides the optional `grad / grad_scale` and addressing; all of the math is `update`, the rule.

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
import math
import operator
import sys
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from ..kernels import workers
from ..kernels.numba_runtime import BUILDING, driver_helper
from ..kernels.plan import ChunkTable, KernelPlan, Slots, elements, split_by, term, total, value
from ..rules import Rule
from ..rules.base import rebind
from . import register

#: Elements per chunk: a tensor is cut into chunks so that a big one spreads over every core.
CHUNK = 1 << 15

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
    if rule.axis_reduce is not None:
        _SPECIALIZED[rule.name + ".axis_reduce", compute] = rule.specialize(natives, wrap, "axis_reduce")
    return kernel


def specialized_update(rule_name: str, compute: str) -> Any:
    """The compiled rule a generated driver calls (registered by `specialize` before the import)."""
    return _SPECIALIZED[rule_name, compute]


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
    """The generated module for one variant: a `step` that loops, loads, calls `update`, stores. No math.

    The call follows the rule's `KernelPlan` (active and dummy state, flags and runtime scalars); flags are
    written in as constants, and every name from the rule stands behind the plan's `_ol_` prefixes.
    """
    compute = variant.compute
    plan = KernelPlan(rule, Slots.of(rule, variant.active))
    active = plan.slots.active
    flags = dict(variant.flags)
    kinds = dict(zip(plan.scalars, variant.scalar_kinds, strict=True))

    def view(name: str, pointer: str, kind: str) -> str:
        storage, itemsize = _STORAGE[kind]
        return f"        {elements(name)} = carray(address({pointer} + {itemsize} * start), size, {storage})"

    grad = _load(variant.param_kind, compute, f"{elements('grad')}[i]")
    arguments = [_load(variant.param_kind, compute, f"{elements('param')}[i]"),
                 f"{grad} / python_scalar(grad_scale)" if variant.has_grad_scale else grad]
    arguments += plan.slots.arguments(lambda name: _load(variant.state_kind, compute, f"{elements(name)}[i]"),
                                      f"np.{compute}(0.0)")
    arguments += plan.coefficient_arguments(
        lambda name: repr(flags[name]),
        lambda name: f"{'python' if kinds[name] == 'python' else 'tensor'}_scalar({value(name)})")
    # per-row and per-column values (stage (b)): float64 arrays over every tensor's rows and columns, finished
    # on the host by `rule.axis_finish`; each element reads those of its row and column
    axis_arguments = [f"np.{compute}(row_values[{j}, row])" for j in range(len(rule.row_values))]
    axis_arguments += [f"np.{compute}(column_values[{j}, column])" for j in range(len(rule.column_values))]
    # per-tensor coefficients (stage (a)): one float64 per tensor, computed on the host by `rule.finish`
    tensor_arguments = [f"python_scalar({value(name)}[tensor])" for name in rule.tensor_coefficients]
    axis_tables = ", row_length, matrix_size, row_offset, column_offset" if rule.axis_reduce else ""
    axis_value_parameters = ", row_values, column_values" if rule.axis_reduce else ""
    results = [value("param"), *plan.slots.results(value)]
    scalar_parameters = "".join(", " + value(name) for name in plan.scalars)
    lines = [
        f'"""Generated by optimlab.backends.numba_cpu for rule {rule.name!r}: {variant.param_kind} params, '
        f"{variant.state_kind} state,",
        f"{', '.join(f'{name}={flag}' for name, flag in variant.flags) or 'no flags'}, "
        f"grad_scale {'on' if variant.has_grad_scale else 'off'}.",
        "",
        "Loops, loads and stores only: the math is `update`, the rule's own code compiled by `Rule.specialize`.",
        '"""',
        "import numpy as np",
        "from numba import carray, njit",
        "",
        "from optimlab.backends.numba_cpu import specialized_update",
        "from optimlab.kernels.numba_runtime import driver_helper",
        "from optimlab.kernels.numba_scalars import python_scalar, tensor_scalar",
        "",
        f"update = specialized_update({rule.name!r}, {compute!r})",
        "address = driver_helper('address')",
        "bfloat16_to_float32 = driver_helper('bfloat16_to_float32')",
        "float32_to_bfloat16 = driver_helper('float32_to_bfloat16')",
        "",
        "",
        "@njit(nogil=True, error_model='numpy')",
        f"def step(first, last, param_ptrs, grad_ptrs, state_ptrs, sizes, chunk_tensor, chunk_start, chunk_stop"
        f"{axis_tables}, grad_scale{scalar_parameters}{axis_value_parameters}"
        f"{''.join(', ' + value(name) for name in rule.tensor_coefficients)}):",
    ]
    chunk_views = [
        "    for chunk in range(first, last):",
        "        tensor = chunk_tensor[chunk]",
        "        start = chunk_start[chunk]",
        "        size = np.uint64(chunk_stop[chunk] - start)  # unsigned: no negative-index checks in the loop",
        view("param", "param_ptrs[tensor]", variant.param_kind),
        view("grad", "grad_ptrs[tensor]", variant.param_kind),
        *(view(name, f"state_ptrs[{plan.slots.index(name)}, tensor]", variant.state_kind) for name in active),
    ]
    # stage (b): the element's row (over all rows of all of the tensor's matrices) and column, in the arrays
    chunk_views += ["        row_base = row_offset[tensor]", "        column_base = column_offset[tensor]",
                    "        length = row_length[tensor]", "        matrix = matrix_size[tensor]"] \
        if rule.axis_reduce else []
    element_index = ["            k = start + np.int64(i)", "            row = row_base + k // length",
                     "            column = column_base + (k // matrix) * length + k % length"] \
        if rule.axis_reduce else []
    lines += chunk_views
    lines += ["        for i in range(size):",
              *element_index,
              f"            {', '.join(results)}, = update({', '.join(arguments + axis_arguments + tensor_arguments)})",
              f"            {elements('param')}[i] = {_store(variant.param_kind, value('param'))}"]
    lines += [f"            {elements(name)}[i] = {_store(variant.state_kind, value(name))}" for name in active]
    if rule.reductions:
        # The reduce pass: over the same chunks, each chunk's sums of `rule.reduce`'s terms (in float64)
        sums = [total(index) for index in range(len(rule.reductions))]
        terms = [term(index) for index in range(len(rule.reductions))]
        lines += ["", "", f"reduce = specialized_update({rule.name + '.reduce'!r}, {compute!r})", "", "",
                  "@njit(nogil=True, error_model='numpy')",
                  f"def reduce_step(first, last, param_ptrs, grad_ptrs, state_ptrs, sizes, chunk_tensor, chunk_start, "
                  f"chunk_stop{axis_tables}, grad_scale, partial{scalar_parameters}{axis_value_parameters}):",
                  *chunk_views,
                  *(f"        {summed} = 0.0" for summed in sums),
                  "        for i in range(size):",
                  *element_index,
                  f"            {', '.join(terms)}, = reduce({', '.join(arguments + axis_arguments)})",
                  *(f"            {summed} += {added}" for summed, added in zip(sums, terms, strict=True)),
                  *(f"        partial[chunk, {index}] = {summed}" for index, summed in enumerate(sums))]
    if rule.axis_reduce is not None:
        # The row and column pass (stage (b)): each element's terms added to its row's and its column's sums
        # (float64); chunks of one tensor share rows and columns, so this pass runs its chunks in order
        count = len(rule.row_reductions)
        terms = [term(index) for index in range(count + len(rule.column_reductions))]
        lines += ["", "", f"axis_reduce = specialized_update({rule.name + '.axis_reduce'!r}, {compute!r})", "", "",
                  "@njit(nogil=True, error_model='numpy')",
                  f"def axis_reduce_step(first, last, param_ptrs, grad_ptrs, state_ptrs, sizes, chunk_tensor, "
                  f"chunk_start, chunk_stop{axis_tables}, grad_scale, row_sums, column_sums{scalar_parameters}):",
                  *chunk_views,
                  "        for i in range(size):",
                  *element_index,
                  f"            {', '.join(terms)}, = axis_reduce({', '.join(arguments)})",
                  *(f"            row_sums[{index}, row] += {added}" for index, added in enumerate(terms[:count])),
                  *(f"            column_sums[{index}, column] += {added}"
                    for index, added in enumerate(terms[count:]))]
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
#: (rule, variant) → the compiled row and column pass of a rule with stage (b) (the same module)
_AXIS_REDUCERS: dict[tuple[Rule, Variant], Any] = {}
def driver(rule: Rule, variant: Variant) -> Any:
    """The driver for `variant`: built on first call, its compiled code loaded from the kernel cache if there.

    Thread-safe: one thread builds a driver while the others wait for it, and its module enters
    `sys.modules` only once it is fully executed.
    """
    key = (rule, variant)
    if key not in _DRIVERS:
        with BUILDING:
            if key not in _DRIVERS:
                module = _build_driver(rule, variant)
                if rule.reductions:  # before the driver: a thread that finds the driver finds its reducer
                    _REDUCERS[key] = module.reduce_step
                if rule.axis_reduce is not None:
                    _AXIS_REDUCERS[key] = module.axis_reduce_step
                _DRIVERS[key] = module.step
    return _DRIVERS[key]


def driver_module_name(rule: Rule, source: str) -> str:
    """The name of the module a driver with `source` runs in: a hash of everything its compiled code depends
    on — the source, the rule's and helpers' bytecode, the natives, the kernels' scalar and runtime helpers
    (`numba_scalars`, `numba_runtime`: their intrinsics are compiled into every driver) and the Numba and
    Python versions — so that a cached kernel is never run after any of them changed."""
    import numba

    from ..kernels import numba_runtime, numba_scalars
    from ..rules import primitives

    functions = [rule.update, *([rule.reduce] if rule.reductions else []),
                 *([rule.axis_reduce] if rule.axis_reduce is not None else []), *rule.helpers.values(),
                 *primitives.FORMULAS.values(), *_NATIVES.values()]
    fingerprint = [numba.__version__, sys.version, source,
                   *(Path(module.__file__).read_text() for module in (numba_scalars, numba_runtime))]
    fingerprint += [_code_fingerprint(function.__code__) for function in functions]
    return f"optimlab_kernel_{rule.name}_{hashlib.sha256(repr(fingerprint).encode()).hexdigest()[:20]}"


def _build_driver(rule: Rule, variant: Variant) -> types.ModuleType:
    """Generate, hash and execute the driver's module (from memory: its source is never read from disk).

    The module is named by `driver_module_name`, so an edited rule or runtime never runs a stale cached kernel.
    Its compiled code is cached only in a trusted directory (`kernel_cache.trusted_directory`).
    """
    from .kernel_cache import DriverCache, trusted_directory

    specialize(rule, variant.compute)  # (re)registered for this rule object before its driver imports it
    source = driver_source(rule, variant)
    module_name = driver_module_name(rule, source)
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
            if rule.axis_reduce is not None:
                module.axis_reduce_step._cache = DriverCache(module.axis_reduce_step, directory)
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
        # the per-row and per-column state (stage (b)) is read and written on the host, as tensors
        self.axis_positions = {name: active.index(name) for name in rule.axis_state}
        element_active = tuple(name for name in active if name not in rule.axis_state)
        self.plan = KernelPlan.of(rule, active=element_active)
        flat_states = list(itertools.chain.from_iterable(states))
        states = [[tensor for name, tensor in zip(active, state, strict=True) if name not in rule.axis_state]
                  for state in states]
        self.param_dtypes = tuple(param.dtype for param in params)
        self.sizes = np.array([param.numel() for param in params], dtype=np.int64)
        self.param_pointers = np.fromiter(map(_data_ptr, params), np.int64, len(params))
        self.state_pointers = np.fromiter(map(_data_ptr, flat_states), np.int64, len(flat_states))
        self.state_bytes = np.fromiter(map(_nbytes_of, flat_states), np.int64, len(flat_states))
        kinds: list[tuple[str, str]] = []
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
            kinds.append((_DTYPES[param.dtype], _DTYPES[state_dtype]))
        if rule.axis_reduce is not None:
            self._axis_geometry(params)
        self._splits = []
        for (param_kind, state_kind), indices in split_by(kinds):
            selection = None if indices is None else np.array(indices, dtype=np.int64)
            members = range(len(params)) if indices is None else indices
            state_pointers = np.zeros((len(rule.state_names), len(members)), dtype=np.int64)
            for column, i in enumerate(members):
                for name, tensor in zip(element_active, states[i], strict=True):
                    state_pointers[self.plan.slots.index(name), column] = tensor.data_ptr()
            table = ChunkTable.build(self.sizes if selection is None else self.sizes[selection], CHUNK)
            axis_tables = tuple(array if selection is None else array[selection] for array in self.axis_tables) \
                if rule.axis_reduce is not None else ()
            self._splits.append(_Split(param_kind, state_kind, self.plan.slots.used, selection,
                                       (state_pointers, table.sizes, table.chunk_tensor, table.chunk_start,
                                        table.chunk_stop, *axis_tables), table.chunk_sizes))
        self.threads = 0
        self.splits: list[tuple[_Split, list[tuple[int, int]]]] = []

    def _axis_geometry(self, params: Sequence[torch.Tensor]) -> None:
        """Where each tensor's rows and columns lie in the stage (b) arrays (all rows of all its matrices, then the
        next tensor's), and the row length and matrix size an element's index is divided by."""
        self.shapes = [tuple(param.shape) for param in params]
        if any(len(shape) < 2 for shape in self.shapes):
            raise ValueError(f"numba: {self.rule.name}'s row and column reductions need params of at least two "
                             f"dimensions, got shapes {self.shapes}")
        self.row_counts = np.array([math.prod(shape[:-1]) for shape in self.shapes], dtype=np.int64)
        self.column_counts = np.array([math.prod(shape[:-2]) * shape[-1] for shape in self.shapes], dtype=np.int64)
        self.row_offsets = np.cumsum(self.row_counts) - self.row_counts
        self.column_offsets = np.cumsum(self.column_counts) - self.column_counts
        self.axis_tables = (np.array([shape[-1] for shape in self.shapes], dtype=np.int64),
                            np.array([shape[-2] * shape[-1] for shape in self.shapes], dtype=np.int64),
                            self.row_offsets, self.column_offsets)

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
             all_reduce: Any = None, states: Sequence[Sequence[torch.Tensor]] | None = None,
             axis_finish: Any = None) -> None:
        """One fused, in-place pass over the params and state the tables describe, with `grads` of the params'
        sizes and dtypes (the caller checked); their data pointers are read here, on every call. A rule with
        reductions first runs its reduce pass over the same chunks (`tensor_coefficients`); one with row and
        column reductions first its row and column pass (`axis_stage`, which reads and, once the update ran,
        writes the per-row and per-column state among `states`; `axis_finish(index, *arguments)`, where given,
        replaces `rule.axis_finish` for tensor `index`: the front end's, for DTensor shards)."""
        if torch.cuda.is_initialized() and not all(map(_is_cpu, grads)):
            raise ValueError("numba: every gradient must be a CPU tensor")
        if not all(map(_is_contiguous, grads)):
            grads = [grad.contiguous() for grad in grads]
        grad_pointers = np.fromiter(map(_data_ptr, grads), np.int64, len(grads))
        if not np.all((grad_pointers != 0) | (self.sizes == 0)):
            raise ValueError("numba: a gradient has no data (a meta tensor?)")
        threads = torch.get_num_threads()  # as many threads as torch's own CPU kernels use
        if threads != self.threads:
            self.splits = [(split, workers.pieces(split.chunk_sizes, threads)) for split in self._splits]
            self.threads = threads
        rule = self.rule
        flags = self.plan.flag_values(coefficients)
        scalars, kinds = _scalars(coefficients[name] for name in self.plan.scalars)
        scale = 1.0 if grad_scale is None else float(grad_scale)
        axis_values: tuple[np.ndarray, ...] = ()
        if rule.axis_reduce is not None:
            if states is None:
                raise ValueError(f"numba: {rule.name}'s row and column reductions need the state tensors")
            axis_values, finished = self.axis_stage(coefficients, grad_pointers, scale, scalars, flags, kinds,
                                                    grad_scale is not None, states, axis_finish)
        per_tensor = self.tensor_coefficients(grad_pointers, scale, scalars, flags, kinds, grad_scale is not None,
                                              all_reduce, axis_values) if rule.reductions else None
        for index, (split, pieces) in enumerate(self.splits):
            variant = Variant(split.param_kind, split.state_kind, flags, split.used, grad_scale is not None, kinds)
            run = _DRIVERS.get((rule, variant)) or driver(rule, variant)
            arguments = (*self._pointers(split, grad_pointers), *split.tables, scale, *scalars, *axis_values,
                         *(per_tensor[index] if per_tensor else ()))
            if len(pieces) == 1:
                run(*pieces[0], *arguments)
            else:
                _WORKERS.run(pieces, run, arguments, threads - 1)
        if rule.axis_reduce is not None:
            for state, values in zip(states, finished, strict=True):
                for name, position in self.axis_positions.items():
                    state[position].copy_(values[name])

    def axis_stage(self, coefficients: Mapping[str, Any], grad_pointers: np.ndarray, scale: float,
                   scalars: list[Any], flags: tuple, kinds: tuple[str, ...], has_grad_scale: bool,
                   states: Sequence[Sequence[torch.Tensor]],
                   axis_finish: Any = None) -> tuple[tuple[np.ndarray, np.ndarray], list[dict]]:
        """Stage (b): `rule.axis_reduce`'s terms summed over each tensor's rows and columns (float64) by the
        generated pass over the chunk table, then `rule.axis_finish` on the host, per tensor, on torch tensors
        of the param's dtype (the per-row and per-column state widened as eager reads it). Returns the per-row
        and per-column values as the update reads them (float64 arrays over all rows, all columns), and each
        tensor's finished values (the new state is stored once the update ran)."""
        rule = self.rule
        row_sums = np.zeros((len(rule.row_reductions), int(self.row_counts.sum())))
        column_sums = np.zeros((len(rule.column_reductions), int(self.column_counts.sum())))
        for split, _ in self.splits:
            variant = Variant(split.param_kind, split.state_kind, flags, split.used, has_grad_scale, kinds)
            if (rule, variant) not in _AXIS_REDUCERS:
                driver(rule, variant)
            # in order: chunks of one tensor add to the same rows and columns
            _AXIS_REDUCERS[rule, variant](0, len(split.tables[2]), *self._pointers(split, grad_pointers),
                                          *split.tables, scale, row_sums, column_sums, *scalars)
        per_step = [coefficients[name] for name in rule.coefficient_names]
        row_values = np.zeros((len(rule.row_values), row_sums.shape[1]))
        column_values = np.zeros((len(rule.column_values), column_sums.shape[1]))
        finished = []
        for index, (shape, dtype, state) in enumerate(zip(self.shapes, self.param_dtypes, states, strict=True)):
            row_shape, column_shape = (*shape[:-1], 1), (*shape[:-2], 1, shape[-1])
            rows = slice(self.row_offsets[index], self.row_offsets[index] + self.row_counts[index])
            columns = slice(self.column_offsets[index], self.column_offsets[index] + self.column_counts[index])
            sums = [torch.from_numpy(row_sums[j, rows]).reshape(row_shape).to(dtype) for j in range(len(row_sums))]
            sums += [torch.from_numpy(column_sums[j, columns]).reshape(column_shape).to(dtype)
                     for j in range(len(column_sums))]
            kept = [state[self.axis_positions[name]].to(dtype) for name in rule.axis_state]
            values = (rule.axis_finish(*kept, *sums, *per_step) if axis_finish is None
                      else axis_finish(index, *kept, *sums, *per_step))
            for j, name in enumerate(rule.row_values):
                row_values[j, rows] = torch.broadcast_to(torch.as_tensor(values[name]), row_shape).reshape(-1).double()
            for j, name in enumerate(rule.column_values):
                column_values[j, columns] = torch.broadcast_to(torch.as_tensor(values[name]),
                                                               column_shape).reshape(-1).double()
            finished.append(values)
        return (row_values, column_values), finished

    def _pointers(self, split: _Split, grad_pointers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The split's params' and gradients' data pointers."""
        if split.selection is None:
            return self.param_pointers, grad_pointers
        return self.param_pointers[split.selection], grad_pointers[split.selection]

    def tensor_coefficients(self, grad_pointers: np.ndarray, scale: float, scalars: list[Any], flags: tuple,
                            kinds: tuple[str, ...], has_grad_scale: bool, all_reduce: Any,
                            axis_values: tuple[np.ndarray, ...] = ()) -> list[list[np.ndarray]]:
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
            arguments = (*self._pointers(split, grad_pointers), *split.tables, scale, partial, *scalars, *axis_values)
            if len(pieces) == 1:  # each chunk writes its own row of `partial`: pieces may run in parallel
                _REDUCERS[rule, variant](*pieces[0], *arguments)
            else:
                _WORKERS.run(pieces, _REDUCERS[rule, variant], arguments, self.threads - 1)
            split_sums = np.zeros((len(split.tables[1]), len(rule.reductions)))
            np.add.at(split_sums, chunk_tensor, partial)
            sums[slice(None) if split.selection is None else split.selection] = split_sums
        if all_reduce is not None:
            sums = all_reduce(torch.from_numpy(sums)).numpy()
        columns = self.plan.finish(sums, lambda finished: np.broadcast_to(np.asarray(finished, dtype=np.float64),
                                                                          len(sums)))
        return [[np.ascontiguousarray(column if split.selection is None else column[split.selection])
                 for column in columns] for split, _ in self.splits]


class _Split(NamedTuple):
    param_kind: str
    state_kind: str
    used: tuple[bool, ...]
    selection: np.ndarray | None
    tables: tuple[np.ndarray, ...]
    chunk_sizes: np.ndarray


_WORKERS = workers.Workers()


def _scalars(values: Any) -> tuple[list[Any], tuple[str, ...]]:
    """The non-flag coefficients as launch arguments, and their kinds (see `optimlab.kernels.numba_scalars`)."""
    arguments, kinds = [], []
    for coefficient in values:
        if isinstance(coefficient, torch.Tensor) and coefficient.dtype == torch.float32:
            arguments.append(np.float32(coefficient.item()))
            kinds.append("float32")
        elif isinstance(coefficient, torch.Tensor) and coefficient.dtype == torch.float64:
            arguments.append(coefficient.item())
            kinds.append("float64")
        else:
            arguments.append(float(coefficient))
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
        """None if every param is a dense, contiguous CPU float32/float64/bfloat16 tensor (and the rule has no
        tensor stage).

        The PyTorch front end asks when it (re)builds a group's plan: on the first step, and when a param's
        dtype, shape, device or layout changed since (it checks those every step).
        """
        if rule.tensor_stage is not None:  # matrix math over whole tensors: eager runs it
            return f"numba: compiles elementwise passes only, not {rule.name}'s tensor stage (matrix math)"
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
                states: Sequence[Sequence[torch.Tensor]]) -> _Layout | None:
        """The tables for these params and state, whose `step(coefficients, grads, grad_scale)` runs them.

        They hold the params' and state tensors' data pointers and sizes: valid while every one of those
        tensors is where it was, as large and of the same dtype, and the gradients have the params' sizes and
        dtypes (what `_Layout.fits` checks), which the caller checks before each `step`.
        """
        if rule.axis_reduce is not None:  # its per-row and per-column state is handed to every `step`
            return None
        return _Layout(rule, params, states, rule.active_state(hyperparameters))

    def step(self, rule: Rule, hyperparameters: Mapping[str, Any], coefficients: Mapping[str, Any],
             params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor],
             states: Sequence[Sequence[torch.Tensor]], grad_scale: Any = None,
             all_reduce: Any = None, axis_finish: Any = None) -> None:
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
        layout.step(coefficients, grads, grad_scale, all_reduce, states, axis_finish)

    def step_counters(self, counters: Sequence[torch.Tensor]) -> _StepCounters | None:
        """Compiled `step` counters when every one is a plain float32 CPU scalar, else None (the portable way)."""
        if not all(map(_is_float32_scalar, counters)):
            return None
        return _StepCounters(counters)


BACKEND = register(NumbaCPU(), first=True)

__all__ = ["BACKEND", "CHUNK", "NumbaCPU", "Variant", "driver",
           "driver_source", "specialize"]
