"""The playground's guards, as ASGI middleware: what any request may cost the server, checked before it runs.

    HostCheck   a Host header that is not a loopback name gets 400 (the page on 127.0.0.1 cannot be reached
                through another name: a DNS-rebinding page in the user's browser is refused)
    RunLimit    at most `limit` runs (and grids) in flight; one more gets 503 at once, with Retry-After
    BodyLimit   a body over `limit` bytes gets 413, one that trickles in slower than `timeout` seconds 408

Each answers from the event loop without reading the body or starting any work, so the answer is immediate
however busy the worker threads are. The uvicorn side (header and keep-alive timeouts) is in `server.py`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
from typing import Any

from fastapi import HTTPException
from fastapi.responses import JSONResponse

#: Host names a server bound to loopback answers to, besides loopback IP literals (127.0.0.1, [::1], ...).
LOOPBACK_NAMES = frozenset({"localhost"})


#: A Host header: a name or IPv4 literal, or a bracketed IPv6 literal, then an optional port.
HOST_HEADER = re.compile(r"(?:\[(?P<ipv6>[0-9a-f:.]+)\]|(?P<name>[^:\[\]]+))(?::[0-9]{1,5})?")


def loopback_host(host: str) -> bool:
    """Whether a Host header's value (port allowed: `localhost:8000`, `[::1]:8000`) names this machine."""
    parsed = HOST_HEADER.fullmatch(host.strip().lower())
    if parsed is None:
        return False
    name = parsed.group("ipv6") or parsed.group("name").rstrip(".")
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class HostCheck:
    """Refuse, with 400, any request whose Host header does not name this machine (see `loopback_host`)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            if not loopback_host(host):
                detail = (f"Host header {host!r} refused: this playground listens on loopback and answers only to "
                          f"localhost, 127.0.0.1 and [::1] (a guard against DNS rebinding)")
                await JSONResponse(status_code=400, content={"detail": detail})(scope, receive, send)
                return
        await self.app(scope, receive, send)


class RunLimit:
    """At most `limit` requests to the `paths` that compute (runs, grids) in flight; more get 503 at once.

    A slot is held until the answer is sent, including a run whose client went away (its worker finishes it),
    so `limit` bounds the workers busy and the memory held at once. The 503 carries
    `Retry-After: 1`: runs take milliseconds to a second.
    """

    def __init__(self, app: Any, limit: int, paths: str) -> None:
        if limit < 1:
            raise ValueError(f"Invalid limit: {limit!r} (must be at least 1)")
        self.app = app
        self.limit = limit
        self.paths = re.compile(paths)
        self.in_flight = 0  # changed on the event loop only: no lock needed

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not self.paths.fullmatch(scope["path"]):
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            busy = JSONResponse(status_code=503, headers={"Retry-After": "1"},
                                content={"detail": f"busy: {self.limit} runs in flight; retry in a second"})
            await busy(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


class BodyLimit:
    """Refuse a request body over `limit` bytes with 413 (the largest valid one is ~10 kB), and one that has not
    fully arrived `timeout` seconds after the request started with 408.

    A declared `Content-Length` is checked before anything is read; a body without one (chunked) is counted
    as it arrives and refused as soon as it passes the limit, so no request can make the server buffer more.
    """

    def __init__(self, app: Any, limit: int, timeout: float) -> None:
        self.app = app
        self.limit = limit
        self.timeout = timeout

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = f"request body over {self.limit} bytes"
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await JSONResponse(status_code=413, content={"detail": too_large})(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        received = 0
        complete = False

        async def counted_receive() -> dict[str, Any]:
            nonlocal received, complete
            if complete:  # after the body, receive() only waits for the client to leave: no deadline
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.0))
            except asyncio.TimeoutError:
                raise HTTPException(status_code=408,  # FastAPI answers it as it is
                                    detail=f"request body not received within {self.timeout:g} s") from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if received > self.limit:
                    raise HTTPException(status_code=413, detail=too_large)
            return message

        await self.app(scope, counted_receive, send)
