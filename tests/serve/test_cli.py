"""`optimlab serve`: serves on loopback, says so; a port in use or an unknown host is one error line, status 2."""

import os
import signal
import socket
import subprocess
import sys
import urllib.request

import pytest
from typer.testing import CliRunner

from optimlab.cli import app
from optimlab.cli.serve import exposure_warning

runner = CliRunner()


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_is_quiet(host):
    assert exposure_warning(host) is None


@pytest.mark.parametrize(("host", "words"), [("0.0.0.0", "every interface"), ("::", "every interface"),
                                             ("192.168.1.5", "not a loopback"), ("example.org", "not a loopback")])
def test_anything_else_is_exposed(host, words):
    assert words in exposure_warning(host)


def test_a_port_in_use_is_one_error_line():
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = runner.invoke(app, ["serve", "--port", str(port)])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"error: cannot listen on 127.0.0.1:{port}: the port is in use (pick another with --port, "
        f"or --port 0 for any free one)"]


def test_an_unknown_host_is_one_error_line():
    result = runner.invoke(app, ["serve", "--host", "no-such-host.invalid"])
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1 and "cannot listen on no-such-host.invalid" in result.output


def test_serve_prints_its_url_serves_the_page_and_stops_on_ctrl_c():
    process = subprocess.Popen([sys.executable, "-m", "optimlab", "serve", "--port", "0"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "200"})
    try:
        line = process.stdout.readline()
        assert line.startswith("optimlab playground on http://127.0.0.1:"), line + process.stderr.read()
        url = line.split()[3]
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.status == 200 and b"optimlab playground" in response.read()
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 130  # the CLI's status for Ctrl+C, after uvicorn's clean shutdown
        errors = process.stderr.read()
        assert "Traceback" not in errors and "warning" not in errors
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
