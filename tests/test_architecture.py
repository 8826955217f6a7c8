"""The layers' boundaries, read from the source: front ends use the backend registry, never a backend's insides."""

import ast
from pathlib import Path

import pytest

import optimlab
import optimlab.backends

SOURCE = Path(optimlab.__file__).parent
FRONT_ENDS = sorted([*SOURCE.glob("torch/*.py"), *SOURCE.glob("numpy/*.py")])
#: What `optimlab.backends` offers front ends: the registry and the contract.
REGISTRY_API = {"BACKENDS", "Backend", "register", "resolve"}


def _imports(path: Path) -> list[tuple[str, str | None]]:
    """(absolute module, imported name or None) for every import statement of `path`."""
    package = ".".join(path.relative_to(SOURCE.parent).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(filter(None, (base, node.module)))
            found += [(module, alias.name) for alias in node.names]
    return found


def _offenders(path: Path) -> list[str]:
    offenders = []
    for module, name in _imports(path):
        if module.startswith("optimlab.backends."):
            offenders.append(f"{module}.{name}" if name else module)
        elif module == "optimlab.backends" and name not in REGISTRY_API:
            offenders.append(f"{module}.{name}")
    return offenders


def test_the_registry_api_is_what_the_backends_package_exports():
    assert REGISTRY_API <= set(vars(optimlab.backends))


def test_the_import_reader_sees_relative_imports():
    assert ("optimlab.backends", "resolve") in _imports(SOURCE / "torch" / "_plans.py")
    assert ("optimlab.rules", "REGISTRY") in _imports(SOURCE / "numpy" / "__init__.py")


@pytest.mark.parametrize("path", FRONT_ENDS, ids=lambda path: str(path.relative_to(SOURCE)))
def test_no_front_end_imports_a_backends_internals(path):
    assert _offenders(path) == []
