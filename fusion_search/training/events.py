"""TensorBoard event files beside metrics.jsonl: `RUN/tensorboard/`, one scalar per number of an
epoch's record (`val/accuracy`, `train_loss`, `lr`, ...; the search adds α/β/γ entropies).

Why: users of training tools watch curves in TensorBoard (`tensorboard --logdir runs/` shows every
run side by side); metrics.jsonl stays the record `bmnas report` reads. The writer opens at the
first epoch a process writes and tells TensorBoard to drop what an earlier process wrote from that
epoch on, so a run killed mid-epoch and resumed shows each epoch once.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

EVENTS = "tensorboard"


def scalars(record: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, float]]:
    """(tag, value) of every finite number in a record, nested keys joined by '/' ("epoch" is the step)."""
    for key, value in record.items():
        if key == "epoch" and not prefix:
            continue
        tag = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from scalars(value, tag + "/")
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            yield tag, float(value)


def entropies(weights: dict[str, list]) -> dict[str, float]:
    """Mean entropy of each group of softmaxed architecture weights (α, β, γ), as a fraction of its
    maximum (1: uniform, the search has not decided; 0: one choice)."""
    out = {}
    for name, groups in weights.items():
        rows = [r for a in _arrays(groups) for r in np.asarray(a, dtype=np.float64).reshape(-1, np.shape(a)[-1])]
        fractions = [float(-(r * np.log(np.clip(r, 1e-12, 1))).sum() / math.log(len(r))) for r in rows if len(r) > 1]
        if fractions:
            out[f"{name}_entropy"] = float(np.mean(fractions))
    return out


def _arrays(groups: Any) -> Iterator[np.ndarray]:
    if isinstance(groups, np.ndarray):
        yield groups
    else:
        for g in groups:
            yield from _arrays(g)


class EpochEvents:
    """One run's event writer (a context manager); `add(record)` after each epoch, flushed at once."""

    def __init__(self, run: Path) -> None:
        self.dir = Path(run) / EVENTS
        self._writer = None

    def add(self, record: dict[str, Any]) -> None:
        step = int(record["epoch"])
        if self._writer is None:
            from tensorboardX import SummaryWriter

            # a name of its own (the library's is per second and host: a resume within the same second
            # would truncate the killed process's file), ordered by time as TensorBoard reads them
            self._writer = SummaryWriter(str(self.dir), purge_step=step, filename_suffix=f".{time.time_ns()}")
        for tag, value in scalars(record):
            self._writer.add_scalar(tag, value, step)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> "EpochEvents":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
