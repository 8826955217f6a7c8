"""The kernel cache: where the Numba backend keeps compiled drivers between processes, and why it trusts them.

Loading a cached kernel runs its machine code, and the cache entries are pickles: whoever can write into the
cache directory can run code as whoever loads from it. So entries are loaded only from a directory that no
one but this user (or root) can change:

* the cache lives in `$OPTIMLAB_KERNEL_CACHE`, else `$XDG_CACHE_HOME/optimlab`, else `~/.cache/optimlab`,
  never at a predictable shared path such as `/tmp/...`; missing directories are created 0700;
* it is used only if it is a directory owned by the effective user and writable by no one else, and every
  directory above it is owned by the user or root and not writable by others unless sticky (as `/tmp` is:
  no one else can rename the cache away and put their own in its place). Otherwise a `KernelCacheWarning`
  names it, once, and kernels are compiled in memory for this process only;
* an entry is written to a new file made with `O_CREAT | O_EXCL | O_NOFOLLOW` (`tempfile.mkstemp`, mode
  0600) and renamed into place, so no reader sees half a file and nothing is written through a planted link;
* an entry carries a SHA-256 of its contents and is unpickled only if that matches: a truncated or garbage
  entry is reported once (`KernelCacheWarning` with its path), deleted and compiled again.

The generated drivers' Python sources are never read back from disk (see `numba_cpu.driver`): they are
regenerated and compiled in memory in every process, so there is no `.py` or `.pyc` to plant or corrupt.
`docs/security.md` states the whole model.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import stat
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

#: Group- or other-writable permission bits.
_WRITABLE_BY_OTHERS = stat.S_IWGRP | stat.S_IWOTH
#: Starts every entry, before its checksum: the format (and that it is ours).
_ENTRY_HEADER = b"optimlab kernel cache entry v1\n"


class KernelCacheWarning(RuntimeWarning):
    """The kernel cache cannot be trusted, or one of its entries was unreadable: compiling instead."""


_warned: set[str] = set()
_warned_lock = threading.Lock()


def _warn_once(subject: str, message: str) -> None:
    with _warned_lock:
        if subject in _warned:
            return
        _warned.add(subject)
    warnings.warn(message, KernelCacheWarning, stacklevel=3)


def cache_directory() -> Path:
    """Where the kernel cache lives: `$OPTIMLAB_KERNEL_CACHE`, else `$XDG_CACHE_HOME/optimlab`, else
    `~/.cache/optimlab` (raises RuntimeError if there is no home directory to find)."""
    configured = os.environ.get("OPTIMLAB_KERNEL_CACHE")
    if configured:
        return Path(configured)
    xdg_cache_home = os.environ.get("XDG_CACHE_HOME", "")
    # the XDG base directory spec: a relative path is invalid and must be ignored
    base = Path(xdg_cache_home) if os.path.isabs(xdg_cache_home) else Path.home() / ".cache"
    return base / "optimlab"


def trusted_directory() -> Path | None:
    """The kernel cache directory, created 0700 if missing and resolved; None if it cannot be trusted.

    None comes with one `KernelCacheWarning` naming the directory and why (once per directory and process).
    """
    try:
        directory = Path(os.path.abspath(cache_directory()))
    except RuntimeError as error:  # `Path.home()` with neither $HOME nor a passwd entry
        _warn_once("", f"optimlab: no kernel cache directory ({error}); compiling without a disk cache")
        return None
    try:
        _make_private_directories(directory)
        resolved = Path(os.path.realpath(directory))
        problem = _why_untrusted(resolved)
    except OSError as error:
        problem = f"cannot create or inspect it: {error.strerror or error}"
    if problem is not None:
        _warn_once(str(directory), f"optimlab: not using the kernel cache {directory}: {problem}; "
                                   "compiling without a disk cache")
        return None
    return resolved


def _make_private_directories(directory: Path) -> None:
    """Create `directory` and any missing parents with mode 0700 (`os.makedirs` would use 0777 & umask)."""
    missing = []
    while not os.path.lexists(directory):
        missing.append(directory)
        directory = directory.parent
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made meanwhile by another process: checked like any other
            os.mkdir(path, 0o700)


def _why_untrusted(directory: Path) -> str | None:
    """None if only this user (or root) can change what `directory` holds, else the reason in words."""
    user = os.geteuid()
    status = os.stat(directory)
    if not stat.S_ISDIR(status.st_mode):
        return "not a directory"
    if status.st_uid != user:
        return f"owned by uid {status.st_uid}, not by this user (uid {user})"
    if status.st_mode & _WRITABLE_BY_OTHERS:
        return f"writable by other users (mode {stat.S_IMODE(status.st_mode):o})"
    for parent in directory.parents:
        status = os.stat(parent)
        if status.st_uid not in (user, 0):
            return f"its parent {parent} is owned by uid {status.st_uid}"
        if status.st_mode & _WRITABLE_BY_OTHERS and not status.st_mode & stat.S_ISVTX:
            return f"its parent {parent} is writable by other users (mode {stat.S_IMODE(status.st_mode):o})"
    return None


def write_atomically(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a new, exclusively created file renamed over it (never half a file)."""
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


