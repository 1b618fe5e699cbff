"""Feature batches as torch tensors from a store split, in RAM (or GPU memory) or streamed.

The store decides bank vs stream from the memory budget; a bank is wrapped once into tensors (no
copy) and indexed per batch; on CUDA the whole bank moves to GPU memory when it fits, so a batch
costs one gather on the device instead of a host-to-device copy.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch

from fusion_search.errors import SearchError
from fusion_search.training.distributed import SINGLE, World, shard_rows
from stores.device import gpu_share
from stores.device import resolve_device as _resolve_device

TensorBatch = tuple[dict[str, torch.Tensor], torch.Tensor]


def resolve_device(name: str) -> torch.device:
    """`stores.device.resolve_device` (the one resolver), raising this room's SearchError."""
    return _resolve_device(name, SearchError)


def open_feature_store(path: str):
    """The store at `path` for a stage of this room or above: a StoreError becomes one SearchError
    naming --store (the option the user gave)."""
    from stores import StoreError, open_store

    if not path:
        raise SearchError("--store: give the feature store to read")
    try:
        return open_store(path)
    except StoreError as exc:
        raise SearchError(f"--store {path}: {exc}") from None


def require_rows(store, splits: Sequence[str], need: str = "") -> None:
    """Refuse a store without rows in one of `splits`, in one line naming the split, the store's
    splits and (`need`) what the stage needs them for."""
    for split in splits:
        if len(store.splits.get(split, ())) == 0:
            raise SearchError(f"--store {store.path} has no rows in split {split!r} (splits: "
                              f"{', '.join(store.splits) or 'none'}){'; ' + need if need else ''}")


def budget_bytes(gigabytes: float | None) -> int | None:
    """A --memory-budget-gb value in bytes (None: the default budget decides)."""
    return None if gigabytes is None else int(gigabytes * (1 << 30))


def default_memory_budget() -> int:
    """Half the machine's physical RAM: the bank leaves room for the model and the OS."""
    try:
        import os
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2)
    except (ValueError, OSError, AttributeError):
        return 8 << 30


class SplitData:
    """One split of chosen nodes: `batches()` yields (features on device, labels on device)."""

    def __init__(self, reader, device: torch.device, multilabel: bool) -> None:
        self.reader = reader
        self.device = device
        self.multilabel = multilabel
        self.num_rows = int(reader.num_rows)
        self.in_ram = hasattr(reader, "batch_indices")
        if self.in_ram:
            self.features = {n: torch.from_numpy(a) for n, a in reader.features.items()}
            self.labels = self._labels(reader.labels)
            if device.type == "cuda" and self._fits_on_device():
                self.features = {n: t.to(device) for n, t in self.features.items()}
                self.labels = self.labels.to(device)

    def _labels(self, labels: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(labels))
        return t.float() if self.multilabel else t.long()

    def _fits_on_device(self) -> bool:
        """60 % of the GPU's free memory, times this process's share of that GPU: workers that share
        one (ablate) measure the same free memory at the same moment, so each may take only its part."""
        free, _ = torch.cuda.mem_get_info(self.device)
        need = sum(t.numel() * t.element_size() for t in self.features.values())
        return need < 0.6 * free * gpu_share()

    def batches(self, batch_size: int, seed: int, epoch: int = 0, shuffle: bool = True,
                world: World = SINGLE) -> Iterator[TensorBatch]:
        """Every row once per epoch in a seeded order; the same seed and epoch give the same batches.
        In a `world` of several processes, this rank's share of each global batch (`shard_rows`)."""
        dev = self.device
        if self.in_ram:
            for idx in self.reader.batch_indices(batch_size, seed, epoch, shuffle):
                index = torch.from_numpy(shard_rows(idx, world)).to(self.labels.device)
                yield ({n: t.index_select(0, index).to(dev, non_blocking=True) for n, t in self.features.items()},
                       self.labels.index_select(0, index).to(dev, non_blocking=True))
        else:
            for feats, labels in self.reader.batches(batch_size, seed, epoch, shuffle):
                if world.size > 1:
                    mine = shard_rows(np.arange(len(labels)), world)
                    feats, labels = {n: a[mine] for n, a in feats.items()}, labels[mine]
                yield ({n: torch.from_numpy(a).to(dev) for n, a in feats.items()}, self._labels(labels).to(dev))


def open_split(store, split: str, nodes: Sequence[str], device: torch.device,
               memory_budget_bytes: int | None = None) -> SplitData:
    """Bank when the split fits the budget (default: half the RAM), otherwise the streaming reader."""
    budget = default_memory_budget() if memory_budget_bytes is None else memory_budget_bytes
    reader = store.reader(split, list(nodes), memory_budget_bytes=budget)
    return SplitData(reader, device, store.task == "multilabel")
