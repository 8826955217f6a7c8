"""uvicorn, configured so that no connection can hold the server: header, body and keep-alive timeouts.

    >>> import socket
    >>> from optimlab.serve import create_app
    >>> from optimlab.serve.server import playground_server
    >>> server = playground_server(create_app())             # then server.run(sockets=[a listening socket])

uvicorn closes a connection idle between requests after `timeout_keep_alive`, but has no deadline for a request
to arrive: a client that opens a connection and sends nothing, or one header byte every few seconds
(slowloris), keeps it forever. `HeaderTimeoutProtocol` closes a connection whose request line and headers are
not complete `header_timeout` seconds after it opened or after its previous answer. The body has its own
deadline (`guards.BodyLimit`, 408), and h11 refuses headers over `MAX_HEADER_BYTES`.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

#: Seconds for a request's line and headers to arrive, from the connection's start or the previous answer.
HEADER_TIMEOUT = 10.0
#: Seconds a connection may stay idle between two requests.
KEEP_ALIVE_TIMEOUT = 5.0
#: The largest request line plus headers h11 accepts (larger: 400). A browser sends well under 2 kB.
MAX_HEADER_BYTES = 16 * 1024


class HeaderTimeoutProtocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, closing a connection whose request headers are late (see the module)."""

    def __init__(self, *args: Any, header_timeout: float = HEADER_TIMEOUT, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout = header_timeout
        self.header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_headers()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the request's headers are in
            self._cancel_header_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._await_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_deadline()
        super().connection_lost(exc)

    def _await_headers(self) -> None:
        self._cancel_header_deadline()
        self.header_deadline = self.loop.call_later(self.header_timeout, self._headers_too_late)

    def _cancel_header_deadline(self) -> None:
        if self.header_deadline is not None:
            self.header_deadline.cancel()
            self.header_deadline = None

    def _headers_too_late(self) -> None:
        self.header_deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def playground_server(app: Any, header_timeout: float = HEADER_TIMEOUT,
                      keep_alive_timeout: float = KEEP_ALIVE_TIMEOUT, log_level: str = "warning") -> uvicorn.Server:
    """A uvicorn server for `app` with the timeouts above; start it with `server.run(sockets=[listener])`."""
    protocol = functools.partial(HeaderTimeoutProtocol, header_timeout=header_timeout)
    config = uvicorn.Config(app, http=protocol, timeout_keep_alive=keep_alive_timeout,  # type: ignore[arg-type]
                            h11_max_incomplete_event_size=MAX_HEADER_BYTES, log_level=log_level)
    return uvicorn.Server(config)
