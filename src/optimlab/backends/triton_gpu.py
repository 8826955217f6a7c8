"""The GPU backend: one Triton kernel per rule, compiled from the rule's own function.

`rule.specialize(natives, triton.jit)` turns the rule's `update` into a Triton device function (the same
source, with `sqrt`, `maximum` and `lerp` bound to the Triton versions below); a small generated kernel
loads each element's param, gradient and state, calls it, and stores the results. There is no second copy
of the math: the generated kernel is plumbing derived from the rule's signature (its state and
coefficient names), through the kernel plan the Numba backend uses too (`optimlab.kernels.plan`).

One launch covers every tensor of a param group (per dtype combination). The kernel reads two int64
tables:

    layout:    [numel × n | tensor of each chunk × total_blocks | index of each chunk in its tensor ×
                total_blocks | whether each program's chunks are all full × programs]
    addresses: [param × n | grad × n | one row per active state × n]

A program updates a ROWS × BLOCK tile: it looks up which tensor and which BLOCK-sized chunk of it each row
owns, turns the addresses into typed pointers (`int64 → tl.pointer_type`) and runs the rule on the tile,
so 10,000 small tensors cost one launch, and a 38M-element embedding next to 768-element biases wastes no
programs. On a GPU ROWS is 1 (a program per chunk); under the interpreter, whose cost is per operation
rather than per element, one program takes every chunk of a small group. The layout is built once per set
of params and state (checked against their sizes and addresses on every step, not trusted); the address
table again only when a gradient moved (zero_grad(set_to_none=True) reallocates them).

Precision: every element is computed in float32 whatever the storage (fp32, fp16, bf16 params; state in
the param's dtype or a lower `state_dtype`), and stored rounded to nearest-even; float64 params compute in
float64 (with float64 coefficient arguments: Triton passes Python floats as float32 unless told). Structural
hyperparameters (Python bools such as `amsgrad`, `maximize`, `first_step`) are `tl.constexpr`, so their
branches compile away; continuous ones are runtime float32 arguments, and 0-dim tensor coefficients
(a tensor `lr`) and `grad_scale` are passed as pointers and loaded in the kernel: changing them neither
recompiles nor syncs with the host. An optional `found_inf` tensor (AMP) skips the whole update on the
device when it is non-zero.

Under `TRITON_INTERPRET=1` Triton's interpreter runs the same kernels on CPU tensors (addresses are real
host addresses there), which is how the test suite checks this backend on machines without a GPU. There the
rule and the natives are called as plain Python functions: the interpreter runs device functions as Python
anyway, and wrapping them in `triton.jit` would only add its per-call patching of `triton.language`.
`ptx()` compiles the same kernels for a GPU without one, to check what the interpreter cannot.
"""

from __future__ import annotations

import contextlib
import itertools
import linecache
import math
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch

from ..kernels.plan import GRAD_SCALE, ChunkTable, KernelPlan, elements, pointer, split_by, term, value
from ..rules import Rule
from ..rules.base import rebind
from . import register

if TYPE_CHECKING:
    import triton.language as tl

#: The dtypes a param (and its state) may have: float64 computes in float64, the others in float32.
_PARAM_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
#: Elements per program on a GPU for groups of mostly small tensors and for large ones (with their warp
#: counts): 8 elements per thread, two 128-bit accesses per stream, ~64 registers (Adam, sm_90), so 32 warps
#: per SM stay resident to hide memory latency.
SMALL_BLOCK, SMALL_WARPS = 1024, 4
LARGE_BLOCK, LARGE_WARPS = 2048, 8
#: Under the interpreter a program costs Python time per operation whatever its size: one tile of at most
#: this many elements takes as many chunks as fit.
INTERPRETER_TILE = 1 << 15
#: Groups whose mean tensor has at least this many elements use LARGE_BLOCK.
LARGE_TENSOR = 65536


# --- what a rule's natives (`primitives.NATIVE`) mean inside a Triton kernel ---------------------------------
# Plain functions over `tl`, compiled with `triton.jit` once triton is imported (see `_natives`).

def sqrt(x):
    """Correctly rounded square root, as `torch.sqrt` (float32 `tl.sqrt` may use the approximate instruction)."""
    if x.dtype == tl.float64:
        root = tl.sqrt(x)  # float64 square roots are always rounded correctly
    else:
        root = tl.sqrt_rn(x)
    return root


def maximum(a, b):
    """Elementwise maximum that propagates NaN, as `torch.maximum`."""
    return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)


def minimum(a, b):
    """Elementwise minimum that propagates NaN, as `torch.minimum`."""
    return tl.minimum(a, b, propagate_nan=tl.PropagateNan.ALL)


def where(condition, a, b):
    return tl.where(condition, a, b)


def sign(x):
    """−1, 0 or 1 in x's dtype, as `torch.sign` (NaN gives 0: neither comparison holds)."""
    return (x > 0).to(x.dtype) - (x < 0).to(x.dtype)


def abs(x):  # noqa: A001 (the native's name)
    return tl.abs(x)


def widen_bfloat16(x):
    """bfloat16 → float32 exactly, subnormals included, by shifting the bits (what the hardware does)."""
    return (x.to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True)


