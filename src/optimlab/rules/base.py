"""What a rule is: one pure elementwise update function plus the facts backends need to run it.

The contract is explicit and checked when a `Rule` is constructed (`Rule.__post_init__`), so a rule that
breaks it fails at import with the reason, not later inside a kernel:

* `update(param, grad, *state_names, *coefficient_names, *tensor_coefficients)` returns `(param, *state)`
  in the same order;
* `coefficients(step, **hyperparameters)` returns exactly the coefficient names as keys;
* `flags` names the *structural* coefficients: Python bools the update branches on (`amsgrad`, `maximize`,
  RMSprop's derived `use_momentum`). Compiled backends make them compile-time constants; every other
  coefficient is a runtime scalar and must not be a bool. A flag derived from a continuous hyperparameter
  is computed in `coefficients` from it (`any_nonzero(momentum)`), so a lab sweep over the value runs one
  branch for every config instead of tripping over an array in an `if`;
* per-tensor reductions (stage (a): LAMB's ‖θ‖ and ‖u‖) are `reductions`, the names of per-tensor sums:
  `reduce(param, grad, *state, *coefficients)` returns one elementwise term per name, each summed over the
  tensor; `finish(*sums)` turns the sums into the per-tensor coefficients named in `tensor_coefficients`,
  which `update` takes after the per-step ones. Backends sum over the same elements they update (a DTensor
  shard sums its part, and the front end all-reduces the partial sums over the shard group before `finish`);
* reductions over the rows and columns of a matrix (stage (b): Adafactor's factored second moment) are
  `row_reductions` (sums over the last axis, shape (..., R, 1)) and `column_reductions` (sums over the
  second-to-last axis, shape (..., 1, C)): `axis_reduce(param, grad, *state, *coefficients)` returns one
  elementwise term per name, rows first; `axis_finish(*row_state, *column_state, *row_sums, *column_sums,
  *coefficients)` turns the sums into the new per-row and per-column state (`row_state`, `column_state`: kept
  in those shapes, as torch keeps Adafactor's `row_var` and `col_var`) and the per-row and per-column values
  named in `row_coefficients` and `column_coefficients` (a value of shape (..., 1, 1), one per matrix, is
  broadcast to its rows or columns). `axis_finish` runs on the small per-row and per-column tensors as it is
  (arithmetic, the natives and the matrix natives, on NumPy arrays or torch tensors) on every backend; the
  passes over the elements are the backends'. `update` (and `reduce`, so stage (a) can follow stage (b)) takes
  `*row_state, *row_coefficients, *column_state, *column_coefficients` after the per-step coefficients, each
  value of its element's row or column. A param needs at least two dimensions for them: `for_shape(shape)`
  says which rule a param of a given shape runs (Adafactor: the factored rule for matrices, the unfactored
  one for vectors), and `for_dtype(hyperparameters, dtype)` resolves hyperparameters that depend on the dtype
  (Adafactor's ε1 = None: the dtype's machine epsilon);
* reductions over a whole param group (stage (c): the global gradient norm of fused clipping) are the
  reductions also named in `group_reductions`: `finish` then receives, for every tensor of the group, the
  sum's total over all the group's tensors instead of the tensor's own sum (`group_totals`, applied by every
  backend and by `Rule.step_group` after the shard all-reduce, so a sharded param counts once like a whole
  one). The front end makes the group span every backend call of one step (docs/adding-an-optimizer.md);
* per-param scalar state (stage (d): NAdam's `mu_product`, kept in state dicts as a 0-dim tensor like
  `step`) is named in `scalar_state`; `scalar_update(step, scalar_state, hyperparameters)` advances it once
  per step and param on the host, and `coefficients` receives the advanced values as keyword arguments;
* group-level state (stage (e): Schedule-Free AdamW's `k`, `weight_sum`, `lr_max`, `scheduled_lr`, kept by
  torch in the param-group dicts) is named in `group_state`; `group_update(group_state, hyperparameters)`
  advances it once per step and param group on the host (the group counts its own steps), and
  `coefficients` receives the advanced values as keyword arguments, the same for every param of the group;
* state that starts as a copy of the param instead of a constant (Schedule-Free's `z`) is named in
  `state_from_param`;
* a tensor stage (stage (f): Muon's Newton–Schulz orthogonalization) is `tensor_stage(param, grad, *state,
  *coefficients)`, a function of whole tensors written with arithmetic, the natives and the matrix natives
  (`matrix.MATRIX_NATIVE`), returning the per-tensor values named in `tensor_coefficients` (tensors of the
  param's shape, or scalars) that `update` takes last. Backends evaluate it as it is on NumPy arrays or torch
  tensors and hand `update` its tensors in the param's dtype (torch's type promotion); fused backends decline
  it. A rule's per-tensor coefficients come from its reductions or its tensor stage, not both;
* the functions `update` calls are natives (`primitives.NATIVE`), formulas (`primitives.FORMULAS`) or the
  rule's own plain-arithmetic helpers, found from its code (`Rule.helpers`) and compiled with it;
* no name a rule uses starts with `_ol_`: generated kernel code keeps its own names under that prefix.
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import primitives


@dataclass(frozen=True, eq=False)
class Rule:
    """An optimizer's math, written once.

    `update(param, grad, *state, *coefficients) -> (param, *state)` is a pure elementwise function written
    with plain arithmetic and the names in `primitives`. Its parameters after `param, grad` are first the
    per-element state, named exactly as PyTorch names it (`state_names`, e.g. `exp_avg`), then per-step
    scalars, which `coefficients(step, **hyperparameters)` computes once per step on the host. Backends
    evaluate `update` directly (NumPy, PyTorch eager) or compile it (`specialize`), never re-write it.

    `active_state(hyperparameters)` names the state a configuration uses (e.g. `max_exp_avg_sq` only with
    AMSGrad); the others are passed as `None` (a dummy scalar in compiled kernels) and never read.
    `initial_state(name, hyperparameters)` is the value a state tensor starts at (0, or Adagrad's
    `initial_accumulator_value`). `trace(...)` returns the intermediate quantities the notes compute by hand.
    `flags` names the structural coefficients (see the module docstring).

    Rules compare and hash by identity: a kernel cache keyed by the rule keeps it alive, so a key can never
    be taken over by another rule the way an `id()` can.
    """

    name: str
    update: Callable[..., tuple]
    coefficients: Callable[..., dict[str, Any]]
    hyperparameters: Mapping[str, Any]
    state_names: tuple[str, ...]
    active_state: Callable[[Mapping[str, Any]], tuple[str, ...]]
    validate: Callable[[Mapping[str, Any]], None]
    trace: Callable[..., dict[str, Any]]
    initial_state: Callable[[str, Mapping[str, Any]], float] = lambda name, hyperparameters: 0.0
    flags: tuple[str, ...] = ()
    scalar_state: tuple[str, ...] = ()
    scalar_update: Callable[[Any, Mapping[str, Any], Mapping[str, Any]], dict[str, Any]] | None = None
    reductions: tuple[str, ...] = ()
    reduce: Callable[..., tuple] | None = None
    finish: Callable[..., dict[str, Any]] | None = None
    tensor_coefficients: tuple[str, ...] = ()
    tensor_stage: Callable[..., dict[str, Any]] | None = None
    group_reductions: tuple[str, ...] = ()
    row_reductions: tuple[str, ...] = ()
    column_reductions: tuple[str, ...] = ()
    axis_reduce: Callable[..., tuple] | None = None
    axis_finish: Callable[..., dict[str, Any]] | None = None
    row_state: tuple[str, ...] = ()
    column_state: tuple[str, ...] = ()
    row_coefficients: tuple[str, ...] = ()
    column_coefficients: tuple[str, ...] = ()
    for_shape: Callable[[tuple[int, ...]], Rule] | None = None
    for_dtype: Callable[[Mapping[str, Any], Any], dict[str, Any]] | None = None
    group_state: tuple[str, ...] = ()
    group_update: Callable[[Mapping[str, Any], Mapping[str, Any]], dict[str, Any]] | None = None
    state_from_param: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_contract(self)

    @functools.cached_property
    def coefficient_names(self) -> tuple[str, ...]:
        """The per-step scalar arguments of `update`, in order (read once from its signature)."""
        parameters = list(inspect.signature(self.update).parameters)
        return tuple(parameters[2 + len(self.state_names):
                                len(parameters) - len(self.tensor_coefficients) - len(self.axis_values)])

    @property
    def row_values(self) -> tuple[str, ...]:
        """The per-row values `update` takes (stage (b)): the row state, then the row coefficients."""
        return self.row_state + self.row_coefficients

    @property
    def column_values(self) -> tuple[str, ...]:
        """The per-column values `update` takes (stage (b)): the column state, then the column coefficients."""
        return self.column_state + self.column_coefficients

    @property
    def axis_values(self) -> tuple[str, ...]:
        """`update`'s per-row and per-column parameters, in its order (after the per-step coefficients)."""
        return self.row_values + self.column_values

    @property
    def axis_state(self) -> tuple[str, ...]:
        """The state kept per row or per column (not of the param's shape)."""
        return self.row_state + self.column_state

    def state_shape(self, name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape of state `name` for a param of `shape`: (..., R, 1) per row, (..., 1, C) per column, else
        the param's (torch's Adafactor: `row_var`, `col_var`)."""
        shape = tuple(shape)
        if name in self.row_state:
            return (*shape[:-1], 1)
        if name in self.column_state:
            return (*shape[:-2], 1, shape[-1])
        return shape

    def rule_for_shape(self, shape: tuple[int, ...]) -> Rule:
        """The rule a param of `shape` runs: `for_shape(shape)`, or this rule where it has no such hook."""
        if self.for_shape is None:
            return self
        chosen = self.for_shape(tuple(shape))
        if chosen.axis_state and len(shape) < 2:
            raise ValueError(f"{self.name}: the rule {chosen.name!r} keeps state per row and column, which a "
                             f"param of shape {tuple(shape)} does not have")
        return chosen

    def hyperparameters_for(self, hyperparameters: Mapping[str, Any], dtype: Any) -> dict[str, Any]:
        """`hyperparameters` resolved for params of `dtype` (`for_dtype`; unchanged without it)."""
        if self.for_dtype is None:
            return dict(hyperparameters)
        return self.for_dtype(hyperparameters, dtype)

    @functools.cached_property
    def helpers(self) -> dict[str, Callable]:
        """The rule's own functions `update` (and `reduce`, `finish`) call, directly or through each other.

        Read from the code: every global name of `update` (and, recursively, of each helper) bound to a
        Python function that is not a native or a formula of `primitives` — `regularized_gradient`, or a
        `sign`-like helper defined next to a rule outside the package. Backends compile them with the rule.
        """
        found: dict[str, Callable] = {}
        for function in (self.update, self.reduce, self.finish, self.axis_reduce):
            if function is not None:
                _collect_helpers(function, found)
        return found

    def defaults(self, **overrides: Any) -> dict[str, Any]:
        """The hyperparameters with PyTorch's defaults, `overrides` applied, validated."""
        unknown = set(overrides) - set(self.hyperparameters)
        if unknown:
            raise TypeError(f"{self.name}: unexpected hyperparameter(s) {sorted(unknown)}; "
                            f"expected some of {sorted(self.hyperparameters)}")
        merged = {**self.hyperparameters, **overrides}
        self.validate(merged)
        return merged

    def step(self, param: Any, grad: Any, state: Mapping[str, Any], step: int, hyperparameters: Mapping[str, Any],
             tensor_axes: tuple[int, ...] | None = None,
             record: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        """One update evaluated directly (NumPy arrays, tensors, floats): `(new_param, new_state)`.

        `state` maps the active state names (and the scalar state) to values; `step` counts from 1.
        Reductions sum over the whole of `param`, or over `tensor_axes` only (a lab sweep's rows are its
        tensors, one per configuration); `param` is its own group (see `step_group`), so `state` also holds
        the group state (`group_state`), and `new_state` its advanced values. A tensor stage takes the whole
        of `param` (no `tensor_axes`). `record`, where given, receives the step's per-tensor coefficients
        (`tensor_coefficients`, e.g. LAMB's trust ratio): what a trace shows of stages (a), (c) and (f).
        """
        missing = [name for name in self.group_state if name not in state]
        if missing:
            raise ValueError(f"{self.name}: state lacks the group state {missing} (a param is its own group here: "
                             f"start it from initial_group_state)")
        group_state = {name: state[name] for name in self.group_state}
        ((new_param, new_state),) = self.step_group([param], [grad], [state], [step], hyperparameters, tensor_axes,
                                                    group_state=group_state,
                                                    records=None if record is None else [record])
        return new_param, new_state

    def step_group(self, params: Sequence[Any], grads: Sequence[Any], states: Sequence[Mapping[str, Any]],
                   steps: Sequence[int], hyperparameters: Mapping[str, Any],
                   tensor_axes: tuple[int, ...] | None = None,
                   group_state: Mapping[str, Any] | None = None,
                   records: Sequence[dict[str, Any]] | None = None) -> list[tuple[Any, dict[str, Any]]]:
        """One update of a param group evaluated directly: `(new_param, new_state)` per param, as `step`.

        Each param has its own state and step count (`steps`, one each); a group reduction's total
        (`group_reductions`) is summed over all of `params` before any `finish` (`group_totals`). The group
        state (`group_state`, required where the rule has some) is advanced once, for the whole group; each
        `new_state` holds its advanced values (the same for every param). `records`, where given (one dict per
        param), receive each param's per-tensor coefficients, as `step`'s `record`.
        """
        if records is not None and len(records) != len(params):
            raise ValueError(f"{self.name}: {len(records)} records for {len(params)} params")
        if params:  # torch's choice: the dtype of the group's first param resolves it for all of them
            hyperparameters = self.hyperparameters_for(hyperparameters, dtype_of(params[0]))
        if self.for_shape is not None:
            return self._step_by_shape(params, grads, states, steps, hyperparameters, tensor_axes, group_state,
                                       records)
        if self.group_state and group_state is None:
            raise ValueError(f"{self.name}: step_group needs the group state {self.group_state} (group_state=...)")
        group_values = self.advance_group_state(group_state or {}, hyperparameters)
        active = self.active_state(hyperparameters)
        work = []
        for param, grad, state, step in zip(params, grads, states, steps, strict=True):
            scalars = self.advance_scalar_state(step, state, hyperparameters)
            coefficients = self.coefficients(step, **hyperparameters, **scalars, **group_values)
            arguments = [state[name] if name in active else None for name in self.state_names]
            work.append((param, grad, arguments, [coefficients[name] for name in self.coefficient_names], scalars))
        axis: list[dict[str, Any]] = [{} for _ in work]
        if self.axis_reduce is not None:
            if tensor_axes is not None:
                raise ValueError(f"{self.name}: its row and column reductions take whole tensors, not rows of one "
                                 f"(tensor_axes)")
            axis = [self._axis_stage(param, grad, arguments, per_step, state)
                    for (param, grad, arguments, per_step, _), state in zip(work, states, strict=True)]
        per_tensor: list[list[Any]] = [[] for _ in work]
        if self.reductions and work:
            rows = [[_sum(term, tensor_axes)
                     for term in self.reduce(param, grad, *arguments, *per_step, *self._axis_arguments(finished))]
                    for (param, grad, arguments, per_step, _), finished in zip(work, axis, strict=True)]
            columns = group_totals(self, [list(column) for column in zip(*rows, strict=True)])
            for index, row in enumerate(rows):
                sums = [column if name in self.group_reductions else own
                        for name, column, own in zip(self.reductions, columns, row, strict=True)]
                finished = self.finish(*sums)
                per_tensor[index] = [finished[name] for name in self.tensor_coefficients]
        if self.tensor_stage is not None:
            if tensor_axes is not None:
                raise ValueError(f"{self.name}: its tensor stage takes whole tensors, not rows of one (tensor_axes)")
            for index, (param, grad, arguments, per_step, _) in enumerate(work):
                staged = self.tensor_stage(param, grad, *arguments, *per_step)
                per_tensor[index] = [in_dtype_of(staged[name], param) for name in self.tensor_coefficients]
        for record, values in zip(records or (), per_tensor, strict=False):
            record.update(zip(self.tensor_coefficients, values, strict=True))
        results = []
        for (param, grad, arguments, per_step, scalars), extra, finished in zip(work, per_tensor, axis, strict=True):
            new_param, *new_state = self.update(param, grad, *arguments, *per_step, *self._axis_arguments(finished),
                                                *extra)
            updated = zip(self.state_names, new_state, strict=True)
            results.append((new_param, {**{name: value for name, value in updated if name in active},
                                        **{name: finished[name] for name in self.axis_state}, **scalars,
                                        **group_values}))
        return results

    def _axis_stage(self, param: Any, grad: Any, arguments: list[Any], per_step: list[Any],
                    state: Mapping[str, Any]) -> dict[str, Any]:
        """Stage (b) of one param: `axis_reduce`'s terms summed over its rows and columns, `axis_finish`ed."""
        if len(getattr(param, "shape", ())) < 2:
            raise ValueError(f"{self.name}: row and column reductions need a param of at least two dimensions, "
                             f"got shape {tuple(getattr(param, 'shape', ()))}")
        terms = self.axis_reduce(param, grad, *arguments, *per_step)
        count = len(self.row_reductions)
        row_sums = [axis_sum(term, -1) for term in terms[:count]]
        column_sums = [axis_sum(term, -2) for term in terms[count:]]
        return self.axis_finish(*(state[name] for name in self.axis_state), *row_sums, *column_sums, *per_step)

    def _axis_arguments(self, finished: Mapping[str, Any]) -> list[Any]:
        """`update`'s per-row and per-column arguments from `axis_finish`'s values (none without stage (b))."""
        return [finished[name] for name in self.axis_values]

    def _step_by_shape(self, params: Sequence[Any], grads: Sequence[Any], states: Sequence[Mapping[str, Any]],
                       steps: Sequence[int], hyperparameters: Mapping[str, Any],
                       tensor_axes: tuple[int, ...] | None,
                       group_state: Mapping[str, Any] | None,
                       records: Sequence[dict[str, Any]] | None = None) -> list[tuple[Any, dict[str, Any]]]:
        """`step_group` where params of different shapes run different rules (`for_shape`): each rule steps
        its params, results in the params' order. (A rule with `for_shape` has no group state of its own to
        advance once: `check_contract` refuses the two together.)"""
        by_rule: dict[Rule, list[int]] = {}
        for index, param in enumerate(params):
            by_rule.setdefault(self.rule_for_shape(tuple(getattr(param, "shape", ()))), []).append(index)
        results: list[Any] = [None] * len(params)
        for rule, indices in by_rule.items():
            own_records = None if records is None else [records[i] for i in indices]
            stepped = rule.step_group([params[i] for i in indices], [grads[i] for i in indices],
                                      [states[i] for i in indices], [steps[i] for i in indices], hyperparameters,
                                      tensor_axes, group_state, own_records)
            for index, result in zip(indices, stepped, strict=True):
                results[index] = result
        return results

    def initial_scalar_state(self, hyperparameters: Mapping[str, Any]) -> dict[str, Any]:
        """The per-param scalar state before the first step (NAdam's Π_0 = 1), as Python floats."""
        return {name: float(self.initial_state(name, hyperparameters)) for name in self.scalar_state}

    def advance_scalar_state(self, step: Any, state: Mapping[str, Any],
                             hyperparameters: Mapping[str, Any]) -> dict[str, Any]:
        """The per-param scalar state after step `step` (`{}` for rules without any), from `state`'s values.

        Plain arithmetic on whatever the values are: Python floats (NumPy), arrays (a lab sweep), or torch's
        0-dim float32 tensors, so each front end rounds them as its reference does.
        """
        if not self.scalar_state:
            return {}
        return self.scalar_update(step, {name: state[name] for name in self.scalar_state}, hyperparameters)

    def initial_group_state(self, hyperparameters: Mapping[str, Any]) -> dict[str, Any]:
        """The group state before the first step (Schedule-Free's `k = 0`, `lr_max = -1`), as `initial_state`
        gives it (an int stays an int, as in torch's param-group dicts)."""
        return {name: self.initial_state(name, hyperparameters) for name in self.group_state}

    def advance_group_state(self, group_state: Mapping[str, Any],
                            hyperparameters: Mapping[str, Any]) -> dict[str, Any]:
        """The group state after one more step of its group (`{}` for rules without any), from its values.

        Plain arithmetic on the values as they are: Python floats (torch's param-group dicts, NumPy) or arrays
        (a lab sweep, one value per configuration).
        """
        if not self.group_state:
            return {}
        return self.group_update({name: group_state[name] for name in self.group_state}, hyperparameters)

    def coefficients_at(self, step: Any, hyperparameters: Mapping[str, Any]) -> dict[str, Any]:
        """The coefficients of step `step` for a param whose scalar state and group state start from their
        initial values and advance once: the first step's (for compiling a kernel, checking the contract)."""
        scalars = self.advance_scalar_state(step, self.initial_scalar_state(hyperparameters), hyperparameters)
        group_values = self.advance_group_state(self.initial_group_state(hyperparameters), hyperparameters)
        return self.coefficients(step, **hyperparameters, **scalars, **group_values)

    def initial_tensor(self, name: str, param: Any, hyperparameters: Mapping[str, Any]) -> Any:
        """State `name` before a param's first step, given the param as a NumPy array: a copy of it for
        `state_from_param` (Schedule-Free's `z`), else an array like it filled with `initial_state`."""
        import numpy

        if name in self.state_from_param:
            return numpy.array(param, copy=True)
        return numpy.full_like(param, self.initial_state(name, hyperparameters))

    def specialize(self, native: Mapping[str, Any], wrap: Callable[[Callable], Any] = lambda f: f,
                   function: str = "update") -> Any:
        """`update` (or `reduce`, `axis_reduce`) re-bound to a backend's natives and wrapped (`numba.njit`...).

        The function object is rebuilt from the rule's own code object with new globals, so a kernel runs
        the very bytecode (Numba) or source (Triton) of the rule: there is no second copy of the math.
        """
        missing = set(primitives.NATIVE) - set(native)
        if missing:
            raise ValueError(f"backend must provide natives {sorted(missing)}")
        namespace: dict[str, Any] = dict(native)
        for name, formula in primitives.FORMULAS.items():
            if name not in namespace:  # a backend may bring its own (bit-compatible) version instead
                namespace[name] = wrap(rebind(formula, namespace))
        compiled: dict[Callable, Any] = {}

        def compile_function(function: Callable) -> Any:
            """`function` rebound to the natives and to its own helpers, each compiled once, callees first."""
            if function not in compiled:
                own = {name: compile_function(helper) for name, helper in _direct_helpers(function).items()}
                compiled[function] = wrap(rebind(function, {**namespace, **own}))
            return compiled[function]

        return compile_function(getattr(self, function))


def _global_names(code: Any) -> set[str]:
    """The global names `code` may load, nested code objects (comprehensions, inner functions) included."""
    names = set(code.co_names)
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            names |= _global_names(constant)
    return names


def _direct_helpers(function: Callable) -> dict[str, Callable]:
    """The Python functions `function` reaches through its globals, other than natives and formulas."""
    reserved = set(primitives.NATIVE) | set(primitives.FORMULAS)
    helpers = {}
    for name in _global_names(function.__code__) - reserved:
        value = function.__globals__.get(name)
        if isinstance(value, types.FunctionType):
            helpers[name] = value
    return helpers


def _collect_helpers(function: Callable, found: dict[str, Callable]) -> None:
    for name, helper in _direct_helpers(function).items():
        if found.get(name) is not helper:
            found[name] = helper
            _collect_helpers(helper, found)


#: The prefix of the names generated kernel code uses for itself; refused in a rule's names.
RESERVED_PREFIX = "_ol_"


def check_contract(rule: Rule) -> None:
    """`ValueError` naming the rule and the broken part of the contract (see the module docstring)."""
    def fail(reason: str) -> None:
        raise ValueError(f"rule {rule.name!r}: {reason}")

    if not (isinstance(rule.name, str) and rule.name.isidentifier()):
        fail("its name must be a Python identifier (generated kernels and modules are named after it)")
    parameters = list(inspect.signature(rule.update).parameters.values())
    if any(parameter.kind not in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD)
           or parameter.default is not parameter.empty for parameter in parameters):
        fail("update takes positional parameters without defaults only")
    names = [parameter.name for parameter in parameters]
    if names[:2] != ["param", "grad"]:
        fail(f"update's first parameters must be (param, grad), got {tuple(names[:2])}")
    if tuple(names[2:2 + len(rule.state_names)]) != tuple(rule.state_names):
        fail(f"update's parameters after (param, grad) must be the state {tuple(rule.state_names)}, "
             f"got {tuple(names[2:2 + len(rule.state_names)])}")
    coefficient_names = names[2 + len(rule.state_names):]
    used = [*names, rule.name, *rule.flags]
    reserved = sorted(name for name in used if name.startswith(RESERVED_PREFIX))
    if reserved:
        fail(f"names {reserved} start with {RESERVED_PREFIX!r}, which generated kernel code keeps for itself")
    unknown_flags = sorted(set(rule.flags) - set(coefficient_names))
    if unknown_flags:
        fail(f"flags {unknown_flags} are not coefficients of update {tuple(coefficient_names)}")
    try:
        rule.validate(dict(rule.hyperparameters))
    except (TypeError, ValueError) as error:
        fail(f"its default hyperparameters are invalid: {error}")
    if bool(rule.scalar_state) != (rule.scalar_update is not None):
        fail("scalar_state and scalar_update come together (per-param scalar state and how a step advances it)")
    clashes = sorted(set(rule.scalar_state) & {*rule.state_names, *rule.hyperparameters, "step"})
    if clashes:
        fail(f"scalar state {clashes} shares a name with the state, a hyperparameter or `step`")
    scalars = rule.advance_scalar_state(1, rule.initial_scalar_state(rule.hyperparameters), rule.hyperparameters)
    if bool(rule.group_state) != (rule.group_update is not None):
        fail("group_state and group_update come together (group-level state and how a step advances it)")
    clashes = sorted(set(rule.group_state) & {*rule.state_names, *rule.hyperparameters, *rule.scalar_state, "step"})
    if clashes:
        fail(f"group state {clashes} shares a name with the state, the scalar state, a hyperparameter or `step`")
    group_values = rule.advance_group_state(rule.initial_group_state(rule.hyperparameters), rule.hyperparameters)
    if set(group_values) != set(rule.group_state):
        fail(f"group_update returns {sorted(group_values)}, the group state is {sorted(rule.group_state)}")
    if not set(rule.state_from_param) <= set(rule.state_names):
        fail(f"state_from_param names {sorted(set(rule.state_from_param) - set(rule.state_names))}, "
             f"not in {rule.state_names}")
    if bool(rule.reductions) != (rule.reduce is not None) or bool(rule.reductions) != (rule.finish is not None):
        fail("reductions, reduce and finish come together (the sums, their elementwise terms, the finish)")
    if rule.reductions:
        reduce_names = list(inspect.signature(rule.reduce).parameters)
        if reduce_names != names[:len(names) - len(rule.tensor_coefficients)]:
            fail(f"reduce takes update's parameters before the per-tensor coefficients "
                 f"{tuple(names[:len(names) - len(rule.tensor_coefficients)])}, got {tuple(reduce_names)}")
        if list(inspect.signature(rule.finish).parameters) != list(rule.reductions):
            fail(f"finish takes the sums {rule.reductions}")
        finished = rule.finish(*(1.0 for _ in rule.reductions))
        if set(finished) != set(rule.tensor_coefficients):
            fail(f"finish returns {sorted(finished)}, the tensor coefficients are {sorted(rule.tensor_coefficients)}")
    _check_tensor_stage(rule, names, fail)
    if not (isinstance(rule.group_reductions, tuple) and set(rule.group_reductions) <= set(rule.reductions)
            and len(set(rule.group_reductions)) == len(rule.group_reductions)):
        fail(f"group_reductions {rule.group_reductions!r} must be a tuple of distinct names among the reductions "
             f"{rule.reductions}")
    if tuple(names[len(names) - len(rule.tensor_coefficients):]) != tuple(rule.tensor_coefficients):
        fail(f"update's last parameters must be the per-tensor coefficients {rule.tensor_coefficients}")
    coefficient_names = coefficient_names[:len(coefficient_names) - len(rule.tensor_coefficients)]
    axis_values = rule.axis_values
    if tuple(coefficient_names[len(coefficient_names) - len(axis_values):]) != axis_values:
        fail(f"update's parameters before the per-tensor coefficients must be the per-row and per-column values "
             f"{axis_values} (row state, row coefficients, column state, column coefficients)")
    coefficient_names = coefficient_names[:len(coefficient_names) - len(axis_values)]
    if set(scalars) != set(rule.scalar_state):
        fail(f"scalar_update returns {sorted(scalars)}, the scalar state is {sorted(rule.scalar_state)}")
    hyperparameters = rule.hyperparameters_for(rule.hyperparameters, _float64())
    coefficients = rule.coefficients(1, **hyperparameters, **scalars, **group_values)
    if set(coefficients) != set(coefficient_names):
        fail(f"coefficients returns {sorted(coefficients)}, update takes {sorted(coefficient_names)}")
    for name in coefficient_names:
        is_bool = isinstance(coefficients[name], bool)
        if name in rule.flags and not is_bool:
            fail(f"flag {name!r} must be a Python bool, coefficients gives {coefficients[name]!r}")
        if is_bool and name not in rule.flags:
            fail(f"coefficient {name!r} is a bool: declare it in flags (a structural branch) or pass a number")
    _check_axis_stage(rule, names, coefficient_names, coefficients, fail)
    active = tuple(rule.active_state(rule.hyperparameters))
    known = rule.state_names + rule.axis_state
    if not set(active) <= set(known):
        fail(f"active_state names {sorted(set(active) - set(known))}, not in {known}")
    if rule.for_shape is not None and rule.group_reductions:
        fail("a rule choosing its rule per shape (for_shape) cannot have group reductions (they would span rules)")
    if rule.for_shape is not None and rule.group_state:
        fail("a rule choosing its rule per shape (for_shape) cannot have group state (each rule would advance it)")


