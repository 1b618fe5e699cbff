"""Feature store v1: round trips, bring-your-own zarr, validation errors, resume records, readers."""

from __future__ import annotations

import json
import multiprocessing as mp
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

import stores
from pipeline.cli import cli
from stores import NodeSpec, StoreError, create_store, open_store, open_writer, verify_store, write_store_from_arrays

N = 230
SPLITS = {"train": np.arange(0, 150), "val": np.arange(150, 190), "test": np.arange(190, N)}


def _features(rng, n=N):
    return {"video_1": rng.normal(size=(n, 6, 4)).astype(np.float32),
            "skeleton_1": rng.normal(size=(n, 3, 5)).astype(np.float32)}


def _labels(rng, task, k=5, n=N):
    if task == "multiclass":
        return rng.integers(0, k, n)
    return (rng.random((n, k)) < 0.3).astype(np.uint8)


def _store(tmp_path, rng, **kw):
    kw = {"task": "multiclass", "num_classes": 5, "rows_per_chunk": 32, **kw}
    labels = _labels(rng, kw["task"], kw["num_classes"])
    return write_store_from_arrays(tmp_path / "s.zarr", _features(rng), labels, SPLITS, **kw)


@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("task", ["multiclass", "multilabel"])
@pytest.mark.parametrize("codec", ["zstd", "lz4"])
def test_round_trip_every_dtype_and_task(tmp_path, rng, dtype, task, codec):
    feats = _features(rng)
    labels = _labels(rng, task)
    ids = [f"s{i:04d}" for i in range(N)]
    write_store_from_arrays(tmp_path / "s.zarr", feats, labels, SPLITS, task=task, num_classes=5, dtype=dtype,
                            codec=codec, rows_per_chunk=32, sample_ids=ids, class_names=list("abcde"))
    s = open_store(tmp_path / "s.zarr")
    assert s.task == task and s.num_classes == 5 and s.class_names == list("abcde")
    assert s.nodes == ["video_1", "skeleton_1"]
    assert s.node_shapes == {"video_1": (6, 4), "skeleton_1": (3, 5)}
    assert str(s.array("video_1").dtype) == dtype
    tol = 1e-2 if dtype == "float16" else 0
    bank = s.bank("val")
    np.testing.assert_allclose(bank.features["video_1"], feats["video_1"][150:190], atol=tol, rtol=tol)
    np.testing.assert_array_equal(bank.labels, labels[150:190])
    assert bank.features["video_1"].dtype == np.float32
    assert list(s.sample_ids[:2]) == ["s0000", "s0001"]
    assert verify_store(tmp_path / "s.zarr") == []


def test_store_written_with_plain_zarr_as_in_the_docs_opens(tmp_path, monkeypatch):
    doc = (Path(__file__).parent.parent / "docs" / "store-format.md").read_text()
    block = re.search(r"\*\*Bring your own features with plain zarr\*\*.*?```python\n(.*?)```", doc, re.S)
    assert block, "docs/store-format.md lost its plain-zarr example"
    monkeypatch.chdir(tmp_path)
    exec(compile(block.group(1), "docs-example", "exec"), {})
    s = open_store(tmp_path / "my_features.zarr")
    assert s.nodes == ["image_1", "text_1"] and s.splits["val"].size == 50
    assert s.bank("train").features["text_1"].shape == (200, 300, 1)
    assert verify_store(tmp_path / "my_features.zarr") == []


def _break(path: Path, how: str) -> None:
    g = zarr.open_group(str(path), mode="r+")
    attrs = dict(g.attrs)["bmnas"]
    if how == "format":
        g.attrs["bmnas"] = {**attrs, "format": "something-else"}
    elif how == "version":
        g.attrs["bmnas"] = {**attrs, "version": 2}
    elif how == "no_attrs":
        del g.attrs["bmnas"]
    elif how == "missing_feature":
        del g["features/skeleton_1"]
    elif how == "missing_labels":
        del g["labels"]
    elif how == "mismatched_n":
        g.create_array("labels", shape=(N - 3,), dtype="int64", overwrite=True)[...] = 0
    elif how == "overlap":
        g.create_array("splits/val", shape=(3,), dtype="int64", overwrite=True)[...] = [10, 11, 160]
    elif how == "out_of_range":
        g.create_array("splits/test", shape=(2,), dtype="int64", overwrite=True)[...] = [200, N + 5]
    elif how == "unsorted":
        g.create_array("splits/test", shape=(3,), dtype="int64", overwrite=True)[...] = [200, 195, 210]
    elif how == "duplicate":
        g.create_array("splits/test", shape=(3,), dtype="int64", overwrite=True)[...] = [200, 200, 210]
    elif how == "label_range":
        lab = g["labels"][...]
        lab[7] = 9
        g["labels"][...] = lab
    elif how == "no_splits":
        del g["splits"]
    elif how == "incomplete":
        g["completion"][3] = 0