def round_to_bfloat16(x):
    """float32 → bfloat16 rounded to nearest-even, as `Tensor.to(torch.bfloat16)`.

    Written out because Triton's interpreter rounds this conversion differently (so CPU tests would not
    check what a GPU computes); on a GPU these few integer operations hide behind the memory traffic.
    """
    bits = x.to(tl.uint32, bitcast=True)
    bits = bits + 0x7FFF + ((bits >> 16) & 1)
    rounded = (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
    return tl.where(x != x, float("nan"), rounded)


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (`TRITON_INTERPRET=1`, read when asked)."""
    triton = _triton()
    return triton is not None and bool(triton.knobs.runtime.interpret)


def _triton() -> Any:
    """The `triton` module, or None when it is not installed (the `optimlab[gpu]` extra)."""
    try:
        import triton
        import triton.language  # noqa: F401 (binds triton.language)
    except ImportError:
        return None
    return triton


def _jit_all(triton: Any, functions: Sequence[Any]) -> dict[str, Any]:
    """`functions` as device functions (see `_device_function`) with `tl` bound, by name."""
    namespace = {"tl": triton.language}
    return {function.__name__: _device_function(triton)(rebind(function, namespace)) for function in functions}


def _device_function(triton: Any) -> Any:
    """How a device function is wrapped: `triton.jit`, or not at all under the interpreter (see the module doc)."""
    if interpreting():
        return lambda f: f
    return triton.jit


def _natives(triton: Any) -> dict[str, Any]:
    # `tl` too: the interpreter looks for it in a jitted function's globals
    return {**_jit_all(triton, (sqrt, maximum, minimum, where, sign, abs)), "tl": triton.language}


# --- the generated kernel ----------------------------------------------------------------------------------

_SOURCES = itertools.count()  # numbers the generated sources: each gets its own `linecache` name
_TL_DTYPES = {"float32": "tl.float32", "float16": "tl.float16", "bfloat16": "tl.bfloat16", "float64": "tl.float64"}


def _tl_dtype(dtype: Any) -> str:
    return _TL_DTYPES[str(dtype).removeprefix("torch.")]


def _kernel_source(rule: Rule, active: tuple[str, ...], kinds: Mapping[str, str], dtypes: tuple[str, ...],
                   found_inf: bool, aligned: bool, numel_multiple: int = 1, stage: str = "update") -> str:
    """Python source of the kernel for one rule and one configuration.

    `kinds[c]` says how coefficient `c` (and `GRAD_SCALE`) arrives: "constexpr" (a structural bool),
    "value" (a float argument: float32, or float64 for float64 params), "pointer" or "bool_pointer"
    (a 0-dim tensor loaded in the kernel), or "none" (no grad_scale).
    `dtypes` are the Triton dtypes of param, grad and each active state; float64 params compute in
    float64, the others in float32.

    `stage="reduce"` makes a rule's reduce kernel instead (stage (a)): the same tiles, `rule.reduce`'s
    terms summed per row (chunk) into `partial[chunk, k]`, nothing stored. The update kernel of such a rule
    loads each row's per-tensor coefficients (one value per tensor, from `rule.finish` on the host).
    """
    compute = "tl.float64" if dtypes[0] == "tl.float64" else "tl.float32"
    plan = KernelPlan.of(rule, active)
    slots = ("param", "grad", *active)
    # Every name that comes from the rule (its state and coefficient names, and `param`, `grad` alongside them)
    # appears only behind the plan's prefixes (`value`, `pointer`, `elements`): the kernel's own names
    # (`numel`, `tl`, `update`, ...) can never be captured by them.
    arguments = ["layout", "addresses", "n_tensors", "total_blocks"]
    prologue = []
    for name in (*rule.coefficient_names, GRAD_SCALE):
        kind = kinds[name]
        if kind == "constexpr":
            arguments.append(f"{value(name)}: tl.constexpr")
        elif kind == "value":  # Triton passes a Python float as float32 unless the parameter says otherwise
            arguments.append(f"{value(name)}: tl.float64" if compute == "tl.float64" else value(name))
        elif kind == "pointer":
            arguments.append(pointer(name))
            # A float64 group keeps a float32 tensor coefficient (a tensor lr) in float32 for the scalar
            # arithmetic the rule does with it (`1 - lr * weight_decay`), as PyTorch does with 0-dim tensors.
            conversion = "" if compute == "tl.float64" else ".to(tl.float32)"
            prologue.append(f"    {value(name)} = tl.load({pointer(name)}){conversion}")
        elif kind == "bool_pointer":
            arguments.append(pointer(name))
            prologue.append(f"    {value(name)} = tl.load({pointer(name)}) != 0")
    reducing = stage == "reduce"
    axis_reducing = stage == "axis_reduce"
    has_axis = rule.axis_reduce is not None
    if has_axis:  # stage (b): each tensor's row length, matrix size and first row and column in the arrays
        arguments += ["row_length", "matrix_size", "row_offset", "column_offset",
                      *(("row_sums", "column_sums") if axis_reducing else ("row_values", "column_values")),
                      "total_rows", "total_columns"]
    axis_values = () if axis_reducing else rule.axis_values
    per_tensor = () if reducing or axis_reducing else rule.tensor_coefficients
    arguments += [pointer(name) for name in per_tensor]
    if reducing:
        arguments.append("partial")
    if found_inf:
        arguments.append("found_inf_pointer")
    arguments += ["ROWS: tl.constexpr", "BLOCK: tl.constexpr"]

    def tile(masked: bool) -> list[str]:
        """Load, update, store one tile (masked where a tile holds a tensor's tail or runs past the last chunk)."""
        mask = ", mask=mask" if masked else ""
        # rows past the last chunk read numel 0, so they are masked out entirely
        lines = ["mask = offsets < numel[:, None]"] if masked else []
        for slot, dtype in zip(slots, dtypes, strict=True):
            load = f"tl.load({elements(slot)}{mask})"
            if dtype == "tl.bfloat16":
                load = f"widen_bfloat16({load})"
            elif dtype != compute:
                load = f"{load}.to({compute})"
            lines.append(f"{value(slot)} = {load}")
        if kinds[GRAD_SCALE] != "none":
            lines.append(f"{value('grad')} = {value('grad')} / {value(GRAD_SCALE)}")
        state_arguments = plan.slots.arguments(value, f"tl.full([ROWS, BLOCK], 0.0, {compute})")
        results = ", ".join((value("param"), *plan.slots.results(value)))
        for index, name in enumerate(axis_values):  # the element's row's or column's value
            rows = index < len(rule.row_values)
            array, at = ("row_values", "row") if rows else ("column_values", "column")
            position = index if rows else index - len(rule.row_values)
            lines.append(f"{value(name)} = tl.load({array} + {position} * total_{at}s + {at}{mask}).to({compute})")
        call = ", ".join((value("param"), value("grad"), *state_arguments,
                          *plan.coefficient_arguments(value, value), *map(value, axis_values),
                          *map(value, per_tensor)))
        if axis_reducing:
            count = len(rule.row_reductions)
            terms = [term(index) for index in range(count + len(rule.column_reductions))]
            lines.append(f"{', '.join(terms)}, = axis_reduce({call})")
            for index, added in enumerate(terms):  # elements of one row (column) meet in one sum: atomics
                array, at, position = (("row_sums", "row", index) if index < count
                                       else ("column_sums", "column", index - count))
                lines.append(f"tl.atomic_add({array} + {position} * total_{at}s + {at}, {added}{mask})")
            return lines
        if reducing:
            terms = [term(index) for index in range(len(rule.reductions))]
            lines.append(f"{', '.join(terms)}, = reduce({call})")
            for index, added in enumerate(terms):
                summed = f"tl.where(mask, {added}, 0.0)" if masked else added  # lanes past a tensor's end add 0
                # `tl.reduce` with `add`, Triton's own `_sum_combine` (a + b): `tl.sum` is a jitted library
                # function, which Triton's interpreter fails to call once another kernel has run in the process,
                # and the interpreter sums with NumPy only for that combine function (any other one it calls
                # per element in Python: 21 s instead of under 1 for LAMB on 70,000 elements in the test suite)
                lines.append(f"tl.store(partial + chunks * {len(terms)} + {index}, tl.reduce({summed}, 1, add), "
                             "mask=live)")
            return lines
        lines.append(f"{results}{',' if len(rule.state_names) == 0 else ''} = update({call})")
        for slot, dtype in zip(slots, dtypes, strict=True):
            if slot != "grad":
                if dtype == "tl.bfloat16":  # float64 → bfloat16 goes through float32, as `Tensor.to` does
                    stored = f"round_to_bfloat16({value(slot)}.to(tl.float32))" if compute == "tl.float64" \
                        else f"round_to_bfloat16({value(slot)})"
                else:
                    stored = f"{value(slot)}.to({dtype})"
                lines.append(f"tl.store({elements(slot)}, {stored}{mask})")
        return lines

    # A program updates a ROWS × BLOCK tile: ROWS chunks (of one tensor or several), BLOCK elements each.
    body = [
        "chunks = tl.program_id(0) * ROWS + tl.arange(0, ROWS)",
        "live = chunks < total_blocks",
        "blocks = layout + n_tensors",
        "tensor = tl.load(blocks + chunks, mask=live, other=0)",
        "chunk = tl.load(blocks + total_blocks + chunks, mask=live, other=0)",
        "numel = tl.load(layout + tensor, mask=live, other=0)",
        "offsets = chunk[:, None] * BLOCK + tl.arange(0, BLOCK)[None, :]",
        *(f"{value(name)} = tl.load({pointer(name)} + tensor, mask=live, other=0).to({compute})[:, None]"
          for name in per_tensor),
    ]
    if has_axis:  # the row (over all of the tensor's matrices' rows) and column of each element
        body += ["length = tl.load(row_length + tensor, mask=live, other=1)[:, None]",
                 "matrix = tl.load(matrix_size + tensor, mask=live, other=1)[:, None]",
                 "row = tl.load(row_offset + tensor, mask=live, other=0)[:, None] + offsets // length",
                 "column = tl.load(column_offset + tensor, mask=live, other=0)[:, None] + (offsets // matrix) * length"
                 " + offsets % length"]
    for row, (slot, dtype) in enumerate(zip(slots, dtypes, strict=True)):
        body.append(f"{pointer(slot)} = tl.load(addresses + {row} * n_tensors + tensor, mask=live, other=0)"
                    f".to(tl.pointer_type({dtype}))")
        if aligned:  # every address is 16-byte aligned (checked on the host): allows vectorized access
            body.append(f"{pointer(slot)} = tl.multiple_of({pointer(slot)}, [16])")
    if aligned:
        body.append("offsets = tl.max_contiguous(tl.multiple_of(offsets, [1, BLOCK]), [1, BLOCK])")
        if numel_multiple > 1:  # every size is a multiple (checked on the host): tails vectorize too
            body.append(f"numel = tl.multiple_of(numel, [{numel_multiple}])")
    for slot in slots:
        body.append(f"{elements(slot)} = {pointer(slot)}[:, None] + offsets")
    # Tiles of full chunks take the unmasked path, which the compiler can vectorize best.
    body.append("if tl.load(blocks + 2 * total_blocks + tl.program_id(0)) != 0:  # every chunk of the tile full")
    body += ["    " + line for line in tile(masked=False)]
    body.append("else:")
    body += ["    " + line for line in tile(masked=True)]
    if found_inf:
        body = ["if tl.load(found_inf_pointer) == 0:"] + ["    " + line for line in body]
    return "\n".join([f"def {rule.name}_{stage}_kernel({', '.join(arguments)}):", *prologue,
                      *("    " + line for line in body)]) + "\n"


class _Group(NamedTuple):
    """One launch's fixed part: the Triton dtypes of param, grad and state, and the layout table it reads."""

    dtypes: tuple[str, ...]
    indices: list[int] | None  # which of the step's tensors (None: all)
    layout: Any
    n_tensors: int
    total_blocks: int
    rows: int
    block: int
    warps: int
    numel_multiple: int
    fixed_aligned: bool


def _group(dtypes: tuple[str, ...], indices: list[int] | None, numels: list[int], fixed: list[list[int]],
           device: Any) -> _Group:
    """The layout of one launch (see the module docstring), on `device`."""
    if indices is not None:
        numels = [numels[i] for i in indices]
        fixed = [[row[i] for i in indices] for row in fixed]
    large = sum(numels) >= LARGE_TENSOR * len(numels)
    block, warps = (LARGE_BLOCK, LARGE_WARPS) if large else (SMALL_BLOCK, SMALL_WARPS)
    if interpreting():
        block = min(SMALL_BLOCK, _next_power_of_2(max(numels)))
    table = ChunkTable.build(numels, block)
    total_blocks = len(table.chunk_tensor)
    rows = min(_next_power_of_2(total_blocks), max(1, INTERPRETER_TILE // block)) if interpreting() else 1
    layout = torch.from_numpy(np.concatenate([table.sizes, table.chunk_tensor, table.chunk_index,
                                              table.full(rows).astype(np.int64)]))
    if device.type != "cpu":
        layout = layout.to(device, non_blocking=True)
    common = math.gcd(*numels)
    numel_multiple = math.gcd(common & -common, 16) if common else 16  # the largest power of two ≤ 16 dividing all
    fixed_aligned = all(address % 16 == 0 for row in fixed for address in row)
    return _Group(dtypes, indices, layout, len(numels), total_blocks, rows, block, warps, numel_multiple,
                  fixed_aligned)


class _Plan:
    """The launches of one set of params and state; the address tables follow the gradients' addresses."""

    def __init__(self, numels: list[int], fixed: list[list[int]], dtypes: list[Any], grad_dtypes: set[Any],
                 groups: list[_Group]) -> None:
        self.numels, self.fixed, self.dtypes, self.grad_dtypes, self.groups = numels, fixed, dtypes, grad_dtypes, groups
        self._grad_addresses: list[int] | None = None
        self._launches: list[tuple[_Group, Any, bool]] = []

    def launches(self, grad_addresses: list[int], device: Any) -> list[tuple[_Group, Any, bool]]:
        """(group, its address table on `device`, whether every address is 16-byte aligned), per group."""
        if grad_addresses != self._grad_addresses:
            self._launches = []
            for group in self.groups:
                rows = [self.fixed[0], grad_addresses, *self.fixed[1:]]
                if group.indices is not None:
                    rows = [[row[i] for i in group.indices] for row in rows]
                addresses = torch.tensor(rows, dtype=torch.int64)
                aligned = group.fixed_aligned and bool((addresses[1] % 16 == 0).all())
                if device.type != "cpu":
                    addresses = addresses.to(device, non_blocking=True)
                self._launches.append((group, addresses, aligned))
            self._grad_addresses = grad_addresses
        return self._launches


class TritonBackend:
    """Runs any rule as one Triton kernel launch per param group (and dtype combination)."""

    name = "triton"

    def __init__(self) -> None:
        self._kernels: dict[tuple, Any] = {}
        self._updates: dict[tuple, Any] = {}
        self._plans: dict[tuple, _Plan] = {}

    def supports(self, rule: Rule, hyperparameters: Mapping[str, Any], params: Sequence[Any],
                 state_dtype: Any) -> str | None:
        """None if Triton is installed and every param is a contiguous floating tensor on the right device (and
        the rule has no tensor stage).

        Called by the front end on every step: one pass over the params, then checks per distinct kind.
        """
        if rule.tensor_stage is not None:  # matrix math over whole tensors: eager runs it
            return f"triton: compiles elementwise kernels only, not {rule.name}'s tensor stage (matrix math)"
        kinds = {(type(param), param.device.type, param.dtype) for param in params}
        devices = {device for _, device, _ in kinds}
        if devices <= {"cpu"} and os.environ.get("TRITON_INTERPRET", "0").lower() in ("", "0", "false", "off", "no"):
            # decided without importing Triton, so `backend="auto"` on CPU tensors stays cheap
            return ("the triton backend needs CUDA tensors, got CPU tensors "
                    "(set TRITON_INTERPRET=1 to run it on the CPU)")
        if _triton() is None:
            return "triton is not installed (pip install optimlab[gpu])"
        wanted = "cpu" if interpreting() else "cuda"
        for cls, device, dtype in kinds:
            if cls not in (torch.Tensor, torch.nn.Parameter):
                return f"the triton backend takes plain tensors, not {cls.__name__}"
            if device != wanted:
                return (f"TRITON_INTERPRET=1 runs Triton kernels on the CPU: params must be CPU tensors, not {device}"
                        if wanted == "cpu" else f"the triton backend needs CUDA tensors, got a {device} tensor "
                        "(set TRITON_INTERPRET=1 to run it on the CPU)")
            if dtype not in _PARAM_DTYPES:
                return f"the triton backend takes float32, float16, bfloat16 and float64 params, not {dtype}"
        if not all([param.is_contiguous() for param in params]):
            return "the triton backend needs contiguous params"
        if state_dtype is not None and state_dtype not in _PARAM_DTYPES:
            return f"the triton backend keeps state in float32, float16, bfloat16 or float64, not {state_dtype}"
        return None

    def step(self, rule: Rule, hyperparameters: Mapping[str, Any], coefficients: Mapping[str, Any],
             params: Sequence[Any], grads: Sequence[Any], states: Sequence[Sequence[Any]],
             grad_scale: Any = None, found_inf: Any = None, all_reduce: Any = None,
             axis_finish: Any = None) -> None:
        """Apply `rule.update` to every (param, grad, state) in place: one launch per dtype combination.

        `found_inf` (beyond the contract, optional): a tensor; where non-zero the kernel leaves params and
        state untouched, decided on the device. `axis_finish(index, *arguments)`, where given, replaces
        `rule.axis_finish` for tensor `index` (the front end's, for DTensor shards).
        """
        triton = _triton()
        if triton is None:
            raise RuntimeError("triton is not installed (pip install optimlab[gpu])")
        if not params:
            return
        active = tuple(rule.active_state(hyperparameters))
        if rule.axis_state:  # the per-row and per-column state (stage (b)) is read and written on the host
            axis_states = states
            states = [[tensor for name, tensor in zip(active, state, strict=True) if name not in rule.axis_state]
                      for state in states]
            active = tuple(name for name in active if name not in rule.axis_state)
        # The per-tensor host work, kept to a few C calls per tensor: 10,000 small tensors must stay cheap.
        grads = [grad if grad.is_contiguous() else grad.contiguous() for grad in grads]
        columns = list(zip(*states, strict=True)) if active else []
        numels = [param.numel() for param in params]
        fixed = [[param.data_ptr() for param in params], *([tensor.data_ptr() for tensor in column]
                                                          for column in columns)]
        dtypes = [tensor.dtype for tensor in itertools.chain(params, *columns)]
        plan = self._plan(numels, fixed, dtypes, active, params, grads, columns)
        # Autograd and `.grad` assignment give a gradient its param's dtype, device and shape; sizes and dtypes
        # are still checked on every step, since the gradients may be new tensors each time.
        if [grad.numel() for grad in grads] != numels or {grad.dtype for grad in grads} != plan.grad_dtypes:
            raise ValueError("every gradient must have its param's size and dtype")
        device = params[0].device
        named = {name: _coefficient(coefficients[name], device, name in rule.flags)
                 for name in rule.coefficient_names}
        named[GRAD_SCALE] = _coefficient(grad_scale, device) if grad_scale is not None else ("none", None)
        if named[GRAD_SCALE][0] == "constexpr":
            raise ValueError(f"grad_scale must be a number or a tensor, got {grad_scale!r}")
        kinds = {name: kind for name, (kind, _) in named.items()}
        arguments = [value for kind, value in named.values() if kind != "none"]
        if found_inf is not None:
            arguments.append(found_inf.to(device, non_blocking=True))
        launches = plan.launches([grad.data_ptr() for grad in grads], device)
        axis_arguments: list[list[Any]] = [[] for _ in launches]
        if rule.axis_reduce is not None:
            if found_inf is not None:
                raise ValueError(f"triton: {rule.name}'s per-row and per-column state is finished on the host, "
                                 "which cannot skip on a device-side found_inf: check it before the step")
            axis_arguments, finished = self._axis_stage(triton, rule, active, kinds, launches, arguments, params,
                                                        axis_states, coefficients, hyperparameters, device,
                                                        axis_finish)
        per_tensor = self._tensor_coefficients(triton, rule, active, kinds, launches, arguments, found_inf,
                                               len(params), device, all_reduce,
                                               axis_arguments) if rule.reductions else None
        for index, (group, addresses, aligned) in enumerate(launches):
            kernel = self._kernel(triton, rule, active, kinds, group.dtypes, found_inf is not None, aligned,
                                  group.numel_multiple)
            with _on(device):
                # FMA contraction on, as nvcc compiles PyTorch's own CUDA kernels (Triton 3.10 turns it off).
                kernel[(-(-group.total_blocks // group.rows),)](
                    group.layout, addresses, group.n_tensors, group.total_blocks, *_before_found_inf(
                        arguments, found_inf, [*axis_arguments[index], *(per_tensor[index] if per_tensor else [])]),
                    ROWS=group.rows, BLOCK=group.block, num_warps=group.warps, enable_fp_fusion=True)
        if rule.axis_reduce is not None:
            positions = {name: rule.active_state(hyperparameters).index(name) for name in rule.axis_state}
            for state, values in zip(axis_states, finished, strict=True):
                for name, position in positions.items():
                    state[position].copy_(values[name])

    def _axis_stage(self, triton: Any, rule: Rule, active: tuple[str, ...], kinds: Mapping[str, str],
                    launches: list[tuple[_Group, Any, bool]], arguments: list[Any], params: Sequence[Any],
                    states: Sequence[Sequence[Any]], coefficients: Mapping[str, Any],
                    hyperparameters: Mapping[str, Any], device: Any,
                    axis_finish: Any = None) -> tuple[list[list[Any]], list[dict]]:
        """Stage (b): the row and column kernel over each launch's layout adds `rule.axis_reduce`'s terms into
        each tensor's row and column sums (atomically: a row's elements lie in several tiles), then
        `rule.axis_finish` per tensor on the device, in the param's dtype (the per-row and per-column state
        widened, as eager reads it). Returns, per launch, the arguments its update and reduce kernels take (the
        geometry tables and the per-row and per-column values), and each tensor's finished values."""
        shapes = [tuple(param.shape) for param in params]
        if any(len(shape) < 2 for shape in shapes):
            raise ValueError(f"triton: {rule.name}'s row and column reductions need params of at least two "
                             f"dimensions, got shapes {shapes}")
        row_counts = [math.prod(shape[:-1]) for shape in shapes]
        column_counts = [math.prod(shape[:-2]) * shape[-1] for shape in shapes]
        row_offsets = list(itertools.accumulate(row_counts, initial=0))
        column_offsets = list(itertools.accumulate(column_counts, initial=0))
        total_rows, total_columns = row_offsets[-1], column_offsets[-1]
        compute = torch.float64 if any(group.dtypes[0] == "tl.float64" for group, _, _ in launches) else torch.float32
        tables = []
        for group, _, _ in launches:
            members = range(len(params)) if group.indices is None else group.indices
            tables.append([torch.tensor(values, dtype=torch.int64, device=device) for values in (
                [shapes[i][-1] for i in members], [shapes[i][-2] * shapes[i][-1] for i in members],
                [row_offsets[i] for i in members], [column_offsets[i] for i in members])])
        row_sums = torch.zeros(len(rule.row_reductions), max(total_rows, 1), dtype=compute, device=device)
        column_sums = torch.zeros(len(rule.column_reductions), max(total_columns, 1), dtype=compute, device=device)
        for (group, addresses, aligned), table in zip(launches, tables, strict=True):
            kernel = self._kernel(triton, rule, active, kinds, group.dtypes, False, aligned, group.numel_multiple,
                                  "axis_reduce")
            with _on(device):
                kernel[(-(-group.total_blocks // group.rows),)](
                    group.layout, addresses, group.n_tensors, group.total_blocks, *arguments, *table, row_sums,
                    column_sums, total_rows, total_columns,
                    ROWS=group.rows, BLOCK=group.block, num_warps=group.warps, enable_fp_fusion=True)
        per_step = [coefficients[name] for name in rule.coefficient_names]
        positions = {name: rule.active_state(hyperparameters).index(name) for name in rule.axis_state}
        row_values = torch.zeros(len(rule.row_values), max(total_rows, 1), dtype=compute, device=device)
        column_values = torch.zeros(len(rule.column_values), max(total_columns, 1), dtype=compute, device=device)
        finished = []
        for index, (param, shape, state) in enumerate(zip(params, shapes, states, strict=True)):
            row_shape, column_shape = (*shape[:-1], 1), (*shape[:-2], 1, shape[-1])
            rows = slice(row_offsets[index], row_offsets[index + 1])
            columns = slice(column_offsets[index], column_offsets[index + 1])
            sums = [row_sums[j, rows].reshape(row_shape).to(param.dtype) for j in range(len(row_sums))]
            sums += [column_sums[j, columns].reshape(column_shape).to(param.dtype) for j in range(len(column_sums))]
            kept = [state[positions[name]].to(param.dtype) for name in rule.axis_state]
            values = (rule.axis_finish(*kept, *sums, *per_step) if axis_finish is None
                      else axis_finish(index, *kept, *sums, *per_step))
            for j, name in enumerate(rule.row_values):
                row_values[j, rows] = torch.broadcast_to(torch.as_tensor(values[name], device=device),
                                                         row_shape).reshape(-1)
            for j, name in enumerate(rule.column_values):
                column_values[j, columns] = torch.broadcast_to(torch.as_tensor(values[name], device=device),
                                                               column_shape).reshape(-1)
            finished.append(values)
        return [[*table, row_values, column_values, total_rows, total_columns] for table in tables], finished

    def _tensor_coefficients(self, triton: Any, rule: Rule, active: tuple[str, ...], kinds: Mapping[str, str],
                             launches: list[tuple[_Group, Any, bool]], arguments: list[Any], found_inf: Any,
                             count: int, device: Any, all_reduce: Any,
                             axis_arguments: list[list[Any]] | None = None) -> list[list[Any]]:
        """Stage (a): the reduce kernel's per-chunk sums over each launch's layout, added up per tensor,
        all-reduced where the front end asks (DTensor shards), `rule.finish`ed; per launch, one device
        tensor per tensor coefficient (one value per tensor of the launch)."""
        compute = torch.float64 if any(group.dtypes[0] == "tl.float64" for group, _, _ in launches) else torch.float32
        sums = torch.zeros(count, len(rule.reductions), dtype=compute, device=device)
        for index, (group, addresses, aligned) in enumerate(launches):
            kernel = self._kernel(triton, rule, active, kinds, group.dtypes, found_inf is not None, aligned,
                                  group.numel_multiple, "reduce")
            partial = torch.zeros(max(group.total_blocks, 1), len(rule.reductions), dtype=compute, device=device)
            with _on(device):
                kernel[(-(-group.total_blocks // group.rows),)](
                    group.layout, addresses, group.n_tensors, group.total_blocks,
                    *_before_found_inf(arguments, found_inf, [*(axis_arguments[index] if axis_arguments else []),
                                                              partial]),
                    ROWS=group.rows, BLOCK=group.block, num_warps=group.warps, enable_fp_fusion=True)
            tensor_of_chunk = group.layout[group.n_tensors:group.n_tensors + group.total_blocks]
            group_sums = torch.zeros(group.n_tensors, len(rule.reductions), dtype=compute, device=device)
            group_sums.index_add_(0, tensor_of_chunk, partial[:group.total_blocks])
            if group.indices is None:
                sums = group_sums.to(compute)
            else:
                sums[group.indices] = group_sums.to(compute)
        if all_reduce is not None:
            sums = all_reduce(sums)
        columns = KernelPlan.of(rule, active).finish(
            sums, lambda finished: torch.as_tensor(finished, dtype=compute, device=device).expand(count).contiguous())
        return [[column if group.indices is None else column[group.indices] for column in columns]
                for group, _, _ in launches]

    def _plan(self, numels: list[int], fixed: list[list[int]], dtypes: list[Any], active: tuple[str, ...],
              params: Sequence[Any], grads: Sequence[Any], columns: Sequence[Sequence[Any]]) -> _Plan:
        """The launches for these params and state: rebuilt, and the tensors checked, when an address, size or
        dtype changed (a tensor's layout cannot change while its address and size stay the same, short of
        another tensor landing exactly there, or an in-place view op)."""
        key = (len(fixed), len(numels), fixed[0][0], str(params[0].device), interpreting())
        cached = self._plans.get(key)
        if cached is not None and cached.numels == numels and cached.fixed == fixed and cached.dtypes == dtypes:
            return cached
        if len(columns) != len(active):
            raise ValueError(f"expected {len(active)} state tensors per param ({', '.join(active)})")
        keys = []
        device = params[0].device
        for index, tensors in enumerate(zip(params, grads, *columns, strict=True)):
            if any(tensor.numel() != numels[index] for tensor in tensors):
                raise ValueError(f"param {index} has {numels[index]} elements, its gradient and state "
                                 f"{[tensor.numel() for tensor in tensors[1:]]}")
            if any(tensor.device != device for tensor in tensors):
                raise ValueError(f"the triton backend needs every tensor on {device}")
            if not all(tensor.is_contiguous() for tensor in tensors):
                raise ValueError("the triton backend needs contiguous params and state")
            keys.append(tuple(_tl_dtype(tensor.dtype) for tensor in tensors))
        plan = _Plan(numels, fixed, dtypes, {grad.dtype for grad in grads},
                     [_group(dtypes, indices, numels, fixed, device) for dtypes, indices in split_by(keys)])
        if len(self._plans) > 64:
            self._plans.clear()
        self._plans[key] = plan
        return plan

    def _kernel(self, triton: Any, rule: Rule, active: tuple[str, ...], kinds: Mapping[str, str],
                dtypes: tuple[str, ...], found_inf: bool, aligned: bool, numel_multiple: int = 1,
                stage: str = "update") -> Any:
        interpret = interpreting()
        key = (rule, active, tuple(kinds.items()), dtypes, found_inf, aligned, numel_multiple, interpret, stage)
        kernel = self._kernels.get(key)
        if kernel is not None:
            return kernel
        update_key = (rule, interpret, stage)
        if update_key not in self._updates:
            self._updates[update_key] = rule.specialize(_natives(triton), _device_function(triton), stage)
        source = _kernel_source(rule, active, kinds, dtypes, found_inf, aligned, numel_multiple, stage)
        # Triton reads a kernel's source with `inspect`: register the generated text under a unique name.
        filename = f"<optimlab-triton-{rule.name}-{next(_SOURCES)}>"
        linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
        namespace = {"tl": triton.language, stage: self._updates[update_key],
                     **_jit_all(triton, (widen_bfloat16, round_to_bfloat16)),
                     "add": triton.language.standard._sum_combine}
        exec(compile(source, filename, "exec"), namespace)  # our own generated source
        # Sizes vary with the group: keep them out of the specialization, so a new group does not recompile.
        sizes = ["n_tensors", "total_blocks", *(["total_rows", "total_columns"] if rule.axis_reduce else [])]
        kernel = triton.jit(namespace[f"{rule.name}_{stage}_kernel"], do_not_specialize=sizes)
        self._kernels[key] = kernel
        return kernel


def ptx(rule: Rule, hyperparameters: Mapping[str, Any], *, dtype: str = "float32", state_dtype: str | None = None,
        step: Any = 2, aligned: bool = True, numel_multiple: int = 1, large: bool = True, arch: int = 90,
        stage: str = "update") -> str:
    """The PTX the backend would run for `rule` on an sm_`arch` GPU, compiled here without one.

    `stage="reduce"`: the reduce kernel of a rule with per-tensor reductions instead of its update kernel;
    `stage="axis_reduce"`: the row and column kernel of a rule with row and column reductions (stage (b)).

    Checks what only a GPU runs (Triton's compiler, not its interpreter, accepts the rule; full chunks use
    vectorized `ld.global.v4`) on any machine with Triton's bundled `ptxas`. `step` may be a 0-dim tensor,
    which turns the step-derived coefficients into loads on the device.
    """
    triton = _triton()
    if triton is None:
        raise RuntimeError("triton is not installed (pip install optimlab[gpu])")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    hyperparameters = rule.hyperparameters_for(hyperparameters, getattr(torch, dtype))
    active = tuple(name for name in rule.active_state(hyperparameters) if name not in rule.axis_state)
    coefficients = rule.coefficients_at(step, hyperparameters)
    kinds = {name: _coefficient(coefficients[name], flag=name in rule.flags)[0] for name in rule.coefficient_names}
    kinds[GRAD_SCALE] = "none"
    dtypes = (_tl_dtype(dtype),) * 2 + (_tl_dtype(state_dtype or dtype),) * len(active)
    block, warps = (LARGE_BLOCK, LARGE_WARPS) if large else (SMALL_BLOCK, SMALL_WARPS)
    with _compiled():
        kernel = TritonBackend()._kernel(triton, rule, active, kinds, dtypes, False, aligned, numel_multiple, stage)
    signature, constants = {}, {}
    for index, parameter in enumerate(kernel.params):
        name = parameter.name
        if parameter.is_constexpr:
            signature[name] = "constexpr"
            constants[(index,)] = {"BLOCK": block, "ROWS": 1}.get(name, coefficients.get(name.removeprefix("_ol_v_")))
        else:
            pointer = "*i1" if kinds.get(name.removeprefix("_ol_p_")) == "bool_pointer" else "*fp32"
            floats = "*fp64" if dtype == "float64" else "*fp32"
            fixed = {"layout": "*i64", "addresses": "*i64", "n_tensors": "i32", "total_blocks": "i32",
                     "partial": floats, "row_length": "*i64", "matrix_size": "*i64", "row_offset": "*i64",
                     "column_offset": "*i64", "row_values": floats, "column_values": floats, "row_sums": floats,
                     "column_sums": floats, "total_rows": "i32", "total_columns": "i32"}
            scalar = "fp64" if dtype == "float64" else "fp32"
            signature[name] = fixed.get(name, pointer if name.startswith("_ol_p_") else scalar)
    source = ASTSource(fn=kernel, signature=signature, constexprs=constants,
                       attrs={(0,): [["tt.divisibility", 16]], (1,): [["tt.divisibility", 16]]})
    options = {"num_warps": warps, "enable_fp_fusion": True}
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options).asm["ptx"]


@contextlib.contextmanager
def _compiled() -> Any:
    """Within it, `triton.jit` makes compiled kernels even under `TRITON_INTERPRET=1`."""
    import triton

    saved = os.environ.get("TRITON_INTERPRET")
    triton.knobs.runtime.interpret = False  # also writes the environment variable
    try:
        yield
    finally:
        del triton.knobs.runtime.interpret  # back to reading the environment
        if saved is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = saved


def _before_found_inf(arguments: list[Any], found_inf: Any, inserted: list[Any]) -> list[Any]:
    """The launch arguments with `inserted` (per-tensor coefficients, the reduce kernel's `partial`) placed where
    the kernel takes them: after the coefficients and grad_scale, before the optional `found_inf`."""
    split = len(arguments) - (found_inf is not None)
    return [*arguments[:split], *inserted, *arguments[split:]]


def _next_power_of_2(number: int) -> int:
    """The smallest power of two ≥ `number` (1 for 0): Triton's block shapes are powers of two."""
    return 1 << max(0, number - 1).bit_length()


def _on(device: Any) -> Any:
    """A context that makes `device` current, so Triton launches on its current stream."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    return torch.cuda.device(device)


def _coefficient(value: Any, device: Any = None, flag: bool = False) -> tuple[str, Any]:
    """How a coefficient is passed: a declared flag (`Rule.flags`) given as a Python bool as constexpr, a
    number as float32, a tensor by pointer (a flag computed from a tensor step, too).

    A tensor on another device than the params' (a CPU step count with CUDA params) cannot be read by the
    kernel; a CPU one is read here instead, which costs no GPU synchronization.
    """
    if flag and isinstance(value, bool):
        return "constexpr", value
    if hasattr(value, "data_ptr"):
        if device is not None and value.device != device:
            if value.device.type != "cpu":
                raise ValueError(f"a coefficient tensor is on {value.device}, the params on {device}")
            value = value.item()
            return ("constexpr", bool(value)) if flag else ("value", float(value))
        return ("bool_pointer" if str(value.dtype) == "torch.bool" else "pointer"), value
    return "value", float(value)


BACKEND = register(TritonBackend(), first=True)

__all__ = ["BACKEND", "TritonBackend", "interpreting", "ptx"]
