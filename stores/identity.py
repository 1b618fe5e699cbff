"""A store's identity: a fingerprint of what it holds, so a run can tell when the store under its path
is no longer the one it was made from.

Parts (each a sha256, so a mismatch says what changed):
- `nodes`: per node its name, shape, dtype and provenance (backbone, layer, checkpoint sha256,
  reduction);
- `samples`, `labels`, `splits`: the sample ids, the labels and each split's rows;
- `content`: the per-chunk content hashes the writer records with each chunk's completion record
  (`chunk_sha256`, one row of 32 bytes a row chunk), so a re-extraction from other raw data changes
  it and a million rows cost no second read of the features. None for a store written without them
  (older bmnas): such a store's content is not compared.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

import numpy as np

from stores import schema as S

PARTS = ("nodes", "samples", "labels", "splits", "content")


def chunk_digest(slabs: Mapping[str, np.ndarray]) -> np.ndarray:
    """The content hash of one row chunk: sha256 over its nodes' rows as stored, in node order."""
    h = hashlib.sha256()
    for name in sorted(slabs):
        h.update(name.encode())
        h.update(np.ascontiguousarray(slabs[name]).tobytes())
    return np.frombuffer(h.digest(), dtype=np.uint8)


def _sha(data: Any) -> str:
    if isinstance(data, np.ndarray):
        return hashlib.sha256(np.ascontiguousarray(data).tobytes()).hexdigest()
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


NODE_KEYS = ("backbone", "layer", "checkpoint_sha256", "reduction")


def store_identity(store: Any) -> dict[str, Any]:
    """{"fingerprint": hex, "parts": {part: hex or None}} of an opened `FeatureStore`."""
    group = store.group
    nodes = [{"name": n, "shape": list(store.node_shapes[n]), "dtype": str(store.array(n).dtype),
              **{k: store.node_attrs(n).get(k) for k in NODE_KEYS}} for n in store.nodes]
    ids = store.sample_ids
    hashes = group[S.CHUNK_HASHES][:] if S.CHUNK_HASHES in group else None
    parts = {"nodes": _sha(nodes),
             "samples": None if ids is None else _sha([str(i) for i in ids]),
             "labels": _sha(np.asarray(store.labels_all)),
             "splits": _sha({k: np.asarray(v).tolist() for k, v in sorted(store.splits.items())}),
             "content": None if hashes is None or not hashes.any(axis=1).all() else _sha(hashes)}
    return {"fingerprint": _sha(parts), "parts": parts}


def changed_parts(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """The parts that differ between two identities (a part one side did not record is not compared)."""
    old, new = recorded.get("parts") or {}, current.get("parts") or {}
    return [p for p in PARTS if old.get(p) is not None and new.get(p) is not None and old[p] != new[p]]