@pytest.mark.parametrize("how, message", [
    ("format", r"format.*'something-else'.*expected 'bmnas-features'"),
    ("version", r"version.*2.*reads version 1"),
    ("no_attrs", r"attrs\['bmnas'\] is missing"),
    ("missing_feature", r"features/skeleton_1 is missing"),
    ("missing_labels", r"labels is missing"),
    ("mismatched_n", r"N differs between arrays: .*labels=227"),
    ("overlap", r"splits/val overlaps splits/train in 2 rows"),
    ("out_of_range", r"splits/test has indices outside 0\.\.229"),
    ("unsorted", r"splits/test is not sorted and unique \(unsorted"),
    ("duplicate", r"splits/test is not sorted and unique \(duplicates"),
    ("label_range", r"labels has values in \[0, 9\], outside 0\.\.4"),
    ("no_splits", r"splits is missing"),
    ("incomplete", r"completion: 1 row chunks were never completely written \(first: \[3\]\)"),
])
def test_each_validation_error_names_array_and_problem(tmp_path, rng, how, message):
    _store(tmp_path, rng)
    _break(tmp_path / "s.zarr", how)
    with pytest.raises(StoreError, match=message):
        open_store(tmp_path / "s.zarr")
    assert any(re.search(message, p) for p in verify_store(tmp_path / "s.zarr"))


def test_multilabel_labels_must_be_multi_hot(tmp_path, rng):
    labels = _labels(rng, "multilabel")
    labels[4, 2] = 3
    with pytest.raises(StoreError, match="not multi-hot"):
        write_store_from_arrays(tmp_path / "s.zarr", _features(rng), labels, SPLITS, task="multilabel", num_classes=5)


def test_not_a_store_and_missing_path(tmp_path):
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "x.txt").write_text("hi")
    with pytest.raises(StoreError, match="is not a zarr group"):
        open_store(tmp_path / "plain")
    with pytest.raises(StoreError, match="does not exist"):
        open_store(tmp_path / "nope.zarr")
    zarr.open_group(str(tmp_path / "bare.zarr"), mode="w")
    with pytest.raises(StoreError, match="not a bmnas feature store"):
        open_store(tmp_path / "bare.zarr")


def test_nan_and_inf_found_by_verify(tmp_path, rng):
    feats = _features(rng)
    feats["video_1"][17, 2, 1] = np.nan
    feats["skeleton_1"][180, 0, 0] = np.inf
    write_store_from_arrays(tmp_path / "s.zarr", feats, _labels(rng, "multiclass"), SPLITS, task="multiclass",
                            num_classes=5, rows_per_chunk=32)
    problems = verify_store(tmp_path / "s.zarr")
    assert problems == ["features/video_1: 1 rows hold NaN or Inf (first rows: [17])",
                        "features/skeleton_1: 1 rows hold NaN or Inf (first rows: [180])"]


def test_create_refuses_existing_store_and_keeps_it(tmp_path, rng):
    _store(tmp_path, rng)
    before = open_store(tmp_path / "s.zarr").bank("train").features["video_1"].copy()
    with pytest.raises(StoreError, match="already exists; pass overwrite=True"):
        create_store(tmp_path / "s.zarr", task="multiclass", num_classes=5, nodes=[NodeSpec("a_1", 2, 2)], num_samples=4)
    np.testing.assert_array_equal(open_store(tmp_path / "s.zarr").bank("train").features["video_1"], before)


def _new_writer(path, n=100, rpc=16):
    return create_store(path, task="multiclass", num_classes=3, nodes=[NodeSpec("video_1", 4, 2, {"layer": "l1"}),
                        NodeSpec("video_2", 2, 3)], num_samples=n, rows_per_chunk=rpc, dtype="float32")


def _chunk_values(w, k):
    rows = w.chunk_rows(k)
    r = np.arange(rows.start, rows.stop, dtype=np.float32)
    return {"video_1": np.broadcast_to(r[:, None, None], (r.size, 4, 2)).copy(),
            "video_2": np.broadcast_to(-r[:, None, None], (r.size, 2, 3)).copy()}


def _write_chunk_in_process(args):
    path, k = args
    w = open_writer(path)
    w.write_chunk(k, _chunk_values(w, k))
    return k


