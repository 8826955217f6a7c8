"""_extras.py: a missing optional dependency is one line naming the extra that installs it."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from optimlab._extras import MissingExtraError, missing_modules, requires_extra
from optimlab.cli import app


def test_requires_extra_names_the_extra_of_a_missing_module(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "plotly", None)  # `import plotly` now fails as if it were not installed
    with pytest.raises(MissingExtraError, match=r"^the page needs the 'serve' extra: pip install 'optimlab\[serve\]'$"):
        with requires_extra("the page"):
            import plotly  # noqa: F401


def test_requires_extra_leaves_other_missing_modules_alone() -> None:
    with pytest.raises(ModuleNotFoundError) as raised, requires_extra("anything"):
        import optimlab_no_such_module  # noqa: F401
    assert not isinstance(raised.value, MissingExtraError)


def test_missing_modules_lists_the_extras_modules_that_are_absent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    assert missing_modules("serve") == ["uvicorn"]


def test_front_end_without_torch_is_an_import_error_naming_the_extra() -> None:
    code = "import sys; sys.modules['torch'] = None; import optimlab.torch"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "optimlab._extras.MissingExtraError: optimlab.torch needs the 'torch' extra: pip install 'optimlab[torch]'")


def test_cli_command_without_its_extra_is_one_line_and_exit_2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "fastapi", None)
    result = CliRunner().invoke(app, ["serve", "--port", "0"])
    assert result.exit_code == 2
    assert result.output.strip() == "error: optimlab serve needs the 'serve' extra: pip install 'optimlab[serve]'"


def test_cli_help_works_without_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = CliRunner().invoke(app, ["tour", "--help"])
    assert result.exit_code == 0, result.output


def test_version() -> None:
    from optimlab import __version__

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output == f"optimlab {__version__}\n"
