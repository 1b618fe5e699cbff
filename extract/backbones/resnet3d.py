"""3D residual video backbones: `inflated_resnet50` (NTU video) and `resnext101_3d` (EgoGesture).

`InflatedResNet` keeps torchvision's ResNet-50 parameter names (conv1, bn1, layer1.0.conv1, ...,
fc) so a 2D ImageNet state_dict maps key by key onto it (see `checkpoints.inflate_2d_state`).
Its 3D kernels: stem (3,7,7), bottleneck conv1 (3,1,1) (temporal), conv2 (1,3,3), conv3 (1,1,1);
time is never strided, so the four stage taps keep the sampled frames (8 on NTU).
`ResNeXt3D` follows Köpüklü et al. 2019 / Hara et al.: cardinality-32 grouped 3x3x3 convs,
expansion 2, stride 2 in time and space from layer2 on.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from extract.backbones.registry import BackboneSpec, InputSpec, Setting, register

STAGES = (("layer1", "layer1", "video"), ("layer2", "layer2", "video"),
          ("layer3", "layer3", "video"), ("layer4", "layer4", "video"))


class _Residual(nn.Module):
    """conv1-bn1 -> conv2-bn2 -> conv3-bn3, plus the (downsampled) input, then ReLU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        idt = x if self.downsample is None else self.downsample(x)
        return self.relu(out + idt)


class Bottleneck3d(_Residual):
    """ResNet-50 bottleneck with a temporal first conv; names match torchvision's."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv3d(inplanes, planes, (3, 1, 1), padding=(1, 0, 0), bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = nn.Conv3d(planes, planes, (1, 3, 3), stride=(1, stride, stride),
                               padding=(0, 1, 1), bias=False)
        self.bn2 = nn.BatchNorm3d(planes)
        self.conv3 = nn.Conv3d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm3d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample


class InflatedResNet(nn.Module):
    """ResNet-50 inflated to 3D (Baradel et al. 2018's NTU video backbone)."""

    def __init__(self, layers=(3, 4, 6, 3), width: int = 64, num_classes: int = 60, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv3d(in_channels, width, (3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False)
        self.bn1 = nn.BatchNorm3d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))
        self.inplanes = width
        for i, blocks in enumerate(layers):
            setattr(self, f"layer{i + 1}", self._make_layer(width * 2 ** i, blocks, 1 if i == 0 else 2))
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(self.inplanes, num_classes)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        down = None
        if stride != 1 or self.inplanes != planes * 4:
            down = nn.Sequential(
                nn.Conv3d(self.inplanes, planes * 4, 1, stride=(1, stride, stride), bias=False),
                nn.BatchNorm3d(planes * 4),
            )
        mods = [Bottleneck3d(self.inplanes, planes, stride, down)]
        self.inplanes = planes * 4
        mods += [Bottleneck3d(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class ResNeXtBottleneck3d(_Residual):
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
    """3D ResNeXt-101 (32 groups) for RGB or depth clips."""

    def __init__(self, layers=(3, 4, 23, 3), planes=(128, 256, 512, 1024), cardinality: int = 32,
                 stem: int = 64, num_classes: int = 83, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv3d(in_channels, stem, 7, stride=(1, 2, 2), padding=3, bias=False)
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
            down = nn.Sequential(nn.Conv3d(self.inplanes, planes * 2, 1, stride=stride, bias=False),
                                 nn.BatchNorm3d(planes * 2))
        mods = [ResNeXtBottleneck3d(self.inplanes, planes, cardinality, stride, down)]
        self.inplanes = planes * 2
        mods += [ResNeXtBottleneck3d(self.inplanes, planes, cardinality) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


register(BackboneSpec(
    name="inflated_resnet50",
    modalities=("video",),
    factory=InflatedResNet,
    taps=STAGES,
    head="fc",
    description="ResNet-50 inflated to 3D (NTU RGB video); taps = the four residual stages",
    settings={
        "full": Setting({"layers": (3, 4, 6, 3), "width": 64},
                        InputSpec(frames=8, size=224, channels=3), (256, 512, 1024, 2048)),
        "tiny": Setting({"layers": (1, 1, 1, 1), "width": 8},
                        InputSpec(frames=8, size=32, channels=3), (32, 64, 128, 256)),
    },
))

register(BackboneSpec(
    name="resnext101_3d",
    modalities=("video", "depth"),
    factory=ResNeXt3D,
    taps=STAGES,
    head="fc",
    in_channels={"depth": 1},
    description="3D ResNeXt-101, cardinality 32 (EgoGesture RGB and depth); taps = the four stages",
    settings={
        "full": Setting({"layers": (3, 4, 23, 3), "planes": (128, 256, 512, 1024), "cardinality": 32,
                         "stem": 64}, InputSpec(frames=32, size=112, channels=3), (256, 512, 1024, 2048)),
        "tiny": Setting({"layers": (1, 1, 1, 1), "planes": (8, 16, 32, 64), "cardinality": 4, "stem": 8},
                        InputSpec(frames=8, size=32, channels=3), (16, 32, 64, 128)),
    },
))
