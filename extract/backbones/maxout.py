"""Maxout MLP text backbone (Goodfellow et al. 2013) on MM-IMDB's 300-d word2vec averages.

The layout and names are BM-NAS's MaxOut_MLP (tests/data/official_keys/maxout_mlp.txt): op1 =
Maxout(300 -> 64 units x 5 pieces), op2 = BatchNorm1d + Dropout, op3 = Maxout(64 -> 128 x 5), op4 =
BatchNorm1d + Dropout, head `hid2val`. BM-NAS's text input nodes are op1 and op3, the maxout outputs
before BatchNorm (the default taps).
"""

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
    """Per hidden width two ops: a Maxout (odd op) and BatchNorm1d + Dropout (even op); then `hid2val`."""

    def __init__(self, hidden=(64, 128), pieces: int = 5, dropout: float = 0.5, num_classes: int = 23,
                 in_dim: int = 300):
        super().__init__()
        d = in_dim
        for i, h in enumerate(hidden):
            setattr(self, f"op{2 * i + 1}", Maxout(d, h, pieces))
            setattr(self, f"op{2 * i + 2}", nn.Sequential(nn.BatchNorm1d(h), nn.Dropout(dropout)))
            d = h
        self.ops = 2 * len(hidden)
        self.hid2val = nn.Linear(d, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(1, self.ops + 1):
            x = getattr(self, f"op{i}")(x)
        return self.hid2val(x)


register(BackboneSpec(
    name="maxout_mlp",
    modalities=("text",),
    factory=MaxoutMLP,
    taps=tuple((f"op{i}", f"op{i}", "text") for i in (1, 2, 3, 4)),
    default_taps=("op1", "op3"),
    head="hid2val",
    description="Maxout MLP on text feature vectors (MM-IMDB); taps = its four ops, "
                "by default the two maxout outputs",
    settings={
        "full": Setting({"hidden": (64, 128)}, InputSpec(dim=300), (64, 64, 128, 128)),
        "tiny": Setting({"hidden": (16, 32)}, InputSpec(dim=300), (16, 16, 32, 32)),
    },
))
