"""Bad raw samples planted in real NTU-format files (a NaN coordinate in a .skeleton, an _rgb.avi cut
to half, a missing and a zero-byte file) are recorded as skipped or stop the run; none becomes a
row of features and none vanishes unrecorded."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from extract.errors import DataError
from extract.sources.ntu import NTUSource
from extract.sources.video import read_video
from extract.synth import generate
from pipeline.cli import cli
from stores import open_store, verify_store


@pytest.fixture(scope="module")
def ntu(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ntu") / "data"
    generate("ntu-like", root, samples=16, classes=4, seed=3)
    return root


def _damaged(ntu: Path, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A copy with four bad samples; returns the root and sample id -> expected reason text."""
    root = tmp_path / "data"
    shutil.copytree(ntu, root)
    ids = [s.id for s in NTUSource(root, size=32).samples()]
    skel = next(root.rglob(f"{ids[1]}.skeleton"))
    lines = skel.read_text().splitlines()
    joint = next(i for i, ln in enumerate(lines) if len(ln.split()) == 12)
    lines[joint] = "nan " + " ".join(lines[joint].split()[1:])
    skel.write_text("\n".join(lines) + "\n")
    avi = next(root.rglob(f"{ids[6]}_rgb.avi"))
    avi.write_bytes(avi.read_bytes()[: avi.stat().st_size // 2])
    next(root.rglob(f"{ids[9]}_rgb.avi")).unlink()
    next(root.rglob(f"{ids[12]}.skeleton")).write_bytes(b"")
    return root, {ids[1]: "NaN/Inf", ids[6]: "truncated", ids[9]: "no video file", ids[12]: "empty skeleton file"}


def _extract(root: Path, out: Path, *extra: str):
    return CliRunner().invoke(cli, ["extract", str(root), "--out", str(out), "--backbone", "video=inflated_resnet50",
                                    "--backbone", "skeleton=hcn", "--setting", "tiny", "--source-opt", "size=32",
                                    "--rows-per-chunk", "4", "--no-dask", "--quiet", *extra])


def test_half_an_avi_is_refused_naming_declared_frames(ntu, tmp_path):
    avi = tmp_path / "cut_rgb.avi"
    data = next(ntu.rglob("*_rgb.avi")).read_bytes()
    cut = bytearray(data[: len(data) // 2])
    avi.write_bytes(cut)
    with pytest.raises(DataError, match=r"cut_rgb.avi: its RIFF chunk declares [\d,]+ bytes, [\d,]+ past the end"):
        read_video(avi, frames=8, size=32)
    cut[4:8] = (len(cut) - 8).to_bytes(4, "little")  # a RIFF size that fits: the frame count still tells
    avi.write_bytes(cut)
    with pytest.raises(DataError, match=r"cut_rgb.avi: video decodes \d+ of the 32 frames its header declares"):
        read_video(avi, frames=8, size=32)


def test_bad_samples_are_recorded_as_skipped_and_the_store_verifies(ntu, tmp_path):
    root, want = _damaged(ntu, tmp_path)
    r = _extract(root, tmp_path / "s.zarr", "--on-error", "skip")
    assert r.exit_code == 0, r.output
    assert "4 skipped" in r.output
    store = open_store(tmp_path / "s.zarr")
    got = {rec["id"]: rec["reason"] for rec in store.attrs["skipped"]}
    assert set(got) == set(want)
    for sid, why in want.items():
        assert why in got[sid], (sid, got[sid])
    assert verify_store(tmp_path / "s.zarr") == []
    rows = {int(r) for v in store.splits.values() for r in v}
    assert len(rows) == 12 and np.isfinite(store.bank("train").features["skeleton_1"]).all()


def test_bad_sample_stops_the_run_under_on_error_fail(ntu, tmp_path):
    root, want = _damaged(ntu, tmp_path)
    r = _extract(root, tmp_path / "f.zarr")
    assert r.exit_code == 2
    line = r.output.strip().splitlines()[-1]
    first = sorted(want)[0]
    assert line.startswith(f"error: sample {first}") and want[first] in line


def test_resume_with_other_source_options_is_refused(ntu, tmp_path):
    out = tmp_path / "r.zarr"
    base = ["extract", str(ntu), "--out", str(out), "--backbone", "skeleton=hcn", "--setting", "tiny",
            "--source-opt", "size=32", "--rows-per-chunk", "4", "--no-dask", "--quiet"]
    assert CliRunner().invoke(cli, base).exit_code == 0
    prov = open_store(out).attrs["extraction"]
    assert prov["source"] == "ntu" and prov["mode"] == "in-process"
    assert prov["source_options"]["skeleton_frames"] == 32 and prov["source_options"]["size"] == 32
    before = open_store(out).array("skeleton_1")[...]
    r = CliRunner().invoke(cli, [*base, "--source-opt", "skeleton_frames=16"])
    assert r.exit_code == 2 and "other settings (source_options differ)" in r.output, r.output
    np.testing.assert_array_equal(open_store(out).array("skeleton_1")[...], before)


def test_fixed_sample_leaves_the_skipped_list_on_rerun(ntu, tmp_path):
    root, want = _damaged(ntu, tmp_path)
    out = tmp_path / "s.zarr"
    assert _extract(root, out, "--on-error", "skip").exit_code == 0
    assert len(open_store(out).attrs["skipped"]) == 4
    for sid in want:  # repair every file from the intact copy
        for name in (f"{sid}.skeleton", f"{sid}_rgb.avi"):
            rel = next(ntu.rglob(name)).relative_to(ntu)
            shutil.copy(ntu / rel, root / rel)
    r = _extract(root, out, "--on-error", "skip")
    assert r.exit_code == 0 and "0 skipped" in r.output, r.output
    store = open_store(out)
    assert store.attrs["skipped"] == [] and sum(v.size for v in store.splits.values()) == 16
    assert verify_store(out) == []


@pytest.mark.parametrize("option", [("--t-max", "0"), ("--batch-size", "0"), ("--workers", "0"),
                                    ("--chunks-per-task", "0"), ("--rows-per-chunk", "0")])
def test_non_positive_sizes_are_refused_before_the_store_exists(ntu, tmp_path, option):
    out = tmp_path / "z.zarr"
    r = CliRunner().invoke(cli, ["extract", str(ntu), "--out", str(out), "--backbone", "skeleton=hcn",
                                 "--setting", "tiny", "--quiet", *option])
    assert r.exit_code == 2, r.output
    assert r.output.strip() == f"error: {option[0]} 0: use a positive integer"
    assert not out.exists()
