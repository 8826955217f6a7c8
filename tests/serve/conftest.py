"""Fixtures for the server and browser tests: the playground served by uvicorn on a free loopback port, and
Chromium.

The server runs in a thread of the test process (no second interpreter to start) on a socket bound to port 0,
configured as `optimlab serve` configures it (`serving`); it is shut down when the module's tests are done.
Chromium is Debian's, driven by Playwright: the tests fail, never skip, when it is missing, because CI installs
it (`make test` depends on `make browser`)."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

#: Debian's Chromium; `OPTIMLAB_CHROMIUM` points elsewhere (another distribution, or a missing path to see the
#: failure message).
CHROMIUM = Path(os.environ.get("OPTIMLAB_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@contextmanager
def serving(app: Any, **options: Any) -> Iterator[str]:
    """`app` under `playground_server(app, **options)` on a free loopback port: its base URL."""
    from optimlab.serve.server import playground_server

    listener = socket.create_server(("127.0.0.1", 0))
    server = playground_server(app, **options)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("uvicorn did not start", pytrace=False)
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        listener.close()


@pytest.fixture(scope="module")
def live_server() -> Iterator[str]:
    """The playground's base URL, e.g. ``http://127.0.0.1:40123``, served as `optimlab serve` serves it."""
    from optimlab.serve import create_app

    with serving(create_app()) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium (`CHROMIUM`) under Playwright; never `playwright install`, which downloads."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} not found: run `make browser` to install Debian's chromium "
                    f"(`make test` does it first)", pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()
