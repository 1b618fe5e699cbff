"""Prepared (input, label) samples of one modality of a source, for training and scoring a backbone
with its head (`bmnas pretrain` and the unimodal baselines; the training itself is `pipeline.pretrain`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset

from extract.errors import DataError


class LabelledSamples(Dataset):
    """Prepared (input, label) pairs; with skip=True unreadable samples become None.

    With ``keep=True`` each prepared input is kept in memory after its first read, so later epochs
    skip decoding (worth it for small data sets such as the demo's; off by default because a real
    data set does not fit in RAM).
    """

    def __init__(self, source: Any, samples: list, modality: str, spec: Any, inp: Any, skip: bool,
                 keep: bool = False):
        self.source, self.samples, self.modality, self.spec, self.skip = source, samples, modality, spec, skip
        self.inp = inp  # the InputSpec samples are prepared to
        self.labels = source.label_array(samples)
        self.kept: dict[int, Any] | None = {} if keep else None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        if self.kept is not None and i in self.kept:
            return self.kept[i]
        item = self._read(i)
        if self.kept is not None:
            self.kept[i] = item
        return item

    def _read(self, i: int):
        sid = self.samples[i].id
        try:
            x = self.spec.prepare_input(self.source.read(sid, self.modality), self.modality, self.inp)
        except Exception as exc:  # noqa: BLE001
            if self.skip:
                return None
            raise DataError(f"sample {sid} ({self.source.path_of(sid, self.modality)}): {exc}; "
                            "fix the file or pass --on-error skip") from exc
        return x, torch.as_tensor(self.labels[i])


def collate_samples(items: list) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Stack the readable items of a batch (None: none was readable)."""
    items = [it for it in items if it is not None]
    if not items:
        return None
    return torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])
