"""Worker processes for the playground's runs and grids, so that the server's event loop never waits for them.

A run holds Python's interpreter lock for most of its second (NumPy on arrays of two numbers); in a thread of
the server, a few of them at once made every other request wait its turn for the lock, a dozen times per
request. In `size` worker processes they run beside the event loop instead, on as many cores as there are,
and the loop stays free to answer the page, refuse a 503 and accept connections.

The workers are forked where the platform can (Linux): a fork starts in milliseconds with everything imported,
and, unlike "spawn", never re-imports the program's main module (a script without a `__main__` guard would run
again in every worker). The server forks them at startup, before it has started any thread.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from fastapi import HTTPException

Result = TypeVar("Result")


def _ready() -> None:
    """A task that only proves a worker has started."""


def _worker_started(server: int) -> None:
    """Make a worker leave with its server: signals back to their defaults (a fork inherits the server's
    handlers, which only set a flag for a loop the worker does not run), Ctrl+C left to the server (it stops
    the workers itself), and an exit as soon as the server is gone, even killed."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch() -> None:
        while os.getppid() == server:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="optimlab-server-watch", daemon=True).start()


class WorkerPool:
    """`size` worker processes, started by `start` or on first use."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.executor: ProcessPoolExecutor | None = None

    def start(self) -> None:
        """Start the workers now (a forking pool starts them all at its first task)."""
        if self.executor is None:
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            self.executor = ProcessPoolExecutor(self.size, mp_context=multiprocessing.get_context(method),
                                                initializer=_worker_started, initargs=(os.getpid(),))
            self.executor.submit(_ready).result()

    async def run(self, function: Callable[..., Result], *args: Any) -> Result:
        """`function(*args)` in a worker (both picklable); a worker that died answers 503 and is replaced."""
        self.start()
        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, function, *args)
        except BrokenProcessPool:
            self.shutdown()
            raise HTTPException(status_code=503, headers={"Retry-After": "1"},
                                detail="a worker process stopped; retry in a second") from None

    def shutdown(self) -> None:
        """Stop the workers (a later `run` starts new ones)."""
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)
            self.executor = None
