"""The wheel installs as a library without PyTorch: the rules, the NumPy optimizers and `optimlab trace`.

Builds the wheel from a copy of the sources (pip's isolated build environment), installs it with its core
dependencies only into a fresh venv, and uses it from a directory outside the repository. Skipped when PyPI
cannot be reached (the core dependencies come from the pip cache or PyPI).
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parents[2]

NUMPY_FRONT_END = """
import numpy as np
import optimlab.numpy as onp

params = {"x": np.array([0.0])}
optimizer = onp.Adam(lr=0.1, eps=0.0, eps_root=1e-8)
for _ in range(10):
    optimizer.update(params, {"x": 4 * (2 * params["x"] - 10)})   # f(x) = (2x - 10)^2
print(f"{params['x'][0]:.10f}")
"""


def _run(command: list[str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def _pypi_reachable(directory: Path) -> bool:
    probe = _run([sys.executable, "-m", "pip", "download", "--no-deps", "--dest", str(directory), "typer"], directory)
    return probe.returncode == 0


class Installed(NamedTuple):
    wheel: Path
    venv: Path


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """The built wheel, and a fresh venv (no system site-packages) holding it and its core dependencies only."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(work / "dist"), str(source)],
                 work)
    if built.returncode != 0:
        if not _pypi_reachable(work):
            pytest.skip("PyPI is unreachable: the isolated build needs setuptools from it")
        pytest.fail(f"pip wheel failed:\n{built.stdout}\n{built.stderr}")
    (wheel,) = (work / "dist").glob("optimlab-*.whl")
    environment = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(environment)], check=True, timeout=120)
    installed = _run([str(environment / "bin" / "pip"), "install", "--quiet", str(wheel)], work)
    if installed.returncode != 0:
        if not _pypi_reachable(work):
            pytest.skip("PyPI is unreachable: the core dependencies come from it")
        pytest.fail(f"pip install of the wheel failed:\n{installed.stdout}\n{installed.stderr}")
    return Installed(wheel, environment)


@pytest.fixture
def venv(installed: Installed) -> Path:
    return installed.venv


@pytest.mark.slow
def test_wheel_carries_license_and_type_marker(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as archive:
        names = archive.namelist()
        (metadata,) = (name for name in names if name.endswith(".dist-info/METADATA"))
        text = archive.read(metadata).decode()
    assert "optimlab/py.typed" in names
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)
    assert "License-Expression: MIT" in text
    core = [line for line in text.splitlines() if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert sorted(line.split()[1].split(">")[0] for line in core) == ["numpy", "rich", "sympy", "typer"]


@pytest.mark.slow
def test_core_install_has_no_torch_or_numba(venv: Path, tmp_path: Path) -> None:
    for module in ("torch", "numba", "matplotlib", "fastapi"):
        probe = _run([str(venv / "bin" / "python"), "-c", f"import {module}"], tmp_path)
        assert probe.returncode != 0, f"{module} is installed by the core install"


@pytest.mark.slow
def test_numpy_front_end_from_another_directory(venv: Path, tmp_path: Path) -> None:
    result = _run([str(venv / "bin" / "python"), "-c", NUMPY_FRONT_END], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0.9923983799"  # x_10 of the notes' worked example (docs/math.md §6)


@pytest.mark.slow
def test_trace_command_from_another_directory(venv: Path, tmp_path: Path) -> None:
    optimlab = str(venv / "bin" / "optimlab")
    notes = _run([optimlab, "trace", "adam", "--function", "notes", "--lr", "0.1", "--steps", "2", "--format", "csv"],
                 tmp_path)
    assert notes.returncode == 0, notes.stderr
    first = next(csv.DictReader(io.StringIO(notes.stdout)))
    assert (float(first["g"]), float(first["x"])) == pytest.approx((-40.0, 0.1))
    expression = _run([optimlab, "trace", "rmsprop", "--function", "x**2/20 + y**2", "--start", "-7,2",
                       "--steps", "2", "--format", "json"], tmp_path)
    assert expression.returncode == 0, expression.stderr
    assert len(json.loads(expression.stdout)["steps"]) == 2
    version = _run([optimlab, "--version"], tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("optimlab ")


@pytest.mark.slow
def test_missing_extras_name_the_extra(venv: Path, tmp_path: Path) -> None:
    code = "try:\n    import optimlab.torch\nexcept ImportError as error:\n    print(error)"
    front_end = _run([str(venv / "bin" / "python"), "-c", code], tmp_path)
    assert front_end.stdout == "optimlab.torch needs the 'torch' extra: pip install 'optimlab[torch]'\n"
    serve = _run([str(venv / "bin" / "optimlab"), "serve", "--port", "0"], tmp_path, timeout=60)
    assert serve.returncode == 2
    assert serve.stderr.strip() == "error: optimlab serve needs the 'serve' extra: pip install 'optimlab[serve]'"
    tour = _run([str(venv / "bin" / "optimlab"), "tour", "--out", str(tmp_path / "report")], tmp_path, timeout=60)
    assert tour.returncode == 2
    assert "optimlab tour needs the 'lab' extra: pip install 'optimlab[lab]'" in tour.stderr
