"""What `--precision auto` computes a backbone's forward in on CUDA, by measurement.

float16 autocast is not faster for every backbone. Forward times measured on one NVIDIA H200
(torch 2.11 + CUDA 13, cudnn.benchmark on; recorded in the project's GPU-speed issue, 2026-12;
`bench/backbone_speed.py --device cuda` measures them again, all four variants side by side):

  backbone (setting)          input, batch          float32    float16    faster
  resnext101_3d (full)        32 x 112², 16         17.5 ms    24.2 ms    float32
  inflated_resnet50 (full)    8 x 224², 32          40.1 ms    28.8 ms    float16
  the same, channels_last_3d weights and inputs, float16: 23.6 ms (1,358 clips/s)

`auto` is float16 autocast on CUDA when the store keeps float16 (a float16 forward then loses
nothing the store keeps) and no backbone of the job is measured faster in float32; a backbone not
in the table keeps float16 there, the choice before any measurement. One precision per job: the
workers run every backbone of a chunk in it, and the store records it.
"""

from __future__ import annotations

from typing import Iterable

import torch

# (backbone, setting) -> the faster forward precision on CUDA, as measured above
FASTER_ON_CUDA: dict[tuple[str, str], str] = {
    ("resnext101_3d", "full"): "float32",
    ("inflated_resnet50", "full"): "float16",
}


# (backbone, setting) whose CUDA forward is faster with channels_last_3d weights and inputs, as measured above
CHANNELS_LAST_ON_CUDA: frozenset[tuple[str, str]] = frozenset({("inflated_resnet50", "full")})


def memory_format(backbone: str, setting: str, device: torch.device) -> torch.memory_format | None:
    """The layout a backbone's weights and 5-D inputs take on `device` (None: torch's default)."""
    if device.type == "cuda" and (backbone, setting) in CHANNELS_LAST_ON_CUDA:
        return torch.channels_last_3d
    return None


def auto_precision(cuda: bool, store_dtype: str, backbones: Iterable[tuple[str, str]] = ()) -> str:
    """The precision `auto` resolves to for a job of `backbones` ((name, setting) pairs)."""
    if not cuda or store_dtype != "float16":
        return "float32"
    slower = [b for b in backbones if FASTER_ON_CUDA.get(tuple(b)) == "float32"]
    return "float32" if slower else "float16"
