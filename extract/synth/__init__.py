"""Synthetic datasets written in the exact on-disk formats of real ones, so the real readers run.

``ntu-like``: H.264 videos + NTU ``.skeleton`` files with NTU names (see :mod:`extract.synth.ntu_like`).
``mmimdb-like``: an HDF5 file in MM-IMDB's layout (see :mod:`extract.synth.mmimdb_like`).
Each writes ``bmnas_synth.json`` (generating factors and unimodal accuracy ceilings) beside the data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

KINDS = ("ntu-like", "mmimdb-like")


def generate(kind: str, out: str | Path, samples: int, classes: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Write a synthetic dataset of ``kind`` to ``out`` and return its metadata."""
    from extract.errors import DataError

    if kind == "ntu-like":
        from extract.synth.ntu_like import generate_ntu_like

        return generate_ntu_like(out, samples=samples, classes=classes or 8, seed=seed)
    if kind == "mmimdb-like":
        from extract.synth.mmimdb_like import generate_mmimdb_like

        return generate_mmimdb_like(out, samples=samples, seed=seed)
    raise DataError(f"unknown synthetic kind {kind!r}; use one of {', '.join(KINDS)}")
