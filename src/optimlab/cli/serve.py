"""`optimlab serve`: the interactive playground in the browser (`optimlab.serve`)."""

from __future__ import annotations

import errno
import ipaddress
import socket

import typer

from .app import app, console, error_console, fail


@app.command(epilog="""Examples:\n\n
  optimlab serve                      # http://127.0.0.1:8000, this machine only\n\n
  optimlab serve --port 0             # any free port; the URL is printed\n\n
  optimlab serve --host 0.0.0.0       # reachable from other machines (prints a warning)""")
def serve(
    host: str = typer.Option("127.0.0.1", help="address to listen on; anything but loopback exposes the page"),
    port: int = typer.Option(8000, min=0, max=65535, help="port to listen on (0: any free port)"),
) -> None:
    """Serve the playground: click a start point, tick optimizers, watch them race, read each step's trace.

    One page at `/` and a JSON API documented at `/docs` (`POST /api/run`, `GET /api/surfaces`, ...).
    Plotly.js comes from the installed `plotly` package, so the page works offline.
    """
    listener = bind(host, port)
    warning = exposure_warning(host)
    if warning:
        error_console.print(f"[bold yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
    from ..serve import create_app
    from ..serve.server import playground_server

    address, bound_port = listener.getsockname()[:2]
    shown = f"[{address}]" if listener.family == socket.AF_INET6 else address
    console.print(f"optimlab playground on http://{shown}:{bound_port}  (API docs at /docs; Ctrl+C stops it)",
                  highlight=False, soft_wrap=True)
    # On loopback only this machine's names are answered (DNS rebinding); elsewhere the user chose the exposure.
    server = playground_server(create_app(check_host=warning is None))
    server.run(sockets=[listener])


def exposure_warning(host: str) -> str | None:
    """Why listening on `host` exposes the page beyond this machine, or `None` for a loopback address."""
    if host == "localhost":
        return None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is not None and address.is_loopback:
        return None
    if address is not None and address.is_unspecified:
        return f"{host} listens on every interface: anyone who can reach this machine can use the playground"
    return f"{host} is not a loopback address: anyone who can reach it can use the playground"


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on (host, port); a clear error and exit status 2 if that cannot be done."""
    try:
        family, kind, protocol, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as error:
        fail(f"cannot listen on {host}: unknown host ({error})")
    listener = socket.socket(family, kind, protocol)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(address)
        listener.listen(128)
    except OSError as error:
        listener.close()
        reason = "the port is in use (pick another with --port, or --port 0 for any free one)" \
            if error.errno == errno.EADDRINUSE else error.strerror or str(error)
        fail(f"cannot listen on {host}:{port}: {reason}")
    return listener
