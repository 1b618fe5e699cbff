"""Manifest sources: the entry point for users' own data.

A CSV (header row) or JSONL (one object per line) file with columns:

- ``id`` (unique), ``split`` (``train``/``val``/``test``);
- ``label`` (multiclass: a class index or a class name) **or** ``labels`` (multilabel: a list in
  JSONL, ``[]`` for a sample of no class, or indices/names separated by ``;`` in CSV);
- one path column per modality, named by its kind (``video``, ``depth``, ``skeleton``, ``image``,
  ``text``, ``array``), optionally with a suffix to have several of one kind (``array_audio``,
  ``video_side``). Paths are relative to the manifest's folder.

Class names come from ``class_names`` or a ``classes.txt`` beside the manifest (one per line, in
index order); otherwise from the labels (sorted names, or ``max index + 1`` classes).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from extract.errors import DataError
from extract.sources.base import ListedSource, Sample
from extract.sources.ntu import SYNTH_META
from extract.sources.skeleton_file import skeleton_array
from extract.sources.video import read_image, read_video

MODALITY_KINDS = ("video", "depth", "skeleton", "image", "text", "array")
SPLITS = ("train", "val", "test")
BASE_COLUMNS = ("id", "split", "label", "labels")


def modality_kind(column: str) -> str | None:
    """``video`` -> ``video``, ``array_audio`` -> ``array``; ``None`` for a column that is no modality."""
    kind = column.split("_", 1)[0]
    return kind if kind in MODALITY_KINDS else None


def read_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """The manifest's rows with their 1-based line numbers (CSV or JSONL by suffix); a CSV's
    header comes first as line 0 with empty values, so its columns are known without data rows."""
    if not path.is_file():
        raise DataError(f"{path}: manifest not found; pass a .csv or .jsonl file")
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".jsonl"):
        raise DataError(f"{path}: manifest must be .csv or .jsonl, not {suffix or 'no suffix'}")
    try:  # utf-8-sig: a byte-order mark (as spreadsheet programs write) is read, not taken as text
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 text (byte {exc.object[exc.start]:#x}); "
                        "save the manifest as UTF-8") from None
    if suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        rows = []
        for row in reader:
            if None in row:  # DictReader keeps the fields past the header under the key None
                raise DataError(f"{path}:{reader.line_num}: {len(row[None])} more field(s) than the header's "
                                f"{len(reader.fieldnames or [])} columns; quote values that hold commas or add "
                                "the column to the header")
            rows.append((reader.line_num, {k: (v or "").strip() for k, v in row.items()}))
        if reader.fieldnames is None:
            raise DataError(f"{path}: empty manifest; write a header row (id,split,label,<modality>...)")
        header = [(0, {k.strip(): "" for k in reader.fieldnames})]  # line 0: columns only
        return header + rows
    rows = []
    for num, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{num}: invalid JSON ({exc.msg}); write one JSON object per line") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{num}: expected a JSON object per line, got {type(row).__name__}")
        rows.append((num, row))
    return rows


class ManifestSource(ListedSource):
    """A dataset described by a CSV/JSONL manifest (see the module docstring for the format).

    With ``strict`` (default) any bad row raises one ``DataError`` listing every problem with its
    line; with ``strict=False`` bad rows are skipped and listed in ``problems()``.
    """

    name = "manifest"

    def __init__(
        self,
        path: str | Path,
        num_classes: int | None = None,
        class_names: list[str] | None = None,
        frames: int = 8,
        size: int | tuple[int, int] | None = 112,
        image_size: int | tuple[int, int] | None = None,
        skeleton_frames: int = 32,
        strict: bool = True,
    ) -> None:
        super().__init__()
        self.path = Path(path)
        self.root = self.path.parent
        self.location = str(self.path)
        self.frames, self.size, self.image_size = frames, size, image_size
        self.skeleton_frames = skeleton_frames
        rows = read_rows(self.path)
        columns = list(dict.fromkeys(k for _, row in rows for k in row))
        rows = [(line, row) for line, row in rows if line > 0]
        if columns:
            self._check_columns(columns)
        if not rows:
            raise DataError(f"{self.path}: manifest has no rows; add one line per sample")
        self.task = "multilabel" if "labels" in columns else "multiclass"
        self.modalities = tuple(c for c in columns if modality_kind(c))
        meta = self.root / SYNTH_META  # a synthetic dataset's factors and ceilings (`bmnas data info`)
        self.metadata = json.loads(meta.read_text()) if meta.is_file() else None
        classes_file = self.root / "classes.txt"
        if class_names is None and classes_file.is_file():
            class_names = [ln.strip() for ln in classes_file.read_text().splitlines() if ln.strip()]
        self._samples = self._list(rows, num_classes, class_names)
        if strict and self._problems:
            shown = "; ".join(self._problems[:10])
            more = f" (and {len(self._problems) - 10} more)" if len(self._problems) > 10 else ""
            raise DataError(f"{len(self._problems)} problem(s) in the manifest: {shown}{more}")

    def _check_columns(self, columns: list[str]) -> None:
        unknown = [c for c in columns if c not in BASE_COLUMNS and not modality_kind(c)]
        if unknown:
            raise DataError(
                f"{self.path}: unknown column(s) {', '.join(unknown)}; allowed: id, split, label or labels, "
                f"and modality columns named {', '.join(MODALITY_KINDS)} (optionally with a suffix, e.g. array_audio)"
            )
        missing = [c for c in ("id", "split") if c not in columns]
        if missing:
            raise DataError(f"{self.path}: missing column(s) {', '.join(missing)}; every row needs an id and a split")
        if ("label" in columns) == ("labels" in columns):
            raise DataError(f"{self.path}: give exactly one of 'label' (multiclass) or 'labels' (multilabel)")
        if not any(modality_kind(c) for c in columns):
            raise DataError(f"{self.path}: no modality column; add one of {', '.join(MODALITY_KINDS)} with file paths")

    def _raw_labels(self, row: dict[str, Any]) -> list[str]:
        value = row.get("labels" if self.task == "multilabel" else "label")
        if self.task == "multiclass":
            return [] if value in (None, "") else [str(value)]
        if isinstance(value, list):
            return [str(v) for v in value]
        return [v.strip() for v in str(value or "").split(";") if v.strip()]

    def _list(self, rows: list[tuple[int, dict]], num_classes: int | None, names: list[str] | None) -> list[Sample]:
        raw = [self._raw_labels(row) for _, row in rows]
        all_values = {v for labels in raw for v in labels}
        numeric = all(_is_int(v) for v in all_values)
        if names is None and not numeric:
            _refuse_mixed_labels(self.path, rows, raw)
            names = sorted(all_values)
        self.class_names = names
        if names is not None:
            self.num_classes = len(names)
        else:
            self.num_classes = num_classes or (max((int(v) for v in all_values), default=-1) + 1)
        index = {n: i for i, n in enumerate(names or [])}
        samples, seen = [], set()
        for (line, row), labels in zip(rows, raw):
            where = f"{self.path}:{line}"
            problem, sid = None, str(row.get("id") or "")
            if not sid:
                problem = "empty id"
            elif sid in seen:
                problem = f"duplicate id {sid!r}"
            elif row.get("split") not in SPLITS:
                problem = f"split {row.get('split')!r} is not one of {', '.join(SPLITS)}"
            elif not labels and not (self.task == "multilabel" and row.get("labels") == []):
                problem = "no label"  # an explicit JSON [] is a sample of no class (a movie of no listed genre)
            if problem is None:
                parsed = [int(v) if v not in index and _is_int(v) else index.get(v) for v in labels]
                bad = [v for v, p in zip(labels, parsed) if p is None or not 0 <= p < self.num_classes]
                if bad:
                    problem = (f"label(s) {', '.join(bad)} out of range: classes are 0..{self.num_classes - 1}"
                               + (f" or the names in classes.txt" if names else ""))
                elif self.task == "multiclass" and len(parsed) != 1:
                    problem = "multiclass rows take one label"
            if problem is None:
                problem = self._check_files(sid, row)
            if problem is not None:
                self._problems.append(f"{where}: {problem}")
                continue
            seen.add(sid)
            label: int | tuple[int, ...] = parsed[0] if self.task == "multiclass" else tuple(sorted(set(parsed)))
            samples.append(Sample(sid, row["split"], label))
        return samples

    def _check_files(self, sid: str, row: dict[str, Any]) -> str | None:
        files = {}
        for modality in self.modalities:
            value = row.get(modality)
            if not value:
                present = [m for m in self.modalities if row.get(m)]
                return (f"sample {sid!r} has no {modality} but has {', '.join(present) or 'nothing'}; "
                        "fill the cell or drop the row")
            p = Path(str(value))
            p = p if p.is_absolute() else self.root / p
            if not p.is_file():
                return f"{modality} file {p} not found (paths are relative to the manifest's folder)"
            files[modality] = p
        self._files[sid] = files
        return None

    def load(self, sample_id: str, modality: str) -> Any:
        path = Path(self.path_of(sample_id, modality))
        kind = modality_kind(modality)
        if path.suffix.lower() == ".npy":
            return _load_npy(path)
        if kind == "video":
            return read_video(path, self.frames, self.size)
        if kind == "depth":
            return read_video(path, self.frames, self.size)[..., :1]
        if kind == "image":
            return read_image(path, self.image_size)
        if kind == "skeleton":
            return skeleton_array(path, self.skeleton_frames)
        if kind == "text":
            return _read_text(path)
        raise DataError(f"{path}: {modality} files must be .npy arrays")


def _read_text(path: Path) -> str:
    """A text sample: UTF-8 (a byte-order mark is read), and not blank: an empty plot is missing
    data, and a sentence encoder would turn it into features all the same."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#x} at offset {exc.start}); "
                        "save it as UTF-8") from None
    if not text.strip():
        raise DataError(f"{path}: text file is empty or blank; write the sample's text or remove the sample")
    return text


def _refuse_mixed_labels(path: Path, rows: list[tuple[int, dict]], raw: list[list[str]]) -> None:
    """Class indices and names in one manifest without classes.txt: an error naming both lines.

    Why not read them all as names: one typo (``11x`` among 0..11) would turn every index into a
    name sorted as text, renumbering every class without a word.
    """
    first: dict[bool, int] = {}
    for (line, _), labels in zip(rows, raw):
        for v in labels:
            first.setdefault(_is_int(v), line)
    if len(first) == 2:
        name_line = first[False]
        value = next(v for (line, _), labels in zip(rows, raw) if line == name_line for v in labels if not _is_int(v))
        raise DataError(f"{path}:{name_line}: label {value!r} is a name, but line {first[True]} has a class index; "
                        "use indices or names throughout, or list the class names in classes.txt")


def _is_int(value: str) -> bool:
    try:
        int(value)
    except ValueError:
        return False
    return True


def _load_npy(path: Path) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise DataError(f"{path}: cannot read .npy array ({exc}); re-save it with numpy.save") from exc
    return arr if arr.dtype == np.uint8 else arr.astype(np.float32)
