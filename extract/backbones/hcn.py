"""HCN, the hierarchical co-occurrence skeleton network (Li et al. 2018), NTU skeleton backbone.

Input (N, 3, T, J, M): coords x frames x joints x bodies. Each body runs through the point and
motion branches as its own batch row (N*M); bodies are merged by max before fc7, as HCN does.
Taps hooked before that merge see N*M rows; extraction folds them back by max over bodies.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from extract.backbones.registry import BackboneSpec, InputSpec, Setting, register


class _Branch(nn.Module):
    """conv1 (1x1 point) -> conv2 (3x1 temporal) -> joints become channels -> conv3 -> conv4."""

    def __init__(self, in_channels: int, joints: int, w: tuple[int, ...], dropout: float):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, w[0], 1), nn.ReLU())
        self.conv2 = nn.Conv2d(w[0], w[1], (3, 1), padding=(1, 0))
        self.conv3 = nn.Sequential(nn.Conv2d(joints, w[2], 3, padding=1), nn.ReLU())
        self.conv4 = nn.Sequential(nn.Conv2d(w[2], w[3], 3, padding=1), nn.ReLU(), nn.Dropout2d(dropout),
                                   nn.MaxPool2d(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(self.conv1(x))  # (B, w1, T, J)
        x = x.permute(0, 3, 2, 1).contiguous()  # (B, J, T, w1): co-occurrence over joints
        return self.conv4(self.conv3(x))


class Concat(nn.Module):
    """Channel concatenation as a module, so the fused point+motion map has a tap."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.cat([a, b], dim=1)


class HCN(nn.Module):
    """Co-occurrence network; widths = (conv1, conv2, conv3, conv4, conv5, conv6, fc7)."""

    def __init__(self, widths=(64, 32, 32, 64, 128, 256, 256), frames: int = 32, joints: int = 25,
                 bodies: int = 2, dropout: float = 0.5, num_classes: int = 60, in_channels: int = 3):
        super().__init__()
        w = widths
        self.bodies = bodies
        self.frames = frames
        # Input normalisation per coordinate: frame-to-frame motion is ~50x smaller than the pose, and
        # without rescaling the motion stream starts too weak to learn from (BN as ST-GCN's data_bn).
        self.point_bn = nn.BatchNorm2d(in_channels)
        self.motion_bn = nn.BatchNorm2d(in_channels)
        self.point = _Branch(in_channels, joints, w, dropout)
        self.motion = _Branch(in_channels, joints, w, dropout)
        self.joint = Concat()
        self.conv5 = nn.Sequential(nn.Conv2d(2 * w[3], w[4], 3, padding=1), nn.ReLU(), nn.Dropout2d(dropout),
                                   nn.MaxPool2d(2))
        self.conv6 = nn.Sequential(nn.Conv2d(w[4], w[5], 3, padding=1), nn.ReLU(), nn.Dropout2d(dropout),
                                   nn.MaxPool2d(2))
        flat = w[5] * (frames // 8) * max(w[1] // 8, 1)
        self.fc7 = nn.Sequential(nn.Linear(flat, w[6]), nn.ReLU(), nn.Dropout(dropout))
        self.fc8 = nn.Linear(w[6], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, t, j, m = x.shape
        x = x.permute(0, 4, 1, 2, 3).reshape(n * m, c, t, j)
        motion = x[:, :, 1:] - x[:, :, :-1]
        motion = F.interpolate(motion, size=(t, j), mode="bilinear", align_corners=False)
        out = self.conv6(self.conv5(self.joint(self.point(self.point_bn(x)), self.motion(self.motion_bn(motion)))))
        out = out.reshape(n, m, -1).amax(dim=1)  # merge bodies
        return self.fc8(self.fc7(out))


register(BackboneSpec(
    name="hcn",
    modalities=("skeleton",),
    factory=HCN,
    taps=(("joint", "joint", "skeleton"), ("conv5", "conv5", "skeleton"),
          ("conv6", "conv6", "skeleton"), ("fc7", "fc7", "skeleton")),
    head="fc8",
    description="HCN co-occurrence network (2 bodies x 25 joints x 3 coords x 32 frames); "
                "taps = its last four feature layers",
    settings={
        "full": Setting({"widths": (64, 32, 32, 64, 128, 256, 256), "frames": 32, "joints": 25, "bodies": 2},
                        InputSpec(frames=32, channels=3, joints=25, bodies=2), (128, 128, 256, 256)),
        # tiny: narrow and lightly regularised (Dropout2d(0.5) on 8 channels leaves too little to learn)
        "tiny": Setting({"widths": (16, 16, 16, 16, 32, 32, 32), "frames": 32, "joints": 25, "bodies": 2,
                         "dropout": 0.1},
                        InputSpec(frames=32, channels=3, joints=25, bodies=2), (32, 32, 32, 32)),
    },
))
