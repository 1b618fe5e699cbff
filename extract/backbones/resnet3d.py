"""3D residual video backbones: `inflated_resnet50` (NTU RGB) and `resnext101_3d` (EgoGesture).

Both keep the parameter names of the paper's pretrained files, so those load as they are
(tests/data/official_keys/ntu_rgb.txt, ego_rgb.txt, ego_depth.txt).

`InflatedResNet` is the NTU RGB network of MFAS / BM-NAS: a ResNet-50 trunk `cnn` whose stem is
2D (run on every frame, frames folded into the batch) and whose bottlenecks are 3D (conv2
3x3x3), time never strided, then an average pool and `classifier`. Its 2D ImageNet weights
(torchvision names, no `cnn.` prefix) are centre-inflated by `checkpoints.inflate_2d_state`.
`ResNeXt3D` is Real-time-GesRec's ResNeXt-101 (cardinality 32, shortcut B): its first conv is
(3, 7, 7) for RGB and 7x7x7 for depth, as in the two EgoGesture files.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from extract.backbones.registry import BackboneSpec, InputSpec, Setting, register


def _stage_taps(prefix: str = "") -> tuple[tuple[str, str, str], ...]:
    """The four stages and the pooled vector, shallow to deep."""
    stages = tuple((f"layer{i}", f"{prefix}layer{i}", "video") for i in range(1, 5))
    return stages + (("pool", "avgpool", "video"),)


# BM-NAS's video input nodes (`visual_features[-5:-1]`): three stages and the pooled vector
VIDEO_NODES = ("layer2", "layer3", "layer4", "pool")


class _Residual(nn.Module):
    """conv1-bn1 -> conv2-bn2 -> conv3-bn3, plus the (downsampled) input, then ReLU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        idt = x if self.downsample is None else self.downsample(x)
        return self.relu(out + idt)


def _shortcut(inplanes: int, outplanes: int, stride: tuple[int, int, int] | int) -> nn.Sequential:
    """Projection shortcut (ResNet's option B): 1x1x1 conv + BN on the first block of a stage."""
    return nn.Sequential(nn.Conv3d(inplanes, outplanes, 1, stride=stride, bias=False), nn.BatchNorm3d(outplanes))


