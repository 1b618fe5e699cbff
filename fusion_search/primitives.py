"""Primitive fusion operations of a Step (paper eqs. 4-8), all on (N, C, L) tensors.

Registered in one place (`PRIMITIVES`): adding a primitive is one decorated class. Every op is
exactly the paper's formula, without the BatchNorm/LayerNorm/dropout the official code adds inside
ops: normalisation and dropout live once per Cell output (`blocks.CellOutput`), so a derived Step is
the formula the genotype names and the mixed op's γ compares the formulas themselves.

`forward_same(x)` computes op(x, x) without repeating work (with `--step-inputs sum` every op of a
Step sees x = y): ConcatFC folds its two weight halves into one C→C matmul, LinearGLU runs one
C→2C matmul, Sum doubles.
"""

from __future__ import annotations

import math


import torch
import torch.nn.functional as F
from torch import nn

PRIMITIVES: dict[str, type["Primitive"]] = {}


def register(cls: type["Primitive"]) -> type["Primitive"]:
    """Class decorator: make a primitive available by its `name` to search and found networks."""
    PRIMITIVES[cls.name] = cls
    return cls


def channel_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Apply a (C_out, C_in) linear map over the channel axis of (N, C_in, L) -> (N, C_out, L)."""
    return F.linear(x.transpose(1, 2), weight, bias).transpose(1, 2)


def _linear_weight(c_out: int, c_in: int) -> nn.Parameter:
    w = torch.empty(c_out, c_in)
    nn.init.kaiming_uniform_(w, a=math.sqrt(5))  # nn.Linear's default initialisation
    return nn.Parameter(w)


class Primitive(nn.Module):
    """A bivariate op z = f(x, y) with x, y, z of shape (N, C, L)."""

    name: str = ""

    def __init__(self, C: int, L: int) -> None:
        super().__init__()
        self.C, self.L = C, L

    def forward_same(self, x: torch.Tensor) -> torch.Tensor:
        """f(x, x); subclasses override when that is cheaper than two separate arguments."""
        return self(x, x)


@register
class Zero(Primitive):
    """Eq. 4: discards the Step (lets the search use only part of a Cell)."""

    name = "Zero"

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


@register
class Sum(Primitive):
    """Eq. 5: x + y, the DARTS node reduction."""

    name = "Sum"

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x + y

    def forward_same(self, x: torch.Tensor) -> torch.Tensor:
        return 2.0 * x


@register
class Attention(Primitive):
    """Eq. 6: scaled dot-product (guided) attention, query x, key and value y, no parameters.

    Positions along L attend to positions of y: z[:, :, i] = sum_j softmax_j(<x_i, y_j> / sqrt(C)) y[:, :, j].
    Multi-head attention arises from several Attention Steps (repeated inputs are allowed).
    """

    name = "Attention"

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        scores = torch.bmm(x.transpose(1, 2), y) * (1.0 / math.sqrt(self.C))  # (N, Lq, Lk)
        return torch.bmm(y, scores.softmax(dim=-1).transpose(1, 2))  # (N, C, Lq)


@register
class LinearGLU(Primitive):
    """Eq. 7: xW1 ⊙ sigmoid(yW2) with two C→C linear maps (the paper's formula).

    The official code instead runs one Conv1d(2C→2C) on [x; y] and a GLU, which mixes x and y in
    both halves; eq. 7 keeps the value path on x and the gate path on y, so the op stays asymmetric
    as the paper defines it. Stored as one (2C, C) weight so that x = y costs a single matmul.
    """

    name = "LinearGLU"

    def __init__(self, C: int, L: int) -> None:
        super().__init__(C, L)
        self.weight = nn.Parameter(torch.cat([_linear_weight(C, C).data, _linear_weight(C, C).data]))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        C = self.C
        return channel_linear(x, self.weight[:C]) * torch.sigmoid(channel_linear(y, self.weight[C:]))

    def forward_same(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = channel_linear(x, self.weight).split(self.C, dim=1)
        return value * torch.sigmoid(gate)


@register
class ConcatFC(Primitive):
    """Eq. 8: ReLU([x; y]W + b) with W: 2C → C (MFAS's fusion)."""

    name = "ConcatFC"

    def __init__(self, C: int, L: int) -> None:
        super().__init__(C, L)
        self.weight = _linear_weight(C, 2 * C)
        bound = 1.0 / math.sqrt(2 * C)
        self.bias = nn.Parameter(torch.empty(C).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.relu(channel_linear(torch.cat([x, y], dim=1), self.weight, self.bias))

    def forward_same(self, x: torch.Tensor) -> torch.Tensor:
        C = self.C
        return F.relu(channel_linear(x, self.weight[:, :C] + self.weight[:, C:], self.bias))


def build_primitive(name: str, C: int, L: int) -> Primitive:
    """Instantiate a registered primitive by name (KeyError names the known ones)."""
    if name not in PRIMITIVES:
        raise KeyError(f"unknown primitive {name!r}; known: {', '.join(PRIMITIVES)}")
    return PRIMITIVES[name](C, L)


DEFAULT_PRIMITIVES: tuple[str, ...] = ("Zero", "Sum", "Attention", "LinearGLU", "ConcatFC")
