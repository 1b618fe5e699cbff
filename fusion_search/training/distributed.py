"""Data-parallel training over the processes `torchrun` starts (`bmnas train` and `bmnas finetune`).

A command started by torchrun finds RANK, WORLD_SIZE and LOCAL_RANK in its environment; `joined`
then joins the process group (`nccl` on CUDA, `gloo` on CPU) and yields the `World` this process is
in; started any other way it yields the one-process world, and nothing below communicates.

Why the rules are what they are:
- `--batch-size` is the global batch: rank r trains on its share of each global batch
  (`shard_rows`), so 1 and N processes see the same global batches in the same order. A batch
  that does not split evenly over the ranks is padded with its first rows, as torch's
  DistributedSampler pads a split, and each rank's loss is weighted by its share of the global
  rows (`share_weight`), so DDP's mean of the ranks' gradients is the gradient of the global batch.
- Each rank has its own RNG stream (seed + rank: dropout masks differ); checkpoints keep every
  rank's RNG state (`RANK_RNG`), so a resumed run continues each stream where it stopped.
- Rank 0 alone writes the run directory; the others follow it (`fusion_search.training.run.shared_run`).
- A rank dies with the torchrun that started it (Linux: the parent-death signal). torchrun starts each
  rank in a process group of its own, so a `kill -9` of torchrun's group would otherwise leave the
  ranks training on, holding the run's lock, and `--resume` would be refused.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from fusion_search.errors import SearchError

RANK_RNG = "rank_rng"  # last.pt's key for every rank's RNG state (a run of several processes)


def launched_rank() -> int:
    """This process's rank as torchrun set it (0 when not started by torchrun); reads no torch state."""
    return int(os.environ.get("RANK", "0") or 0)


def launched_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


@dataclass(frozen=True)
class World:
    """The processes training one run together, and this one's place among them."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    cuda: bool = False  # the collectives' tensors live on this process's GPU (nccl)

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes the run directory and prints."""
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """This rank's device: its own GPU (LOCAL_RANK) on CUDA."""
        if device.type == "cuda" and self.size > 1:
            return torch.device("cuda", self.local_rank)
        return device

    def check_batch(self, batch_size: int) -> int:
        """The per-rank batch of a global `batch_size`; refused when it does not divide over the ranks."""
        if batch_size % self.size:
            raise SearchError(f"--batch-size {batch_size} is the global batch and does not divide over {self.size} "
                              f"processes: give a multiple of {self.size}")
        return batch_size // self.size

    def check_sync_bn(self, sync_bn: bool) -> None:
        """--sync-bn needs CUDA: torch's SyncBatchNorm runs on GPUs (nccl) only."""
        if sync_bn and not self.cuda and self.size > 1:
            raise SearchError("--sync-bn: SyncBatchNorm runs on CUDA processes only; leave it off on CPU")

    def barrier(self) -> None:
        if self.size > 1:
            torch.distributed.barrier()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank."""
        if self.size == 1:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order, on every rank."""
        if self.size == 1:
            return [obj]
        out: list[Any] = [None] * self.size
        torch.distributed.all_gather_object(out, obj)
        return out

    def sum(self, values: Sequence[float]) -> list[float]:
        """Elementwise sums over the ranks (float64)."""
        if self.size == 1:
            return [float(v) for v in values]
        t = torch.tensor(list(values), dtype=torch.float64,
                         device=torch.device("cuda", self.local_rank) if self.cuda else "cpu")
        torch.distributed.all_reduce(t)
        return [float(v) for v in t.cpu()]

    def wrap(self, model: nn.Module, sync_bn: bool = False) -> nn.Module:
        """`model` under DistributedDataParallel (gradients averaged over the ranks); itself alone.
        `sync_bn`: training BatchNorm layers normalise over the global batch (SyncBatchNorm, in place:
        the parameters stay the optimiser's)."""
        if self.size == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        if sync_bn:
            self.check_sync_bn(sync_bn)
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ids = [self.local_rank] if self.cuda else None
        return DistributedDataParallel(model, device_ids=ids)

    def rng_states(self, device: torch.device) -> list[dict[str, Any]] | None:
        """Every rank's RNG state (rank order) for a checkpoint; None for one process."""
        from stores.device import rng_state

        return self.gather(rng_state(device)) if self.size > 1 else None

    def restore_rng(self, checkpoint: dict[str, Any], device: torch.device, seed: int) -> bool:
        """This rank's RNG from a checkpoint of as many ranks. A checkpoint of another number of
        processes holds no stream for this rank: rank 0 keeps the checkpoint's own state (already
        restored with it), every other rank starts a stream of its own from `seed` + rank. False then."""
        from stores.device import restore_rng

        states = checkpoint.get(RANK_RNG)
        if self.size > 1 and states and len(states) == self.size:
            restore_rng(states[self.rank], device)
            return True
        if self.rank:
            torch.manual_seed(seed + self.rank)
        return False


SINGLE = World()


def shard_rows(rows: np.ndarray, world: World) -> np.ndarray:
    """Rank r's share of one global batch's rows: every size-th row from r, the batch padded with its
    first rows to a multiple of the world's size (so no rank gets fewer rows than another)."""
    if world.size == 1:
        return rows
    pad = (-len(rows)) % world.size
    if pad:
        rows = np.concatenate([rows, np.resize(rows, pad)])
    return rows[world.rank::world.size]


def share_weight(rows: int, world: World) -> float:
    """The factor on this rank's mean loss that makes DDP's mean of the ranks' gradients the gradient
    of the mean over all their rows: rows x size / total rows (1 when every rank has as many)."""
    if world.size == 1:
        return 1.0
    total = world.sum([rows])[0]
    return rows * world.size / total if total else 0.0


def gathered(world: World, rows: Sequence[int], logits: np.ndarray,
             labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A whole split's predictions from each rank's share (`rows`: the split rows this rank predicted,
    in its order): every rank gets them all, in split order, with a sampler's padding duplicates dropped."""
    if world.size == 1:
        return logits, labels
    parts = world.gather((np.asarray(rows, dtype=np.int64), logits, labels))
    order = np.concatenate([p[0] for p in parts])
    _, first = np.unique(order, return_index=True)  # each row once, sorted by row
    return np.concatenate([p[1] for p in parts])[first], np.concatenate([p[2] for p in parts])[first]


def die_with_parent(*_: Any) -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux only): a rank when torchrun's
    agent dies, a DataLoader worker (as its `worker_init_fn`) when its trainer dies. A worker that
    outlived a killed trainer would keep the run's lock, which it inherited, and `--resume` would be
    refused."""
    import ctypes
    import signal
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return


@contextmanager
def joined(device: str) -> Iterator[World]:
    """The world of this command: the process group of a torchrun launch (left at the end), or SINGLE.

    `device`: the run's --device (auto/cpu/cuda), which picks the backend: nccl for CUDA, gloo for CPU."""
    size = launched_size()
    if size == 1:
        yield SINGLE
        return
    import torch.distributed as dist

    die_with_parent()
    local = int(os.environ.get("LOCAL_RANK", "0") or 0)
    cuda = device != "cpu" and torch.cuda.is_available()
    if device == "cuda" and not cuda:
        raise SearchError("--device cuda: no CUDA device is visible to this process")
    if cuda:
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        yield World(rank=dist.get_rank(), size=dist.get_world_size(), local_rank=local, cuda=cuda)
        dist.barrier()  # no rank tears the group down while another is still in a collective (gloo aborts)
    finally:
        dist.destroy_process_group()
