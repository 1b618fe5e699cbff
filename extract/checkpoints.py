"""Local checkpoint files: load with a strict key check, save, hash, inflate 2D ResNet-50 to 3D.

Strict means every key of the model is in the file with its shape and nothing else is, except
BatchNorm's ``num_batches_tracked`` counters, which files saved before PyTorch 0.4.1 lack.

Only local files are read (``.pt``/``.pth`` via torch.load with weights_only, ``.safetensors``
when that package is installed); nothing here touches the network. The sha256 of the file is
what the store records per node, so a cache can be traced to the exact weights.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from extract.errors import BackboneError
from stores.files import replace_atomic

WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "net")


def sha256_file(path: str | Path, block: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            h.update(chunk)
    return h.hexdigest()


def sha256_weights(path: str | Path) -> str:
    """The sha256 of a weights file; for a sharded model's ``*.index.json``, one digest over the index
    and every shard it lists (so no shard can change unnoticed)."""
    path = Path(path)
    if not path.name.endswith(".index.json"):
        return sha256_file(path)
    import json

    shards = sorted(set((json.loads(path.read_text()).get("weight_map") or {}).values()))
    h = hashlib.sha256(sha256_file(path).encode())
    for shard in shards:
        h.update(f"{shard}:{sha256_file(path.parent / shard)}".encode())
    return h.hexdigest()


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state_dict from a local file; unwraps {"state_dict": ...} and strips DataParallel's "module."."""
    path = Path(path)
    if not path.is_file():
        raise BackboneError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as exc:
            raise BackboneError(f"{path}: reading .safetensors needs the 'safetensors' package "
                                "(pip install 'bmnas[safetensors]')") from exc
        try:
            obj: Any = load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - any parse failure is a bad file
            raise BackboneError(f"{path} is not a readable safetensors file: {exc}") from exc
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001
            raise BackboneError(f"{path} is not a readable torch checkpoint: {exc}") from exc
    for key in WRAPPER_KEYS:
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise BackboneError(f"{path} does not hold a state_dict (a mapping of names to tensors)")
    return {k[7:] if k.startswith("module.") else k: v for k, v in obj.items()}


def _same_shape(own: torch.Tensor, theirs: torch.Tensor) -> bool:
    return own.shape == theirs.shape


def _inflatable(own: torch.Tensor, theirs: torch.Tensor) -> bool:
    if own.dim() == 5 and theirs.dim() == 4:
        return own.shape[:2] + own.shape[3:] == theirs.shape
    return own.shape == theirs.shape


def _optional(key: str) -> bool:
    """BatchNorm's step counter: files saved before PyTorch 0.4.1 have none, and strict loading
    accepts that (the counter starts at 0); it only matters with BN momentum None."""
    return key.endswith(".num_batches_tracked")


def check_keys(model: nn.Module, state: dict[str, torch.Tensor], source: str,
               ignore_prefixes: tuple[str, ...] = (), fits=_same_shape) -> None:
    """Raise a BackboneError listing missing, unexpected and mis-shaped keys, if any."""
    own = {k: v for k, v in model.state_dict().items() if not k.startswith(ignore_prefixes)}
    theirs = {k: v for k, v in state.items() if not k.startswith(ignore_prefixes)}
    missing = sorted(k for k in set(own) - set(theirs) if not _optional(k))
    unexpected = sorted(set(theirs) - set(own))
    shaped = sorted(f"{k} {tuple(theirs[k].shape)} != {tuple(own[k].shape)}"
                    for k in set(own) & set(theirs) if not fits(own[k], theirs[k]))
    if missing or unexpected or shaped:
        def few(xs: list[str]) -> str:
            return ", ".join(xs[:6]) + (f" (+{len(xs) - 6} more)" if len(xs) > 6 else "")
        parts = [f"{len(missing)} missing [{few(missing)}]" if missing else "",
                 f"{len(unexpected)} unexpected [{few(unexpected)}]" if unexpected else "",
                 f"{len(shaped)} mis-shaped [{few(shaped)}]" if shaped else ""]
        raise BackboneError(f"checkpoint {source} does not fit the architecture: "
                            + "; ".join(p for p in parts if p))


def _with_counters(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` plus the model's own BatchNorm step counters where the file has none."""
    return {**{k: v for k, v in own.items() if _optional(k) and k not in state}, **state}


def load_checkpoint(model: nn.Module, path: str | Path, head: str | None = None) -> str:
    """Load a local checkpoint strictly into ``model``; returns the file's sha256.

    With ``head`` given, the classifier head may be absent or mis-shaped (another class count):
    it keeps its fresh weights, since extraction never uses it.
    """
    state = read_state_dict(path)
    ignore = (head + ".",) if head else ()
    check_keys(model, state, str(path), ignore)
    own = model.state_dict()
    usable = {k: v for k, v in _with_counters(state, own).items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(usable, strict=not head)
    return sha256_file(path)


def save_checkpoint(model: nn.Module, path: str | Path) -> str:
    """Write a plain state_dict (``.safetensors`` when the suffix says so) through the one atomic writer
    (a kill mid-write leaves the previous file whole); returns its sha256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import save_file
        except ImportError as exc:
            raise BackboneError("writing .safetensors needs the 'safetensors' package") from exc
        replace_atomic(path, lambda tmp: save_file(state, str(tmp)))
    else:
        buf = io.BytesIO()  # through memory: torch.save names its archive after a file's name, so the
        torch.save(state, buf)  # temporary name would change the bytes (and the sha256) from run to run
        replace_atomic(path, lambda tmp: tmp.write_bytes(buf.getbuffer()))
    return sha256_file(path)


def inflate_2d_state(state2d: dict[str, torch.Tensor], model3d: nn.Module, head: str = "classifier",
                     source: str = "2D state_dict", trunk: str = "cnn",
                     head2d: str = "fc") -> dict[str, torch.Tensor]:
    """Centre inflation: each 2D kernel goes in the middle time slot of its 3D kernel, zeros elsewhere.

    ``state2d`` has torchvision's ResNet names (conv1, bn1, layer1.0.conv1, ..., fc); they map to
    ``<trunk>.<name>`` in the 3D model. 2D layers of the 3D model (the per-frame stem) take their
    weights as they are. A static clip then gives every frame exactly the 2D network's activations.
    The 2D head (``head2d``, ImageNet's 1000 classes) is dropped; the 3D ``head`` keeps its weights.
    """
    renamed = {f"{trunk}.{k}": v for k, v in state2d.items() if not k.startswith(head2d + ".")}
    check_keys(model3d, renamed, source, (head + ".",), fits=_inflatable)
    own = model3d.state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, w2 in _with_counters(renamed, own).items():
        w3 = own[key]
        if w3.dim() == 5 and w2.dim() == 4:
            w = torch.zeros_like(w3)
            w[:, :, w3.shape[2] // 2] = w2
            out[key] = w
        else:
            out[key] = w2.clone()
    return out


def inflate_checkpoint(model3d: nn.Module, path: str | Path, head: str = "classifier") -> str:
    """Load a local 2D ResNet-50 state_dict (e.g. ImageNet resnet50.pth) into an inflated 3D model."""
    sd = inflate_2d_state(read_state_dict(path), model3d, head, str(path))
    model3d.load_state_dict(sd, strict=False)
    return sha256_file(path)
