"""Every code block of README.md and docs/**/*.md works as a reader would paste it.

The convention, which every page follows (a new page is picked up automatically):

- ```` ```python ```` blocks run, each in a fresh interpreter (`python -c`) with a temporary directory as the
  working directory, and must exit with status 0. A block that only includes a repository file
  (`--8<-- "examples/ddp_adamw.py"`, shown by the site's snippets extension) is that file, run by its own
  tests. Fragments that cannot run alone are ```` ```text ```` blocks.
- ```` ```bash ```` blocks: each command (comments dropped; a command continues over lines while a quote is
  open or a line ends in a backslash) is exercised according to its first word:
  - `optimlab ...` runs (cwd a temporary directory); `QUICK` maps a documented command that takes long at
    its full size to the smaller command the test runs instead (`--help` for a command that is long by
    nature); `optimlab serve` is started on a free port and must answer `GET /api/surfaces`;
  - `curl` runs against a playground started on a free port (`localhost:8000` is rewritten to it);
  - `make TARGET` runs `make -n TARGET`: the target exists and its recipe expands;
  - `pip install ...`: each requirement is parsed, and where it is optimlab itself (`.` or `optimlab`) its
    extras must be ones pyproject.toml declares (installing is the wheel test's job, tests/packaging);
  - `pytest ...` (also `.venv/bin/pytest`, with `VAR=value` before it) runs with `--collect-only -q` from
    the repository root: the paths and options exist;
  - `torchrun ...` runs from the repository root;
  - `python ...` (also `.venv/bin/python`: a script of the repository, e.g. under benchmarks/) runs from the
    repository root with this interpreter.
  Any other command fails the test until it is given a rule here.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from importlib.metadata import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```(?P<language>[\w-]*)[^\n]*\n(?P<body>.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
INCLUDE = re.compile(r'^\s*--8<--\s+"[^"]+"\s*$')

#: Documented command -> the command the test runs (same meaning, small sizes).
QUICK = {
    "optimlab tour": "optimlab tour --help",
    "optimlab paths --preset dlfs": "optimlab paths --preset dlfs --no-gif",
    "optimlab paths --surface rosenbrock --steps 300":
        "optimlab paths --surface rosenbrock --steps 30 --sweep-size 8 --no-gif",
    "optimlab train --epochs 10": "optimlab train --epochs 1",
    "optimlab sparse": "optimlab sparse --samples 300",
    "optimlab quadratic --out figures":
        "optimlab quadratic --kappas 1,10,100 --resolution 20 --map-steps 20 --adaptive-steps 50 --out figures",
    "optimlab eos --out figures": "optimlab eos --steps 20 --every 10 --samples 100 --out figures",
    "optimlab bench": "optimlab bench --help",
    "optimlab bench --quick": "optimlab bench --quick --optimizer sgd --reps 1 --warmup 0",
    "optimlab bench -o adam -w gpt2 --reps 9 --markdown":
        "optimlab bench -o adam -w gpt2 --reps 1 --warmup 0 --quick --markdown",
    "optimlab bench --reps 7 --markdown": "optimlab bench --quick --optimizer sgd --reps 1 --warmup 0 --markdown",
    ".venv/bin/python benchmarks/bench_before_after.py --reps 11":
        ".venv/bin/python benchmarks/bench_before_after.py --quick -o sgd -w many --reps 1 --warmup 1",
    ".venv/bin/python benchmarks/loop_placement.py --reps 21":
        ".venv/bin/python benchmarks/loop_placement.py --numel 100000 --pads 1 --reps 1",
}


def _blocks(language: str) -> Iterator[tuple[str, str]]:
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            if match.group("language") == language:
                line = text.count("\n", 0, match.start()) + 1
                yield f"{page.relative_to(ROOT)}:{line}", match.group("body")


def _commands(body: str) -> Iterator[str]:
    pending = ""
    for line in body.splitlines():
        pending = f"{pending}\n{line}" if pending else line
        if pending.rstrip().endswith("\\"):
            pending = pending.rstrip()[:-1]
            continue
        try:
            words = shlex.split(pending, comments=True)
        except ValueError:  # a quote still open: the command goes on
            continue
        if words:
            yield shlex.join(words)
        pending = ""
    assert not pending.strip(), f"unterminated command: {pending!r}"


PYTHON_BLOCKS = [pytest.param(body, id=where) for where, body in _blocks("python")
                 if not all(INCLUDE.match(line) for line in body.strip().splitlines())]
SHELL_COMMANDS = [pytest.param(command, id=f"{where}: {command[:60]}")
                  for language in ("bash", "sh", "shell") for where, body in _blocks(language)
                  for command in _commands(body)]


@pytest.mark.slow
@pytest.mark.parametrize("code", PYTHON_BLOCKS)
def test_python_block_runs_as_pasted(code: str, tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def playground(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """`optimlab serve` on a free port, answering; yields the port."""
    port = _free_port()
    server = subprocess.Popen([str(BIN / "optimlab"), "serve", "--port", str(port)],
                              cwd=tmp_path_factory.mktemp("serve"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/surfaces", timeout=5) as response:
                    assert response.status == 200
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"optimlab serve did not answer: {server.stderr.read().decode()}") from None
                time.sleep(0.2)
        yield port
    finally:
        server.terminate()
        server.wait(timeout=30)


def _declared_extras() -> set[str]:
    return set(metadata("optimlab").get_all("Provides-Extra") or ())


def _check_pip_install(words: list[str]) -> None:
    from packaging.requirements import InvalidRequirement, Requirement

    assert words[:2] == ["pip", "install"], words
    arguments = iter(words[2:])
    for argument in arguments:
        if argument in ("--index-url", "--extra-index-url"):
            next(arguments)
            continue
        if argument.startswith("-"):
            continue
        if argument == "." or argument.startswith(".["):
            extras = set(re.findall(r"[\w-]+", argument[1:]))
        else:
            try:
                requirement = Requirement(argument)
            except InvalidRequirement as error:
                raise AssertionError(f"pip install {argument}: {error}") from None
            if requirement.name != "optimlab":
                continue
            extras = set(requirement.extras)
        assert extras <= _declared_extras(), f"{argument}: no such extra {sorted(extras - _declared_extras())}"


def _run(command: list[str], cwd: Path, environment: dict[str, str] | None = None) -> None:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300,
                            env={**os.environ, **(environment or {})})
    assert result.returncode == 0, f"{shlex.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


@pytest.mark.slow
@pytest.mark.parametrize("command", SHELL_COMMANDS)
def test_shell_command_works(command: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    words = shlex.split(QUICK.get(command, command))
    environment = {}
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
        name, _, value = words.pop(0).partition("=")
        environment[name] = value
    program = words[0]
    if words[:2] == ["optimlab", "serve"] and "--help" not in words:
        request.getfixturevalue("playground")  # starts it and waits until it answers
    elif program == "optimlab":
        _run([str(BIN / "optimlab"), *words[1:]], tmp_path, environment)
    elif program == "curl":
        port = request.getfixturevalue("playground")
        rewritten = [word.replace("localhost:8000", f"127.0.0.1:{port}") for word in words]
        _run([*rewritten, "--fail", "--max-time", "60"], tmp_path, environment)
    elif program == "make":
        _run(["make", "-n", *words[1:]], ROOT, environment)
    elif program == "pip":
        _check_pip_install(words)
    elif program in ("pytest", ".venv/bin/pytest"):
        _run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *words[1:]], ROOT,
             environment)
    elif program == "torchrun":
        _run([str(BIN / "torchrun"), *words[1:]], ROOT, environment)
    elif program in ("python", ".venv/bin/python"):
        _run([sys.executable, *words[1:]], ROOT, environment)
    else:
        pytest.fail(f"no rule for {program!r} commands: add one to this module's convention")
