"""The harness: start real process groups (gloo, CPU, loopback) and report per scenario, never hang.

`run_scenarios(names)` starts `WORLD_SIZE` processes running `worker.py`, which rendezvous on a free
loopback port and run the named scenarios in order, logging each start and outcome. The harness polls the
processes; as soon as one exits with an error it stops the others (a rank left waiting in a collective would
otherwise block until the collective timeout) and records that scenario's failure: which rank, which
scenario, the traceback. The scenarios after it run again in a fresh group, so each keeps its own verdict.
A rank that stays in one scenario longer than `timeout` seconds (or in start-up and rendezvous longer
than `SETUP_TIMEOUT`) is taken to hang: the group is killed and the scenario each rank was in is reported.

Running many scenarios in one group pays for process start-up, `import torch` and the rendezvous once.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
WORLD_SIZE = 2
#: The pseudo-scenario a rank is in from process start until the rendezvous is done.
SETUP = "<setup>"
#: Seconds a rank may spend in one scenario before the harness declares a hang and kills the group.
SCENARIO_TIMEOUT = 120.0
#: Seconds a rank may spend starting (`import torch`) and in the rendezvous.
SETUP_TIMEOUT = 90.0


@dataclass(frozen=True)
class Outcome:
    """A scenario's verdict: `failure` is None when every rank finished it, else a readable report."""

    scenario: str
    failure: str | None = None

    def check(self) -> None:
        if self.failure is not None:
            pytest.fail(self.failure, pytrace=False)


