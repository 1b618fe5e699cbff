"""HCN, the hierarchical co-occurrence skeleton network (Li et al. 2018), NTU skeleton backbone.

The layout and parameter names are those of the paper's pretrained file (MFAS / BM-NAS,
tests/data/official_keys/ntu_skeleton.txt), so it loads as it is. Input (N, 3, T, J, M): coords x
frames x joints x bodies. Motion is the frame difference, resized back to T bilinearly. Per body,
a position stream (conv1..conv4) and a motion stream (conv1m..conv4m): conv1 1x1 + ReLU; conv2
(3, 1), no activation; joints become channels; conv3 3x3 + max pool, no ReLU; conv4 3x3 + Dropout2d +
max pool, no ReLU. The streams are concatenated (`joint`), then conv5 and conv6 (each conv + ReLU +
Dropout2d + max pool). No BatchNorm.

Each body runs as its own batch row (N*M); `out7` merges the bodies by elementwise max of the
flattened conv6 map, then fc7 (+ ReLU + Dropout) and fc8. Taps hooked before `out7` see N*M rows;
extraction folds them back by max over bodies, the merge the network itself applies.

One departure, for `tiny` only (``input_bn=True``; `full` leaves it off): a BatchNorm2d per
coordinate on each stream's input (`point_bn`, `motion_bn`). Frame-to-frame motion is ~50x
smaller than the pose, and without that rescaling the narrow CPU demo's motion stream starts too
weak to learn from.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from extract.backbones.registry import BackboneSpec, InputSpec, Setting, register


class Concat(nn.Module):
    """Channel concatenation as a module, so the fused position+motion map has a tap."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.cat([a, b], dim=1)


class BodyMax(nn.Module):
    """(N*M, ...) -> (N, prod(...)): flatten each body's map and take the max over the M bodies."""

    def __init__(self, bodies: int):
        super().__init__()
        self.bodies = bodies

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0] // self.bodies, self.bodies, -1).amax(dim=1)


class HCN(nn.Module):
    """Co-occurrence network; widths = (conv1, conv2, conv3, conv4, conv5, conv6, fc7)."""

    def __init__(self, widths=(64, 32, 32, 64, 128, 256, 512), frames: int = 32, joints: int = 25,
                 bodies: int = 2, dropout: float = 0.5, num_classes: int = 60, in_channels: int = 3,
                 input_bn: bool = False):
        super().__init__()
        w = widths
        self.bodies = bodies
        self.point_bn = nn.BatchNorm2d(in_channels) if input_bn else nn.Identity()
        self.motion_bn = nn.BatchNorm2d(in_channels) if input_bn else nn.Identity()
        for s in ("", "m"):  # position stream, then motion stream ("m"), as the official names
            setattr(self, f"conv1{s}", nn.Sequential(nn.Conv2d(in_channels, w[0], 1), nn.ReLU()))
            setattr(self, f"conv2{s}", nn.Conv2d(w[0], w[1], (3, 1), padding=(1, 0)))
            setattr(self, f"conv3{s}", nn.Sequential(nn.Conv2d(joints, w[2], 3, padding=1), nn.MaxPool2d(2)))
            setattr(self, f"conv4{s}", nn.Sequential(nn.Conv2d(w[2], w[3], 3, padding=1), nn.Dropout2d(dropout),
                                                     nn.MaxPool2d(2)))
        self.joint = Concat()
        self.conv5 = nn.Sequential(nn.Conv2d(2 * w[3], w[4], 3, padding=1), nn.ReLU(), nn.Dropout2d(dropout),
                                   nn.MaxPool2d(2))
        self.conv6 = nn.Sequential(nn.Conv2d(w[4], w[5], 3, padding=1), nn.ReLU(), nn.Dropout2d(dropout),
                                   nn.MaxPool2d(2))
        self.out7 = BodyMax(bodies)
        # four 2x2 pools over (frames, conv2 width): 32 x 32 -> 2 x 2 at full size
        flat = w[5] * (frames // 16) * (w[1] // 16)
        self.fc7 = nn.Sequential(nn.Linear(flat, w[6]), nn.ReLU(), nn.Dropout(dropout))
        self.fc8 = nn.Linear(w[6], num_classes)

    def _stream(self, x: torch.Tensor, s: str) -> torch.Tensor:
        x = getattr(self, f"conv2{s}")(getattr(self, f"conv1{s}")(x))  # (B, w1, T, J)
        x = x.permute(0, 3, 2, 1).contiguous()  # (B, J, T, w1): co-occurrence over joints
        return getattr(self, f"conv4{s}")(getattr(self, f"conv3{s}")(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, t, j, m = x.shape
        x = x.permute(0, 4, 1, 2, 3).reshape(n * m, c, t, j)  # each body its own row
        motion = F.interpolate(x[:, :, 1:] - x[:, :, :-1], size=(t, j), mode="bilinear", align_corners=False)
        out = self.joint(self._stream(self.point_bn(x), ""), self._stream(self.motion_bn(motion), "m"))
        out = self.out7(self.conv6(self.conv5(out)))
        return self.fc8(self.fc7(out))


TAPS = tuple((n, n, "skeleton") for n in ("conv3", "conv4", "conv3m", "conv4m", "joint", "conv5", "conv6",
                                           "out7", "fc7"))

register(BackboneSpec(
    name="hcn",
    modalities=("skeleton",),
    factory=HCN,
    taps=TAPS,
    # BM-NAS's skeleton input nodes: the last four feature layers
    default_taps=("conv5", "conv6", "out7", "fc7"),
    head="fc8",
    description="HCN co-occurrence network (2 bodies x 25 joints x 3 coords x 32 frames); "
                "taps = its feature layers, by default the last four",
    settings={
        "full": Setting({"widths": (64, 32, 32, 64, 128, 256, 512), "frames": 32, "joints": 25, "bodies": 2},
                        InputSpec(frames=32, channels=3, joints=25, bodies=2),
                        (32, 64, 32, 64, 128, 128, 256, 1024, 512)),
        # tiny: narrow, lightly regularised (Dropout2d(0.5) on 16 channels leaves too little to learn),
        # with the input BatchNorm (module docstring)
        "tiny": Setting({"widths": (16, 16, 16, 16, 32, 32, 32), "frames": 32, "joints": 25, "bodies": 2,
                         "dropout": 0.1, "input_bn": True},
                        InputSpec(frames=32, channels=3, joints=25, bodies=2),
                        (16, 16, 16, 16, 32, 32, 32, 64, 32)),
    },
))
