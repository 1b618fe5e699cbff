"""`verify` (every validation rule plus a NaN/Inf scan) and `info` (a summary) of a store."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from stores import schema as S
from stores.errors import StoreError
from stores.integrity import read
from stores.reader import _member, _open_group, validate_group


def _nonfinite_problems(group: zarr.Group, attrs: dict[str, Any]) -> list[str]:
    """Rows in any split whose features hold NaN or Inf, scanned one row chunk at a time.

    Rows outside every split (e.g. samples skipped during extraction, left unwritten as NaN)
    are not used by search or training and are not reported.
    """
    splits = group[S.SPLITS_GROUP]
    used = np.unique(np.concatenate([splits[k][...] for k in splits.array_keys()]))
    problems = []
    for node in attrs["nodes"]:
        arr = group[f"{S.FEATURES}/{node}"]
        rpc = arr.chunks[0]
        bad_rows: list[int] = []
        for start in range(0, arr.shape[0], rpc):
            stop = min(start + rpc, arr.shape[0])
            wanted = used[(used >= start) & (used < stop)]
            if not wanted.size:
                continue
            slab = read(arr, slice(start, stop))[wanted - start]
            finite = np.isfinite(slab.reshape(slab.shape[0], -1)).all(axis=1)
            bad_rows.extend(wanted[~finite].tolist())
        if bad_rows:
            problems.append(f"features/{node}: {len(bad_rows)} rows hold NaN or Inf (first rows: {bad_rows[:5]})")
    return problems


def verify_store(path: str | os.PathLike) -> list[str]:
    """Every problem of a store, one line each; empty when the store is sound."""
    try:
        group = _open_group(path)
        problems = validate_group(group)
        return problems or _nonfinite_problems(group, dict(group.attrs)[S.ATTRS_KEY])
    except StoreError as exc:  # a chunk that cannot be decoded stops the scan
        return [str(exc)]


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def store_info(path: str | os.PathLike) -> dict[str, Any]:
    """Nodes, shapes, dtypes, bytes on disk, compression ratio, task, classes, splits, completeness."""
    group = _open_group(path)
    header = validate_group(group)
    attrs = dict(group.attrs).get(S.ATTRS_KEY) or {}
    nodes = []
    raw = disk = 0
    for name in attrs.get("nodes", []):
        arr = _member(group, f"{S.FEATURES}/{name}")
        if arr is None:
            continue
        node_raw = int(np.prod(arr.shape)) * arr.dtype.itemsize
        node_disk = _dir_bytes(Path(path) / S.FEATURES / name)
        raw += node_raw
        disk += node_disk
        nodes.append({"name": name, "shape": list(arr.shape[1:]), "dtype": str(arr.dtype),
                      "rows_per_chunk": int(arr.chunks[0]), "bytes_on_disk": node_disk,
                      "attrs": dict(arr.attrs)})
    splits = _member(group, S.SPLITS_GROUP)
    completion = _member(group, S.COMPLETION)
    done = None if completion is None else completion[...]
    return {
        "path": str(path),
        "format": attrs.get("format"), "version": attrs.get("version"),
        "task": attrs.get("task"), "num_classes": attrs.get("num_classes"),
        "class_names": attrs.get("class_names"), "dataset": attrs.get("dataset"),
        "num_samples": int(group[S.LABELS].shape[0]) if _member(group, S.LABELS) is not None else None,
        "nodes": nodes,
        "bytes_raw": raw, "bytes_on_disk": _dir_bytes(Path(path)),
        "compression_ratio": (raw / disk) if disk else None,
        "splits": {k: int(splits[k].shape[0]) for k in sorted(splits.array_keys())} if splits is not None else {},
        "chunks_complete": None if done is None else [int(done.sum()), int(done.size)],
        "skipped": len(attrs.get("skipped", [])),
        "problems": header,
    }
