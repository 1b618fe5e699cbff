"""Damage that would otherwise read as numbers: lost chunks, chunks that do not decode, NaN/Inf rows.

Why these live apart from the format rules in `reader.py`: zarr reads a chunk file that is gone as
its fill value and raises its codec's own error on one that is cut short, so a lost ``labels``
chunk reads as class 0 and a lost feature chunk as NaN. Every reader of a store (open, verify, the
RAM bank, the stream) goes through these three checks, so no damaged value reaches search,
training or evaluation.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import zarr

from stores.errors import StoreError


def where(arr: zarr.Array) -> str:
    """``STORE/ARRAY`` of an array, for messages."""
    return f"{getattr(arr.store, 'root', '')}/{arr.path}"


def read(arr: zarr.Array, selection: Any = Ellipsis) -> np.ndarray:
    """``arr[selection]``, with a chunk that cannot be decoded turned into a StoreError naming it.

    zarr surfaces a truncated or garbage chunk as its codec's error (RuntimeError, ValueError, ...),
    so any exception from the read is the store's damage, not a bug of the caller.
    """
    try:
        return arr[selection]
    except Exception as exc:  # noqa: BLE001 - codec errors have no common class
        raise StoreError(f"{where(arr)}: a chunk cannot be decoded ({type(exc).__name__}: {exc}); the file is "
                         "truncated or corrupt: re-extract the store or restore it from a copy") from None


def lost_chunks(arr: zarr.Array) -> int:
    """Chunks of ``arr`` that have no file (zarr would read them as the fill value)."""
    return int(arr.nchunks) - int(arr.nchunks_initialized)


def lost_chunk_problem(arr: zarr.Array, name: str, fill_is_valid: bool) -> list[str]:
    """A problem line when ``arr`` lacks chunk files and its fill value would pass as data.

    Writers of bmnas stores write every chunk of these tables (``write_empty_chunks``), so a
    missing file is damage, never an all-fill chunk left out.
    """
    if not fill_is_valid:
        return []
    lost = lost_chunks(arr)
    if not lost:
        return []
    return [f"{name}: {lost} of {arr.nchunks} chunk files are missing and would read as the fill value "
            f"{arr.fill_value!r}; restore the store from a copy or re-extract it"]


def check_finite(block: np.ndarray, rows: np.ndarray, arr: zarr.Array) -> None:
    """Raise a StoreError naming the array and store rows when ``block`` (one row per entry of
    ``rows``) holds NaN or Inf.

    One reduction pass (a sum is NaN/Inf when any element is) keeps the common, finite case cheap;
    only then is the exact per-row scan done (a sum that overflowed alone passes it).
    """
    if np.isfinite(np.add.reduce(block, axis=None)):
        return
    bad = ~np.isfinite(block.reshape(block.shape[0], -1)).all(axis=1)
    if bad.any():
        first = rows[bad][:5].tolist()
        raise StoreError(f"{where(arr)}: {int(bad.sum())} rows hold NaN or Inf (store rows {first}"
                         f"{', ...' if bad.sum() > 5 else ''}); run `bmnas store verify` and re-extract "
                         "those samples, or drop them from the splits")