def _float64() -> Any:
    import numpy

    return numpy.dtype(numpy.float64)


def _check_axis_stage(rule: Rule, names: list[str], coefficient_names: list[str], coefficients: Mapping[str, Any],
                      fail: Callable[[str], None]) -> None:
    """Stage (b)'s part of the contract: the fields come together, the signatures, and what `axis_finish`
    returns (checked on a 2 × 3 matrix of ones)."""
    has_sums = bool(rule.row_reductions or rule.column_reductions)
    if has_sums != (rule.axis_reduce is not None) or has_sums != (rule.axis_finish is not None):
        fail("row_reductions/column_reductions, axis_reduce and axis_finish come together (the sums over rows and "
             "columns, their elementwise terms, the finish)")
    if not has_sums:
        if rule.axis_values:
            fail(f"per-row and per-column values {rule.axis_values} need row or column reductions to compute them")
        return
    every = [*names, *rule.reductions, *rule.row_reductions, *rule.column_reductions]
    duplicated = sorted({name for name in every if every.count(name) > 1} - set(rule.axis_values))
    if duplicated or len(set(rule.axis_values)) != len(rule.axis_values):
        fail(f"names {duplicated or list(rule.axis_values)} are used twice among the parameters, the state and the "
             f"reductions")
    leading = names[:len(names) - len(rule.tensor_coefficients) - len(rule.axis_values)]
    if list(inspect.signature(rule.axis_reduce).parameters) != leading:
        fail(f"axis_reduce takes update's parameters before the per-row and per-column values {tuple(leading)}, "
             f"got {tuple(inspect.signature(rule.axis_reduce).parameters)}")
    expected = [*rule.axis_state, *rule.row_reductions, *rule.column_reductions, *coefficient_names]
    if list(inspect.signature(rule.axis_finish).parameters) != expected:
        fail(f"axis_finish takes (*row_state, *column_state, *row_reductions, *column_reductions, *coefficients) "
             f"{tuple(expected)}, got {tuple(inspect.signature(rule.axis_finish).parameters)}")
    import numpy

    rows, columns = numpy.ones((2, 1)), numpy.ones((1, 3))
    finished = rule.axis_finish(*(rows for _ in rule.row_state), *(columns for _ in rule.column_state),
                                *(rows for _ in rule.row_reductions), *(columns for _ in rule.column_reductions),
                                *(coefficients[name] for name in coefficient_names))
    if set(finished) != set(rule.axis_state + rule.axis_values):
        fail(f"axis_finish returns {sorted(finished)}, the per-row and per-column state and values are "
             f"{sorted(set(rule.axis_state + rule.axis_values))}")


