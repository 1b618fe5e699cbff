"""Stand-ins for the paper's pretrained files: exactly the keys and shapes of the official files
(tests/data/official_keys/*.txt), random values scaled so a deep net's activations stay moderate."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import torch

KEYS = Path(__file__).parent / "data" / "official_keys"

# list name -> (backbone, modality, head classes, file name as the paper's users have it)
OFFICIAL = {
    "ntu_rgb": ("inflated_resnet50", "video", 60, "rgb_8frames_83.91.checkpoint"),
    "ntu_skeleton": ("hcn", "skeleton", 60, "skeleton_32frames_85.24.checkpoint"),
    "tv_vgg19": ("vgg19", "image", 1000, "vgg19-dcbb9e9d.pth"),
    "maxout_mlp": ("maxout_mlp", "text", 23, "maxout_mlp.pt"),
    "ego_rgb": ("resnext101_3d", "video", 83, "egogesture_resnext_1.0x_RGB_32_acc_94.01245.pth"),
    "ego_depth": ("resnext101_3d", "depth", 83, "egogesture_resnext_1.0x_Depth_32_acc_93.61060.pth"),
}


def key_list(name: str) -> dict[str, tuple[int, ...]]:
    """The listed keys with their shapes, in the file's order."""
    out = {}
    for line in (KEYS / f"{name}.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            key, shape = line.split("\t")
            out[key] = tuple(ast.literal_eval(shape))
    return out


def _value(key: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    if key.endswith("num_batches_tracked"):
        return torch.tensor(100, dtype=torch.long)
    if key.endswith("running_var"):
        return 1.0 + torch.rand(shape, generator=gen)
    if key.endswith("running_mean") or key.endswith("bias"):
        return 0.1 * torch.randn(shape, generator=gen)
    if len(shape) == 1:  # BatchNorm scale
        return 0.8 + 0.4 * torch.rand(shape, generator=gen)
    return torch.randn(shape, generator=gen) / math.sqrt(math.prod(shape[1:]))  # std 1/sqrt(fan_in)


def official_state(name: str, counters: bool = True, seed: int = 0,
                   gains: dict[str, float] | None = None) -> dict[str, torch.Tensor]:
    """A state_dict with exactly the listed keys and shapes (without BN counters when not ``counters``);
    ``gains`` multiplies the named tensors (activations beyond float16's range, as some real files have)."""
    gen = torch.Generator().manual_seed(seed)
    state = {k: _value(k, s, gen) for k, s in key_list(name).items()
             if counters or not k.endswith("num_batches_tracked")}
    for key, gain in (gains or {}).items():
        state[key] = state[key] * gain
    return state


def write_official(name: str, folder: Path, counters: bool = True, wrapped: bool = False,
                   gains: dict[str, float] | None = None) -> Path:
    """Write the stand-in file under its official name; ``wrapped``: Real-time-GesRec's format,
    ``{"state_dict": {"module.<key>": ...}, "epoch": ..., "arch": ...}``."""
    state = official_state(name, counters, gains=gains)
    obj: object = state
    if wrapped:
        obj = {"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 30, "arch": "resnext-101"}
    path = Path(folder) / OFFICIAL[name][3]
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    return path
