"""Maxout MLP text backbone (Goodfellow et al. 2013; MM-IMDB word2vec features)."""

from __future__ import annotations

import torch
import torch.nn as nn

from extract.backbones.registry import BackboneSpec, InputSpec, Setting, register


class Maxout(nn.Module):
    """Linear to ``out * pieces`` units, max over each unit's pieces."""

    def __init__(self, d_in: int, d_out: int, pieces: int):
        super().__init__()
        self.d_out, self.pieces = d_out, pieces
        self.lin = nn.Linear(d_in, d_out * pieces)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x).view(*x.shape[:-1], self.d_out, self.pieces).amax(-1)


class MaxoutMLP(nn.Module):
    """Hidden maxout layers (each a tap: hidden1..hiddenN) with batch norm and dropout, then a head."""

    def __init__(self, hidden=(512, 512, 512), pieces: int = 2, dropout: float = 0.5,
                 num_classes: int = 23, in_dim: int = 300):
        super().__init__()
        d = in_dim
        for i, h in enumerate(hidden):
            setattr(self, f"hidden{i + 1}", nn.Sequential(Maxout(d, h, pieces), nn.BatchNorm1d(h),
                                                          nn.Dropout(dropout)))
            d = h
        self.depth = len(hidden)
        self.head = nn.Linear(d, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(self.depth):
            x = getattr(self, f"hidden{i + 1}")(x)
        return self.head(x)


register(BackboneSpec(
    name="maxout_mlp",
    modalities=("text",),
    factory=MaxoutMLP,
    taps=tuple((f"hidden{i}", f"hidden{i}", "text") for i in (1, 2, 3)),
    head="head",
    description="Maxout MLP on text feature vectors (MM-IMDB); taps = its hidden layers",
    settings={
        "full": Setting({"hidden": (512, 512, 512)}, InputSpec(dim=300), (512, 512, 512)),
        "tiny": Setting({"hidden": (16, 16, 16)}, InputSpec(dim=300), (16, 16, 16)),
    },
))
