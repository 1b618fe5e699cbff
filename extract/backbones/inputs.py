"""What a backbone's first layer expects: the contract between the registry and the prepare step."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

from extract.errors import BackboneError


def _valid(field_name: str, value: Any) -> bool:
    """An input field a preparation can use: finite means, positive stds and sizes."""
    if field_name == "mean":
        return all(math.isfinite(x) for x in value)
    if field_name == "std":
        return all(math.isfinite(x) and x > 0 for x in value)
    return value >= 1


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
    mean: tuple[float, ...] | None = None  # per-channel normalisation (default: ImageNet for RGB)
    std: tuple[float, ...] | None = None

    def with_overrides(self, overrides: dict[str, Any] | None, where: str = "--input") -> "InputSpec":
        """This spec with some fields replaced (a run's ``--input MODALITY=KEY=VALUE``), checked by name."""
        if not overrides:
            return self
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise BackboneError(f"{where}: no input field {unknown[0]!r}; fields: {', '.join(sorted(known))}")
        try:
            clean = {k: (tuple(float(x) for x in v) if k in ("mean", "std") else int(v)) for k, v in overrides.items()}
        except (TypeError, ValueError):
            raise BackboneError(f"{where}: {overrides}: sizes are whole numbers, mean/std lists of numbers") from None
        bad = [k for k, v in clean.items() if not _valid(k, v)]
        if bad:
            raise BackboneError(f"{where}: {bad[0]}={overrides[bad[0]]!r}: sizes must be positive whole numbers, "
                                "mean finite, std finite and > 0")
        return replace(self, **clean)

    def as_dict(self) -> dict[str, Any]:
        """The fields that are set (what a store records of the prepared input)."""
        return {f.name: (list(v) if isinstance(v, tuple) else v)
                for f in fields(self) if (v := getattr(self, f.name)) is not None}
