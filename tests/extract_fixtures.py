"""A tiny two-modality source on real files for the extract tests: H.264 mp4 clips (PyAV,
read back with decord) and .npy skeletons, labels carried by colour / joint offsets."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from extract.sources.base import Sample, Source
from extract.sources.video import read_video, write_video


class ClipSource(Source):
    """Reads ``index.json`` + ``<id>.mp4`` + ``<id>.npy`` under a root; ``delay`` slows loads."""

    name = "clips"
    task = "multiclass"
    num_classes = 3
    modalities = ("video", "skeleton")

    def __init__(self, root: str | Path, delay: float = 0.0) -> None:
        self.root = Path(root)
        self._delay = delay  # private: a test's pacing, not a setting in the store's provenance
        self._index = json.loads((self.root / "index.json").read_text())

    def samples(self) -> list[Sample]:
        return [Sample(r["id"], r["split"], r["label"]) for r in self._index]

    def path_of(self, sample_id: str, modality: str) -> str:
        return str(self.root / f"{sample_id}.{'mp4' if modality == 'video' else 'npy'}")

    def load(self, sample_id: str, modality: str):
        if self._delay:
            time.sleep(self._delay)
        if modality == "video":
            return read_video(self.path_of(sample_id, modality), frames=8, size=32)
        return np.load(self.path_of(sample_id, modality))


def make_clips(root: str | Path, n: int = 12, seed: int = 0, truncate: tuple[int, ...] = (),
               delay: float = 0.0) -> ClipSource:
    """Write ``n`` samples (splits 60/20/20 in order); rows in ``truncate`` get a cut-off mp4."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    index = []
    for i in range(n):
        label = i % 3
        sid = f"s{i:03d}"
        frames = rng.integers(0, 60, (12, 32, 32, 3)).astype(np.uint8)
        frames[..., label] += 150
        write_video(root / f"{sid}.mp4", frames, fps=12)
        if i in truncate:
            data = (root / f"{sid}.mp4").read_bytes()
            (root / f"{sid}.mp4").write_bytes(data[: len(data) // 3])
        skel = rng.normal(0, 0.1, (3, 20, 25, 2)).astype(np.float32)
        skel[0] += label
        np.save(root / f"{sid}.npy", skel)
        split = "train" if i < 0.6 * n else ("val" if i < 0.8 * n else "test")
        index.append({"id": sid, "split": split, "label": label})
    (root / "index.json").write_text(json.dumps(index))
    return ClipSource(root, delay)


def pickle_by_value() -> None:
    """Dask workers cannot import this test module; ship its classes by value."""
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
