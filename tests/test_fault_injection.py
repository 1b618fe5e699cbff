"""Faults planted in real files on a tiny pipeline, each refused in one line (exit 2, no traceback) or
listed with exit 1, and nothing a user owns lost. The cases of other modules: `--overwrite` on a
user's folder (test_user_files), a re-extracted store and a genotype of other taps
(test_store_identity), a video cut anywhere (test_sources_video), a float16 overflow
(test_store_dtypes), a run another process holds (test_run, test_locks, test_ablate)."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from _search_data import planted_store
from extract.synth import generate
from pipeline.cli import cli
from stores.files import write_json_atomic

SEARCH = ["--cells", "1", "--steps", "1", "--channels", "8", "--length", "4", "--multiplier", "1", "--epochs", "1",
          "--batch-size", "32", "--device", "cpu"]


def _one_line(argv: list, code: int = 2) -> str:
    r = CliRunner().invoke(cli, [str(a) for a in argv])
    assert r.exit_code == code and "Traceback" not in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1, r.output
    return r.output


def _cut_metadata(store: Path, node: str) -> Path:
    meta = store / "features" / node / "zarr.json"
    meta.write_bytes(meta.read_bytes()[: meta.stat().st_size // 2])
    return meta


def test_an_array_metadata_file_cut_in_half(tmp_path):
    store = tmp_path / "s.zarr"
    planted_store(store, "joint", n=160)
    meta = _cut_metadata(store, "a_2")
    for argv, code in ((["store", "verify", store], 1), (["store", "info", store], 2),
                       (["search", "--store", store, "--out", tmp_path / "run", *SEARCH], 2)):
        out = _one_line(argv, code)
        assert f"{meta}: not readable JSON metadata" in out, out
    assert not (tmp_path / "run").exists()


def test_rerunning_extract_on_a_damaged_store_does_not_finish_it(tmp_path):
    generate("ntu-like", tmp_path / "raw", samples=8, classes=4, seed=3)
    argv = ["extract", tmp_path / "raw", "--out", tmp_path / "s.zarr", "--backbone", "skeleton=hcn", "--setting",
            "tiny", "--taps", "skeleton=conv5,fc7", "--rows-per-chunk", "4", "--no-dask", "--quiet"]
    assert CliRunner().invoke(cli, [str(a) for a in argv]).exit_code == 0
    meta = _cut_metadata(tmp_path / "s.zarr", "skeleton_2")
    out = _one_line(argv)
    assert str(meta) in out and "--overwrite" in out
    assert CliRunner().invoke(cli, [str(a) for a in argv + ["--overwrite"]]).exit_code == 0  # the fix


def test_a_search_refused_for_nan_leaves_no_run_directory(tmp_path):
    store = tmp_path / "s.zarr"
    planted_store(store, "joint", n=160)
    group = zarr.open_group(str(store), mode="r+")
    row = int(group["splits/val"][0])
    arr = group["features/a_1"]
    values = arr[row]
    values[0, 0] = np.nan
    arr[row] = values
    out = _one_line(["search", "--store", store, "--out", tmp_path / "run", *SEARCH])
    assert "NaN" in out
    assert not (tmp_path / "run").exists()
    (tmp_path / "mine").mkdir()  # an empty folder the user made stays, empty
    _one_line(["search", "--store", store, "--out", tmp_path / "mine", *SEARCH])
    assert (tmp_path / "mine").is_dir() and not any((tmp_path / "mine").iterdir())


def test_a_full_disk_names_the_file(tmp_path, monkeypatch):
    target = tmp_path / "metrics_test.json"
    write_json_atomic(target, {"accuracy": 0.5})
    monkeypatch.setattr("stores.files.uuid.uuid4", lambda: uuid.UUID(int=0))
    target.with_name(f"{target.name}.{'0' * 12}.partial").symlink_to("/dev/full")
    with pytest.raises(OSError) as info:
        write_json_atomic(target, {"accuracy": 0.9})
    assert info.value.filename == str(target) and "space" in info.value.strerror.lower()
    assert target.read_text().strip() == '{\n  "accuracy": 0.5\n}'  # the previous file is whole
