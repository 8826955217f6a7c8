"""The kernel cache (`optimlab.backends.kernel_cache`): loaded only from where no one else can write, and
never broken by what it holds (issue 12, items 1 and 7).

A "trap" is what a hostile local user would plant: the genuine driver source beside bytecode whose header
matches it, and pickles in place of Numba's index and data, each creating a marker file when executed. A
trap that fires means the victim ran someone else's code. Tests that need another user run as root and act
as uid 65534 through `setpriv`.
"""

import hashlib
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
VARIANT = numba_cpu.Variant("float32", "float32", (("use_weight_decay", False), ("maximize", False)), (), False,
                            ("python", "python"))
OTHER_USER = 65534


def step_once() -> None:
    params = [torch.ones(5)]
    numba_cpu.NumbaCPU().step(RULE, HYPERPARAMETERS, RULE.coefficients(1, **HYPERPARAMETERS), params,
                              [torch.ones(5)], [[]])
    assert torch.equal(params[0], torch.full((5,), 0.9))


def forget_driver() -> None:
    """Drop the compiled driver of `VARIANT` from this process, so that the next step builds it anew."""
    for key, run in list(numba_cpu._DRIVERS.items()):
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


def step_equals_eager() -> None:
    """One SGD step on the numba backend equals the eager backend's."""
    from optimlab.backends.eager import Eager

    def stepped(backend: object) -> torch.Tensor:
        params = [torch.linspace(-1, 1, 5)]
        backend.step(RULE, HYPERPARAMETERS, RULE.coefficients(1, **HYPERPARAMETERS), params,
                     [torch.linspace(2, 3, 5)], [[]])
        return params[0]

    assert torch.equal(stepped(numba_cpu.NumbaCPU()), stepped(Eager()))


def entry_and_key(monkeypatch) -> tuple[Path, bytes]:
    """The entry the step above loads, and the key it is checksummed with (anyone can compute both)."""
    seen = []
    original = kernel_cache.DriverCache._entry

    def recording(self, signature, codegen):
        seen.append(original(self, signature, codegen))
        return seen[-1]

    with monkeypatch.context() as patched:
        patched.setattr(kernel_cache.DriverCache, "_entry", recording)
        step_once()
    forget_driver()
    return seen[0]


def forged_entry(key: bytes, marker: Path) -> bytes:
    """A trap pickle with a checksum that matches: what anyone who could write into the cache can make."""
    payload = pickle.dumps(_Trap(marker))
    return kernel_cache._ENTRY_HEADER + hashlib.sha256(key + payload).digest() + payload


def _hard_linked(entry: Path, forged: bytes, elsewhere: Path) -> None:
    entry.write_bytes(forged)
    os.link(entry, elsewhere)  # kept by whoever planted it, to rewrite the entry later


def _group_writable(entry: Path, forged: bytes, elsewhere: Path) -> None:
    entry.write_bytes(forged)
    entry.chmod(0o660)


def _a_link_to_a_forged_file(entry: Path, forged: bytes, elsewhere: Path) -> None:
    elsewhere.write_bytes(forged)
    entry.unlink()
    entry.symlink_to(elsewhere)


@pytest.mark.parametrize("plant", [_hard_linked, _group_writable, _a_link_to_a_forged_file])
def test_an_entry_this_process_would_not_have_written_is_discarded_unread(plant, warm_cache, tmp_path,
                                                                          monkeypatch):
    cache = tmp_path / "cache"
    shutil.copytree(warm_cache, cache)
    monkeypatch.setenv("OPTIMLAB_KERNEL_CACHE", str(cache))
    entry, key = entry_and_key(monkeypatch)
    marker, elsewhere = tmp_path / "trap-fired", tmp_path / "elsewhere"
    plant(entry, forged_entry(key, marker), elsewhere)
    kept = elsewhere.read_bytes() if elsewhere.exists() else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        step_equals_eager()
    assert not marker.exists()
    messages = [str(warning.message) for warning in caught if warning.category is kernel_cache.KernelCacheWarning]
    assert len(messages) == 1 and str(entry) in messages[0]
    assert (elsewhere.read_bytes() if elsewhere.exists() else None) == kept  # neither followed nor written
    assert not entry.is_symlink() and entry.stat().st_nlink == 1  # compiled again, written anew


