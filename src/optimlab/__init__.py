"""optimlab: the gradient-descent family written once, right, fast and understandable.

    import optimlab
    optimizer = optimlab.AdamW(model.parameters(), lr=3e-4)          # drop-in for torch.optim.AdamW
    optimizer = optimlab.create("adamw", model.parameters(), lr=3e-4)  # the same, by name

`optimlab.rules` holds the math, `optimlab.numpy` the NumPy optimizers, `optimlab.torch` the PyTorch ones.
Attributes that need PyTorch are imported on first use, so `import optimlab` stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_TORCH_EXPORTS = ("SGD", "Momentum", "Adagrad", "RMSprop", "Adam", "AdamW", "create")


def __getattr__(name: str) -> Any:
    if name in _TORCH_EXPORTS:
        return getattr(importlib.import_module("optimlab.torch"), name)
    raise AttributeError(f"module 'optimlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_TORCH_EXPORTS])


__all__ = ["__version__", *_TORCH_EXPORTS]
