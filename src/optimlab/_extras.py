"""Optional dependencies: which extra installs each one, and the one-line error when it is missing.

`pip install optimlab` brings the rules, the NumPy optimizers and `optimlab trace`; everything else comes
with an extra (`pip install 'optimlab[torch]'`, `[lab]`, `[serve]`, `[gpu]`, `[all]`). Modules that need an
extra import it inside `requires_extra`, so a missing package names the extra instead of itself:

    with requires_extra("optimlab.torch"):
        import torch
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager

#: Top-level module -> the extra that installs it (see pyproject.toml's optional-dependencies).
EXTRA_OF_MODULE = {
    "torch": "torch",
    "numba": "torch",
    "triton": "gpu",
    "matplotlib": "lab",
    "PIL": "lab",
    "sklearn": "lab",
    "fastapi": "serve",
    "starlette": "serve",
    "pydantic": "serve",
    "uvicorn": "serve",
    "plotly": "serve",
}


def missing_extra_message(feature: str, extra: str) -> str:
    """The one line a user sees: what needs what, and the command that installs it."""
    return f"{feature} needs the '{extra}' extra: pip install 'optimlab[{extra}]'"


def extra_of(error: ModuleNotFoundError) -> str | None:
    """The extra that would install the module `error` misses, or None if no extra provides it."""
    return EXTRA_OF_MODULE.get((error.name or "").partition(".")[0])


def missing_modules(extra: str) -> list[str]:
    """The modules of `extra` that are not installed (empty when the extra is)."""
    return [module for module, provider in EXTRA_OF_MODULE.items()
            if provider == extra and importlib.util.find_spec(module) is None]


class MissingExtraError(ModuleNotFoundError):
    """An optional dependency is not installed; the message names the extra that installs it."""

    def __init__(self, feature: str, extra: str, module: str) -> None:
        super().__init__(missing_extra_message(feature, extra), name=module)
        self.extra = extra


@contextmanager
def requires_extra(feature: str) -> Iterator[None]:
    """Turn a missing optional module imported in the block into a `MissingExtraError` naming its extra."""
    try:
        yield
    except MissingExtraError:
        raise
    except ModuleNotFoundError as error:
        extra = extra_of(error)
        if extra is None:
            raise
        raise MissingExtraError(feature, extra, error.name or "") from None
