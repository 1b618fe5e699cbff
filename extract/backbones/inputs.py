"""What a backbone's first layer expects: the contract between the registry and the prepare step."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class InputSpec:
    """What the backbone's first layer expects; the prepare step resamples data to it."""

    frames: int | None = None  # video / skeleton length
    size: int | None = None  # square spatial size (video, image)
    channels: int | None = None  # colour channels (video, image)
    dim: int | None = None  # feature width (text vectors); None = taken from the data
    joints: int | None = None  # skeleton joints
    bodies: int | None = None  # skeleton bodies
    tokens: int | None = None  # raw-text backbones: padded token count
