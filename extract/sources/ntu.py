"""NTU RGB+D 60: file-name parsing, split presets, and the source that pairs ``*_rgb.avi`` videos
with ``.skeleton`` files (the format itself: `extract.sources.skeleton_file`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from extract.errors import DataError
from extract.sources.base import ListedSource, Sample
from extract.sources.skeleton_file import read_skeleton, skeleton_array
from extract.sources.video import read_video

NAME_RE = re.compile(r"S(\d{3})C(\d{3})P(\d{3})R(\d{3})A(\d{3})")
SYNTH_META = "bmnas_synth.json"
DEFAULT_SIZE = 112

MFAS_SUBJECTS = {
    "train": (1, 4, 8, 13, 15, 16, 17, 18, 19, 25, 27, 28, 31, 34, 35, 38),
    "val": (2, 5, 9, 14),
    "test": (3, 6, 7, 10, 11, 12, 20, 21, 22, 23, 24, 26, 29, 30, 32, 33, 36, 37, 39, 40),
}
CROSS_SUBJECT_TRAIN = (1, 2, 4, 5, 8, 9, 13, 14, 15, 16, 17, 18, 19, 25, 27, 28, 31, 34, 35, 38)
CROSS_VIEW_TRAIN = (2, 3)  # cameras; camera 1 is the test view
SPLIT_PRESETS = ("mfas", "cross-subject", "cross-view")


def parse_name(sample_id: str) -> dict[str, int]:
    """``S001C002P003R002A013`` -> setup, camera, subject, replication, action (all 1-based)."""
    m = NAME_RE.search(sample_id)
    if not m:
        raise DataError(
            f"{sample_id}: not an NTU file name; expected SsssCcccPpppRrrrAaaa (e.g. S001C001P001R001A001)"
        )
    keys = ("setup", "camera", "subject", "replication", "action")
    return dict(zip(keys, (int(g) for g in m.groups())))


def ntu_name(setup: int, camera: int, subject: int, replication: int, action: int) -> str:
    """The NTU sample id for these fields (inverse of :func:`parse_name`)."""
    return f"S{setup:03d}C{camera:03d}P{subject:03d}R{replication:03d}A{action:03d}"


def split_of(sample_id: str, preset: str, val_every: int = 20) -> str | None:
    """Split of a sample under a preset; ``None`` when the preset does not place it.

    ``mfas`` uses its subject lists. ``cross-subject`` and ``cross-view`` define only train/test, so
    every ``val_every``-th training sample (by a stable hash of the id) is held out as ``val``.
    """
    f = parse_name(sample_id)
    if preset == "mfas":
        for split, subjects in MFAS_SUBJECTS.items():
            if f["subject"] in subjects:
                return split
        return None
    if preset == "cross-subject":
        train = f["subject"] in CROSS_SUBJECT_TRAIN
    elif preset == "cross-view":
        train = f["camera"] in CROSS_VIEW_TRAIN
    else:
        raise DataError(f"unknown NTU split preset {preset!r}; use one of {', '.join(SPLIT_PRESETS)}")
    if not train:
        return "test"
    return "val" if _stable_hash(sample_id) % val_every == 0 else "train"


def _stable_hash(text: str) -> int:
    return sum((i + 1) * ord(c) for i, c in enumerate(text))


# --------------------------------------------------------------------------- the source


SMALL_SKELETON_BYTES = 4096  # one body in one frame takes ~1.5 kB; smaller files are parsed when listing


def _bodiless(path: Path) -> str | None:
    """Why a (small) skeleton file is unusable, or ``None``: NTU's "missing skeleton" files list
    frames with no body at all, so they are tiny and cheap to parse while listing."""
    try:
        frames = read_skeleton(path)
    except DataError as exc:
        return str(exc)
    return None if any(f.shape[0] for f in frames) else f"skeleton {path.name} has no body in any frame"


class NTUSource(ListedSource):
    """NTU RGB+D 60 (or data in its file layout): ``video`` and ``skeleton`` modalities.

    ``root`` is searched recursively for ``*.skeleton`` and ``*_rgb.avi`` (or ``_rgb.mp4``) files,
    so both the official ``nturgb+d_skeletons/`` + ``nturgb+d_rgb/`` folders and a flat folder work.
    ``size="auto"`` resizes/crops frames to 112 px, or keeps the frame size of synthetic data.
    Samples named in a skip list (``*missing_skeletons*.txt`` in ``root`` or ``skip_list``), beyond the
    classes or outside the split preset are left out and listed in ``problems()``. Samples whose
    skeleton or video is missing, empty or has no body in any frame stay listed (in ``problems()`` and
    ``unreadable()``): reading them raises, so extraction records them as skipped or stops, and none
    vanishes unrecorded.
    """

    name = "ntu"
    task = "multiclass"

    def __init__(
        self,
        root: str | Path,
        split: str = "mfas",
        frames: int = 8,
        size: int | tuple[int, int] | None | str = "auto",
        skeleton_frames: int = 32,
        modalities: tuple[str, ...] = ("video", "skeleton"),
        skip_list: str | Path | None = None,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        self.root = Path(root)
        self.location = str(self.root)
        if not self.root.is_dir():
            raise DataError(f"{self.root}: NTU root directory not found; pass the folder holding the .skeleton/_rgb.avi files")
        if split not in SPLIT_PRESETS:
            raise DataError(f"unknown NTU split preset {split!r}; use one of {', '.join(SPLIT_PRESETS)}")
        unknown = set(modalities) - {"video", "skeleton"}
        if unknown or not modalities:
            raise DataError(f"NTU modalities are 'video' and 'skeleton'; got {sorted(modalities)}")
        self.split, self.frames = split, frames
        self.skeleton_frames = skeleton_frames
        self.modalities = tuple(modalities)
        meta = self.root / SYNTH_META
        self.metadata = json.loads(meta.read_text()) if meta.is_file() else None
        if size == "auto":  # 112 px for real NTU; synthetic data keeps its own (small) frame size
            size = tuple(self.metadata["video"]["size"]) if self.metadata else DEFAULT_SIZE
        self.size = size
        self.num_classes = num_classes or (self.metadata or {}).get("num_classes", 60)
        self.class_names = (self.metadata or {}).get("class_names")
        self._samples = self._list(skip_list)

    def _list(self, skip_list: str | Path | None) -> list[Sample]:
        for pattern, modality in (("*.skeleton", "skeleton"), ("*_rgb.avi", "video"), ("*_rgb.mp4", "video")):
            for p in self.root.rglob(pattern):
                m = NAME_RE.match(p.name)
                if m:
                    self._files.setdefault(m.group(0), {})[modality] = p
        lists = [Path(skip_list)] if skip_list else sorted(self.root.glob("*missing_skeletons*.txt"))
        skip = {line.strip() for f in lists for line in f.read_text().split() if line.strip()}
        if not self._files:
            raise DataError(
                f"{self.root}: no NTU files (SsssCcccPpppRrrrAaaa.skeleton / _rgb.avi) found; check the path"
            )
        samples = []
        for sid in sorted(self._files):
            files = self._files[sid]
            reason = None
            for modality in self.modalities:
                p = files.get(modality)
                if p is None:
                    reason = f"no {modality} file (has {', '.join(sorted(files))})"
                elif p.stat().st_size == 0:
                    reason = f"empty {modality} file {p}"
                elif modality == "skeleton" and p.stat().st_size < SMALL_SKELETON_BYTES:
                    reason = _bodiless(p)
            if reason is not None:  # listed, so extraction records it as skipped (or stops on it)
                self._problems.append(f"{sid}: unreadable, {reason}")
                self._unreadable[sid] = reason
            excluded = None
            if "skeleton" in self.modalities and sid in skip:
                excluded = "listed as a sample with missing skeletons"
            action = parse_name(sid)["action"]
            if excluded is None and action > self.num_classes:
                excluded = f"action A{action:03d} is beyond the {self.num_classes} classes"
            split = split_of(sid, self.split)
            if excluded is None and split is None:
                excluded = f"subject not in the {self.split} split lists"
            if excluded is not None:
                self._problems.append(f"{sid}: skipped, {excluded}")
                continue
            samples.append(Sample(sid, split, action - 1))
        return samples

    def load(self, sample_id: str, modality: str) -> np.ndarray:
        path = self.path_of(sample_id, modality)
        if modality == "video":
            return read_video(path, self.frames, self.size)
        return skeleton_array(path, self.skeleton_frames)
