"""One writer per store or run directory: an OS file lock beside the path, and who holds it.

Why a lock beside the path rather than in it: `--overwrite` deletes a store and a new run directory
must be empty, so the lock has to exist before them. It is a ``flock`` on a hidden file
``.NAME.lock``: released by the OS when its process dies, so a killed run never leaves a stale lock
(on NFS, Linux maps it to POSIX locks, so it also holds between hosts of a ``--scheduler`` run).
The file is removed when the lock is released, so a command leaves nothing beside its ``--out``
(only a killed holder leaves it, until the next command on that path). Beside it a small JSON file
names the holder (pid, host, start time) for the message the second process prints. Only the
process that runs a stage takes the lock; dask workers writing chunks for it do not. This module
imports nothing of the project, so every room can use it.
"""

from __future__ import annotations

import fcntl
import functools
import inspect
import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar


from stores.errors import BusyError, StoreError
from stores.files import write_json_atomic

F = TypeVar("F", bound=Callable[..., Any])


def lock_path(path: str | os.PathLike) -> Path:
    """The lock file of a store or run directory: a hidden file beside it."""
    p = Path(path).absolute()
    return p.parent / f".{p.name}.lock"


def _holder(lock: Path) -> str:
    try:
        h = json.loads(lock.with_name(lock.name + ".holder").read_text())
        return f"pid {h['pid']} on {h['host']} (since {h['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def _acquire(lock: Path) -> int | None:
    """A descriptor of `lock` holding its flock, or None when another process holds it.

    Why the inode check: a releaser unlinks the file while holding it, so a process that opened the
    old file just before may lock a file no path names any more; it then tries again on the new one."""
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except OSError:
            os.close(fd)
            raise
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


@contextmanager
def exclusive(path: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold the lock of ``path`` (a ``what``: "store", "run directory") for the block, or raise a
    BusyError naming the holder at once (a second writer never waits, it is told)."""
    lock = lock_path(path)
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = _acquire(lock)
    except OSError as exc:
        raise StoreError(f"cannot create the {what} {path}: {exc.strerror} ({exc.filename}); "
                         "choose a path under a writable directory") from None
    if fd is None:
        raise BusyError(f"the {what} {path} is in use by {_holder(lock)}; wait for that run to end "
                        "(or stop it) and rerun this command")
    holder = lock.with_name(lock.name + ".holder")
    try:
        write_json_atomic(holder, {"pid": os.getpid(), "host": socket.gethostname(),
                                   "since": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=None)
        yield
    finally:
        holder.unlink(missing_ok=True)
        lock.unlink(missing_ok=True)  # still held: no other process can have locked this file
        os.close(fd)


def holds_lock(arg: str, what: str) -> Callable[[F], F]:
    """Decorate a stage so that it holds the lock of the path in its parameter ``arg`` while it runs."""

    def wrap(fn: F) -> F:
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def locked(*args: Any, **kwargs: Any) -> Any:
            with exclusive(sig.bind(*args, **kwargs).arguments[arg], what):
                return fn(*args, **kwargs)

        return locked  # type: ignore[return-value]

    return wrap
