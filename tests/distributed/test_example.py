"""examples/ddp_adamw.py, the script docs/distributed.md shows, runs as documented: under torchrun, 2 ranks."""

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.distributed

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "ddp_adamw.py"
TIMEOUT = 120


def test_the_ddp_example_matches_torch_optim_in_every_rank_under_torchrun():
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(EXAMPLE)]
    # A session of its own, so that a hang is ended by killing torchrun and its workers together.
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"torchrun did not finish within {TIMEOUT} s; its output:\n{output}")

    assert process.returncode == 0, output
    # The two ranks print concurrently, so their lines may interleave: match each report, not each line.
    differences = dict(re.findall(r"rank (\d): max \|optimlab - torch\.optim\| [a-z0-9 ]+ = ([0-9.e+-]+)", output))
    assert sorted(differences) == ["0", "1"], output
    assert all(float(difference) < 1e-5 for difference in differences.values()), output
