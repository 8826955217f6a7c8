"""The kernel cache (`optimlab.backends.kernel_cache`): loaded only from where no one else can write, and
never broken by what it holds (issue 12, items 1 and 7).

A "trap" is what a hostile local user would plant: the genuine driver source beside bytecode whose header
matches it, and pickles in place of Numba's index and data, each creating a marker file when executed. A
trap that fires means the victim ran someone else's code. Tests that need another user run as root and act
as uid 65534 through `setpriv`.
"""

import importlib.util
import os
import pickle
import py_compile
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import pytest
import torch

from optimlab.backends import kernel_cache, numba_cpu
from optimlab.rules import RULES

RULE = RULES["sgd"]
HYPERPARAMETERS = RULE.defaults(lr=0.1)
#: The driver `step` below runs: float32 SGD with its default flags and Python-float coefficients.
VARIANT = numba_cpu.Variant("float32", "float32", (("maximize", False),), (), False, ("python", "python"))
OTHER_USER = 65534


def step_once() -> None:
    params = [torch.ones(5)]
    numba_cpu.NumbaCPU().step(RULE, HYPERPARAMETERS, RULE.coefficients(1, **HYPERPARAMETERS), params,
                              [torch.ones(5)], [[]])
    assert torch.equal(params[0], torch.full((5,), 0.9))


def forget_driver() -> None:
    """Drop the compiled driver of `VARIANT` from this process, so that the next step builds it anew."""
    for key, (_, run) in list(numba_cpu._DRIVERS.items()):
        if key[1] == VARIANT:
            del numba_cpu._DRIVERS[key]
            sys.modules.pop(run.py_func.__module__, None)


@pytest.fixture(autouse=True)
def _fresh_driver():
    forget_driver()
    yield
    forget_driver()


@pytest.fixture(scope="module")
def warm_cache(tmp_path_factory) -> Path:
    """A cache holding the compiled driver of `VARIANT` (compiled once for this module's tests)."""
    directory = tmp_path_factory.mktemp("warm") / "cache"
    saved = os.environ.get("OPTIMLAB_KERNEL_CACHE")
    os.environ["OPTIMLAB_KERNEL_CACHE"] = str(directory)
    try:
        forget_driver()
        step_once()
    finally:
        forget_driver()
        if saved is None:
            del os.environ["OPTIMLAB_KERNEL_CACHE"]
        else:
            os.environ["OPTIMLAB_KERNEL_CACHE"] = saved
    return directory


def module_name() -> str:
    return numba_cpu.driver(RULE, VARIANT).py_func.__module__


class _Trap:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def plant_traps(directory: Path, name: str, marker: Path) -> None:
    """The genuine driver source, bytecode that passes its header check, and pickles for Numba's files."""
    source = directory / f"{name}.py"
    source.write_text(numba_cpu.driver_source(RULE, VARIANT))
    trap = directory / "trap.py"
    trap.write_text(f"open({str(marker)!r}, 'w').close()\n".ljust(source.stat().st_size - 1, "#") + "\n")
    os.utime(trap, ns=(source.stat().st_atime_ns, source.stat().st_mtime_ns))
    py_compile.compile(str(trap), cfile=importlib.util.cache_from_source(str(source)),
                       invalidation_mode=py_compile.PycInvalidationMode.TIMESTAMP, doraise=True)
    trap.unlink()
    for entry in [*directory.rglob("*.nbi"), *directory.rglob("*.nbc")]:
        entry.write_bytes(pickle.dumps(_Trap(marker)))


def as_other_user(*command: str) -> None:
    subprocess.run(["setpriv", f"--reuid={OTHER_USER}", f"--regid={OTHER_USER}", "--clear-groups", *command],
                   check=True)


def _writable_by_others(cache: Path) -> None:
    cache.chmod(0o777)


def _parent_writable_by_others(cache: Path) -> None:
    cache.parent.chmod(0o777)


def _owned_by_another_user(cache: Path) -> None:
    """The other user made the directory (0755) and put the files in it."""
    staging = cache.with_name("staging")
    cache.rename(staging)
    cache.parent.chmod(0o1777)  # sticky, as /tmp: the other user may create the directory there
    for path in [staging, *staging.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    as_other_user("cp", "-rp", str(staging), str(cache))
    assert cache.stat().st_uid == OTHER_USER


def _a_link_to_another_users_directory(cache: Path) -> None:
    """The other user's directory, reached through a link the other user made where the cache should be."""
    _owned_by_another_user(cache)
    as_other_user("mv", str(cache), str(cache.with_name("elsewhere")))
    as_other_user("ln", "-s", str(cache.with_name("elsewhere")), str(cache))


needs_root = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                                reason="acting as another user needs root and setpriv")


