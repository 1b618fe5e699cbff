"""Synthetic datasets written in the exact on-disk formats of real ones, so the real readers run
(`generate`, what `bmnas data synth KIND` calls).

- ``ntu-like`` (:mod:`extract.synth.ntu_like`): H.264 ``_rgb.avi`` videos + NTU ``.skeleton`` files
  with NTU names, whose label needs both modalities; ``factors.csv`` holds the per-sample factors.
- ``mmimdb-like`` (:mod:`extract.synth.mmimdb_like`): poster JPEGs and UTF-8 plot texts listed in
  ``manifest.jsonl`` with ``classes.txt`` (a manifest source), and the same movies as an HDF5 file in
  MM-IMDB's layout; the plot sentences come from :mod:`extract.synth.plots`.

Each writes ``bmnas_synth.json`` beside the data: the generating factors and the ceilings of what one
modality, or both, can reach (accuracy for ``ntu-like``, weighted F1 for ``mmimdb-like``).
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