@needs_root
def test_an_entry_planted_while_the_cache_was_open_is_not_loaded_once_it_is_private(warm_cache, monkeypatch):
    # the victim's own cache, other-writable for a while; another user forges an entry and keeps a hard link
    # to it; the victim makes the directory private again (what the warning asks for) and steps
    place = Path(tempfile.mkdtemp())
    try:
        place.chmod(0o1777)
        cache = place / "cache"
        shutil.copytree(warm_cache, cache)
        monkeypatch.setenv("OPTIMLAB_KERNEL_CACHE", str(cache))
        entry, key = entry_and_key(monkeypatch)
        marker, forged, kept = place / "trap-fired", place / "forged", place / "kept" / "entry"
        forged.write_bytes(forged_entry(key, marker))
        forged.chmod(0o644)
        cache.chmod(0o777)
        as_other_user("mkdir", str(kept.parent))
        as_other_user("rm", str(entry))
        as_other_user("cp", str(forged), str(entry))
        as_other_user("ln", str(entry), str(kept))
        assert entry.stat().st_uid == OTHER_USER and entry.stat().st_nlink == 2
        cache.chmod(0o700)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            step_equals_eager()
        assert not marker.exists()
        messages = [str(warning.message) for warning in caught
                    if warning.category is kernel_cache.KernelCacheWarning]
        assert len(messages) == 1 and str(entry) in messages[0]
        assert entry.stat().st_uid == os.geteuid() and entry.stat().st_nlink == 1  # ours now, compiled again
    finally:
        shutil.rmtree(place)


def _a_link_another_user_made(home: Path, target: Path) -> None:
    as_other_user("mkdir", str(home))
    as_other_user("ln", "-s", str(target), str(home / "optimlab"))


def _a_link_in_a_directory_another_user_owns(home: Path, target: Path) -> None:
    as_other_user("mkdir", str(home))
    (home / "optimlab").symlink_to(target)  # made by this user, but the other user can replace it


def _a_link_in_a_directory_others_can_write(home: Path, target: Path) -> None:
    home.mkdir()
    home.chmod(0o777)
    (home / "optimlab").symlink_to(target)


@pytest.mark.parametrize("redirect", [
    pytest.param(_a_link_another_user_made, marks=needs_root),
    pytest.param(_a_link_in_a_directory_another_user_owns, marks=needs_root),
    _a_link_in_a_directory_others_can_write,
])
def test_a_link_someone_else_controls_does_not_redirect_the_cache(redirect, monkeypatch):
    # the target is this user's own private directory: the link, not the target, is what is not trusted
    place = Path(tempfile.mkdtemp())
    try:
        place.chmod(0o1777)
        home, target = place / "cache-home", place / "target"
        target.mkdir(mode=0o700)
        redirect(home, target)
        monkeypatch.delenv("OPTIMLAB_KERNEL_CACHE", raising=False)
        monkeypatch.setenv("XDG_CACHE_HOME", str(home))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert kernel_cache.trusted_directory() is None
            step_once()
        messages = [str(warning.message) for warning in caught
                    if warning.category is kernel_cache.KernelCacheWarning]
        assert len(messages) == 1 and str(home / "optimlab") in messages[0]
        assert list(target.iterdir()) == []
    finally:
        shutil.rmtree(place)


def test_a_link_this_user_controls_is_followed(tmp_path, monkeypatch):
    home, target = tmp_path / "cache-home", tmp_path / "target"
    home.mkdir(mode=0o700)
    target.mkdir(mode=0o700)
    (home / "optimlab").symlink_to(target)
    monkeypatch.delenv("OPTIMLAB_KERNEL_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(home))
    assert kernel_cache.trusted_directory() == target
    step_once()
    assert list(target.glob("*.nbc"))
