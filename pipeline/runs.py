"""What the train and finetune stages share before a run starts: option
checks, reading a run's config.yaml, and opening a store's splits for a genotype.

`train`, `finetune` and `evaluate` all import these; none of them imports another for them.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fusion_search.data import SplitData, default_memory_budget, open_feature_store, require_rows
from fusion_search.errors import SearchError
from fusion_search.genotype import Genotype, check_against_store, check_provenance
from fusion_search.training.rundir import read_config
from pipeline.configs import DEFAULT_EPOCHS
from stores import FeatureBank, FeatureStore



def check_run_options(epochs: int | None, train_on: str, settings: dict[str, Any], config_cls: type,
                      what: str) -> int:
    """Shared by train and finetune: the epoch count to use, and no unknown config settings.

    `epochs=None` means DEFAULT_EPOCHS with `train_on="train"`; `train+val` needs a fixed count.
    """
    unknown = sorted(set(settings) - {f.name for f in dataclasses.fields(config_cls)})
    if unknown:
        raise SearchError(f"unknown {what} setting(s) {', '.join(unknown)}")
    if epochs is not None:
        return epochs
    if train_on == "train+val":
        raise SearchError("--train-on train+val trains for a fixed number of epochs with no validation "
                          "split to select on: give --epochs")
    return DEFAULT_EPOCHS


def read_run_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The config.yaml of a train or finetune run directory, as a mapping with its `kind`."""
    data = read_config(run_dir, SearchError, "is it a run directory of `bmnas train` or `bmnas finetune`?")
    if data.get("kind") not in ("train", "finetune"):
        raise SearchError(f"{Path(run_dir) / 'config.yaml'}: not the config of a train/finetune run (a search run? "
                          "evaluate a train run)")
    return data


def open_store_checked(store_path: str, genotype: Genotype, source: str,
                       accept_changed: bool = False) -> FeatureStore:
    """Open the store and check the genotype fits it (nodes, task, classes, and the nodes' provenance
    when the genotype records it): one clear SearchError."""
    store = open_feature_store(store_path)
    check_against_store(genotype, store.nodes, store.task, store.num_classes, source)
    check_provenance(genotype, store.node_attrs, source, accept_changed)
    return store


class _ChainedStream:
    """Streams of several splits as one epoch: each batch comes from a split drawn in proportion to
    its remaining rows (seeded), so train+val mixes without holding either in RAM."""

    def __init__(self, readers: list) -> None:
        self.readers = readers
        self.num_rows = sum(int(r.num_rows) for r in readers)

    def batches(self, batch_size: int, seed: int, epoch: int = 0, shuffle: bool = True):
        iters = [r.batches(batch_size, seed + 7919 * k, epoch, shuffle) for k, r in enumerate(self.readers)]
        left = [int(r.num_rows) for r in self.readers]
        rng = np.random.default_rng([seed, epoch, 1])
        while any(left):
            k = int(rng.choice(len(left), p=np.asarray(left) / sum(left))) if shuffle else next(
                i for i, n in enumerate(left) if n)
            batch = next(iters[k], None)
            if batch is None:
                left[k] = 0
                continue
            left[k] = max(0, left[k] - len(batch[1]))
            yield batch


def open_splits(store, splits: list[str], nodes: list[str], device: torch.device,
                memory_budget_bytes: int | None = None) -> SplitData:
    """One split, or the union of several (train+val), as SplitData: a RAM bank when it fits."""
    budget = default_memory_budget() if memory_budget_bytes is None else memory_budget_bytes
    require_rows(store, splits)
    multilabel = store.task == "multilabel"
    if len(splits) == 1:
        return SplitData(store.reader(splits[0], nodes, memory_budget_bytes=budget), device, multilabel)
    if sum(store.estimate_bytes(s, nodes) for s in splits) <= budget:
        banks = [store.bank(s, nodes) for s in splits]
        reader = FeatureBank({n: np.concatenate([b.features[n] for b in banks]) for n in nodes},
                             np.concatenate([b.labels for b in banks]), np.concatenate([b.rows for b in banks]))
    else:
        reader = _ChainedStream([store.stream(s, nodes) for s in splits])
    return SplitData(reader, device, multilabel)
