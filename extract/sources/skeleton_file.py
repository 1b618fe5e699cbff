"""The NTU RGB+D ``.skeleton`` text format: reader, writer, and the array the skeleton backbones read.

Format (one value group per line): frame count; per frame a body count; per body an info line of
10 values, a joint count (25), then one line of 12 values per joint
(x y z depthX depthY colorX colorY orientationW X Y Z trackingState).

Reading is two parsers with one result: a fast one that walks the frame/body structure in Python
and converts every joint line's x y z in one ``numpy.loadtxt`` call (about 2x faster; NTU has
56,880 files), and the exact line-by-line one, which runs only when the fast one finds anything it does
not expect, so that every malformed file still gets an error naming its line.
"""

from __future__ import annotations

from itertools import repeat
from pathlib import Path

import numpy as np

from extract.errors import DataError
from extract.sources.video import uniform_indices

NUM_JOINTS = 25
CENTER_JOINT = 1  # "middle of the spine"; skeletons are centred on it (first body, per frame)
JOINT_VALUES = 12
INFO_VALUES = 10


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
    frames = _parse_regular(lines)
    return frames if frames is not None else _parse_exact(path, lines)


def _parse_regular(lines: list[str]) -> list[np.ndarray] | None:
    """The fast parser: the frames, or None for anything it cannot vouch for (no messages).

    It accepts what the exact parser reads to the same arrays; a joint line must be values
    separated by single spaces, since those are counted rather than split."""
    try:
        num_frames = int(lines[0])
        if num_frames < 0:
            return None
        pos, joints, layout, info_rows, joint_starts = 1, None, [], [], []
        for _ in range(num_frames):
            num_bodies = int(lines[pos])
            pos += 1
            if num_bodies < 0:
                return None
            layout.append((num_bodies, joints or NUM_JOINTS))  # an empty frame's joints: as the exact parser sizes it
            for _ in range(num_bodies):
                nj = int(lines[pos + 1])
                if nj <= 0 or (joints is not None and nj != joints):
                    return None
                joints = nj
                info_rows.append(lines[pos])
                joint_starts.append(pos + 2)
                pos += 2 + nj
    except (ValueError, IndexError):
        return None
    if pos > len(lines) or any(line.strip() for line in lines[pos:]):
        return None
    info = [row.split() for row in info_rows]
    if any(len(values) != INFO_VALUES for values in info) or not _all_numeric([v for vs in info for v in vs]):
        return None
    rows = [row for start in joint_starts for row in lines[start : start + joints]]
    if rows and (not _single_spaced(rows) or set(map(str.count, rows, repeat(" "))) != {JOINT_VALUES - 1}):
        return None
    try:
        xyz = np.loadtxt(rows, dtype=np.float32, usecols=(0, 1, 2), comments=None, ndmin=2) if rows else None
    except ValueError:
        return None
    frames, body = [], 0
    for count, empty_joints in layout:
        if count == 0:
            frames.append(np.zeros((0, empty_joints, 3), np.float32))
        else:
            frames.append(xyz[body * joints : (body + count) * joints].reshape(count, joints, 3))
            body += count
    return frames


def _single_spaced(rows: list[str]) -> bool:
    """Values separated by single spaces only, so that 11 spaces are 12 values: no other
    whitespace or control character, no doubled or edge spaces, no '#' (loadtxt's comments).
    Substring scans in C: a regular expression doing the same takes longer than the parse."""
    block = " ".join(rows)  # a row's edge space becomes a doubled space here
    return (block.isascii() and block.isprintable() and "  " not in block and "#" not in block
            and block[0] != " " and block[-1] != " ")


def _all_numeric(values: list[str]) -> bool:
    try:
        [float(v) for v in values]
    except ValueError:
        return False
    return True


class _Lines:
    """A cursor over a .skeleton file's lines whose errors name the file and line."""

    def __init__(self, path: Path, lines: list[str]) -> None:
        self.path, self.lines, self.pos = path, lines, 0

    def take(self, count: int, what: str) -> list[str]:
        if self.pos >= len(self.lines):
            raise DataError(
                f"{self.path}:{self.pos + 1}: file ends where {what} was expected; the file is truncated — "
                "re-extract it or add its id to the skip list"
            )
        vals = self.lines[self.pos].split()
        self.pos += 1
        if len(vals) != count:
            raise DataError(
                f"{self.path}:{self.pos}: expected {count} value(s) for {what}, found {len(vals)}; "
                "this is not a valid NTU .skeleton file — re-extract it or add its id to the skip list"
            )
        return vals

    def number(self, vals: list[str], what: str, cast=float) -> list:
        try:
            return [cast(v) for v in vals]
        except ValueError:
            raise DataError(
                f"{self.path}:{self.pos}: non-numeric {what} {' '.join(vals)[:80]!r}; the file is corrupt — "
                "re-extract it or add its id to the skip list"
            ) from None

    def count(self, what: str, name: str) -> int:
        (n,) = self.number(self.take(1, what), name, int)
        return n

    def corrupt(self, what: str) -> DataError:
        return DataError(f"{self.path}:{self.pos}: {what}; the file is corrupt — re-extract it")


def _parse_exact(path: Path, lines: list[str]) -> list[np.ndarray]:
    """The line-by-line parser: same result as the fast one, and the error that names the line."""
    cur = _Lines(path, lines)
    num_frames = cur.count("the frame count", "frame count")
    if num_frames < 0:
        raise DataError(f"{path}:1: frame count {num_frames}; the file is corrupt — re-extract it")
    frames: list[np.ndarray] = []
    joints: list[int | None] = [None]  # joints per body, fixed by the first body of the file
    for f in range(num_frames):
        num_bodies = cur.count(f"the body count of frame {f + 1}", "body count")
        if num_bodies < 0:
            raise cur.corrupt(f"body count {num_bodies}")
        bodies = [_parse_body(cur, f, b, joints) for b in range(num_bodies)]
        shape = (num_bodies, joints[0] or NUM_JOINTS, 3)
        frames.append(np.stack(bodies) if bodies else np.zeros(shape, np.float32))
    rest = [i for i in range(cur.pos, len(lines)) if lines[i].strip()]
    if rest:
        raise DataError(
            f"{path}:{rest[0] + 1}: unexpected content after the {num_frames} frames the header declares; "
            "the frame count is wrong — re-extract the file"
        )
    return frames


def _parse_body(cur: _Lines, f: int, b: int, joints: list[int | None]) -> np.ndarray:
    """Body b of frame f: its info line, joint count (the file's first fixes it) and x y z per joint."""
    cur.number(cur.take(INFO_VALUES, f"the info line of body {b + 1} in frame {f + 1}"), "body info")
    nj = cur.count("the joint count", "joint count")
    if nj <= 0:
        raise cur.corrupt(f"joint count {nj}")
    if joints[0] is None:
        joints[0] = nj
    elif nj != joints[0]:
        raise cur.corrupt(f"joint count {nj} differs from {joints[0]} earlier in the file")
    first = cur.pos
    rows = [cur.take(JOINT_VALUES, f"joint {j + 1} of body {b + 1} in frame {f + 1}")[:3] for j in range(nj)]
    try:  # only x y z are used; the other 9 values are checked for their count only
        return np.asarray(rows, dtype=np.float32)
    except ValueError:
        bad = next(i for i, r in enumerate(rows) if not _all_numeric(r))
        cur.pos = first + bad + 1
        cur.number(rows[bad], "joint coordinates")
        raise


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