def _check_tensor_stage(rule: Rule, names: list[str], fail: Callable[[str], None]) -> None:
    """The tensor stage's part of the contract: its signature, and no reductions beside it."""
    if rule.tensor_stage is None:
        return
    if rule.reductions:
        fail("per-tensor coefficients come from reductions or from a tensor stage, not both")
    if not rule.tensor_coefficients:
        fail("a tensor stage returns the per-tensor coefficients update takes last: name them in tensor_coefficients")
    leading = names[:len(names) - len(rule.tensor_coefficients)]
    if list(inspect.signature(rule.tensor_stage).parameters) != leading:
        fail(f"tensor_stage takes update's parameters before the per-tensor coefficients {tuple(leading)}, "
             f"got {tuple(inspect.signature(rule.tensor_stage).parameters)}")


def in_dtype_of(value: Any, param: Any) -> Any:
    """A tensor stage's `value` in `param`'s dtype where it is a tensor or array of another one (bfloat16
    Newton–Schulz widened exactly, as torch's `param.add_(update)` promotes it); scalars as they are."""
    dtype = getattr(value, "dtype", None)
    if dtype is None or getattr(value, "ndim", 0) == 0 or dtype == getattr(param, "dtype", dtype):
        return value
    return value.to(param.dtype) if hasattr(value, "new_tensor") else value.astype(param.dtype)


