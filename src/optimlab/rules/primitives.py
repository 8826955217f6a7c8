"""The few operations a rule may call besides `+ - * /` and comparisons: an open, documented set.

Rules are written with plain arithmetic so that one function evaluates on NumPy arrays, PyTorch tensors,
Python floats and, once compiled, inside Numba and Triton kernels. Arithmetic operators mean the same thing
everywhere; the elementwise operations below do not, so each backend binds the names in `NATIVE` to its own
versions (see `Rule.specialize`):

    sqrt(x)             correctly rounded √x, NaN for x < 0                      (torch.sqrt)
    maximum(a, b)       the larger, NaN if either is NaN                          (torch.maximum)
    minimum(a, b)       the smaller, NaN if either is NaN                         (torch.minimum)
    where(c, a, b)      a where c holds, else b (both evaluated)                  (torch.where)
    sign(x)             −1, 0 or 1; 0 for ±0 and for NaN                          (torch.sign)
    abs(x)              |x|                                                       (torch.abs)

`FORMULAS` are operations written once, in plain arithmetic over the natives, that compiled backends compile
from that one definition (`lerp`: PyTorch's two-sided formula). The generic versions dispatch on the
argument's type so that rules run unchanged on NumPy, PyTorch and Python scalars; for tensors `lerp` calls
`torch.lerp` itself, whose result the formula reproduces.

A rule's own helpers (plain-arithmetic functions it calls, like `regularized_gradient` here) need no
registration: `Rule.helpers` finds them in the rule's code and backends compile them with it.

Branches in a rule (`if maximize:`, `if amsgrad:`) test *structural* flags, Python bools declared in
`Rule.flags`; continuous hyperparameters (lr, betas, eps, ...) may be arrays, so a sweep can broadcast them.
To add a native: its generic version here, its name in `NATIVE`, and a version in each compiled backend
(`backends/numba_cpu.py`, `backends/triton_gpu.py`); `tests/rules/test_primitives.py` checks they agree.
"""

from __future__ import annotations

import math


def sqrt(x):
    """Elementwise square root (NaN for negative input, as `torch.sqrt`)."""
    if isinstance(x, (int, float)):
        return math.sqrt(x) if x >= 0 else math.nan
    if hasattr(x, "sqrt"):  # torch.Tensor
        return x.sqrt()
    import numpy

    return numpy.sqrt(x)


def maximum(a, b):
    """Elementwise maximum that propagates NaN, as `torch.maximum`."""
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a if (a > b or a != a) else b
    if _is_tensor(a) or _is_tensor(b):
        return _torch_pair("maximum", a, b)
    import numpy

    return numpy.maximum(a, b)


def minimum(a, b):
    """Elementwise minimum that propagates NaN, as `torch.minimum`."""
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a if (a < b or a != a) else b
    if _is_tensor(a) or _is_tensor(b):
        return _torch_pair("minimum", a, b)
    import numpy

    return numpy.minimum(a, b)


def where(condition, a, b):
    """`a` where `condition` holds, else `b`, elementwise (both are evaluated)."""
    if isinstance(condition, bool):
        return a if condition else b
    if _is_tensor(condition):
        import torch

        return torch.where(condition, a, b)
    import numpy

    return numpy.where(condition, a, b)


def sign(x):
    """−1 for x < 0, 1 for x > 0, 0 for ±0 and for NaN, as `torch.sign` (NumPy's sign keeps NaN)."""
    if isinstance(x, (int, float)):
        return float(x > 0) - float(x < 0)
    if _is_tensor(x):
        return x.sign()
    import numpy

    return numpy.sign(numpy.nan_to_num(x))  # NaN → 0; ±inf become ±(largest finite): the same sign


def abs(x):  # noqa: A001 (the natural name; rules see it instead of the builtin)
    """|x| elementwise."""
    if isinstance(x, (int, float)):
        return -x if x < 0 else x + 0.0  # (+0.0 turns −0.0 into 0.0, as torch.abs)
    if _is_tensor(x):
        return x.abs()
    import numpy

    return numpy.abs(x)


def lerp_formula(start, end, weight):
    """`start + weight * (end - start)` as `torch.lerp` computes it, written once for every backend.

    PyTorch switches to `end - (end - start) * (1 - weight)` where |weight| >= 0.5, so that weight = 1
    returns `end` exactly; following it keeps results bit-compatible with `torch.optim`'s
    `exp_avg.lerp_(grad, 1 - beta1)`. `weight` may be an array (a vectorized sweep over β): the choice is
    then made per element.
    """
    return where(abs(weight) < 0.5, start + weight * (end - start), end - (end - start) * (1 - weight))


def lerp(start, end, weight):
    """`lerp_formula`, through `torch.lerp` for tensors (the very kernel `torch.optim` calls)."""
    if _is_tensor(start):
        import torch

        return torch.lerp(start, end, weight)
    return lerp_formula(start, end, weight)


def _is_tensor(x) -> bool:
    return hasattr(x, "new_tensor")


def _torch_pair(operation, a, b):
    """`torch.maximum`/`torch.minimum` where one side may be a Python number (a coefficient such as a limit)."""
    import torch

    tensor = a if _is_tensor(a) else b
    a, b = (torch.as_tensor(x, dtype=tensor.dtype, device=tensor.device) if not _is_tensor(x) else x for x in (a, b))
    return getattr(torch, operation)(a, b)


def regularized_gradient(param, grad, weight_decay, use_weight_decay, maximize):
    """The gradient every rule starts from: negated to maximize, plus L2 decay `weight_decay * param`.

    `use_weight_decay` is the derived flag `any_nonzero(weight_decay)` (rules/base.py): PyTorch adds no decay
    term at λ = 0, and a lab sweep over λ (0 included) adds it for every config, exactly 0 · θ for λ = 0.
    """
    if maximize:
        grad = -grad
    if use_weight_decay:
        grad = grad + weight_decay * param
    return grad


#: Names a backend must provide natively, each an elementwise operation on its own scalars or blocks
#: (e.g. `np.sqrt` for Numba, `tl.sqrt_rn` for Triton). Their meaning is fixed by the generic versions above.
NATIVE = ("sqrt", "maximum", "minimum", "where", "sign", "abs")
#: Operations written once over the natives, compiled by each backend from this one definition, by name.
FORMULAS = {"lerp": lerp_formula}
