"""NTU RGB+D: the .skeleton parsers on hand-written files in the exact format (0, 1, 2 and 3
bodies, malformed lines; the fast parser agrees with the exact one and declines what it cannot
vouch for), the writer round trip, and the source's split presets and skips."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from extract.errors import DataError
from extract.sources.ntu import MFAS_SUBJECTS, NTUSource, parse_name, split_of
from extract.sources.skeleton_file import (
    _parse_exact,
    _parse_regular,
    read_skeleton,
    skeleton_array,
    write_skeleton,
)
from extract.sources.video import write_video

INFO = "72057594037931101 0 1 1 1 1 0 0.02764709 0.05745083 2"


def _joint_line(x: float, y: float, z: float) -> str:
    """One joint line as the Kinect SDK export writes it (12 values)."""
    return (f"{x:.7f} {y:.7f} {z:.6f} 277.1345 191.1609 1036.198 519.1293 "
            "-0.2465764 0.05553267 0.9644697 -0.07545923 2")


def _skeleton_text(frames: list[list[np.ndarray]]) -> str:
    """Hand-format a .skeleton file; ``frames`` is a list of bodies, each a (25, 3) array."""
    lines = [str(len(frames))]
    for bodies in frames:
        lines.append(str(len(bodies)))
        for body in bodies:
            lines += [INFO, "25"] + [_joint_line(*j) for j in body]
    return "\r\n".join(lines) + "\r\n"  # the official files use CRLF


def _body(offset: float) -> np.ndarray:
    return (np.arange(75, dtype=np.float32).reshape(25, 3) / 100 + offset).round(4)


def test_parse_two_bodies_one_body_and_no_body_frames(tmp_path: Path) -> None:
    a, b = _body(0.0), _body(1.0)
    path = tmp_path / "S001C001P001R001A001.skeleton"
    path.write_text(_skeleton_text([[a, b], [a], [], [a, b, _body(5.0)]]))
    frames = read_skeleton(path)
    assert [f.shape for f in frames] == [(2, 25, 3), (1, 25, 3), (0, 25, 3), (3, 25, 3)]
    np.testing.assert_allclose(frames[0][1], b, atol=1e-6)

    arr = skeleton_array(path, frames=3)  # the empty frame is dropped: 3 frames remain
    assert arr.shape == (3, 3, 25, 2) and arr.dtype == np.float32
    # centred on joint 1 of the first body, in each frame
    np.testing.assert_allclose(arr[:, :, 1, 0], 0, atol=1e-6)
    np.testing.assert_allclose(arr[:, 0, :, 1], (b - a[1]).T, atol=1e-5)
    # frame 2 lists one body: the second body is zeros, not centred garbage
    assert np.all(arr[:, 1, :, 1] == 0)
    # frame 4 has three bodies: the first two are kept
    np.testing.assert_allclose(arr[:, 2, :, 1], (b - a[1]).T, atol=1e-5)


def test_resampling_to_32_frames_and_no_centring(tmp_path: Path) -> None:
    path = tmp_path / "x.skeleton"
    path.write_text(_skeleton_text([[_body(t / 10)] for t in range(10)]))
    arr = skeleton_array(path, frames=32, center=False)
    assert arr.shape == (3, 32, 25, 2)
    x_of_joint0 = arr[0, :, 0, 0]
    assert np.all(np.diff(x_of_joint0) >= 0) and x_of_joint0[0] == 0 and abs(x_of_joint0[-1] - 0.9) < 1e-5


def test_writer_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    frames = [rng.normal(0, 1, (n, 25, 3)).astype(np.float32) for n in (1, 2, 0, 2)]
    path = tmp_path / "w.skeleton"
    write_skeleton(path, frames)
    back = read_skeleton(path)
    assert [f.shape[0] for f in back] == [1, 2, 0, 2]
    for got, want in zip(back, frames):
        np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize(
    "mutate, line, what",
    [
        (lambda ls: ls.__setitem__(5, " ".join(ls[5].split()[:11])), 6, "expected 12 value"),
        (lambda ls: ls.__setitem__(7, "0.1 nan? " + " ".join(ls[7].split()[2:])), 8, "non-numeric"),
        (lambda ls: ls.__setitem__(1, "one"), 2, "non-numeric body count"),
        (lambda ls: ls.__setitem__(31, "24"), 32, "joint count 24 differs"),
        (lambda ls: ls.__delitem__(slice(40, None)), 41, "truncated"),
        (lambda ls: ls.append("1"), 58, "after the 2 frames"),
        (lambda ls: ls.__setitem__(5, ls[5] + " 7"), 6, "expected 12 value"),
        (lambda ls: ls.__setitem__(2, " ".join(ls[2].split()[:9])), 3, "expected 10 value"),
        (lambda ls: ls.__setitem__(2, ls[2].replace(" 0 ", " x ", 1)), 3, "non-numeric body info"),
        (lambda ls: ls.__setitem__(6, "# " + " ".join(ls[6].split()[1:])), 7, "non-numeric joint"),
        (lambda ls: ls.__setitem__(1, "-1"), 2, "body count -1"),
        (lambda ls: ls.__setitem__(3, "0"), 4, "joint count 0"),
        (lambda ls: ls.__setitem__(0, "-1"), 1, "frame count -1"),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path: Path, mutate, line, what: str) -> None:
    lines = _skeleton_text([[_body(0)], [_body(0)]]).splitlines()
    mutate(lines)
    path = tmp_path / "bad.skeleton"
    path.write_text("\n".join(lines) + "\n")
    assert _parse_regular(lines) is None  # the fast parser declines; the exact one names the line
    with pytest.raises(DataError, match=what) as err:
        read_skeleton(path)
    assert str(path) in str(err.value)
    assert f"bad.skeleton:{line}:" in str(err.value)


def _same_frames(got: list[np.ndarray], want: list[np.ndarray]) -> bool:
    return len(got) == len(want) and all(
        g.shape == w.shape and g.dtype == w.dtype and np.array_equal(g, w) for g, w in zip(got, want))


def test_fast_parser_takes_regular_files_and_equals_the_exact_one(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    files = {"hand.skeleton": _skeleton_text([[], [_body(0.5), _body(1.5)], [], [_body(2.0)]])}
    for k, joints in enumerate((25, 20)):  # leading empty frames, 0-3 bodies, other joint counts
        frames = [rng.normal(0, 2, (n, joints, 3)).astype(np.float32) for n in (0, 0, 1, 3, 2, 0, 1)]
        write_skeleton(tmp_path / f"w{k}.skeleton", frames, rng)
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    for path in sorted(tmp_path.glob("*.skeleton")):
        lines = path.read_text().splitlines()
        fast = _parse_regular(lines)
        assert fast is not None, path.name
        assert _same_frames(fast, _parse_exact(path, lines)), path.name
        assert _same_frames(read_skeleton(path), fast)
    assert [f.shape for f in read_skeleton(tmp_path / "w1.skeleton")][:3] == [(0, 25, 3), (0, 25, 3), (1, 20, 3)]


@pytest.mark.parametrize("respace", [
    lambda ln: ln.replace(" ", "\t"), lambda ln: ln.replace(" ", "  ", 1), lambda ln: ln + " ", lambda ln: " " + ln,
])
def test_irregular_spacing_is_read_by_the_exact_parser(tmp_path: Path, respace) -> None:
    lines = _skeleton_text([[_body(0), _body(1)], [_body(2)]]).splitlines()
    regular = tmp_path / "a.skeleton"
    regular.write_text("\n".join(lines) + "\n")
    lines[7] = respace(lines[7])  # one joint line of the first body
    spaced = tmp_path / "b.skeleton"
    spaced.write_text("\n".join(lines) + "\n")
    assert _parse_regular(lines) is None
    assert _same_frames(read_skeleton(spaced), read_skeleton(regular))


def test_no_body_skeleton_is_an_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "S001C001P001R001A001.skeleton"
    path.write_text(_skeleton_text([[], []]))
    with pytest.raises(DataError, match="no body"):
        skeleton_array(path)


def test_names_and_split_presets() -> None:
    f = parse_name("S017C003P020R002A060")
    assert f == {"setup": 17, "camera": 3, "subject": 20, "replication": 2, "action": 60}
    assert split_of("S001C001P001R001A001", "mfas") == "train"
    assert split_of("S001C001P002R001A001", "mfas") == "val"
    assert split_of("S001C001P003R001A001", "mfas") == "test"
    assert split_of("S001C001P003R001A001", "cross-subject") == "test"
    assert split_of("S001C001P002R001A001", "cross-subject") in ("train", "val")
    assert split_of("S001C001P002R001A001", "cross-view") == "test"
    assert split_of("S001C002P003R001A001", "cross-view") in ("train", "val")
    assert sorted(sum(MFAS_SUBJECTS.values(), ())) == list(range(1, 41))
    with pytest.raises(DataError, match="SsssCccc"):
        parse_name("clip_001")


def _ntu_root(tmp_path: Path) -> Path:
    """Six NTU-named samples: complete ones in each mfas split, plus the usual defects."""
    root = tmp_path / "ntu"
    (root / "nturgb+d_rgb").mkdir(parents=True)
    (root / "nturgb+d_skeletons").mkdir()
    video = np.random.default_rng(0).integers(0, 255, (6, 32, 32, 3), dtype=np.uint8)
    names = {
        "S001C001P001R001A001": "both",  # mfas train
        "S001C002P002R001A002": "both",  # mfas val
        "S002C001P003R002A003": "both",  # mfas test
        "S001C001P004R001A004": "video",  # skeleton missing
        "S001C001P008R001A005": "empty",  # empty skeleton file
        "S001C001P013R001A006": "skeleton",  # video missing
        "S001C003P015R001A007": "skip",  # in NTU's missing-skeletons list
        "S001C003P016R001A008": "bodiless",  # frames with no body, as NTU's 302 missing skeletons
    }
    for name, kind in names.items():
        if kind != "skeleton":
            write_video(root / "nturgb+d_rgb" / f"{name}_rgb.avi", video)
        if kind in ("both", "skeleton", "skip"):
            (root / "nturgb+d_skeletons" / f"{name}.skeleton").write_text(_skeleton_text([[_body(0)]] * 4))
        if kind == "empty":
            (root / "nturgb+d_skeletons" / f"{name}.skeleton").write_text("")
        if kind == "bodiless":
            (root / "nturgb+d_skeletons" / f"{name}.skeleton").write_text(_skeleton_text([[]] * 40))
    (root / "NTU_RGBD_samples_with_missing_skeletons.txt").write_text("S001C003P015R001A007\n")
    return root


def test_source_lists_splits_skips_and_loads(tmp_path: Path) -> None:
    src = NTUSource(_ntu_root(tmp_path), split="mfas", frames=4, size=16, skeleton_frames=32)
    # missing, empty and bodiless files stay listed (extraction records them as skipped);
    # the skip-listed sample is left out
    unreadable = {"S001C001P004R001A004", "S001C001P008R001A005", "S001C001P013R001A006", "S001C003P016R001A008"}
    good = [s for s in src.samples() if s.id not in unreadable]
    ids = [s.id for s in good]
    assert ids == ["S001C001P001R001A001", "S001C002P002R001A002", "S002C001P003R002A003"]
    assert {s.id for s in src.samples()} - set(ids) == unreadable
    assert [s.split for s in good] == ["train", "val", "test"]
    assert src.label_array(good).tolist() == [0, 1, 2] and src.num_classes == 60
    problems = "\n".join(src.problems())
    for sid, why in [("P004", "no skeleton"), ("P008", "empty skeleton"), ("P013", "no video"),
                     ("P015", "missing skeletons"), ("P016", "no body in any frame")]:
        assert sid in problems and why in problems
    clone = pickle.loads(pickle.dumps(src))
    video = clone.load(ids[0], "video")
    skeleton = clone.load(ids[0], "skeleton")
    assert video.shape == (4, 16, 16, 3) and video.dtype == np.uint8
    assert skeleton.shape == (3, 32, 25, 2) and skeleton.dtype == np.float32
    assert src.path_of(ids[0], "skeleton").endswith("S001C001P001R001A001.skeleton")
    assert set(src.unreadable()) == unreadable and src.check() == []  # problems() names them once
    with pytest.raises(DataError, match="S001C001P008R001A005: empty skeleton file"):
        src.read("S001C001P008R001A005", "video")


def test_source_skeleton_only_keeps_samples_without_video(tmp_path: Path) -> None:
    src = NTUSource(_ntu_root(tmp_path), split="cross-view", modalities=("skeleton",))
    ids = {s.id for s in src.samples()}
    assert "S001C001P013R001A006" in ids and "S001C001P004R001A004" in ids  # the latter lacks its skeleton
    with pytest.raises(DataError, match="S001C001P004R001A004: no skeleton file"):
        src.read("S001C001P004R001A004", "skeleton")
    assert {s.split for s in src.samples() if s.id.startswith("S001C001")} == {"test"}


def test_source_check_reports_every_corrupt_file(tmp_path: Path) -> None:
    root = _ntu_root(tmp_path)
    (root / "nturgb+d_rgb" / "S001C001P001R001A001_rgb.avi").write_bytes(b"\x00" * 3000)
    (root / "nturgb+d_skeletons" / "S002C001P003R002A003.skeleton").write_text("4\n1\n" + INFO + "\n25\n1 2 3\n")
    src = NTUSource(root, frames=4, size=16)
    found = src.check()  # the corrupt video is found by decoding ...
    assert len(found) == 1 and "S001C001P001R001A001_rgb.avi" in found[0]
    # ... the malformed (small) skeleton already while listing, with its line
    assert any("S002C001P003R002A003.skeleton:5:" in p for p in src.problems())


def test_bad_root_and_options(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        NTUSource(tmp_path / "nope")
    with pytest.raises(DataError, match="no NTU files"):
        NTUSource(tmp_path)
    root = _ntu_root(tmp_path)
    with pytest.raises(DataError, match="split preset"):
        NTUSource(root, split="random")
    with pytest.raises(DataError, match="modalities"):
        NTUSource(root, modalities=("audio",))
