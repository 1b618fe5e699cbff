"""Open a source by kind and path, or guess the kind from what is on disk.

The one place the CLI, extraction and the demo turn a user's path into a :class:`Source`.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from extract.errors import DataError
from extract.sources.base import Source

KINDS = ("ntu", "mmimdb", "egogesture", "manifest")


def source_class(kind: str) -> type[Source]:
    """The adapter class of a kind (imported lazily so optional readers cost nothing)."""
    if kind == "ntu":
        from extract.sources.ntu import NTUSource

        return NTUSource
    if kind == "mmimdb":
        from extract.sources.mmimdb import MMIMDBSource

        return MMIMDBSource
    if kind == "egogesture":
        from extract.sources.egogesture import EgoGestureSource

        return EgoGestureSource
    if kind == "manifest":
        from extract.sources.manifest import ManifestSource

        return ManifestSource
    raise DataError(f"unknown source kind {kind!r}; use one of {', '.join(KINDS)}")


def detect_kind(path: str | Path) -> str:
    """Guess the kind: a ``.csv``/``.jsonl`` file is a manifest, an ``.hdf5``/``.h5`` file (or a
    folder holding ``multimodal_imdb.hdf5``) MM-IMDB, a folder with ``.skeleton`` files NTU, a
    folder with ``images/Subject*`` EgoGesture."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file or directory; pass a dataset folder, an .hdf5 file or a manifest")
    if p.is_file():
        if p.suffix.lower() in (".csv", ".jsonl"):
            return "manifest"
        if p.suffix.lower() in (".hdf5", ".h5"):
            return "mmimdb"
    else:
        if (p / "manifest.csv").is_file() or (p / "manifest.jsonl").is_file():
            return "manifest"
        if (p / "multimodal_imdb.hdf5").is_file():
            return "mmimdb"
        if any(p.glob("images/Subject*")):
            return "egogesture"
        ntu = "S[0-9][0-9][0-9]C[0-9][0-9][0-9]P[0-9][0-9][0-9]R[0-9][0-9][0-9]A[0-9][0-9][0-9]"
        if next(p.rglob(f"{ntu}.skeleton"), None) or next(p.rglob(f"{ntu}_rgb.*"), None):
            return "ntu"
    raise DataError(
        f"{p}: cannot tell the dataset kind; pass --kind ({', '.join(KINDS)}) "
        "or point at a manifest .csv/.jsonl"
    )


def open_source(path: str | Path, kind: str | None = None, lenient: bool = False, **options: Any) -> Source:
    """Open the dataset at ``path`` as ``kind`` (detected when ``None``) with adapter ``options``.

    ``lenient`` skips and lists bad rows where an adapter would otherwise raise (``data info``).
    """
    kind = kind or detect_kind(path)
    if lenient and kind == "manifest":
        options.setdefault("strict", False)
    p = Path(path)
    if kind == "mmimdb" and p.is_dir():
        p = p / "multimodal_imdb.hdf5"
    if kind == "manifest" and p.is_dir():
        found = sorted(p.glob("manifest.csv")) + sorted(p.glob("manifest.jsonl"))
        if not found:
            raise DataError(f"{p}: no manifest.csv or manifest.jsonl in this folder; pass the manifest file")
        p = found[0]
    cls = source_class(kind)
    accepted = inspect.signature(cls.__init__).parameters
    wrong = [k for k in options if k not in accepted]
    if wrong:
        raise DataError(f"option(s) {', '.join(wrong)} do not apply to {kind} sources")
    return cls(p, **options)
