"""One rank of a process group started by the harness in `conftest.py`: runs scenarios, records outcomes.

    python worker.py --rank R --world-size N --port P --workdir DIR SCENARIO [SCENARIO ...]

Each scenario is a function in `scenarios.py` (or `harness_scenarios.py`, for the harness's own tests)
taking `(rank, world_size, workdir)`. Before and after each one the rank appends a JSON line to
`DIR/rank-R.jsonl`; on the first exception it records the traceback and the time and exits at once with status 1
(without tearing down the process group, which could block on the other ranks), so the harness can stop the
others and name the rank that failed first, the scenario and the error.
"""

from __future__ import annotations

import argparse
import datetime
import faulthandler
import gc
import importlib
import json
import os
import sys
import time
import traceback
from pathlib import Path

#: How long a collective (and the rendezvous) may wait for the other ranks before raising.
COLLECTIVE_TIMEOUT = datetime.timedelta(seconds=60)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world-size", type=int, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--module", default="scenarios")
    parser.add_argument("scenarios", nargs="+")
    arguments = parser.parse_args()
    log = (arguments.workdir / f"rank-{arguments.rank}.jsonl").open("a", buffering=1)

    def record(scenario: str, status: str, detail: str = "") -> None:
        log.write(json.dumps({"scenario": scenario, "status": status, "detail": detail, "time": time.time()}) + "\n")
        log.flush()
        os.fsync(log.fileno())

    faulthandler.enable()  # a crash (e.g. SIGSEGV in a kernel) prints the Python stack to the rank's output
    current = "<setup>"
    record(current, "start")
    try:
        import torch
        import torch.distributed as dist

        torch.set_num_threads(1)
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{arguments.port}", rank=arguments.rank,
                                world_size=arguments.world_size, timeout=COLLECTIVE_TIMEOUT)
        module = importlib.import_module(arguments.module)
        record(current, "ok")
        for current in arguments.scenarios:
            record(current, "start")
            scenario_dir = arguments.workdir / current
            scenario_dir.mkdir(exist_ok=True)
            getattr(module, current)(arguments.rank, arguments.world_size, scenario_dir)
            record(current, "ok")
    except BaseException:  # noqa: B036 - anything, even SystemExit, must reach the harness with its traceback
        record(current, "error", traceback.format_exc())
        sys.stderr.flush()
        os._exit(1)
    gc.collect()  # scenarios' DDP/FSDP modules hold the group: free them before it goes (else gloo may abort)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
