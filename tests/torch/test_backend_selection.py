"""`OPTIMLAB_TEST_BACKENDS` (tests/torch/conftest.py) runs the backends it names instead of the default ones, and
stops the run on a name that is not a backend."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def _collect(variable: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "OPTIMLAB_TEST_BACKENDS": variable}
    return subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                           str(HERE / "test_protocol.py")], env=environment, capture_output=True, text=True,
                          cwd=HERE.parent.parent, timeout=300)


@pytest.mark.slow
def test_the_variable_selects_backends_and_refuses_unknown_names():
    eager = _collect("eager")
    assert eager.returncode == 0, eager.stdout + eager.stderr
    tests = [line for line in eager.stdout.splitlines() if "::" in line]
    assert any("eager" in line for line in tests)
    assert not any("numba" in line or "triton" in line for line in tests)

    mistyped = _collect("eager,numbba")
    assert mistyped.returncode == 4
    assert "OPTIMLAB_TEST_BACKENDS='eager,numbba': unknown backend 'numbba' (expected comma-separated names " \
           "from eager, numba, triton" in mistyped.stdout + mistyped.stderr
