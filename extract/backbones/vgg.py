"""VGG-19 image backbone (MM-IMDB posters) in torchvision's layout.

`features` is one Sequential of conv/ReLU/max-pool layers and `classifier` the three Linear layers
(`classifier.0/3/6`), as torchvision's VGG, so its ImageNet file `vgg19-dcbb9e9d.pth` loads as it is
(tests/data/official_keys/tv_vgg19.txt). Taps are named by VGG's layers: `conv4_1` is the ReLU after
conv4_1 (`features.20` in the full net), `pool5` the last pool (`features.36`). BM-NAS's image
input nodes are conv4_1, conv4_4, conv5_3 and pool5 (the default taps).

`tiny` has one conv per block (the CPU demo's network, tuned for mmimdb-like), so the names of a
block's convs fall on its one conv there: `conv4_1` and `conv4_4` are the same layer, as are
`conv5_3` and `conv5_4`. Each setting maps the tap names to its own `features` indices
(`Setting.modules`, from `layer_index`). The image-text demo therefore names its taps: the block
outputs pool2..pool5.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from extract.backbones.registry import BackboneSpec, InputSpec, Setting, register

VGG19_BLOCKS = ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4)


class VGG(nn.Module):
    """Blocks of 3x3 conv + ReLU, each ending in a 2x2 max pool, in one `features` Sequential."""

    def __init__(self, blocks=VGG19_BLOCKS, pool: int = 7, hidden: int = 4096, dropout: float = 0.5,
                 num_classes: int = 23, in_channels: int = 3):
        super().__init__()
        mods: list[nn.Module] = []
        c = in_channels
        for widths in blocks:
            for w in widths:
                mods += [nn.Conv2d(c, w, 3, padding=1), nn.ReLU(inplace=True)]
                c = w
            mods.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*mods)
        self.avgpool = nn.AdaptiveAvgPool2d(pool)
        self.classifier = nn.Sequential(
            nn.Linear(c * pool * pool, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def layer_index(blocks, name: str) -> int:
    """Index in `features` of a VGG layer name: `convB_K` (the ReLU after it) or `poolB`.

    A block with fewer than K convs gives its last conv's ReLU (tiny's blocks are short).
    """
    i = 0
    for b, widths in enumerate(blocks, 1):
        if name == f"pool{b}":
            return i + 2 * len(widths)
        if name.startswith(f"conv{b}_"):
            k = min(int(name.split("_")[1]), len(widths))
            return i + 2 * k - 1
        i += 2 * len(widths) + 1
    raise ValueError(f"no VGG layer {name!r} in blocks {blocks}")


# every tap name, shallow to deep; channels and feature indices follow from the blocks
TAP_NAMES = ("pool1", "pool2", "pool3", "conv4_1", "conv4_4", "pool4", "conv5_3", "conv5_4", "pool5")


def _setting(config: dict, size: int) -> Setting:
    blocks = config.get("blocks", VGG19_BLOCKS)
    channels = tuple(blocks[int(n[4]) - 1][-1] for n in TAP_NAMES)
    modules = {n: f"features.{layer_index(blocks, n)}" for n in TAP_NAMES}
    return Setting(config, InputSpec(size=size, channels=3), channels, modules)


# tiny: no dropout: dropout 0.5 over 32 hidden units leaves the tiny net barely learning
# mmimdb-like's panels. 16 channels in block 1: with 8, one of the six panel colours (red or green: a
# conjunction of three channel thresholds) is lost on most seeds even after 60 epochs; with 16 and the
# demo's 60 epochs every panel is learnt on every seed
TINY = {"blocks": ((16,), (16,), (32,), (32,), (32,)), "pool": 1, "hidden": 32, "dropout": 0.0}

register(BackboneSpec(
    name="vgg19",
    modalities=("image",),
    factory=VGG,
    taps=tuple((n, f"features.{layer_index(VGG19_BLOCKS, n)}", "image") for n in TAP_NAMES),
    default_taps=("conv4_1", "conv4_4", "conv5_3", "pool5"),
    head="classifier.6",
    description="VGG-19 in torchvision's layout (MM-IMDB posters); taps = VGG layers by name, "
                "by default BM-NAS's conv4_1, conv4_4, conv5_3, pool5",
    settings={"full": _setting({}, 224), "tiny": _setting(TINY, 32)},
))
