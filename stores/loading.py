"""Readers for search: a float32 in-RAM bank, and a chunk-shuffled stream for larger-than-RAM stores.

Why not a per-row random-access loader: a random row of a compressed chunked array costs a whole
chunk decompression (~200x slower than RAM). The bank decompresses every chunk once; the stream
shuffles chunk order, then rows within a window of chunks, and prefetches the next window in a
background thread while the current one is consumed.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np

from stores.integrity import check_finite, read

if TYPE_CHECKING:
    from stores.reader import FeatureStore

Batch = tuple[dict[str, np.ndarray], np.ndarray]
_BLOCK_CHUNKS = 8  # row chunks read per zarr call while loading a bank (lets zarr decode them concurrently)


def _rng(seed: int, epoch: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(epoch)])


def _chunk_groups(rows: np.ndarray, rows_per_chunk: int) -> list[tuple[int, np.ndarray]]:
    """Split sorted row indices into (chunk id, rows in that chunk)."""
    bounds = np.flatnonzero(np.diff(rows // rows_per_chunk)) + 1
    return [(int(g[0] // rows_per_chunk), g) for g in np.split(rows, bounds) if g.size]


def _read_rows(array, rows: np.ndarray, out: np.ndarray) -> None:
    """Read sorted `rows` of a zarr array into float32 `out`, one slab per run of adjacent chunks.

    Every slab is checked for NaN/Inf as it lands (a StoreError names the array and rows), so
    neither reader hands a non-finite row to search, training or evaluation.
    """
    groups = _chunk_groups(rows, array.chunks[0])
    blocks: list[list[tuple[int, np.ndarray]]] = []
    for group in groups:  # runs of consecutive chunk ids, at most _BLOCK_CHUNKS long
        if blocks and group[0] == blocks[-1][-1][0] + 1 and len(blocks[-1]) < _BLOCK_CHUNKS:
            blocks[-1].append(group)
        else:
            blocks.append([group])
    pos = 0
    for block in blocks:
        start = int(block[0][1][0])
        stop = int(block[-1][1][-1]) + 1
        picked = np.concatenate([g for _, g in block])
        dest = out[pos:pos + picked.size]
        if picked.size == stop - start:  # every row of the slab: no fancy-index copy
            dest[...] = read(array, slice(start, stop))
        else:
            dest[...] = read(array, slice(start, stop))[picked - start]
        check_finite(dest, picked, array)
        pos += picked.size


class FeatureBank:
    """Chosen nodes and labels of one split, in RAM as float32, with seeded shuffled batches."""

    def __init__(self, features: dict[str, np.ndarray], labels: np.ndarray, rows: np.ndarray) -> None:
        self.features = features
        self.labels = labels
        self.rows = rows  # store row index of each bank row
        self.nodes = list(features)
        self.num_rows = int(labels.shape[0])

    @classmethod
    def load(cls, store: "FeatureStore", split: str, nodes: Sequence[str]) -> "FeatureBank":
        rows = store.split_rows(split)
        features = {}
        for node in nodes:
            c, t = store.node_shapes[node]
            out = np.empty((rows.size, c, t), dtype=np.float32)
            _read_rows(store.array(node), rows, out)
            features[node] = out
        return cls(features, store.labels(split), rows)

    def batch_indices(self, batch_size: int, seed: int, epoch: int = 0, shuffle: bool = True,
                      drop_last: bool = False) -> Iterator[np.ndarray]:
        """Bank-row index arrays of each batch; the same seed and epoch give the same order."""
        order = _rng(seed, epoch).permutation(self.num_rows) if shuffle else np.arange(self.num_rows)
        stop = self.num_rows - (self.num_rows % batch_size if drop_last else 0)
        for start in range(0, stop, batch_size):
            yield order[start:start + batch_size]

    def batches(self, batch_size: int, seed: int, epoch: int = 0, shuffle: bool = True,
                drop_last: bool = False) -> Iterator[Batch]:
        for idx in self.batch_indices(batch_size, seed, epoch, shuffle, drop_last):
            yield {n: a[idx] for n, a in self.features.items()}, self.labels[idx]


class StreamingReader:
    """Epochs over a split without holding it in RAM: shuffled chunk order, rows shuffled per window."""

    def __init__(self, store: "FeatureStore", split: str, nodes: Sequence[str], window_chunks: int = 8) -> None:
        self.store = store
        self.nodes = list(nodes)
        self.window_chunks = max(1, int(window_chunks))
        self.rows = store.split_rows(split)
        self.num_rows = int(self.rows.size)
        self._labels = store.labels_all
        self._arrays = {n: store.array(n) for n in self.nodes}
        rpc = self._arrays[self.nodes[0]].chunks[0]
        self._groups = _chunk_groups(self.rows, rpc)

    def _read_window(self, groups: list[tuple[int, np.ndarray]], headroom: int) -> tuple[dict[str, np.ndarray], np.ndarray, int]:
        """Read a window's rows in store order (the consumer shuffles them anyway).

        The buffers start with `headroom` free rows, where the consumer puts the rows left over
        from the previous window, so carrying them over costs no copy of the whole window.
        """
        rows = np.sort(np.concatenate([g for _, g in groups]))
        feats = {}
        for node, arr in self._arrays.items():
            out = np.empty((headroom + rows.size,) + tuple(arr.shape[1:]), dtype=np.float32)
            _read_rows(arr, rows, out[headroom:])
            feats[node] = out
        labels = np.empty((headroom + rows.size,) + self._labels.shape[1:], dtype=self._labels.dtype)
        labels[headroom:] = self._labels[rows]
        return feats, labels, headroom

    def batches(self, batch_size: int, seed: int, epoch: int = 0, shuffle: bool = True,
                drop_last: bool = False) -> Iterator[Batch]:
        rng = _rng(seed, epoch)
        order = rng.permutation(len(self._groups)) if shuffle else np.arange(len(self._groups))
        windows = [[self._groups[i] for i in order[s:s + self.window_chunks]]
                   for s in range(0, len(order), self.window_chunks)]
        carry: Batch | None = None
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="bmnas-prefetch") as pool:
            pending = pool.submit(self._read_window, windows[0], batch_size) if windows else None
            for w in range(len(windows)):
                feats, labels, head = pending.result()
                pending = pool.submit(self._read_window, windows[w + 1], batch_size) if w + 1 < len(windows) else None
                kept = 0 if carry is None else carry[1].shape[0]
                if carry is not None:
                    for n in feats:
                        feats[n][head - kept:head] = carry[0][n]
                    labels[head - kept:head] = carry[1]
                total = labels.shape[0] - head + kept
                perm = (rng.permutation(total) if shuffle else np.arange(total)) + (head - kept)
                full = total - total % batch_size
                for start in range(0, full, batch_size):
                    idx = perm[start:start + batch_size]
                    yield {n: a[idx] for n, a in feats.items()}, labels[idx]
                rest = perm[full:]
                carry = ({n: a[rest] for n, a in feats.items()}, labels[rest]) if rest.size else None
        if carry is not None and not drop_last:
            yield carry