class Bottleneck3D(_Residual):
    """ResNet-50 bottleneck in 3D: 1x1x1 -> 3x3x3 (spatial stride only) -> 1x1x1, expansion 4."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv3d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = nn.Conv3d(planes, planes, 3, stride=(1, stride, stride), padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(planes)
        self.conv3 = nn.Conv3d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm3d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample


class InflatedTrunk(nn.Module):
    """ResNet-50 trunk: 2D stem per frame, then four stages of Bottleneck3D; (B,C,T,H,W) in and out."""

    def __init__(self, layers=(3, 4, 6, 3), width: int = 64, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.inplanes = width
        for i, blocks in enumerate(layers):
            setattr(self, f"layer{i + 1}", self._make_layer(width * 2 ** i, blocks, 1 if i == 0 else 2))

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        # every stage's first block projects its shortcut, layer1's too (64 -> 256 channels)
        down = _shortcut(self.inplanes, planes * 4, (1, stride, stride))
        mods = [Bottleneck3D(self.inplanes, planes, stride, down)]
        self.inplanes = planes * 4
        mods += [Bottleneck3D(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """The 2D stem on every frame: (B, C, T, H, W) -> (B, width, T, H/4, W/4)."""
        b, c, t, h, w = x.shape
        x = x.transpose(1, 2).reshape(b * t, c, h, w)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return x.reshape(b, t, *x.shape[1:]).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class InflatedResNet(nn.Module):
    """The NTU RGB network: `cnn` trunk -> average pool (2048) -> `classifier`."""

    def __init__(self, layers=(3, 4, 6, 3), width: int = 64, num_classes: int = 60, in_channels: int = 3):
        super().__init__()
        self.cnn = InflatedTrunk(layers, width, in_channels)
        # adaptive: the official AvgPool3d((8, 7, 7)) at 8 x 224 x 224, and any other input size
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.classifier = nn.Linear(self.cnn.inplanes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.cnn(x)), 1))


class ResNeXtBottleneck3D(_Residual):
    """ResNeXt block: 1x1x1 -> grouped 3x3x3 (cardinality groups) -> 1x1x1, expansion 2."""

    expansion = 2

    def __init__(self, inplanes: int, planes: int, cardinality: int, stride: int = 1,
                 downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv3d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = nn.Conv3d(planes, planes, 3, stride=stride, padding=1, groups=cardinality, bias=False)
        self.bn2 = nn.BatchNorm3d(planes)
        self.conv3 = nn.Conv3d(planes, planes * 2, 1, bias=False)
        self.bn3 = nn.BatchNorm3d(planes * 2)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample


class ResNeXt3D(nn.Module):
    """3D ResNeXt-101 (32 groups) for RGB or depth clips.

    ``stem_time`` is the first conv's temporal size; None takes the EgoGesture files' choice:
    3 (padding 1) for 3-channel RGB, 7 (padding 3) for 1-channel depth.
    """

    def __init__(self, layers=(3, 4, 23, 3), planes=(128, 256, 512, 1024), cardinality: int = 32,
                 stem: int = 64, num_classes: int = 83, in_channels: int = 3, stem_time: int | None = None):
        super().__init__()
        kt = stem_time if stem_time is not None else (3 if in_channels == 3 else 7)
        self.conv1 = nn.Conv3d(in_channels, stem, (kt, 7, 7), stride=(1, 2, 2), padding=(kt // 2, 3, 3), bias=False)
        self.bn1 = nn.BatchNorm3d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d(3, stride=2, padding=1)
        self.inplanes = stem
        for i, (blocks, p) in enumerate(zip(layers, planes)):
            setattr(self, f"layer{i + 1}", self._make_layer(p, blocks, cardinality, 1 if i == 0 else 2))
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(self.inplanes, num_classes)

    def _make_layer(self, planes: int, blocks: int, cardinality: int, stride: int) -> nn.Sequential:
        down = None
        if stride != 1 or self.inplanes != planes * 2:
            down = _shortcut(self.inplanes, planes * 2, stride)
        mods = [ResNeXtBottleneck3D(self.inplanes, planes, cardinality, stride, down)]
        self.inplanes = planes * 2
        mods += [ResNeXtBottleneck3D(self.inplanes, planes, cardinality) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


register(BackboneSpec(
    name="inflated_resnet50",
    modalities=("video",),
    factory=InflatedResNet,
    taps=_stage_taps("cnn."),
    default_taps=VIDEO_NODES,
    head="classifier",
    description="ResNet-50 with a per-frame 2D stem and 3D bottlenecks (NTU RGB video); "
                "taps = the four stages and the pooled vector",
    settings={
        "full": Setting({"layers": (3, 4, 6, 3), "width": 64},
                        InputSpec(frames=8, size=224, channels=3), (256, 512, 1024, 2048, 2048)),
        "tiny": Setting({"layers": (1, 1, 1, 1), "width": 8},
                        InputSpec(frames=8, size=32, channels=3), (32, 64, 128, 256, 256)),
    },
))

register(BackboneSpec(
    name="resnext101_3d",
    modalities=("video", "depth"),
    factory=ResNeXt3D,
    taps=_stage_taps(),
    default_taps=VIDEO_NODES,
    head="fc",
    in_channels={"depth": 1},
    description="3D ResNeXt-101, cardinality 32 (EgoGesture RGB and depth); "
                "taps = the four stages and the pooled vector",
    settings={
        "full": Setting({"layers": (3, 4, 23, 3), "planes": (128, 256, 512, 1024), "cardinality": 32,
                         "stem": 64}, InputSpec(frames=32, size=112, channels=3), (256, 512, 1024, 2048, 2048)),
        "tiny": Setting({"layers": (1, 1, 1, 1), "planes": (8, 16, 32, 64), "cardinality": 4, "stem": 8},
                        InputSpec(frames=8, size=32, channels=3), (16, 32, 64, 128, 128)),
    },
))
