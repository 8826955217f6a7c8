"""The operations a rule's *tensor stage* may call on whole matrices: a small, documented set.

A tensor stage (`Rule.tensor_stage`, contract stage (f): Muon's Newton–Schulz orthogonalization) is written
once over whole tensors and evaluated as it is on NumPy arrays (`Rule.step`, the NumPy front end) and on
torch tensors (the eager backend). Arithmetic operators, elementwise natives (`primitives`) and `.shape`
mean the same on both; the matrix operations below are dispatched on the argument's type, each meaning what
the torch function in brackets means:

    matmul(a, b)                        the matrix product a b                          (torch.matmul)
    transpose(x)                        xᵀ of a 2-D x (a view)                          (Tensor.T)
    norm(x)                             the Frobenius norm ‖x‖, in x's dtype            (Tensor.norm)
    addmm(input, mat1, mat2, beta, alpha)   β·input + α·(mat1 mat2), rounded once       (torch.addmm)
    bfloat16(x)                         x rounded to bfloat16                           (Tensor.bfloat16)
    axis_mean(x, axis)                  the mean over `axis`, the axis kept             (Tensor.mean(dim, keepdim=True))

`axis_mean` is also what an `axis_finish` (stage (b), Adafactor's mean of its row factor) may call on the
per-row and per-column tensors.

`bfloat16` is the one whose meaning depends on the array library: NumPy has no bfloat16, so on NumPy arrays
it returns `x` as it is and the stage computes in the array's own dtype (float32 or float64), where torch
computes in bfloat16. Results therefore agree with torch to bfloat16's precision on NumPy, exactly on
torch tensors (the same calls on the same dtypes).

Fused backends (Numba, Triton) compile elementwise code only: they decline rules with a tensor stage, and
`backend="auto"` falls back to eager.
"""

from __future__ import annotations


def _is_tensor(x) -> bool:
    return hasattr(x, "new_tensor")


def matmul(a, b):
    """The matrix product a b (`@` means it on NumPy arrays and torch tensors alike)."""
    return a @ b


def transpose(x):
    """xᵀ of a 2-D array or tensor: a view, as `Tensor.T`."""
    return x.T


def norm(x):
    """The Frobenius norm √(Σ x²) of the whole of `x`, in x's dtype (a 0-dim tensor for tensors)."""
    if _is_tensor(x):
        return x.norm()
    import numpy

    return numpy.linalg.norm(x)


def addmm(input, mat1, mat2, beta, alpha):  # noqa: A002 (torch's name)
    """β·input + α·(mat1 mat2): `torch.addmm`, which rounds once (BLAS gemm); NumPy in its own dtype."""
    if _is_tensor(input):
        import torch

        return torch.addmm(input, mat1, mat2, beta=beta, alpha=alpha)
    return beta * input + alpha * (mat1 @ mat2)


def bfloat16(x):
    """`x` rounded to bfloat16 (torch), or `x` as it is where the library has no bfloat16 (NumPy)."""
    if _is_tensor(x):
        return x.bfloat16()
    return x


def axis_mean(x, axis):
    """The mean of `x` over `axis`, the axis kept (`Tensor.mean(dim=axis, keepdim=True)`)."""
    if _is_tensor(x):
        return x.mean(dim=axis, keepdim=True)
    return x.mean(axis=axis, keepdims=True)


#: The matrix operations a tensor stage may call, besides arithmetic and the elementwise natives.
MATRIX_NATIVE = ("matmul", "transpose", "norm", "addmm", "bfloat16", "axis_mean")
