"""Damage planted in real store files never reads as numbers: lost table chunks, NaN/Inf feature
rows and chunks that do not decode stop open, verify, both readers and `bmnas search` with one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from stores import StoreError, open_store, verify_store, write_store_from_arrays

N = 200
SPLITS = {"train": np.arange(0, 120), "val": np.arange(120, 160), "test": np.arange(160, N)}


def _store(path: Path, labels: np.ndarray | None = None, nan_row: int | None = None) -> Path:
    rng = np.random.default_rng(0)
    feats = {"video_1": rng.normal(size=(N, 6, 4)).astype(np.float32),
             "skeleton_1": rng.normal(size=(N, 3, 5)).astype(np.float32)}
    if nan_row is not None:
        feats["skeleton_1"][nan_row, 1, 2] = np.nan
    labels = rng.integers(0, 4, N) if labels is None else labels
    write_store_from_arrays(path, feats, labels, SPLITS, task="multiclass", num_classes=4, rows_per_chunk=32,
                            sample_ids=[f"s{i}" for i in range(N)])
    return path


def test_all_class_zero_labels_keep_their_chunk_file(tmp_path):
    """The writer keeps a chunk file even when it holds only the fill value, so a store of class-0
    labels is sound (and the lost-chunk check below cannot misfire on it)."""
    path = _store(tmp_path / "s.zarr", labels=np.zeros(N, np.int64))
    assert (path / "labels" / "c" / "0").is_file()
    assert verify_store(path) == [] and open_store(path).labels("train").max() == 0


@pytest.mark.parametrize("chunk", ["labels/c/0", "splits/train/c/0", "sample_ids/c/0"])
def test_lost_table_chunk_is_refused_by_verify_and_open(tmp_path, chunk):
    path = _store(tmp_path / "s.zarr")
    (path / chunk).unlink()
    name = chunk.rsplit("/c/", 1)[0]
    problems = verify_store(path)
    assert any(p.startswith(f"{name}: 1 of 1 chunk files are missing") for p in problems), problems
    with pytest.raises(StoreError, match=f"{name}: 1 of 1 chunk files are missing"):
        open_store(path)


@pytest.mark.parametrize("reader", ["bank", "stream"])
def test_nan_row_is_refused_by_both_readers_naming_node_and_row(tmp_path, reader):
    store = open_store(_store(tmp_path / "s.zarr", nan_row=37))
    with pytest.raises(StoreError, match=r"features/skeleton_1: 1 rows hold NaN or Inf \(store rows \[37\]"):
        list(getattr(store, reader)("train").batches(16, seed=0))
    assert store.bank("val").num_rows == 40  # rows outside the damaged split still read


def test_lost_feature_chunk_reads_as_nan_and_is_refused(tmp_path):
    path = _store(tmp_path / "s.zarr")
    (path / "features" / "video_1" / "c" / "1" / "0" / "0").unlink()
    with pytest.raises(StoreError, match=r"features/video_1: 32 rows hold NaN or Inf \(store rows \[32, 33"):
        open_store(path).bank("train")


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_chunk_that_does_not_decode_gives_one_line(tmp_path, damage):
    path = _store(tmp_path / "s.zarr")
    chunk = path / "features" / "video_1" / "c" / "0" / "0" / "0"
    data = chunk.read_bytes()
    chunk.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00garbage" * 9)
    problems = verify_store(path)
    assert len(problems) == 1 and "features/video_1: a chunk cannot be decoded" in problems[0]
    with pytest.raises(StoreError, match="cannot be decoded"):
        open_store(path).stream("train").batches(16, seed=0).__next__()
    labels = path / "labels" / "c" / "0"
    labels.write_bytes(labels.read_bytes()[:10])
    with pytest.raises(StoreError, match="labels: a chunk cannot be decoded"):
        open_store(path)


def test_search_on_nan_store_exits_2_and_writes_no_genotype(tmp_path):
    path = _store(tmp_path / "s.zarr", nan_row=5)
    out = tmp_path / "run"
    r = CliRunner().invoke(cli, ["search", "--store", str(path), "--out", str(out), "--cells", "1", "--steps", "1",
                                 "--channels", "8", "--length", "4", "--multiplier", "1", "--epochs", "1",
                                 "--batch-size", "32", "--device", "cpu"])
    assert r.exit_code == 2, r.output
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert lines[-1].startswith("error: ") and "features/skeleton_1: 1 rows hold NaN or Inf (store rows [5]" in lines[-1]
    assert not (out / "genotype.json").exists()