def free_port() -> int:
    """A loopback TCP port nobody listens on now (the rendezvous binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_scenarios(scenarios: list[str], *, module: str = "scenarios", world_size: int = WORLD_SIZE,
                  timeout: float = SCENARIO_TIMEOUT) -> dict[str, Outcome]:
    """Run `scenarios` (names of functions in `module`) on `world_size` ranks: one `Outcome` each."""
    outcomes: dict[str, Outcome] = {}
    remaining = list(scenarios)
    while remaining:
        group_outcomes = _run_group(remaining, module, world_size, timeout)
        outcomes.update(group_outcomes)
        remaining = [name for name in remaining if name not in outcomes]
    return outcomes


def _run_group(scenarios: list[str], module: str, world_size: int, timeout: float) -> dict[str, Outcome]:
    """One process group over `scenarios`: outcomes for the ones it decided (all, or up to the first failure)."""
    with tempfile.TemporaryDirectory(prefix="optimlab-distributed-") as directory:
        workdir = Path(directory)
        port = free_port()
        environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        processes: list[subprocess.Popen] = []
        stopped: set[int] = set()  # the ranks the harness had to kill
        try:
            for rank in range(world_size):
                command = [sys.executable, str(HERE / "worker.py"), "--rank", str(rank), "--world-size",
                           str(world_size), "--port", str(port), "--workdir", str(workdir), "--module", module,
                           *scenarios]
                with (workdir / f"rank-{rank}.out").open("w") as output:
                    processes.append(subprocess.Popen(command, cwd=HERE, env=environment, stdout=output,
                                                      stderr=subprocess.STDOUT))
            first_failed, timed_out = _wait(processes, [workdir / f"rank-{rank}.jsonl" for rank in range(world_size)],
                                            timeout)
        finally:  # whatever happened (a failure, the timeout, an interrupt): no rank outlives its group
            for rank, process in enumerate(processes):
                if process.poll() is None:
                    process.kill()
                    stopped.add(rank)
                process.wait()
        logs = [_read_log(workdir / f"rank-{rank}.jsonl") for rank in range(world_size)]
        outputs = [(workdir / f"rank-{rank}.out").read_text(errors="replace") for rank in range(world_size)]

    if first_failed is None and not timed_out:
        done = [name for name in scenarios if all(_status(log, name) == "ok" for log in logs)]
        return {name: Outcome(name) for name in done} | {
            name: Outcome(name, "every rank exited cleanly without reporting this scenario")
            for name in scenarios if name not in done}
    if timed_out:
        where = ", ".join(f"rank {rank} in {_last_started(log)!r}" for rank, log in enumerate(logs))
        scenario = min((_last_started(log) for log in logs), key=lambda name: _order(scenarios, name))
        limit = SETUP_TIMEOUT if scenario == SETUP else timeout
        report = (f"scenario {scenario!r} timed out: a rank spent more than {limit:.0f} s in it (ranks were: {where}); "
                  "the harness killed the group")
    else:
        # The root cause is the earliest error: a rank that raises makes the others fail soon after
        # (a collective's peer closed the connection), and they may all exit before the harness looks.
        errors = {rank: [entry for entry in log if entry["status"] == "error"] for rank, log in enumerate(logs)}
        failed = sorted((entries[-1]["time"], rank) for rank, entries in errors.items() if entries)
        rank = failed[0][1] if failed else first_failed
        scenario = _last_started(logs[rank])
        detail = errors[rank][-1]["detail"] if errors[rank] else (
            f"{_exit_description(processes[rank].returncode)} without a Python traceback; its output ends:\n"
            + outputs[rank][-3000:])
        others = "; ".join(f"rank {other} {_fate(other, errors[other], stopped, processes[other])}"
                           for other in range(world_size) if other != rank)
        report = f"scenario {scenario!r} failed in rank {rank} of {world_size} ({others}):\n{detail}"
    if scenario == SETUP:
        return {name: Outcome(name, report) for name in scenarios}
    passed = {name: Outcome(name) for name in scenarios[:scenarios.index(scenario)]
              if all(_status(log, name) == "ok" for log in logs)}
    return passed | {scenario: Outcome(scenario, report)}


def _fate(rank: int, errors: list[dict], stopped: set[int], process: subprocess.Popen) -> str:
    """What became of a rank other than the one that failed first."""
    if errors:
        return f"then failed too: {errors[-1]['detail'].strip().splitlines()[-1]}"
    if rank in stopped:
        return "was stopped by the harness"
    return "had finished" if process.returncode == 0 else _exit_description(process.returncode)


def _exit_description(returncode: int) -> str:
    if returncode < 0:
        return f"was killed by signal {signal.Signals(-returncode).name}"
    return f"exited with status {returncode}"


def _order(scenarios: list[str], name: str) -> int:
    return scenarios.index(name) if name in scenarios else -1


def _wait(processes: list[subprocess.Popen], logs: list[Path], timeout: float) -> tuple[int | None, bool]:
    """Poll until all ranks exit cleanly, one fails, or one outstays `timeout` in a scenario (`SETUP_TIMEOUT`
    in start-up); the caller kills any still running.

    Returns (a rank that has failed or None, whether the group timed out).
    """
    started = time.time()
    while True:
        codes = [process.poll() for process in processes]
        failed = [rank for rank, code in enumerate(codes) if code not in (None, 0)]
        if failed:
            return failed[0], False
        if all(code == 0 for code in codes):
            return None, False
        now = time.time()
        for log, code in zip(logs, codes, strict=True):
            if code is not None:  # this rank is done; the others may still be working
                continue
            entries = _read_log(log)
            scenario, since = (entries[-1]["scenario"], entries[-1]["time"]) if entries else (SETUP, started)
            if now - since > (SETUP_TIMEOUT if scenario == SETUP else timeout):
                return None, True
        time.sleep(0.1)


def _read_log(path: Path) -> list[dict]:
    """A rank's records so far (a line still being written is left for the next read)."""
    if not path.exists():
        return []
    complete = path.read_text().rpartition("\n")[0]
    return [json.loads(line) for line in complete.splitlines() if line.strip()]


def _last_started(log: list[dict]) -> str:
    started = [entry["scenario"] for entry in log if entry["status"] == "start"]
    return started[-1] if started else SETUP


def _status(log: list[dict], scenario: str) -> str | None:
    statuses = [entry["status"] for entry in log if entry["scenario"] == scenario]
    return statuses[-1] if statuses else None


@pytest.fixture(scope="module")
def scenario_outcomes(request: pytest.FixtureRequest) -> dict[str, Outcome]:
    """The outcomes of the module's `SCENARIOS` that this session selected, all run in one group."""
    selected = {item.callspec.params["scenario"] for item in request.session.items
                if item.module is request.module and hasattr(item, "callspec") and "scenario" in item.callspec.params}
    return run_scenarios([name for name in request.module.SCENARIOS if name in selected])


@pytest.fixture(scope="session")
def harness() -> Callable[..., dict[str, Outcome]]:
    """`run_scenarios`, for tests of the harness itself (test modules cannot import a conftest)."""
    return run_scenarios