class DriverCache:
    """Numba's compiled code for one generated driver, kept in the trusted kernel cache directory.

    Installed as a dispatcher's cache in place of Numba's `cache=True`, whose locators pick a directory
    (`NUMBA_CACHE_DIR`, the source's `__pycache__`, a user-wide one) without asking who can write there and
    unpickle its index before checking anything. An entry here is one file per signature and CPU, named by
    a hash of both after the driver's module (whose name hashes its source, the rule's bytecode and the
    Numba and Python versions); its contents are a header, the SHA-256 of key and payload, the payload.
    Implements the interface of `numba.core.caching`'s caches; Numba calls it under its compiler lock.
    """

    def __init__(self, dispatcher: Any, directory: Path) -> None:
        function = dispatcher.py_func
        self._prefix = f"{function.__module__}.{function.__qualname__}"
        self._directory = directory
        self._enabled = True

    @property
    def cache_path(self) -> str:
        return str(self._directory)

    def enable(self) -> None:
        self._enabled = True

    def disable(self) -> None:
        self._enabled = False

    def flush(self) -> None:
        for path in self._directory.glob(f"{self._prefix}-*.nbc"):
            path.unlink(missing_ok=True)

    def _entry(self, signature: Any, codegen: Any) -> tuple[Path, bytes]:
        key = repr((str(signature), codegen.magic_tuple())).encode()
        return self._directory / f"{self._prefix}-{hashlib.sha256(key).hexdigest()[:20]}.nbc", key

    def load_overload(self, signature: Any, target_context: Any) -> Any:
        """The compiled code for `signature` from its entry, or None (missing, or corrupted and deleted)."""
        from numba.core.compiler import CompileResult

        if not self._enabled:
            return None
        target_context.refresh()
        path, key = self._entry(signature, target_context.codegen())
        try:
            entry = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as error:
            self._discard(path, f"unreadable ({error.strerror})")
            return None
        checksum, payload = entry[len(_ENTRY_HEADER):][:32], entry[len(_ENTRY_HEADER) + 32:]
        if not entry.startswith(_ENTRY_HEADER) or hashlib.sha256(key + payload).digest() != checksum:
            self._discard(path, "truncated or corrupted (checksum mismatch)")
            return None
        try:
            return CompileResult._rebuild(target_context, *pickle.loads(payload))
        except Exception as error:  # noqa: BLE001 (an entry that does not rebuild is compiled again)
            self._discard(path, f"not loadable ({type(error).__name__}: {error})")
            return None

    def save_overload(self, signature: Any, compiled: Any) -> None:
        """Keep `compiled` for later processes (best effort: a failed write only costs a compile later)."""
        from numba.core.serialize import dumps

        # Numba's own rule: lifted loops and code holding raw pointers cannot be reloaded
        if not self._enabled or compiled.library.has_dynamic_globals or any(
                not lifted.can_cache for lifted in compiled.lifted):
            return
        path, key = self._entry(signature, compiled.codegen)
        payload = dumps(compiled._reduce())
        try:
            write_atomically(path, _ENTRY_HEADER + hashlib.sha256(key + payload).digest() + payload)
        except OSError as error:
            _warn_once(str(path), f"optimlab: could not write the kernel cache entry {path}: {error.strerror}")

    @staticmethod
    def _discard(path: Path, problem: str) -> None:
        _warn_once(str(path), f"optimlab: kernel cache entry {path} is {problem}; deleted, compiling again")
        with contextlib.suppress(OSError):
            path.unlink()


__all__ = ["DriverCache", "KernelCacheWarning", "cache_directory", "trusted_directory", "write_atomically"]