def group_totals(rule: Rule, columns: Sequence[Any]) -> list[Any]:
    """The sums `rule.finish` takes, given per reduction a column of the tensors' sums (stage (c)).

    `columns[j]` holds reduction `j`'s sum for each tensor of a group (a column of a backend's sums matrix, a
    NumPy array or a tensor, or a list of the values in `Rule.step_group`). A group reduction's column
    becomes its total over the tensors, one value every tensor finishes with; the others stay as they are.
    """
    return [_total(column) if name in rule.group_reductions else column
            for name, column in zip(rule.reductions, columns, strict=True)]


def dtype_of(value: Any) -> Any:
    """The dtype of an array or tensor (float64 for a Python number): what `Rule.for_dtype` receives."""
    dtype = getattr(value, "dtype", None)
    if dtype is None:
        import numpy

        dtype = numpy.asarray(value).dtype
    return dtype


def machine_epsilon(dtype: Any) -> float:
    """The machine epsilon of a NumPy or torch floating dtype (`torch.finfo(dtype).eps`)."""
    if type(dtype).__module__ == "torch":
        import torch

        return float(torch.finfo(dtype).eps)
    import numpy

    return float(numpy.finfo(dtype).eps)


def axis_sum(term: Any, axis: int) -> Any:
    """`term` summed over `axis`, the axis kept (a NumPy array's or a torch tensor's)."""
    if hasattr(term, "new_tensor"):
        return term.sum(dim=axis, keepdim=True)
    return term.sum(axis=axis, keepdims=True)


