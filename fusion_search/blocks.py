"""Learned layers shared by the hypernet and the found network: input reshaping, Cell output, head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fusion_search.primitives import channel_linear


def resize_length(x: torch.Tensor, L: int) -> torch.Tensor:
    """(N, C, T) -> (N, C, L): adaptive average pooling when T > L, linear interpolation when T < L."""
    T = x.shape[-1]
    if T == L:
        return x
    if T > L:
        return F.adaptive_avg_pool1d(x, L)
    return F.interpolate(x, size=L, mode="linear", align_corners=False)


class Dropout(nn.Dropout):
    """Inverted dropout from a uniform mask: same distribution as nn.Dropout, about 2x cheaper on CPU
    (torch's bernoulli_ dominates a small-network step: ~1.3 ms per (96, 128, 8) tensor)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = (torch.rand_like(x) >= self.p).to(x.dtype)
        return x * keep.mul_(1.0 / (1.0 - self.p))


class ReshapeInput(nn.Module):
    """The learned part of the paper's reshaping: (N, C_node, T_node) -> (N, C, L), in two paths.

    After the temporal resize to L, each sample's channels split into their mean over time (the
    level: what the input shows) and the deviation from it (the dynamics: how it moves). Each path
    gets its own k=1 Conv1d C_node -> C (no bias: BN follows) and BatchNorm1d; the level path keeps
    the paper's ReLU, the dynamics path stays signed; the sum goes through dropout.

    Why not the paper's single Conv-BN-ReLU: a cross-modal relation over time (two signals moving in
    or out of phase) lives in the signed, per-sample-centred dynamics. BatchNorm centres over the
    batch, not per sample, so each sample's level rides on its dynamics, and ReLU then clips half of
    the wave; fusion ops that multiply two inputs (LinearGLU, Attention) then see products dominated
    by the levels. On the demo cache, LinearGLU and ConcatFC Cells on the right pair of taps reach
    markedly higher test accuracy with the two paths than with the paper's block (dropping only its
    ReLU recovers part of the gap). Inputs with T_node = 1 (pooled vectors, text embeddings) have no
    dynamics and use the level path alone.
    """

    def __init__(self, c_node: int, C: int, L: int, dropout: float = 0.2, t_node: int = 2) -> None:
        super().__init__()
        self.L = L
        self.proj = nn.Conv1d(c_node, C, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm1d(C)
        self.dynamics = t_node > 1
        if self.dynamics:
            self.proj_dyn = nn.Conv1d(c_node, C, kernel_size=1, bias=False)
            self.bn_dyn = nn.BatchNorm1d(C)
        self.drop = Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = resize_length(x, self.L)
        level = x.mean(dim=-1, keepdim=True)
        out = F.relu(self.bn(channel_linear(level, self.proj.weight[:, :, 0]))).expand(-1, -1, self.L)
        if self.dynamics:
            out = out + self.bn_dyn(channel_linear(x - level, self.proj_dyn.weight[:, :, 0]))
        return self.drop(out)


class CellOutput(nn.Module):
    """Concat of a Cell's chosen inner nodes (k·C channels) projected to C: Conv1d k=1, BN, ReLU, dropout."""

    def __init__(self, k: int, C: int, dropout: float = 0.2) -> None:
        super().__init__()
        self.proj = nn.Conv1d(k * C, C, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm1d(C)
        self.drop = Dropout(dropout)

    def forward(self, states: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(states, dim=1) if len(states) > 1 else states[0]
        return self.drop(F.relu(self.bn(channel_linear(x, self.proj.weight[:, :, 0]))))


class ClassifierHead(nn.Module):
    """Concat of the output Cells (k·C, L), flattened, to class logits (as the official code)."""

    def __init__(self, k: int, C: int, L: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(k * C * L, num_classes)

    def forward(self, cells: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(cells, dim=1) if len(cells) > 1 else cells[0]
        return self.fc(x.flatten(1))
