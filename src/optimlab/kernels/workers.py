"""The work-sharing pool the Numba backend runs its passes on: helper threads and the calling thread take
pieces (runs of consecutive chunks of a chunk table, `optimlab.kernels.plan.ChunkTable`) of one pass.

Backend-neutral: a pass is any `work(first, last, *arguments)` over a range of chunks that releases the GIL
(Numba's `nogil=True` drivers), so that the threads really run at once.
"""

from __future__ import annotations

import functools
import os
import queue
import threading
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np

#: Pieces (runs of consecutive chunks, equal in elements) per thread: the unit threads take work in.
PIECES_PER_THREAD = 4
#: Below this many elements a pass runs on the calling thread alone: waking helpers would cost more.
PARALLEL_MIN = 1 << 16


def pieces(chunk_sizes: np.ndarray, threads: int) -> list[tuple[int, int]]:
    """Cut the chunks into runs of about equal elements, `PIECES_PER_THREAD` per thread (one if small)."""
    total = int(chunk_sizes.sum())
    if threads == 1 or total < PARALLEL_MIN:
        return [(0, len(chunk_sizes))]
    ends = np.cumsum(chunk_sizes)
    targets = np.arange(1, threads * PIECES_PER_THREAD) * (total / (threads * PIECES_PER_THREAD))
    bounds = np.unique(np.concatenate([[0], np.searchsorted(ends, targets, side="right"), [len(chunk_sizes)]]))
    return [(int(first), int(last)) for first, last in zip(bounds[:-1], bounds[1:], strict=True) if last > first]


class Workers:
    """Helper threads for a pass, in a work-sharing scheme where the calling thread works too.

    Numba's own `parallel=True` launches were measured at ~8 ms instead of 0.1 ms on 2 cores beside torch:
    Numba's OpenMP runtime and torch's (a second copy) each keep idle threads spinning for milliseconds, and
    a statically scheduled launch waits for its slowest thread. Here helpers block without spinning, every
    thread takes the next piece of one shared `Pass`, and the caller waits only for pieces already taken,
    so a helper the OS has not scheduled yet delays nothing: the caller does its share instead.

    Helper threads do not survive `os.fork()`: a child forgets its parent's and starts its own on demand.
    """

    def __init__(self) -> None:
        self._inboxes: list[queue.SimpleQueue] = []
        self._starting = threading.Lock()
        os.register_at_fork(after_in_child=functools.partial(_forget_helpers, weakref.ref(self)))

    def run(self, pieces: Sequence[tuple[int, int]], work: Any, arguments: tuple, helpers: int) -> None:
        """`work(first, last, *arguments)` for every piece, on this thread and up to `helpers` others.

        If a piece raises, on any thread, or Ctrl-C interrupts the caller, no further piece is started and
        the pieces helpers are running are waited for, so nothing writes once this returns or raises.
        """
        work_pass = Pass(pieces, work, arguments)
        try:
            for inbox in self._helpers(helpers):
                inbox.put(work_pass.help)
            work_pass.work_here()
        finally:
            work_pass.stop_and_wait()
        work_pass.raise_first_error()

    def _helpers(self, count: int) -> list[queue.SimpleQueue]:
        with self._starting:  # two threads stepping at once start the missing helpers once
            while len(self._inboxes) < count:
                inbox: queue.SimpleQueue = queue.SimpleQueue()
                threading.Thread(target=self._serve, args=(inbox,), daemon=True, name="optimlab-numba").start()
                self._inboxes.append(inbox)
            return self._inboxes[:count]

    def _after_fork(self) -> None:
        # only the forking thread exists in the child: work queued for the parent's helpers would pile up
        self._inboxes = []
        self._starting = threading.Lock()

    @staticmethod
    def _serve(inbox: queue.SimpleQueue) -> None:
        while True:
            inbox.get()()


def _forget_helpers(workers: weakref.ref) -> None:
    if (alive := workers()) is not None:
        alive._after_fork()


class Pass:
    """One pass's pieces, handed out one at a time to whichever thread asks, until done or stopped."""

    def __init__(self, pieces: Sequence[tuple[int, int]], work: Any, arguments: tuple) -> None:
        self._pieces = iter(pieces)
        self._work, self._arguments = work, arguments
        self._lock = threading.Lock()
        self._helpers_idle = threading.Condition(self._lock)
        self._stopped = False
        self._helpers_running = 0  # pieces taken by helpers and not finished yet
        self._errors: list[BaseException] = []

    def _take(self, by_helper: bool) -> tuple[int, int] | None:
        with self._lock:
            piece = None if self._stopped else next(self._pieces, None)
            if piece is not None and by_helper:
                self._helpers_running += 1
            return piece

    def help(self) -> None:
        """A helper's share: pieces until none is left or the pass is stopped; errors go to the caller."""
        while (piece := self._take(by_helper=True)) is not None:
            try:
                self._work(*piece, *self._arguments)
            except BaseException as error:  # noqa: B036 (re-raised on the calling thread)
                with self._lock:
                    self._errors.append(error)
                    self._stopped = True
            finally:
                with self._lock:
                    self._helpers_running -= 1
                    if self._helpers_running == 0:
                        self._helpers_idle.notify_all()

    def work_here(self) -> None:
        """The calling thread's share; an exception (Ctrl-C too) propagates to `Workers.run`."""
        while (piece := self._take(by_helper=False)) is not None:
            self._work(*piece, *self._arguments)

    def stop_and_wait(self) -> None:
        """Start no more pieces and wait for the helpers' running ones: after this nothing writes.

        A piece is short, so the wait goes on through Ctrl-C; the interrupt is raised once it is over.
        """
        interrupted = None
        while True:
            try:
                with self._lock:
                    self._stopped = True
                    while self._helpers_running:
                        self._helpers_idle.wait()
                break
            except BaseException as error:  # noqa: B036 (raised below, once the helpers are idle)
                interrupted = interrupted or error
        if interrupted is not None:
            raise interrupted

    def raise_first_error(self) -> None:
        if self._errors:
            raise self._errors[0]
