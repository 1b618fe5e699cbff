"""Format v1 of the feature store: names, constants and the attrs record (a public contract).

```
NAME.zarr/                      zarr v3 group, attrs["bmnas"] = {format, version, task, num_classes,
                                class_names?, nodes, dataset?, extraction?, skipped?}
  features/<node>   float16|float32 (N, C, T), chunked along N only; each node has its own dtype
  labels            int64 (N,) multiclass | uint8 (N, K) multi-hot multilabel
  splits/<name>     int64 sorted unique row indices (train, val, test)
  sample_ids        str (N,)                        optional for bring-your-own stores
  completion        uint8 (num_chunks,), one chunk per element; 1 = that row chunk was written
                    completely. Only extraction writes it; a store without it counts as complete.
  chunk_sha256      uint8 (num_chunks, 32), one row per file: each row chunk's content hash, written
                    with the chunk before its completion record (`stores.identity`); optional
```
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

FORMAT = "bmnas-features"
VERSION = 1
ATTRS_KEY = "bmnas"
TASKS = ("multiclass", "multilabel")
DTYPES = ("float16", "float32")
CODECS = ("zstd", "lz4")
SPLITS = ("train", "val", "test")
FEATURES = "features"
LABELS = "labels"
SPLITS_GROUP = "splits"
SAMPLE_IDS = "sample_ids"
COMPLETION = "completion"
CHUNK_HASHES = "chunk_sha256"


@dataclass(frozen=True)
class NodeSpec:
    """One cached tap: its node name (``<modality>_<k>``), shape (C, T), provenance attrs and, when
    it differs from the store's, its own dtype (float16 or float32)."""

    name: str
    channels: int
    length: int
    attrs: dict[str, Any] = field(default_factory=dict)
    dtype: str | None = None


def num_chunks(num_samples: int, rows_per_chunk: int) -> int:
    return max(1, -(-num_samples // rows_per_chunk))
