"""EgoGesture: RGB and depth frame folders with per-gesture begin/end annotations.

Expected layout (that of the public release; folder names as published, either spelling):

    ROOT/images/SubjectNN/SceneK/Color/rgbG/000001.jpg ...      (or images_320-240/)
    ROOT/images/SubjectNN/SceneK/Depth/depthG/000001.jpg ...
    ROOT/labels/SubjectNN/SceneK/GroupG.csv                      (or labels-final-revised1/, subjectNN)

Each ``GroupG.csv`` row is ``label,start,end``: class 1..83 and the 1-based, inclusive frame range
of one gesture in the group's video. One sample per row; id ``SubjectNN/SceneK/GroupG/row``.
Cross-subject split of the EgoGesture paper (train/val/test subject lists below).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np

from extract.errors import DataError
from extract.sources.base import ListedSource, Sample
from extract.sources.video import read_frames, uniform_indices

TRAIN_SUBJECTS = (3, 4, 5, 6, 8, 10, 15, 16, 17, 20, 21, 22, 23, 25, 26, 27, 30, 32, 36, 38, 39, 40, 42, 43,
                  44, 45, 46, 48, 49, 50)
VAL_SUBJECTS = (1, 7, 12, 13, 24, 29, 33, 34, 35, 37)
TEST_SUBJECTS = (2, 9, 11, 14, 18, 19, 28, 31, 41, 47)
IMAGE_DIRS = ("images", "images_320-240")
LABEL_DIRS = ("labels", "labels-final-revised1")
FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")
MODALITY_DIRS = {"video": ("Color", "rgb"), "depth": ("Depth", "depth")}


def subject_split(subject: int) -> str | None:
    for split, subjects in (("train", TRAIN_SUBJECTS), ("val", VAL_SUBJECTS), ("test", TEST_SUBJECTS)):
        if subject in subjects:
            return split
    return None


class EgoGestureSource(ListedSource):
    """EgoGesture gestures as ``video`` (RGB, uint8 (T, H, W, 3)) and ``depth`` (uint8 (T, H, W, 1))."""

    name = "egogesture"
    task = "multiclass"

    def __init__(
        self,
        root: str | Path,
        frames: int = 8,
        size: int | tuple[int, int] | None = 112,
        modalities: tuple[str, ...] = ("video", "depth"),
        num_classes: int = 83,
    ) -> None:
        super().__init__()
        self.root = Path(root)
        self.location = str(self.root)
        self.frames, self.size, self.num_classes = frames, size, num_classes
        unknown = set(modalities) - set(MODALITY_DIRS)
        if unknown or not modalities:
            raise DataError(f"EgoGesture modalities are 'video' and 'depth'; got {sorted(modalities)}")
        self.modalities = tuple(modalities)
        images = self._first_dir(IMAGE_DIRS, "frame images")
        labels = self._first_dir(LABEL_DIRS, "annotations")
        self._ranges: dict[str, tuple[int, int]] = {}
        for csv_path in sorted(labels.glob("*/*/Group*.csv"), key=_natural):
            self._list_group(images, csv_path)
        if not self._samples and not self._problems:
            raise DataError(f"{labels}: no SubjectNN/SceneK/GroupG.csv annotation files; see docs/data-sources.md for the layout")

    def _first_dir(self, names: tuple[str, ...], what: str) -> Path:
        for name in names:
            if (self.root / name).is_dir():
                return self.root / name
        raise DataError(f"{self.root}: no {' or '.join(names)} folder with the {what}; see docs/data-sources.md for the EgoGesture layout")

    def _list_group(self, images: Path, csv_path: Path) -> None:
        subject_dir, scene = csv_path.parent.parent.name, csv_path.parent.name
        m = re.fullmatch(r"[Ss]ubject(\d+)", subject_dir)
        g = re.fullmatch(r"Group(\d+)", csv_path.stem)
        if not m or not g:
            self._problems.append(f"{csv_path}: not under labels/SubjectNN/SceneK/GroupG.csv; skipped")
            return
        subject, group = int(m.group(1)), int(g.group(1))
        split = subject_split(subject)
        folders = {mod: images / f"Subject{subject:02d}" / scene / sub / f"{prefix}{group}"
                   for mod, (sub, prefix) in MODALITY_DIRS.items() if mod in self.modalities}
        frame_files: dict[str, list[Path]] = {}
        for mod, folder in folders.items():
            files = _frame_files(folder)
            if not files:
                self._problems.append(f"{csv_path}: no {mod} frames in {folder}; all gestures of this group skipped")
                return
            frame_files[mod] = files
        count = min(len(f) for f in frame_files.values())
        with open(csv_path, newline="") as fh:
            for line, row in enumerate(csv.reader(fh), 1):
                if not row or not "".join(row).strip():
                    continue
                where = f"{csv_path}:{line}"
                try:
                    label, start, end = (int(v) for v in row[:3])
                except ValueError:
                    self._problems.append(f"{where}: expected 'label,start,end' integers, got {','.join(row)!r}; skipped")
                    continue
                if not 1 <= label <= self.num_classes:
                    self._problems.append(f"{where}: label {label} outside 1..{self.num_classes}; skipped")
                elif not 1 <= start <= end <= count:
                    self._problems.append(f"{where}: frames {start}..{end} outside the {count} frames of {list(folders.values())[0]}; skipped")
                elif split is None:
                    self._problems.append(f"{where}: subject {subject} is in no cross-subject split; skipped")
                else:
                    sid = f"Subject{subject:02d}/{scene}/Group{group}/{line}"
                    self._files[sid] = dict(folders)
                    self._ranges[sid] = (start, end)
                    self._samples.append(Sample(sid, split, label - 1))

    def load(self, sample_id: str, modality: str) -> np.ndarray:
        folder = Path(self.path_of(sample_id, modality))
        start, end = self._ranges[sample_id]
        files = _frame_files(folder)[start - 1 : end]
        if len(files) != end - start + 1:
            raise DataError(f"{folder}: frames {start}..{end} are annotated but only {len(files)} exist; restore the frames")
        picked = [files[i] for i in uniform_indices(len(files), self.frames)]
        return read_frames(picked, self.size, gray=modality == "depth")


def _frame_files(folder: Path) -> list[Path]:
    """A frame folder's images in frame order."""
    return sorted((p for p in folder.glob("*") if p.suffix.lower() in FRAME_SUFFIXES), key=_natural) if folder.is_dir() else []


def _natural(path: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]
