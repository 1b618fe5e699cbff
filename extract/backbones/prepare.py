"""Turn source arrays (layouts in `extract.sources.base`) into a backbone's input batch.

Sources hand over frames already sampled and resized where they can; this step only makes
them fit the backbone's `InputSpec` (frame count, square size, normalisation, body count), so
the same source works with a `tiny` and a `full` backbone.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from extract.backbones.inputs import InputSpec
from extract.errors import DataError

MEAN = torch.tensor([0.485, 0.456, 0.406])
STD = torch.tensor([0.229, 0.224, 0.225])


def _frame_index(t_in: int, t_out: int) -> np.ndarray:
    """Evenly spaced frame indices (repeats frames when the clip is short)."""
    return np.linspace(0, t_in - 1, t_out).round().astype(np.int64)


def _normalise(x: torch.Tensor, channels: int, spec: InputSpec) -> torch.Tensor:
    """The spec's mean/std when it names them; else ImageNet's for RGB (channel axis 0), 0.5/0.5 otherwise."""
    shape = (channels,) + (1,) * (x.dim() - 1)
    if spec.mean is not None or spec.std is not None:
        mean = torch.tensor(spec.mean or (0.0,) * channels, dtype=x.dtype)
        std = torch.tensor(spec.std or (1.0,) * channels, dtype=x.dtype)
        if mean.numel() != channels or std.numel() != channels:
            raise DataError(f"input mean/std have {mean.numel()}/{std.numel()} values for {channels} channels")
        return (x - mean.view(shape)) / std.view(shape)
    if channels == 3:
        return (x - MEAN.view(shape)) / STD.view(shape)
    return (x - 0.5) / 0.5


def _video(a: np.ndarray, spec: InputSpec) -> torch.Tensor:
    if a.ndim != 4:
        raise DataError(f"video array must be (T, H, W, C), got shape {a.shape}")
    if spec.frames:
        a = a[_frame_index(a.shape[0], spec.frames)]
    x = torch.from_numpy(np.ascontiguousarray(a)).float().div_(255.0).permute(0, 3, 1, 2)  # T C H W
    if spec.size and (x.shape[-1] != spec.size or x.shape[-2] != spec.size):
        x = F.interpolate(x, size=(spec.size, spec.size), mode="bilinear", align_corners=False)
    return _normalise(x.permute(1, 0, 2, 3), x.shape[1], spec)  # C T H W


def _image(a: np.ndarray, spec: InputSpec) -> torch.Tensor:
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    if a.ndim != 3:
        raise DataError(f"image array must be (H, W, C), got shape {a.shape}")
    x = torch.from_numpy(np.ascontiguousarray(a)).float().div_(255.0).permute(2, 0, 1)
    if spec.size and (x.shape[-1] != spec.size or x.shape[-2] != spec.size):
        x = F.interpolate(x[None], size=(spec.size, spec.size), mode="bilinear", align_corners=False)[0]
    return _normalise(x, x.shape[0], spec)


def _skeleton(a: np.ndarray, spec: InputSpec) -> torch.Tensor:
    if a.ndim != 4:
        raise DataError(f"skeleton array must be (3, T, J, M), got shape {a.shape}")
    a = np.asarray(a, dtype=np.float32)
    if spec.frames:
        a = a[:, _frame_index(a.shape[1], spec.frames)]
    if spec.joints and a.shape[2] != spec.joints:
        raise DataError(f"skeleton has {a.shape[2]} joints, the backbone wants {spec.joints}")
    if spec.bodies:
        m = a.shape[3]
        if m < spec.bodies:
            a = np.concatenate([a, np.zeros(a.shape[:3] + (spec.bodies - m,), np.float32)], axis=3)
        a = a[..., : spec.bodies]
    return torch.from_numpy(np.ascontiguousarray(a))


def _text(a: Any, spec: InputSpec) -> torch.Tensor:
    if isinstance(a, str):
        raise DataError("this text backbone reads feature vectors, the source gave raw text "
                        "(use a text model's directory: --backbone text=hf:DIR)")
    a = np.asarray(a, dtype=np.float32)
    if a.ndim == 2:  # (tokens, D): mean over tokens for a vector backbone
        a = a.mean(axis=0)
    return torch.from_numpy(np.ascontiguousarray(a))


def _array(a: Any, spec: InputSpec) -> torch.Tensor:
    """A user's own modality (a manifest's ``array`` / ``array_<name>`` column): the array as float32."""
    if isinstance(a, str):
        raise DataError("this modality's backbone reads arrays, the source gave text")
    a = np.asarray(a, dtype=np.float32)
    if not np.isfinite(a).all():
        raise DataError("array holds non-finite values (NaN or inf)")
    return torch.from_numpy(np.ascontiguousarray(a))


PREPARE = {"video": _video, "depth": _video, "image": _image, "skeleton": _skeleton, "text": _text,
           "array": _array}


def modality_base(modality: str) -> str:
    """A modality's kind of data: ``array_accel`` -> ``array``, ``video`` -> ``video``."""
    return modality if modality in PREPARE else modality.split("_", 1)[0]


def prepare_one(item: Any, modality: str, spec: InputSpec) -> torch.Tensor:
    """One sample's array as a float tensor in the backbone's layout (no batch axis)."""
    base = modality_base(modality)
    if base not in PREPARE:
        raise DataError(f"no input preparation for modality {modality!r}; name a column of your own "
                        f"data array_<name> to read it as an array")
    return PREPARE[base](item, spec)


def prepare_batch(items: Sequence[Any], modality: str, spec: InputSpec) -> torch.Tensor:
    """Stack prepared samples into a batch; shapes must agree after preparation."""
    xs = [prepare_one(it, modality, spec) for it in items]
    shapes = {tuple(x.shape) for x in xs}
    if len(shapes) > 1:
        raise DataError(f"{modality} samples differ in shape after preparation: {sorted(shapes)}")
    return torch.stack(xs)
