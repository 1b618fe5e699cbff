"""Where torch work runs: the one device resolver, GPU-per-worker assignment, and RNG checkpointing.

It lives here, at the bottom layer, because every room needs it and `fusion_search` may not import
`extract` (nor the reverse); `stores/__init__` does not import it, so reading a store still needs no
torch. Rules kept in one place:
- `auto` means CUDA when torch sees a GPU; `cuda` without one is the user's error;
- a process that shares a host with other workers takes the GPU of its rank among that host's
  workers (sorted by address), modulo the GPUs it sees: two workers on two GPUs never both land on
  cuda:0, whatever the workers are named (`dask worker --nworkers N` names them by address);
- RNG states are saved and restored as CPU tensors: `torch.set_rng_state` and
  `torch.cuda.set_rng_state` accept only CPU ByteTensors, and a checkpoint loaded with
  `map_location=<cuda>` would otherwise hand them over on the GPU.
"""

from __future__ import annotations

import os
from typing import Iterable, Mapping
from urllib.parse import urlsplit

import torch

DEVICES = ("auto", "cpu", "cuda")
_SHARE = {"gpu": 1.0}  # fraction of its GPU's free memory this process may fill (see claim_gpu)


def resolve_device(name: str, error: type[Exception] = ValueError) -> torch.device:
    """`auto` takes CUDA when available; asking for CUDA without one raises `error` (the caller's room)."""
    if name not in DEVICES:
        raise error(f"--device {name!r}: use auto, cpu or cuda")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise error("--device cuda: no CUDA device is visible to torch here (use --device cpu or auto)")
    return torch.device(name)


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity where the OS has one (Linux: a container's
    or taskset's share, not the machine's count), else the machine's count."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity is not None else (os.cpu_count() or 1)


def host_of(address: str) -> str:
    """The host part of a dask worker address (`tcp://10.0.0.5:40123` -> `10.0.0.5`)."""
    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    return parts.hostname or address


def gpu_slot(address: str, addresses: Iterable[str], device_count: int) -> tuple[int, int]:
    """(cuda index, workers sharing it) of one worker, from the workers on its host.

    Pure: the index is the worker's rank among the sorted addresses of its host, modulo
    `device_count`; the second number says how many of those workers got the same index.
    """
    if device_count < 1:
        raise ValueError(f"worker {address} sees no GPU")
    host = host_of(address)
    peers = sorted({a for a in addresses if host_of(a) == host} | {address})
    rank = peers.index(address)
    index = rank % device_count
    return index, sum(1 for r in range(len(peers)) if r % device_count == index)


def claim_gpu(index: int, share: float = 1.0) -> torch.device:
    """Make cuda:`index` this process's current GPU, of whose free memory it may fill `share`."""
    torch.cuda.set_device(index)
    _SHARE["gpu"] = float(share)
    return torch.device("cuda", index)


def gpu_share() -> float:
    """The fraction of its GPU's free memory this process may fill (1 unless `claim_gpu` said less)."""
    return _SHARE["gpu"]


def rng_state(device: torch.device) -> dict[str, torch.Tensor | None]:
    """The RNG states a resumable run checkpoints: the CPU's always, the GPU's when the run uses one."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return {"rng": torch.get_rng_state(), "cuda_rng": cuda}


def restore_rng(ckpt: Mapping[str, object], device: torch.device) -> None:
    """Restore what `rng_state` saved, whatever device the checkpoint was loaded onto.

    A run started on CPU and resumed on CUDA (or the reverse) restores the CPU state only: the
    other device's stream was never saved, and is seeded as a fresh run would seed it.
    """
    torch.set_rng_state(_cpu_bytes(ckpt["rng"]))
    cuda = ckpt.get("cuda_rng")
    if device.type == "cuda" and cuda is not None:
        torch.cuda.set_rng_state(_cpu_bytes(cuda), device)


def _cpu_bytes(state: object) -> torch.Tensor:
    if not isinstance(state, torch.Tensor):
        raise TypeError(f"RNG state in a checkpoint must be a tensor, got {type(state).__name__}")
    return state.detach().to("cpu", torch.uint8)
