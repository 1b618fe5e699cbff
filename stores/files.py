"""File rules every room shares: a text file is replaced whole, and what a full disk looks like.

This module imports nothing of the project, so every room can use it.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def disk_full(exc: BaseException) -> bool:
    """True for the OSError of a full disk or quota: the machine's state, not a bug."""
    return isinstance(exc, OSError) and exc.errno in DISK_FULL


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Replace ``path`` whole: a kill or full disk mid-write leaves the old file (or none), never a
    half-written one that a later read would take for a record."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