@pytest.mark.parametrize("make_unsafe", [
    _writable_by_others,
    _parent_writable_by_others,
    pytest.param(_owned_by_another_user, marks=needs_root),
    pytest.param(_a_link_to_another_users_directory, marks=needs_root),
])
def test_an_untrusted_directory_is_never_loaded_from(make_unsafe, warm_cache, monkeypatch):
    # a world-traversable place, as /tmp is, so that another user can work in it
    place = Path(tempfile.mkdtemp())
    try:
        place.chmod(0o1777)
        cache = place / "parent" / "cache"
        shutil.copytree(warm_cache, cache)
        monkeypatch.setenv("OPTIMLAB_KERNEL_CACHE", str(cache))
        name, marker = module_name(), place / "trap-fired"
        forget_driver()
        plant_traps(cache, name, marker)
        make_unsafe(cache)
        planted = {path: path.read_bytes() for path in cache.resolve().rglob("*") if path.is_file()}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run = numba_cpu.driver(RULE, VARIANT)
        assert not marker.exists()
        assert {path: path.read_bytes() for path in cache.resolve().rglob("*") if path.is_file()} == planted
        messages = [str(warning.message) for warning in caught if warning.category is kernel_cache.KernelCacheWarning]
        assert len(messages) == 1 and str(cache) in messages[0] and "\n" not in messages[0]
        assert run.stats.cache_path is None  # compiled without a disk cache
    finally:
        shutil.rmtree(place)


def test_without_a_usable_cache_the_step_compiles_in_memory_and_nothing_goes_to_tmp(tmp_path, monkeypatch):
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    monkeypatch.setenv("OPTIMLAB_KERNEL_CACHE", str(blocked / "cache"))
    shared_tmp = tmp_path / "tmp"
    shared_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(shared_tmp))
    with pytest.warns(kernel_cache.KernelCacheWarning, match=re.escape(str(blocked / "cache"))):
        step_once()
    assert list(shared_tmp.iterdir()) == []
    assert numba_cpu.driver(RULE, VARIANT).stats.cache_path is None


def test_missing_directories_are_created_private(tmp_path, monkeypatch):
    monkeypatch.setenv("OPTIMLAB_KERNEL_CACHE", str(tmp_path / "made" / "cache"))
    umask = os.umask(0o022)
    try:
        numba_cpu.driver(RULE, VARIANT)
    finally:
        os.umask(umask)
    for directory in (tmp_path / "made", tmp_path / "made" / "cache"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700


def test_the_cache_lives_in_the_xdg_cache_home_else_in_the_home_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("OPTIMLAB_KERNEL_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert numba_cpu.driver(RULE, VARIANT).stats.cache_path == str(tmp_path / "xdg" / "optimlab")
    forget_driver()
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")  # the XDG spec: only absolute paths count
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert numba_cpu.driver(RULE, VARIANT).stats.cache_path == str(tmp_path / "home" / ".cache" / "optimlab")


def test_entries_are_new_private_files_never_written_through_a_planted_link(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("OPTIMLAB_KERNEL_CACHE", str(cache))
    name = module_name()
    forget_driver()
    shutil.rmtree(cache)
    cache.mkdir(mode=0o700)
    victim = tmp_path / "precious"
    victim.write_text("precious")
    # the temporary names a predictable scheme would use, each a link to the victim's file
    for planted in (f"{name}.{os.getpid()}.tmp", f"{name}.py"):
        (cache / planted).symlink_to(victim)
    step_once()
    assert victim.read_text() == "precious"
    entries = [path for path in cache.iterdir() if not path.is_symlink()]
    assert entries and all(path.is_file() and stat.S_IMODE(path.stat().st_mode) == 0o600 for path in entries)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garbage(path: Path) -> None:
    path.write_bytes(bytes(range(256)) * 8)


@pytest.mark.parametrize("corrupt", [_truncate, _garbage])
def test_a_corrupted_compiled_entry_is_reported_once_deleted_and_compiled_again(corrupt, warm_cache, tmp_path,
                                                                              monkeypatch):
    cache = tmp_path / "cache"
    shutil.copytree(warm_cache, cache)
    monkeypatch.setenv("OPTIMLAB_KERNEL_CACHE", str(cache))
    entries = [*cache.rglob("*.nbi"), *cache.rglob("*.nbc")]
    for entry in entries:
        corrupt(entry)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        step_once()
    messages = [str(warning.message) for warning in caught if warning.category is kernel_cache.KernelCacheWarning]
    assert len(messages) == 1 and any(str(entry) in messages[0] for entry in entries)
    forget_driver()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        step_once()  # the entry was written again: it loads
    assert sum(numba_cpu.driver(RULE, VARIANT).stats.cache_hits.values()) == 1


def test_driver_sources_and_bytecode_in_the_cache_are_never_read(warm_cache, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    shutil.copytree(warm_cache, cache)
    monkeypatch.setenv("OPTIMLAB_KERNEL_CACHE", str(cache))
    name, marker = module_name(), tmp_path / "trap-fired"
    forget_driver()
    compiled = {path: path.read_bytes() for path in cache.rglob("*.nb[ic]")}
    plant_traps(cache, name, marker)  # a trap pyc beside its genuine source (the pickles are put back below)
    for path, contents in compiled.items():
        path.write_bytes(contents)
    step_once()
    assert not marker.exists()
    forget_driver()
    (cache / f"{name}.py").write_bytes(b"\xff\xfe not UTF-8 \x80")
    step_once()
