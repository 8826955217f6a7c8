"""`Scalar`: a Numba number that behaves like a per-step coefficient does in PyTorch arithmetic.

A rule's coefficients are Python floats or 0-dim tensors (a tensor `lr`), and torch promotes them in its own
way: `(1 - beta2) * grad` on a float32 tensor computes `1 - beta2` in double precision (Python floats) and
casts it to float32 only for the tensor operation; with a float32 0-dim `lr`, `1 - lr * weight_decay` is
computed in float32 even next to float64 params. Numba knows neither: a float64 coefficient would promote
the whole element computation to float64 (twice as slow, and not torch's result), a float32 one would
compute `1 - beta2` in float32 (0.99900001: a 1e-5 relative error in Adam's second moment). So coefficients
enter a kernel as `Scalar(kind)`, kind "python" (a Python float: double), "float32" or "float64" (0-dim
tensors), and follow torch's rules:

* scalar ∘ scalar stays a scalar: Python with Python in double; with a 0-dim tensor in the tensor's dtype;
  two 0-dim tensors in the wider dtype; an integer constant of the rule counts as a Python number;
* scalar ∘ element (a float32/float64 value) casts the scalar to the element's type first, so the element
  math stays in the element's precision, as a 0-dim or wrapped number does next to a real tensor;
* comparisons (`weight_decay != 0`, `abs(weight) < 0.5`) compare the values.

Importing this module registers the type with Numba; kernels wrap arguments with `python_scalar(x)` (a
float64) or `tensor_scalar(x)` (a float32 or float64 that was a 0-dim tensor's value).
"""

from __future__ import annotations

import operator

import numpy as np
from numba import types
from numba.core import cgutils  # noqa: F401  (numba.core initialised before the extension API)
from numba.extending import intrinsic, models, overload, register_model
from numba.np import numpy_support


class Scalar(types.Type):
    """A per-step coefficient with torch's promotion (see the module docstring); `kind` names its origin."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        super().__init__(name=f"optimlab.Scalar({kind})")

    @property
    def value_type(self) -> types.Float:
        return types.float32 if self.kind == "float32" else types.float64


@register_model(Scalar)
class _ScalarModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, dmm.lookup(fe_type.value_type).get_value_type())


def _identity(context, builder, signature, arguments):
    return arguments[0]


@intrinsic
def python_scalar(typingctx, value):
    """A Python float's value (float64) as a scalar."""
    if value != types.float64:
        return None
    return Scalar("python")(value), _identity


@intrinsic
def tensor_scalar(typingctx, value):
    """A 0-dim tensor's value (float32 or float64, its dtype) as a scalar."""
    if value not in (types.float32, types.float64):
        return None
    return Scalar(str(value))(value), _identity


@intrinsic
def _value(typingctx, wrapped):
    if not isinstance(wrapped, Scalar):
        return None
    return wrapped.value_type(wrapped), _identity


@intrinsic
def _as(typingctx, value, kind):
    """`value` (a float of the kind's value type) as a scalar of `kind` (a string literal)."""
    if not isinstance(kind, types.StringLiteral):
        return None
    result = Scalar(kind.literal_value)
    return result(value, kind), lambda context, builder, signature, arguments: arguments[0]


def _is_number(value) -> bool:
    return isinstance(value, (types.Integer, types.IntegerLiteral, types.Boolean))


def _combined(left: Scalar, right: Scalar) -> str:
    """torch's result kind: Python with Python stays Python; a tensor wins; two tensors, the wider."""
    kinds = {left.kind, right.kind} - {"python"}
    if not kinds:
        return "python"
    return "float64" if "float64" in kinds else "float32"


def _arithmetic(op):
    @overload(op)
    def implementation(left, right):
        if isinstance(left, Scalar) and isinstance(right, Scalar):
            kind = _combined(left, right)
            cast = np.float32 if kind == "float32" else np.float64
            return lambda left, right: _as(op(cast(_value(left)), cast(_value(right))), kind)
        if isinstance(left, Scalar) and _is_number(right):
            kind, cast = left.kind, numpy_support.as_dtype(left.value_type).type
            return lambda left, right: _as(op(_value(left), cast(right)), kind)
        if _is_number(left) and isinstance(right, Scalar):
            kind, cast = right.kind, numpy_support.as_dtype(right.value_type).type
            return lambda left, right: _as(op(cast(left), _value(right)), kind)
        if isinstance(left, Scalar) and isinstance(right, types.Float):
            cast = numpy_support.as_dtype(right).type
            return lambda left, right: op(cast(_value(left)), right)
        if isinstance(left, types.Float) and isinstance(right, Scalar):
            cast = numpy_support.as_dtype(left).type
            return lambda left, right: op(left, cast(_value(right)))
        return None


def _comparison(op):
    @overload(op)
    def implementation(left, right):
        if isinstance(left, Scalar) and isinstance(right, Scalar):
            return lambda left, right: op(_value(left), _value(right))
        if isinstance(left, Scalar) and isinstance(right, (types.Number, types.IntegerLiteral)):
            return lambda left, right: op(_value(left), right)
        if isinstance(left, (types.Number, types.IntegerLiteral)) and isinstance(right, Scalar):
            return lambda left, right: op(left, _value(right))
        return None


for _operator in (operator.add, operator.sub, operator.mul, operator.truediv):
    _arithmetic(_operator)
for _operator in (operator.lt, operator.le, operator.gt, operator.ge, operator.eq, operator.ne):
    _comparison(_operator)


@overload(operator.neg)
def _negative(value):
    if isinstance(value, Scalar):
        kind = value.kind
        return lambda value: _as(-_value(value), kind)
    return None


@overload(abs)
def _absolute(value):
    if isinstance(value, Scalar):
        kind = value.kind
        return lambda value: _as(abs(_value(value)), kind)
    return None


def element_of(value, like):
    """`value` beside `like` in a selection (`maximum`, `where`): a scalar takes `like`'s float type, as a
    0-dim or wrapped number does next to a tensor; anything else is returned as it is."""
    return value


@overload(element_of)
def _element_of(value, like):
    if isinstance(value, Scalar) and isinstance(like, types.Float):
        cast = numpy_support.as_dtype(like).type
        return lambda value, like: cast(_value(value))
    return lambda value, like: value


@overload(bool)
def _truth(value):
    if isinstance(value, Scalar):
        return lambda value: _value(value) != 0
    return None
