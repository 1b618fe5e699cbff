"""The source interface every dataset adapter implements.

A source lists its samples (id, split, label) without reading any raw file, and loads one
sample's modality lazily, so the same object can be pickled to dask workers and torch
DataLoader workers. Array conventions per modality (what `load` returns):

- ``video``:    uint8 ``(T, H, W, 3)`` RGB frames, already sampled and resized by the source
- ``depth``:    uint8 ``(T, H, W, 1)`` depth frames (EgoGesture)
- ``skeleton``: float32 ``(3, T, J, M)`` coords x frames x joints x bodies (HCN layout)
- ``image``:    uint8 ``(H, W, 3)``
- ``text``:     float32 ``(D,)`` or ``(tokens, D)`` feature array, or ``str`` raw text
- ``array``:    any float32 array from a ``.npy`` file (manifest sources)
"""

from __future__ import annotations

import inspect
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Sample:
    """One listed sample. ``label`` is a class index (multiclass) or a tuple of indices (multilabel)."""

    id: str
    split: str
    label: int | tuple[int, ...]


class Source(ABC):
    """A dataset: classes, task, splits, and lazy per-sample loading of each modality."""

    name: str = "source"
    task: str = "multiclass"  # or "multilabel"
    num_classes: int = 0
    class_names: list[str] | None = None
    modalities: tuple[str, ...] = ()

    @abstractmethod
    def samples(self) -> list[Sample]:
        """All usable samples in a fixed order, without reading raw data."""

    @abstractmethod
    def load(self, sample_id: str, modality: str) -> Any:
        """Read one modality of one sample (see the module docstring for array layouts)."""

    def read(self, sample_id: str, modality: str) -> Any:
        """`load`, refusing NaN/Inf: a non-finite input is a bad sample (skipped or failed like an
        unreadable file), never a row of features. Every caller that feeds a model reads through here."""
        from extract.errors import DataError

        why = self.unreadable().get(sample_id)
        if why is not None:
            raise DataError(f"{sample_id}: {why}")
        data = self.load(sample_id, modality)
        if isinstance(data, np.ndarray) and data.dtype.kind in "fc" and not np.isfinite(data).all():
            raise DataError(f"{self.path_of(sample_id, modality)}: the {modality} of sample {sample_id} holds "
                            f"{int((~np.isfinite(data)).sum())} NaN/Inf values; fix or remove the file")
        return data

    @abstractmethod
    def path_of(self, sample_id: str, modality: str) -> str:
        """The file a sample's modality is read from, for error messages and skip records."""

    def problems(self) -> list[str]:
        """Problems found while listing (skipped samples, missing files), one line each."""
        return []

    def unreadable(self) -> dict[str, str]:
        """Listed samples that listing already knows cannot be read (id -> reason): `read` raises at
        once, so extraction records them as skipped (or stops) with that reason."""
        return {}

    def options(self) -> dict[str, Any]:
        """The adapter's settings as it holds them (its constructor arguments, resolved: ``size="auto"``
        becomes the size used), as JSON values. A store records them so that a resumed extraction with
        other settings (frames, size, ...) is refused instead of mixing two preprocessings. The data
        path is not among them: a dataset may move."""
        out: dict[str, Any] = {}
        for name in inspect.signature(type(self).__init__).parameters:
            if name in ("self", "root", "path") or not hasattr(self, name):
                continue
            out[name] = json.loads(json.dumps(getattr(self, name), default=str))
        return out

    def check(self, samples: list[Sample] | None = None, progress: bool = False) -> list[str]:
        """Load every modality of every sample and return one line per failure.

        Listing only looks at names and sizes; this is the deep check ``bmnas data info --check``
        runs so that all corrupt files are reported at once rather than at the first crash.
        """
        from extract.errors import DataError

        from tqdm import tqdm

        found = []
        samples = self.samples() if samples is None else samples
        samples = [s for s in samples if s.id not in self.unreadable()]  # problems() lists them already
        for s in tqdm(samples, desc=f"checking {self.name}", unit="sample", disable=not progress):
            for modality in self.modalities:
                try:
                    self.read(s.id, modality)
                except DataError as exc:
                    found.append(str(exc))
        return found

    def split_ids(self, split: str) -> list[str]:
        return [s.id for s in self.samples() if s.split == split]

    def label_array(self, samples: list[Sample] | None = None) -> np.ndarray:
        """Labels as the store wants them: int64 (N,) or uint8 multi-hot (N, K)."""
        samples = self.samples() if samples is None else samples
        if self.task == "multilabel":
            out = np.zeros((len(samples), self.num_classes), dtype=np.uint8)
            for row, s in enumerate(samples):
                out[row, list(s.label)] = 1
            return out
        return np.asarray([s.label for s in samples], dtype=np.int64)


class ListedSource(Source):
    """A source that lists once at construction: ``_samples``, ``_problems`` and one file per
    (sample, modality) in ``_files``; ``location`` (root folder or file) names it in errors."""

    location: str = ""

    def __init__(self) -> None:
        self._samples: list[Sample] = []
        self._problems: list[str] = []
        self._files: dict[str, dict[str, Any]] = {}
        self._unreadable: dict[str, str] = {}

    def samples(self) -> list[Sample]:
        return list(self._samples)

    def problems(self) -> list[str]:
        return list(self._problems)

    def unreadable(self) -> dict[str, str]:
        return dict(self._unreadable)

    def path_of(self, sample_id: str, modality: str) -> str:
        from extract.errors import DataError

        try:
            return str(self._files[sample_id][modality])
        except KeyError:
            raise DataError(f"{self.location}: sample {sample_id!r} has no {modality} file") from None
