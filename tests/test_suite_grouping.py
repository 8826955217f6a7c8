"""`make test`'s grouping holds: a module's tests that share a module-scoped fixture run on one xdist worker.

tests/conftest.py marks them with `xdist_group`; pytest-xdist's `--dist loadgroup` keeps a group on one
worker by appending `@group` to the node ids. pytest 9.2 made node ids structured, and xdist 3.8's suffix no
longer takes (pytest-dev/pytest-xdist#1386): the marks stay, the grouping silently goes, and every worker
sets up every such fixture — each worker then ran all 17 distributed scenarios (21 s of setup on each worker,
measured, against 12.5 s on one once grouped), built the wheel, and so on. The dev extra caps pytest below 9.2
until xdist handles it; this test runs a small session the way `make test` does and fails if the grouping is gone.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("xdist")

MODULE = '''
import pytest


@pytest.fixture(scope="module")
def shared():
    """Its scope is what matters: tests/conftest.py groups the tests that use it."""


@pytest.mark.parametrize("index", range(8))
def test_grouped(shared, index):
    pass


@pytest.mark.parametrize("index", range(8))
def test_free(index):
    pass
'''


def test_tests_sharing_a_module_fixture_run_on_one_worker(tmp_path: Path) -> None:
    shutil.copy(Path(__file__).with_name("conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "test_shared.py").write_text(MODULE)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    environment = {name: value for name, value in os.environ.items() if name != "PYTEST_ADDOPTS"}  # -v stays
    result = subprocess.run([sys.executable, "-m", "pytest", "-v", "-n", "2", "--dist", "loadgroup",
                             "-p", "no:cacheprovider", "-p", "no:randomly", str(tmp_path)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120, env=environment)
    assert result.returncode == 0, result.stdout + result.stderr
    workers = {match.group(2): match.group(1)
               for match in re.finditer(r"\[(gw\d+)\].*PASSED \S*::(test_\w+\[\d+\])", result.stdout)}
    assert len(workers) == 16, result.stdout
    grouped = {worker for test, worker in workers.items() if test.startswith("test_grouped")}
    assert len(grouped) == 1, f"the module-fixture tests ran on {sorted(grouped)}:\n{result.stdout}"
