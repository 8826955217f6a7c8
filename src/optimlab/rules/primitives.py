"""The few operations a rule may call besides `+ - * /`.

Rules are written with plain arithmetic so that one function evaluates on NumPy arrays, PyTorch tensors,
Python floats and, once compiled, inside Numba and Triton kernels. Arithmetic operators mean the same thing
everywhere; these three elementwise operations do not, so each backend rebinds the names in `NATIVE` (see
`Rule.specialize`) and recompiles the helpers in `HELPERS`, which are plain arithmetic over the natives.

Branches in a rule (`if maximize:`, `if amsgrad:`, `if momentum > 0:`) test *structural* hyperparameters,
which are scalars; continuous ones (lr, betas, eps, ...) may be arrays, so a sweep can broadcast them.

The generic versions below dispatch on the argument's type so that the rules run unchanged on
NumPy, PyTorch and Python scalars.
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
    if hasattr(a, "sqrt") and hasattr(a, "new_tensor"):  # torch.Tensor
        import torch

        return torch.maximum(a, b)
    import numpy

    return numpy.maximum(a, b)


def lerp(start, end, weight):
    """`start + weight * (end - start)`, evaluated as `torch.lerp` does.

    PyTorch switches to `end - (end - start) * (1 - weight)` where |weight| >= 0.5, so that weight = 1
    returns `end` exactly; following it keeps results bit-compatible with `torch.optim`'s
    `exp_avg.lerp_(grad, 1 - beta1)`. `weight` may be an array (a vectorized sweep over β): the choice is
    then made per element.
    """
    if isinstance(weight, (int, float)):
        if -0.5 < weight < 0.5:
            return start + weight * (end - start)
        return end - (end - start) * (1 - weight)
    if hasattr(start, "lerp"):  # torch.Tensor
        import torch

        return torch.lerp(start, end, weight)
    import numpy

    small = numpy.abs(weight) < 0.5
    return numpy.where(small, start + weight * (end - start), end - (end - start) * (1 - weight))


def regularized_gradient(param, grad, weight_decay, maximize):
    """The gradient every rule starts from: negated to maximize, plus L2 decay `weight_decay * param`."""
    if maximize:
        grad = -grad
    if weight_decay != 0:
        grad = grad + weight_decay * param
    return grad


#: Names a backend must provide natively, each an elementwise operation on its own scalars or blocks
#: (e.g. `math.sqrt` for Numba, `tl.sqrt` for Triton). Their meaning is fixed by the generic versions above.
NATIVE = ("sqrt", "maximum", "lerp")
#: Plain-arithmetic helpers a backend recompiles with its natives bound.
HELPERS = {"regularized_gradient": regularized_gradient}
