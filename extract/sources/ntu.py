"""NTU RGB+D 60: the ``.skeleton`` text format (reader and writer), file-name parsing, split
presets, and the source that pairs ``*_rgb.avi`` videos with skeletons.

Format (one value group per line): frame count; per frame a body count; per body an info line of
10 values, a joint count (25), then one line of 12 values per joint
(x y z depthX depthY colorX colorY orientationW X Y Z trackingState).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from extract.errors import DataError
from extract.sources.base import ListedSource, Sample
from extract.sources.video import read_video, uniform_indices

NAME_RE = re.compile(r"S(\d{3})C(\d{3})P(\d{3})R(\d{3})A(\d{3})")
NUM_JOINTS = 25
CENTER_JOINT = 1  # "middle of the spine"; skeletons are centred on it (first body, per frame)
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


# --------------------------------------------------------------------------- .skeleton format


def read_skeleton(path: str | Path) -> list[np.ndarray]:
    """Parse a ``.skeleton`` file into one float32 ``(bodies, joints, 3)`` xyz array per frame.

    Any malformed line raises ``DataError`` naming the file and the 1-based line number.
    """
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise DataError(f"{path}: skeleton file not found; check the dataset root or skip the sample") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read skeleton file ({exc}); replace the file") from exc
    pos = 0

    def take(count: int, what: str) -> list[str]:
        nonlocal pos
        if pos >= len(lines):
            raise DataError(
                f"{path}:{pos + 1}: file ends where {what} was expected; the file is truncated — "
                "re-extract it or add its id to the skip list"
            )
        vals = lines[pos].split()
        pos += 1
        if len(vals) != count:
            raise DataError(
                f"{path}:{pos}: expected {count} value(s) for {what}, found {len(vals)}; "
                "this is not a valid NTU .skeleton file — re-extract it or add its id to the skip list"
            )
        return vals

    def number(vals: list[str], what: str, cast=float):
        try:
            return [cast(v) for v in vals]
        except ValueError:
            raise DataError(
                f"{path}:{pos}: non-numeric {what} {' '.join(vals)[:80]!r}; the file is corrupt — "
                "re-extract it or add its id to the skip list"
            ) from None

    (num_frames,) = number(take(1, "the frame count"), "frame count", int)
    frames: list[np.ndarray] = []
    joints_per_body: int | None = None
    for f in range(num_frames):
        (num_bodies,) = number(take(1, f"the body count of frame {f + 1}"), "body count", int)
        bodies = []
        for b in range(num_bodies):
            number(take(10, f"the info line of body {b + 1} in frame {f + 1}"), "body info")
            (nj,) = number(take(1, "the joint count"), "joint count", int)
            if joints_per_body is None:
                joints_per_body = nj
            elif nj != joints_per_body:
                raise DataError(
                    f"{path}:{pos}: joint count {nj} differs from {joints_per_body} earlier in the file; "
                    "the file is corrupt — re-extract it"
                )
            first = pos
            rows = [take(12, f"joint {j + 1} of body {b + 1} in frame {f + 1}")[:3] for j in range(nj)]
            try:  # only x y z are used; the other 9 values are checked for their count only
                bodies.append(np.asarray(rows, dtype=np.float32))
            except ValueError:
                bad = next(i for i, r in enumerate(rows) if not _numeric(r))
                pos = first + bad + 1
                number(rows[bad], "joint coordinates")
        shape = (num_bodies, joints_per_body or NUM_JOINTS, 3)
        frames.append(np.stack(bodies) if bodies else np.zeros(shape, np.float32))
    rest = [i for i in range(pos, len(lines)) if lines[i].strip()]
    if rest:
        raise DataError(
            f"{path}:{rest[0] + 1}: unexpected content after the {num_frames} frames the header declares; "
            "the frame count is wrong — re-extract the file"
        )
    return frames


def _numeric(values: list[str]) -> bool:
    try:
        [float(v) for v in values]
    except ValueError:
        return False
    return True


def skeleton_array(path: str | Path, frames: int = 32, max_bodies: int = 2, center: bool = True) -> np.ndarray:
    """Read a skeleton as float32 ``(3, frames, joints, max_bodies)``, centred and resampled.

    Frames with no body are dropped before uniform resampling to ``frames``; the first
    ``max_bodies`` bodies of each frame are kept and a missing body (the frame lists fewer) is
    zeros. Centring subtracts joint 1 of the first body in each frame from every present body.
    """
    per_frame = [f for f in read_skeleton(path) if f.shape[0] > 0]
    if not per_frame:
        raise DataError(f"{path}: skeleton has no body in any frame; skip this sample (NTU lists such files)")
    joints = per_frame[0].shape[1]
    out = np.zeros((len(per_frame), max_bodies, joints, 3), dtype=np.float32)
    present = np.zeros((len(per_frame), max_bodies), dtype=bool)
    for t, bodies in enumerate(per_frame):
        m = min(max_bodies, bodies.shape[0])
        out[t, :m] = bodies[:m]
        present[t, :m] = True
    if center:
        origin = out[:, 0, CENTER_JOINT, :].copy()  # (T, 3)
        out -= origin[:, None, None, :] * present[:, :, None, None]
    out = out[uniform_indices(len(out), frames)]
    return np.ascontiguousarray(out.transpose(3, 0, 2, 1))  # (3, T, J, M)


def write_skeleton(path: str | Path, frames: list[np.ndarray], rng: np.random.Generator | None = None) -> None:
    """Write per-frame ``(bodies, joints, 3)`` xyz arrays as an NTU ``.skeleton`` file.

    The 9 non-xyz joint values get plausible depth/colour projections and an identity orientation;
    body info lines carry a body id and tracking flags, as the Kinect SDK writes them.
    """
    rng = rng or np.random.default_rng(0)
    body_ids = [int(rng.integers(10**17, 10**18)) for _ in range(4)]
    line = "%.5f %.5f %.5f %.3f %.3f %.2f %.2f 0 0 0 0 2"
    out = [str(len(frames))]
    for bodies in frames:
        out.append(str(len(bodies)))
        for b, joints in enumerate(bodies):
            out.append(f"{body_ids[b % 4]} 0 1 1 1 1 0 0.0 0.0 2")
            out.append(str(len(joints)))
            z = np.maximum(joints[:, 2], 0.5)
            values = np.column_stack([
                joints,
                256 + 365 * joints[:, 0] / z, 212 - 365 * joints[:, 1] / z,
                960 + 1060 * joints[:, 0] / z, 540 - 1060 * joints[:, 1] / z,
            ])
            out.append("\n".join([line] * len(joints)) % tuple(values.ravel().tolist()))
    Path(path).write_text("\n".join(out) + "\n")


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
    Samples whose skeleton (or video) is missing, empty, has no body in any frame, or is named in a skip list
    (``*missing_skeletons*.txt`` in ``root`` or ``skip_list``) are skipped and listed in ``problems()``.
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
            if reason is None and "skeleton" in self.modalities and sid in skip:
                reason = "listed as a sample with missing skeletons"
            action = parse_name(sid)["action"]
            if reason is None and action > self.num_classes:
                reason = f"action A{action:03d} is beyond the {self.num_classes} classes"
            split = split_of(sid, self.split)
            if reason is None and split is None:
                reason = f"subject not in the {self.split} split lists"
            if reason is not None:
                self._problems.append(f"{sid}: skipped, {reason}")
                continue
            samples.append(Sample(sid, split, action - 1))
        return samples

    def load(self, sample_id: str, modality: str) -> np.ndarray:
        path = self.path_of(sample_id, modality)
        if modality == "video":
            return read_video(path, self.frames, self.size)
        return skeleton_array(path, self.skeleton_frames)