def _total(column: Any) -> Any:
    """The sum of a column: of a list's values, or of an array's or a tensor's entries."""
    return sum(column) if isinstance(column, list) else column.sum(0)


def _sum(term: Any, axes: tuple[int, ...] | None) -> Any:
    """`term` summed over `axes` (keeping them, to broadcast back) or over all of it; a float is its own sum."""
    if isinstance(term, numbers.Real):
        return term
    if axes is None:
        return term.sum()
    return term.sum(axis=axes, keepdims=True)


def any_nonzero(value: Any) -> bool:
    """Whether a hyperparameter is non-zero anywhere: a float, or a lab sweep's array of them.

    For derived flags (RMSprop's `use_momentum`): a branch that is exact for the zero values too, taken for a
    whole sweep when any of its configs needs it.
    """
    if isinstance(value, numbers.Real):
        return value != 0
    return bool((value != 0).any())


def rebind(function: Callable, namespace: Mapping[str, Any]) -> Callable:
    """A copy of `function` (same code object) whose global names resolve in `namespace` first."""
    rebound = types.FunctionType(function.__code__, {**function.__globals__, **namespace},
                                 function.__name__, function.__defaults__, function.__closure__)
    rebound.__kwdefaults__ = function.__kwdefaults__
    rebound.__qualname__ = function.__qualname__
    rebound.__module__ = function.__module__
    rebound.__doc__ = function.__doc__
    return rebound


