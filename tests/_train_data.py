"""Small real stores for the train/evaluate/ablate/report tests, written with the real store API.

Nodes are named like an NTU extraction (video_1..3, skeleton_1..3). Every node carries one random
bit as a signed direction plus noise; the label depends on the bits of video_2 and skeleton_3 only
(`multiclass`: 4 classes = 2·bit_v + bit_s; `multilabel`: [bit_v, bit_s, bit_v & bit_s]).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

NODES = ["video_1", "video_2", "video_3", "skeleton_1", "skeleton_2", "skeleton_3"]
PLANTED = ("video_2", "skeleton_3")


def small_store(path: Path, task: str = "multiclass", n: int = 160, C: int = 6, T: int = 4, seed: int = 0,
                signal: float = 3.0, splits: tuple[str, ...] = ("train", "val", "test")):
    from stores import write_store_from_arrays

    rng = np.random.default_rng(seed)
    bits = {node: rng.integers(0, 2, n) for node in NODES}
    feats = {}
    for node in NODES:
        direction = rng.standard_normal((C, T))
        direction /= np.linalg.norm(direction) / np.sqrt(C * T)
        sign = (2 * bits[node] - 1)[:, None, None]
        feats[node] = (rng.standard_normal((n, C, T)) + signal * sign * direction).astype(np.float32)
    a, b = (bits[p] for p in PLANTED)
    if task == "multiclass":
        labels, k = (2 * a + b).astype(np.int64), 4
    else:
        labels, k = np.stack([a, b, a & b], axis=1).astype(np.uint8), 3
    order = rng.permutation(n)
    cuts = {"train": (0, n // 2), "val": (n // 2, 3 * n // 4), "test": (3 * n // 4, n)}
    split_rows = {s: np.sort(order[cuts[s][0]:cuts[s][1]]) for s in splits}
    return write_store_from_arrays(path, features=feats, labels=labels, splits=split_rows, task=task,
                                   num_classes=k, rows_per_chunk=32, class_names=[f"c{i}" for i in range(k)],
                                   sample_ids=[f"s{i:04d}" for i in range(n)])


def searched_genotype(task: str = "multiclass", k: int = 4, C: int = 8, L: int = 4):
    """A plausible 'searched' genotype that reads the planted pair (two Cells, two Steps each)."""
    from fusion_search.genotype import Genotype

    return Genotype.from_dict({
        "format": "bmnas-genotype", "version": 1, "task": task, "num_classes": k, "nodes": NODES,
        "C": C, "L": L, "multiplier": 2,
        "cells": [{"inputs": ["video_2", "skeleton_3"],
                   "steps": [{"op": "ConcatFC", "inputs": [0, 1]}, {"op": "LinearGLU", "inputs": [2, 1]}],
                   "concat": [2, 3]},
                  {"inputs": ["cell_1", "video_3"],
                   "steps": [{"op": "Sum", "inputs": [0, 1]}, {"op": "Attention", "inputs": [2, 0]}],
                   "concat": [2, 3]}],
        "output": ["cell_1", "cell_2"]})
