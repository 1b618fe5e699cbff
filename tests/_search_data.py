"""Planted feature stores for the search tests, written with the real store API.

Six nodes a_1..a_3, b_1..b_3 of shape (C, T); every node carries one random bit as a signed
direction plus noise, so all nodes look alike. Only the bits of the two planted nodes relate to the
label: `joint` (4 classes = 2·bit_a + bit_b, each node alone explains half), `xor` (2 classes =
bit_a XOR bit_b, no signal in either node alone) or `multilabel` (label j = bit of planted node j).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

NODES = ["a_1", "a_2", "a_3", "b_1", "b_2", "b_3"]
PLANTED = ("a_2", "b_3")


def planted_store(path: Path, kind: str = "joint", n: int = 480, C: int = 8, T: int = 4, signal: float = 1.0,
                  seed: int = 0, shapes: dict | None = None, planted: tuple[str, str] = PLANTED):
    from stores import write_store_from_arrays

    rng = np.random.default_rng(seed)
    bits = {node: rng.integers(0, 2, n) for node in NODES}
    feats = {}
    for node in NODES:
        c, t = (shapes or {}).get(node, (C, T))
        direction = rng.standard_normal((c, t))
        direction /= np.linalg.norm(direction) / np.sqrt(c * t)
        sign = (2 * bits[node] - 1)[:, None, None]
        feats[node] = (rng.standard_normal((n, c, t)) + signal * sign * direction).astype(np.float32)
    a, b = (bits[p] for p in planted)
    if kind == "joint":
        labels, task, k = (2 * a + b).astype(np.int64), "multiclass", 4
    elif kind == "xor":
        labels, task, k = (a ^ b).astype(np.int64), "multiclass", 2
    elif kind == "multilabel":
        labels, task, k = np.stack([a, b, a & b], axis=1).astype(np.uint8), "multilabel", 3
    else:
        raise ValueError(kind)
    order = rng.permutation(n)
    n_train, n_val = n * 5 // 8, n * 2 // 8
    splits = {"train": np.sort(order[:n_train]), "val": np.sort(order[n_train:n_train + n_val]),
              "test": np.sort(order[n_train + n_val:])}
    return write_store_from_arrays(path, features=feats, labels=labels, splits=splits, task=task,
                                   num_classes=k, rows_per_chunk=64)


@pytest.fixture
def single_thread():
    """Run a test on one torch thread (restored after): the tiny nets here lose far more to thread
    synchronisation on a shared 2-core machine than they gain from a second thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