# --- validation: each raises ValueError naming the argument and the value ---------------------------------

def _as_float(name: str, value: Any) -> float:
    # a one-element tensor of any shape is a number, as torch.optim takes `lr=torch.tensor([1e-3])`
    is_scalar_tensor = hasattr(value, "numel") and value.numel() == 1 and not value.is_complex()
    if isinstance(value, bool) or not (isinstance(value, numbers.Real) or is_scalar_tensor):
        raise ValueError(f"Invalid {name}: {value!r} (expected a real number)")
    try:
        number = float(value)
    except OverflowError:  # an int beyond float's range, e.g. 10**400
        shown = f"an integer of {math.floor(math.log10(abs(value))) + 1} digits" if isinstance(value, int) else value
        raise ValueError(f"Invalid {name}: {shown} (must be a finite number)") from None
    if math.isnan(number):
        raise ValueError(f"Invalid {name}: {value!r} (must not be NaN)")
    return number


def check_nonnegative(name: str, value: Any) -> None:
    """`value` is a finite real number >= 0 (a learning rate, ε, a decay)."""
    if not 0.0 <= _as_float(name, value) < math.inf:
        raise ValueError(f"Invalid {name}: {value!r} (must be a finite number >= 0)")


def check_unit_interval(name: str, value: Any) -> None:
    """`value` is in [0, 1): a decay rate such as β, ρ or momentum."""
    if not 0.0 <= _as_float(name, value) < 1.0:
        raise ValueError(f"Invalid {name}: {value!r} (must be in [0, 1))")


def check_closed_unit_interval(name: str, value: Any) -> None:
    """`value` is in [0, 1] (dampening)."""
    if not 0.0 <= _as_float(name, value) <= 1.0:
        raise ValueError(f"Invalid {name}: {value!r} (must be in [0, 1])")


def check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"Invalid {name}: {value!r} (expected True or False)")


def check_betas(name: str, value: Any) -> None:
    if not (isinstance(value, (tuple, list)) and len(value) == 2):
        raise ValueError(f"Invalid {name}: {value!r} (expected a pair (beta1, beta2))")
    check_unit_interval(f"{name}[0]", value[0])
    check_unit_interval(f"{name}[1]", value[1])
