"""The parameter-free reduction of docs/design.md: every tap output becomes (N, C, T) for the cache.

Only pooling happens here; the learned part (ReshapeInput: pool/interpolate to L, 1x1 conv, BN)
lives in the fusion network, so one cache serves every C and L the search tries.
- video (C, T, H, W): max over H, W; adaptive max over T to min(T, t_max)
- image (C, H, W): adaptive max to a grid x grid map, flattened to T = grid**2
- skeleton (C, T, J) or (C, T): max over the last axis; adaptive max over T; (C,) -> (C, 1)
- text (tokens, D) -> (D, tokens); (D,) -> (D, 1)
- image_tokens (tokens, D) of a vision transformer: the class token (when the tokens are one more than
  a square grid) in column 0, then the patch grid reduced as an image tap: (D, 1 + grid**2)
- series (C, T, ...) of a user's own modality: as skeleton (max over trailing axes, T capped)
"""

from __future__ import annotations

import math
import torch
import torch.nn.functional as F

from extract.config import ReductionConfig
from extract.errors import BackboneError


TAP_KINDS = ("video", "image", "skeleton", "text", "image_tokens", "series")


def _cap_time(x: torch.Tensor, t_max: int) -> torch.Tensor:
    if x.shape[-1] > t_max:
        x = F.adaptive_max_pool1d(x, t_max)
    return x


def reduce_tap(x: torch.Tensor, kind: str, cfg: ReductionConfig = ReductionConfig()) -> torch.Tensor:
    """Reduce a batch of tap outputs ``(B, ...)`` of one kind to ``(B, C, T)``; a vector (B, C) of any
    kind (a pooled layer) is (B, C, 1)."""
    if x.dim() == 2 and kind in TAP_KINDS:
        return x.unsqueeze(-1)
    if kind == "video":
        if x.dim() != 5:
            raise BackboneError(f"video tap must be (B, C, T, H, W), got {tuple(x.shape)}")
        return _cap_time(x.amax(dim=(3, 4)), cfg.t_max)
    if kind == "image":
        if x.dim() != 4:
            raise BackboneError(f"image tap must be (B, C, H, W), got {tuple(x.shape)}")
        return F.adaptive_max_pool2d(x, cfg.grid).flatten(2)
    if kind == "image_tokens":
        return _image_tokens(x, cfg.grid)
    if kind in ("skeleton", "series"):
        if x.dim() > 4:
            x = x.flatten(3)
        if x.dim() == 4:
            x = x.amax(dim=3)
        elif x.dim() == 2:
            return x.unsqueeze(-1)
        if x.dim() != 3:
            raise BackboneError(f"{kind} tap must be (B, C, T, J), (B, C, T) or (B, C), got {tuple(x.shape)}")
        return _cap_time(x, cfg.t_max)
    if kind == "text":
        if x.dim() == 3:
            return x.transpose(1, 2)
        if x.dim() == 2:
            return x.unsqueeze(-1)
        raise BackboneError(f"text tap must be (B, tokens, D) or (B, D), got {tuple(x.shape)}")
    raise BackboneError(f"unknown tap kind {kind!r}; kinds: video, image, skeleton, text, image_tokens, series")


def _image_tokens(x: torch.Tensor, grid: int) -> torch.Tensor:
    """(B, tokens, D) -> (B, D, [cls +] grid**2): a class token is there when tokens - 1 is a square."""
    if x.dim() != 3:
        raise BackboneError(f"image_tokens tap must be (B, tokens, D), got {tuple(x.shape)}")
    n = x.shape[1]
    side = math.isqrt(n)
    cls = None
    if side * side != n:
        side = math.isqrt(n - 1)
        if side * side != n - 1:
            raise BackboneError(f"image_tokens tap has {n} tokens: neither a square patch grid nor one plus it")
        cls, x = x[:, :1], x[:, 1:]
    b, _, d = x.shape
    patches = x.transpose(1, 2).reshape(b, d, side, side)
    out = F.adaptive_max_pool2d(patches, grid).flatten(2)
    return out if cls is None else torch.cat([cls.transpose(1, 2), out], dim=2)
