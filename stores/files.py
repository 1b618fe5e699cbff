"""File rules every room shares: a result file is replaced whole, and what a full disk looks like.

This module imports nothing of the project, so every room can use it.
"""

from __future__ import annotations

import errno
import json
import os
import uuid
from pathlib import Path
from typing import Any, Callable

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def disk_full(exc: BaseException) -> bool:
    """True for the OSError of a full disk or quota: the machine's state, not a bug."""
    return isinstance(exc, OSError) and exc.errno in DISK_FULL


def replace_atomic(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Replace ``path`` whole with what ``write(tmp)`` puts in a temporary file beside it: a kill or
    full disk mid-write leaves the old file (or none), never a half-written one that a later read
    would take for a record. The one writer of every result file."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex[:12]}.partial")  # unique: writers may race
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        if disk_full(exc) and not exc.filename:  # a failed write() names no file: say which one it was
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """A text file (markdown, CSV, DOT, JSON lines) replaced whole."""
    replace_atomic(path, lambda tmp: tmp.write_text(text))


def write_json_atomic(path: str | os.PathLike, data: Any, indent: int | None = 2) -> None:
    """A JSON file replaced whole (one trailing newline)."""
    write_text_atomic(path, json.dumps(data, indent=indent) + "\n")


def write_yaml_atomic(path: str | os.PathLike, data: Any) -> None:
    """A YAML file replaced whole, keys in the given order."""
    import yaml

    write_text_atomic(path, yaml.safe_dump(data, sort_keys=False))


def write_npy_atomic(path: str | os.PathLike, array: Any) -> None:
    """A ``.npy`` array replaced whole (written through a handle: np.save adds no suffix to it)."""
    import numpy as np

    def write(tmp: Path) -> None:
        with tmp.open("wb") as fh:
            np.save(fh, array)

    replace_atomic(path, write)
