"""The parameter-free reduction of docs/design.md: every tap output becomes (N, C, T) for the cache.

Only pooling happens here; the learned part (ReshapeInput: pool/interpolate to L, 1x1 conv, BN)
lives in the fusion network, so one cache serves every C and L the search tries.
- video (C, T, H, W): max over H, W; adaptive max over T to min(T, t_max)
- image (C, H, W): adaptive max to a grid x grid map, flattened to T = grid**2
- skeleton (C, T, J) or (C, T): max over the last axis; adaptive max over T; (C,) -> (C, 1)
- text (tokens, D) -> (D, tokens); (D,) -> (D, 1)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from extract.errors import BackboneError, ExtractError


@dataclass(frozen=True)
class ReductionConfig:
    """t_max caps the cached length of video/skeleton taps; grid is the image map side."""

    t_max: int = 32
    grid: int = 4

    def __post_init__(self) -> None:
        for option, value in (("--t-max", self.t_max), ("--grid", self.grid)):
            if not isinstance(value, int) or value < 1:  # 0 would cache nodes of length 0
                raise ExtractError(f"{option} {value!r}: use a positive integer")

    def as_dict(self) -> dict:
        return asdict(self)


def _cap_time(x: torch.Tensor, t_max: int) -> torch.Tensor:
    if x.shape[-1] > t_max:
        x = F.adaptive_max_pool1d(x, t_max)
    return x


def reduce_tap(x: torch.Tensor, kind: str, cfg: ReductionConfig = ReductionConfig()) -> torch.Tensor:
    """Reduce a batch of tap outputs ``(B, ...)`` of one kind to ``(B, C, T)``."""
    if kind == "video":
        if x.dim() != 5:
            raise BackboneError(f"video tap must be (B, C, T, H, W), got {tuple(x.shape)}")
        return _cap_time(x.amax(dim=(3, 4)), cfg.t_max)
    if kind == "image":
        if x.dim() != 4:
            raise BackboneError(f"image tap must be (B, C, H, W), got {tuple(x.shape)}")
        return F.adaptive_max_pool2d(x, cfg.grid).flatten(2)
    if kind == "skeleton":
        if x.dim() == 4:
            x = x.amax(dim=3)
        elif x.dim() == 2:
            return x.unsqueeze(-1)
        if x.dim() != 3:
            raise BackboneError(f"skeleton tap must be (B, C, T, J), (B, C, T) or (B, C), got {tuple(x.shape)}")
        return _cap_time(x, cfg.t_max)
    if kind == "text":
        if x.dim() == 3:
            return x.transpose(1, 2)
        if x.dim() == 2:
            return x.unsqueeze(-1)
        raise BackboneError(f"text tap must be (B, tokens, D) or (B, D), got {tuple(x.shape)}")
    raise BackboneError(f"unknown tap kind {kind!r}; kinds: video, image, skeleton, text")