def test_disjoint_chunks_from_several_processes_then_finalize(tmp_path):
    path = tmp_path / "s.zarr"
    w = _new_writer(path)
    assert w.num_chunks == 7 and w.missing_chunks() == list(range(7))
    with pytest.raises(StoreError, match="cannot finalize, 7 chunks are not written"):
        w.finalize(np.zeros(100, dtype=np.int64), {"train": np.arange(100)})
    with mp.get_context("spawn").Pool(2) as pool:
        assert sorted(pool.map(_write_chunk_in_process, [(str(path), k) for k in range(7)])) == list(range(7))
    w = open_writer(path)
    assert w.missing_chunks() == []
    w.finalize(np.arange(100) % 3, {"train": np.arange(60), "val": np.arange(60, 80), "test": np.arange(80, 100)},
               sample_ids=[f"id{i}" for i in range(100)], skipped=[], extra_attrs={"dataset": "unit"})
    s = open_store(path)
    assert s.attrs["dataset"] == "unit" and s.node_attrs("video_1") == {"layer": "l1"}
    np.testing.assert_array_equal(s.bank("test").features["video_2"][:, 0, 0], -np.arange(80, 100))


def test_writer_killed_between_data_and_record_leaves_chunk_missing(tmp_path):
    path = tmp_path / "s.zarr"
    _new_writer(path)
    script = textwrap.dedent(f"""
        import os, signal, numpy as np
        import stores.writer
        from stores import open_writer
        w = open_writer({str(path)!r})
        rows = w.chunk_rows(0)
        w.write_chunk(0, {{"video_1": np.ones((16, 4, 2)), "video_2": np.ones((16, 2, 3))}})
        original = stores.writer._put_chunk
        def die_at_record(arr, k, block):
            if arr.path == "completion":      # the data of chunk 2 is on disk by now
                os.kill(os.getpid(), signal.SIGKILL)
            return original(arr, k, block)
        stores.writer._put_chunk = die_at_record
        w.write_chunk(2, {{"video_1": np.full((16, 4, 2), 2.0), "video_2": np.full((16, 2, 3), 2.0)}})
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()
    w = open_writer(path)
    assert w.missing_chunks() == [1, 2, 3, 4, 5, 6]
    assert zarr.open_array(str(path / "features/video_1"), mode="r")[32, 0, 0] == 2.0  # data landed, record did not


def test_failed_node_write_leaves_no_completion_record(tmp_path, monkeypatch):
    import stores.writer

    w = _new_writer(tmp_path / "s.zarr")
    original = stores.writer._put_chunk

    def fail_video_2(arr, k, block):
        if arr.path.endswith("video_2"):
            raise OSError("disk full")
        return original(arr, k, block)

    monkeypatch.setattr(stores.writer, "_put_chunk", fail_video_2)
    with pytest.raises(OSError, match="disk full"):
        w.write_chunk(1, _chunk_values(w, 1))
    assert 1 in w.missing_chunks()
    monkeypatch.setattr(stores.writer, "_put_chunk", original)
    w.write_chunk(1, _chunk_values(w, 1))
    assert 1 not in w.missing_chunks()
    with pytest.raises(StoreError, match="chunk 2 has shape"):
        w.write_chunk(2, {"video_1": np.zeros((16, 4, 2)), "video_2": np.zeros((3, 2, 3))})
    assert 2 in w.missing_chunks()


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_chunk_files_are_those_zarr_writes(tmp_path, dtype, monkeypatch):
    """Chunks written without zarr's IO loop: the same files, byte for byte, as zarr's own writes,
    with a short last chunk (padded with NaN) and an all-NaN chunk (no file); and the zarr path
    taken for stores the direct one cannot write gives the same values."""
    import stores.writer
    from stores.identity import chunk_digest

    nodes = [NodeSpec("video_1", 4, 2), NodeSpec("video_2", 2, 3)]
    mine = create_store(tmp_path / "mine.zarr", task="multiclass", num_classes=3, nodes=nodes, num_samples=100,
                        rows_per_chunk=16, dtype=dtype)
    create_store(tmp_path / "zarr.zarr", task="multiclass", num_classes=3, nodes=nodes, num_samples=100,
                 rows_per_chunk=16, dtype=dtype)
    theirs = zarr.open_group(str(tmp_path / "zarr.zarr"), mode="r+")
    for k in (0, 3, 6):  # 6: rows 96..99, a short last chunk
        values = _chunk_values(mine, k)
        if k == 3:
            values = {n: np.full_like(v, np.nan) for n, v in values.items()}  # every sample skipped
        mine.write_chunk(k, values)
        for name, v in values.items():
            theirs[f"features/{name}"][mine.chunk_rows(k)] = v.astype(dtype)
        theirs["chunk_sha256"][k] = chunk_digest({n: v.astype(dtype) for n, v in values.items()})
        theirs["completion"][k] = 1
    assert mine._whole_chunks

    def files(root):
        return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file() and "/c/" in str(p)}

    ours, zarrs = files(tmp_path / "mine.zarr"), files(tmp_path / "zarr.zarr")
    assert sorted(ours) == sorted(zarrs) and ours == zarrs
    assert not any(p.startswith("features/video_1/c/3/") for p in ours)  # all NaN: no file, as zarr
    monkeypatch.setattr(stores.writer, "_whole_chunks_encodable", lambda arr: False)
    other = open_writer(tmp_path / "zarr.zarr")
    other.write_chunk(2, _chunk_values(other, 2))
    assert not other._whole_chunks and other.missing_chunks() == [1, 4, 5]
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "zarr.zarr/features/video_2"), mode="r")[32:48],
                                  _chunk_values(other, 2)["video_2"].astype(dtype))


def _row_ids_store(tmp_path, n=1000, rpc=64):
    feats = {"a_1": np.arange(n, dtype=np.float32)[:, None, None] * np.ones((1, 2, 2), np.float32)}
    splits = {"train": np.arange(0, n, 2), "val": np.arange(1, n, 4), "test": np.arange(3, n, 4)}
    return write_store_from_arrays(tmp_path / "ids.zarr", feats, np.arange(n) % 7, splits, task="multiclass",
                                   num_classes=7, rows_per_chunk=rpc)


def _visited(batches):
    out = []
    for feats, labels in batches:
        rows = feats["a_1"][:, 0, 0].astype(np.int64)
        np.testing.assert_array_equal(labels, rows % 7)  # labels travel with their rows
        out.append(rows)
    return np.concatenate(out)


@pytest.mark.parametrize("kind", ["bank", "stream"])
def test_readers_visit_each_row_once_and_repeat_for_seed(tmp_path, kind):
    s = _row_ids_store(tmp_path)
    reader = s.bank("train") if kind == "bank" else s.stream("train", window_chunks=3)
    first = _visited(reader.batches(48, seed=5, epoch=0))
    assert sorted(first.tolist()) == list(range(0, 1000, 2))
    np.testing.assert_array_equal(first, _visited(reader.batches(48, seed=5, epoch=0)))
    assert not np.array_equal(first, _visited(reader.batches(48, seed=5, epoch=1)))
    assert not np.array_equal(first, _visited(reader.batches(48, seed=6, epoch=0)))
    sizes = [b[1].shape[0] for b in reader.batches(48, seed=5)]
    assert sizes[:-1] == [48] * (len(sizes) - 1) and sum(sizes) == 500
    assert sum(b[1].shape[0] for b in reader.batches(48, seed=5, drop_last=True)) == 480


def test_stream_mixes_rows_across_chunks(tmp_path):
    s = _row_ids_store(tmp_path)
    feats, _ = next(iter(s.stream("train", window_chunks=4).batches(64, seed=0)))
    chunks = np.unique(feats["a_1"][:, 0, 0].astype(int) // 64)
    assert 2 <= chunks.size <= 4


def test_reader_picks_bank_or_stream_by_budget(tmp_path):
    s = _row_ids_store(tmp_path)
    assert s.estimate_bytes("train") == 500 * 2 * 2 * 4
    assert isinstance(s.reader("train", memory_budget_bytes=10**6), stores.FeatureBank)
    assert isinstance(s.reader("train", memory_budget_bytes=100), stores.StreamingReader)
    with pytest.raises(StoreError, match="has no node\\(s\\) b_9"):
        s.bank("train", ["b_9"])
    with pytest.raises(StoreError, match="has no split 'dev'"):
        s.bank("dev")


def test_cli_info_verify_and_errors(tmp_path, rng):
    _store(tmp_path, rng)
    path = str(tmp_path / "s.zarr")
    runner = CliRunner()
    res = runner.invoke(cli, ["store", "info", path])
    assert res.exit_code == 0 and "multiclass, 5 classes, 230 samples" in res.output
    assert "video_1" in res.output and "compression" in res.output and "train 150" in res.output
    info = json.loads(runner.invoke(cli, ["store", "info", "--json", path]).output)
    assert info["chunks_complete"] == [8, 8] and info["bytes_on_disk"] > 0
    res = runner.invoke(cli, ["store", "verify", path])
    assert res.exit_code == 0 and res.output.strip().endswith("ok")
    _break(tmp_path / "s.zarr", "overlap")
    res = runner.invoke(cli, ["store", "verify", path])
    assert res.exit_code == 1 and "splits/val overlaps splits/train" in res.output
    res = runner.invoke(cli, ["store", "info", path])  # lists the problem, and says so by its exit status
    assert res.exit_code == 1 and "problem   " in res.output and "overlaps" in res.output, res.output
    res = runner.invoke(cli, ["store", "info", str(tmp_path / "missing.zarr")])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and "does not exist" in res.output


def test_cli_version_and_help():
    runner = CliRunner()
    assert runner.invoke(cli, ["--version"]).output.startswith("bmnas, version")
    assert "store" in runner.invoke(cli, ["--help"]).output
