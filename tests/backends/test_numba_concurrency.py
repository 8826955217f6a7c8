"""The numba backend under threads, `os.fork()` and Ctrl-C (issue 12, items 6, 8 and 9)."""

import itertools
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from optimlab.backends import numba_cpu
from optimlab.kernels import workers
from optimlab.rules import RULES


def test_threads_building_the_same_new_drivers_each_get_the_finished_driver(tmp_path, monkeypatch):
    monkeypatch.setenv("OPTIMLAB_KERNEL_CACHE", str(tmp_path / "cache"))  # empty: every driver is new
    rule, threads = RULES["sgd"], 4
    variants = [numba_cpu.Variant("float32", "float32", (("use_weight_decay", False), ("maximize", maximize)), (),
                                  grad_scale, kinds)
                for kinds in itertools.product(("python", "float32", "float64"), repeat=2)
                for maximize in (False, True) for grad_scale in (False, True)]
    built = []
    try:
        for variant in variants:
            start, results = threading.Barrier(threads), []

            def build(variant=variant, start=start, results=results):
                start.wait()
                try:
                    results.append(numba_cpu.driver(rule, variant))
                except Exception as error:  # noqa: BLE001 (collected for the assertion below)
                    results.append(error)

            workers = [threading.Thread(target=build) for _ in range(threads)]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
            built += [result for result in results if not isinstance(result, Exception)]
            assert [type(result) for result in results if isinstance(result, Exception)] == []
            assert len({id(result) for result in results}) == 1  # one driver, fully executed, for all
    finally:  # their cache directory is about to go: later tests build their own
        for key, run in list(numba_cpu._DRIVERS.items()):
            if any(run is known for known in built):
                del numba_cpu._DRIVERS[key]
                sys.modules.pop(run.py_func.__module__, None)


@pytest.mark.slow
def test_a_forked_child_steps_with_its_own_helpers_and_queues_nothing_for_its_parents():
    script = textwrap.dedent("""
        import os, threading, torch
        from optimlab.backends import numba_cpu
        from optimlab.kernels import workers
        from optimlab.rules import RULES

        numba_cpu.CHUNK, workers.PARALLEL_MIN = 4, 1  # a tiny tensor still makes a multi-threaded pass
        torch.set_num_threads(2)
        rule = RULES["sgd"]
        hyperparameters = rule.defaults(lr=1e-3)
        params, grads = [torch.ones(64)], [torch.ones(64)]

        def step():
            numba_cpu.BACKEND.step(rule, hyperparameters, rule.coefficients(1, **hyperparameters), params,
                                   grads, [[]])

        step()  # the parent's helper thread is running
        steps = 20_000
        child = os.fork()
        if child == 0:
            try:
                for _ in range(steps):
                    step()
                expected = torch.ones(64)
                for _ in range(steps + 1):
                    expected.sub_(1e-3)
                pending = sum(inbox.qsize() for inbox in numba_cpu._WORKERS._inboxes)
                print(pending, threading.active_count(), torch.equal(params[0], expected), flush=True)
            finally:
                os._exit(0)
        os.waitpid(child, 0)
    """)
    output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    pending, threads, correct = output.split()
    assert int(pending) <= 1  # at most the last pass's, not yet picked up
    assert int(threads) == 2  # the child's main thread and its one helper
    assert correct == "True"


@pytest.mark.slow
def test_a_child_forked_while_another_thread_compiles_compiles_its_own_drivers(tmp_path):
    # the child would inherit Numba's compiler lock held by a thread it does not have, and wait forever
    script = textwrap.dedent("""
        import os, signal, sys, threading, time, torch
        from numba.core import event
        from optimlab.backends import numba_cpu
        from optimlab.rules import RULES

        rule = RULES["sgd"]
        hyperparameters = rule.defaults(lr=0.5)

        def step(dtype):
            params = [torch.ones(8, dtype=dtype)]
            numba_cpu.BACKEND.step(rule, hyperparameters, rule.coefficients(1, **hyperparameters), params,
                                   [torch.ones(8, dtype=dtype)], [[]])
            assert torch.equal(params[0], torch.full((8,), 0.5, dtype=dtype))

        compiling, forking = threading.Event(), threading.Event()

        class HoldTheFirstCompile(event.Listener):
            def on_start(self, _event):
                if not compiling.is_set():
                    compiling.set()
                    forking.wait()
                    time.sleep(0.5)  # the main thread forks meanwhile: this compile is still in flight

            def on_end(self, _event):
                pass

        event.register("numba:compile", HoldTheFirstCompile())
        compiler = threading.Thread(target=step, args=(torch.float64,))
        compiler.start()
        compiling.wait()
        forking.set()
        child = os.fork()
        if child == 0:
            step(torch.float32)  # a new variant: compiled in the child
            os._exit(0)
        deadline = time.monotonic() + 60
        while (status := os.waitpid(child, os.WNOHANG))[0] == 0:
            if time.monotonic() > deadline:
                os.kill(child, signal.SIGKILL)
                os.waitpid(child, 0)
                sys.exit("the child hung in its first compile")
            time.sleep(0.05)
        compiler.join()
        print("child exit code", os.waitstatus_to_exitcode(status[1]))
    """)
    environment = {**os.environ, "OPTIMLAB_KERNEL_CACHE": str(tmp_path / "cache")}  # empty: compiles
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            env=environment)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["child", "exit", "code", "0"]


def test_a_child_forked_while_another_thread_warns_can_warn():
    script = textwrap.dedent("""
        import os, signal, sys, threading, time, warnings
        from optimlab.backends import kernel_cache

        held, forked = threading.Event(), threading.Event()

        def hold_the_warning_lock():  # where a thread is while it records a warning
            with kernel_cache._warned_lock:
                held.set()
                forked.wait()

        holder = threading.Thread(target=hold_the_warning_lock)
        holder.start()
        held.wait()
        child = os.fork()
        if child == 0:
            warnings.simplefilter("ignore")
            kernel_cache._warn_once("subject", "a warning in the child")
            os._exit(0)
        forked.set()
        deadline = time.monotonic() + 30
        while (status := os.waitpid(child, os.WNOHANG))[0] == 0:
            if time.monotonic() > deadline:
                os.kill(child, signal.SIGKILL)
                os.waitpid(child, 0)
                sys.exit("the child hung on the warning lock")
            time.sleep(0.05)
        holder.join()
        print("child exit code", os.waitstatus_to_exitcode(status[1]))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["child", "exit", "code", "0"]


def test_an_error_in_a_piece_starts_no_further_piece():
    ran = []

    def work(first, last):
        ran.append(first)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        workers.Workers().run([(first, first + 1) for first in range(8)], work, (), helpers=0)
    assert ran == [0]


def test_ctrl_c_waits_for_the_helpers_running_piece_before_it_propagates():
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals are handled on the main thread only")
    caller = threading.get_ident()
    helper_started, finished = threading.Event(), []

    def work(first, last):
        if threading.get_ident() == caller:
            assert helper_started.wait(timeout=60)  # so that the helper surely has a piece
            return
        helper_started.set()
        time.sleep(0.2)  # the caller is waiting for this piece by now
        signal.pthread_kill(caller, signal.SIGUSR1)  # Ctrl-C, as the handler below makes it
        time.sleep(0.3)  # still writing
        finished.append(first)

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGUSR1, interrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            workers.Workers().run([(0, 1), (1, 2)], work, (), helpers=1)
        assert len(finished) == 1  # the helper's piece was over before the interrupt propagated
    finally:
        signal.signal(signal.SIGUSR1, previous)
