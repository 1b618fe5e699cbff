"""`bmnas data prepare`: a dataset decoded once into a manifest of .npy files gives the same store as
the raw data, resumes after a kill, refuses other settings and folders it did not write."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from extract.synth import generate
from pipeline.cli import cli
from stores import open_store
from stores.lock import exclusive

BMNAS = [sys.executable, "-m", "pipeline.cli"]


@pytest.fixture(scope="module")
def ntu(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ntu") / "data"
    generate("ntu-like", root, samples=24, classes=4, seed=5)
    return root


def _cli(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _files(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file() and p.name != "bmnas_prepared.json"}


def _extract(data: Path, out: Path) -> None:
    r = _cli("extract", data, "--out", out, "--backbone", "video=inflated_resnet50", "--backbone", "skeleton=hcn",
             "--setting", "tiny", "--rows-per-chunk", "8", "--no-dask", "--device", "cpu", "--quiet")
    assert r.exit_code == 0, r.output


def test_a_prepared_dataset_extracts_to_the_same_store(ntu, tmp_path):
    r = _cli("data", "prepare", ntu, tmp_path / "ready", "--workers", "2", "--quiet")
    assert r.exit_code == 0, r.output
    assert "prepared 24 samples" in r.output
    manifest = tmp_path / "ready" / "manifest.jsonl"
    _extract(ntu, tmp_path / "raw.zarr")
    _extract(manifest, tmp_path / "ready.zarr")
    raw, ready = open_store(tmp_path / "raw.zarr"), open_store(tmp_path / "ready.zarr")
    assert list(raw.sample_ids) == list(ready.sample_ids)
    assert np.array_equal(raw.labels_all, ready.labels_all) and raw.class_names == ready.class_names
    assert {k: v.tolist() for k, v in raw.splits.items()} == {k: v.tolist() for k, v in ready.splits.items()}
    assert raw.nodes == ready.nodes
    for node in raw.nodes:
        assert np.array_equal(raw.array(node)[...], ready.array(node)[...]), node
    again = _cli("data", "prepare", ntu, tmp_path / "ready")
    assert again.exit_code == 0 and "already prepared (24 samples)" in again.output


def test_a_killed_prepare_resumes_to_the_same_files(tmp_path):
    raw = tmp_path / "data"
    generate("ntu-like", raw, samples=160, classes=4, seed=6)
    whole = tmp_path / "whole"
    assert _cli("data", "prepare", raw, whole, "--quiet").exit_code == 0
    out = tmp_path / "killed"
    proc = subprocess.Popen([*BMNAS, "data", "prepare", str(raw), str(out), "--quiet"], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 60
    while len(list((out / "video").glob("*.npy"))) < 10 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    saved = len(list((out / "video").glob("*.npy")))
    assert 10 <= saved < 160 and not (out / "manifest.jsonl").exists()
    r = _cli("data", "prepare", raw, out, "--quiet")
    assert r.exit_code == 0, r.output
    assert f"({saved} saved by an earlier run)" in r.output or f"({saved - 1} saved" in r.output, r.output
    assert _files(out) == _files(whole)  # a half-written temporary the kill left is gone too


def test_other_settings_a_users_folder_and_a_busy_folder_are_refused(ntu, tmp_path):
    out = tmp_path / "ready"
    assert _cli("data", "prepare", ntu, out, "--quiet").exit_code == 0
    before = _files(out)
    r = _cli("data", "prepare", ntu, out, "--source-opt", "frames=4")
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    assert "prepared with other options" in r.output and str(out) in r.output
    assert _files(out) == before
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("results")
    r = _cli("data", "prepare", ntu, mine)
    assert r.exit_code == 2 and "which bmnas data prepare did not write" in r.output, r.output
    assert [p.name for p in mine.iterdir()] == ["thesis.tex"]
    with exclusive(tmp_path / "busy", "prepared dataset"):
        r = _cli("data", "prepare", ntu, tmp_path / "busy")
    assert r.exit_code == 2 and "in use" in r.output, r.output


def test_an_unreadable_sample_stops_or_is_left_out(tmp_path):
    raw = tmp_path / "data"
    generate("ntu-like", raw, samples=12, classes=4, seed=7)
    video = sorted((raw / "nturgb+d_rgb").glob("*_rgb.avi"))[5]
    video.write_bytes(video.read_bytes()[: video.stat().st_size // 2])
    r = _cli("data", "prepare", raw, tmp_path / "stop", "--quiet")
    assert r.exit_code == 2 and video.name in r.output and "--on-error skip" in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "stop" / "manifest.jsonl").exists()
    r = _cli("data", "prepare", raw, tmp_path / "skip", "--on-error", "skip", "--quiet")
    assert r.exit_code == 0 and "skipped" in r.output and video.name in r.output, r.output
    sid = video.name.replace("_rgb.avi", "")
    rows = [json.loads(line) for line in (tmp_path / "skip" / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == 11 and sid not in {row["id"] for row in rows}


def test_raw_text_is_refused_before_anything_is_written(tmp_path):
    raw = tmp_path / "movies"
    generate("mmimdb-like", raw, samples=12, seed=1)
    r = _cli("data", "prepare", raw / "manifest.jsonl", tmp_path / "ready")
    assert r.exit_code == 2 and "the text of manifest samples is str" in r.output, r.output
    assert not (tmp_path / "ready").exists()


def test_ids_with_slashes_and_depth_frames_round_trip(tmp_path):
    from extract.prepare import prepare_dataset
    from extract.sources.egogesture import EgoGestureSource
    from extract.sources.manifest import ManifestSource
    from test_sources_egogesture import _tree

    src = EgoGestureSource(_tree(tmp_path / "ego"), frames=4, size=16)
    done = prepare_dataset(src, tmp_path / "ready", workers=2, progress=False)
    assert done.written == len(src.samples()) == 4
    ready = ManifestSource(tmp_path / "ready" / "manifest.jsonl")
    assert [(s.id, s.split, s.label) for s in ready.samples()] == [(s.id, s.split, s.label) for s in src.samples()]
    assert ready.modalities == src.modalities == ("video", "depth") and ready.num_classes == src.num_classes
    for s in src.samples():
        for m in src.modalities:
            assert np.array_equal(ready.read(s.id, m), src.read(s.id, m)), (s.id, m)


def test_a_multilabel_hdf5_dataset_round_trips(tmp_path):
    """MM-IMDB's hdf5 layout (multilabel genres, posters and text features): the same samples, genres
    and arrays from the prepared copy."""
    from extract.sources.registry import open_source

    generate("mmimdb-like", tmp_path / "movies", samples=24, seed=2)
    r = _cli("data", "prepare", tmp_path / "movies" / "multimodal_imdb.hdf5", tmp_path / "ready", "--quiet")
    assert r.exit_code == 0, r.output
    raw, ready = open_source(tmp_path / "movies" / "multimodal_imdb.hdf5"), open_source(tmp_path / "ready")
    assert ready.task == raw.task == "multilabel" and ready.class_names == raw.class_names
    assert [(s.id, s.split, s.label) for s in ready.samples()] == [(s.id, s.split, s.label) for s in raw.samples()]
    for s in raw.samples():
        for m in raw.modalities:
            assert np.array_equal(ready.read(s.id, m), raw.read(s.id, m)), (s.id, m)
