"""A float16 store never holds an overflow: a user's module whose tap exceeds float16's range is refused
under --dtype float16 before anything non-finite is written, stored in float32 under the default
--dtype auto (the other nodes stay float16), and a backbone that emits NaN is refused naming the samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from extract.dtypes import choose_dtype, nonfinite_rows, unstorable
from pipeline.cli import cli
from stores import open_store, verify_store

LOUD_NET = """
import torch
import torch.nn as nn

class Scale(nn.Module):
    def __init__(self, factor):
        super().__init__()
        self.factor = factor
    def forward(self, x):
        return x * self.factor

class LoudNet(nn.Module):
    '''A conv layer, then a layer that scales it by 1e6 (beyond float16's 65,504), then a quiet head.
    A sample whose first value is above 100 makes `poison` emit NaN (a broken backbone).'''
    def __init__(self, channels=3):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv1d(channels, 8, 5, padding=2), nn.Tanh())
        self.loud = Scale(1e6)
        self.poison = nn.Identity()
        self.head = nn.Sequential(nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(8, 4))

    def forward(self, x):
        h = self.conv(x)
        self.loud(h)
        self.poison(torch.where(x[:, :1, :1] > 100, torch.full_like(h, float("nan")), h))
        return self.head(h)

def build():
    return LoudNet()
"""


def _manifest(root: Path, n: int = 24, poisoned: tuple[int, ...] = ()) -> Path:
    rng = np.random.default_rng(0)
    (root / "x").mkdir(parents=True)
    lines = ["id,split,label,array_accel"]
    for i in range(n):
        x = rng.normal(size=(3, 32)).astype(np.float32)
        if i in poisoned:
            x[0, 0] = 1000.0
        np.save(root / "x" / f"{i}.npy", x)
        split = "test" if i >= n - 6 else ("val" if i >= n - 12 else "train")
        lines.append(f"s{i},{split},{i % 2},x/{i}.npy")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root / "manifest.csv"


@pytest.fixture()
def loudnet(tmp_path, monkeypatch) -> Path:
    (tmp_path / "loudnet.py").write_text(LOUD_NET)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    return tmp_path


def _extract(manifest: Path, out: Path, taps: str, *extra: str):
    return CliRunner().invoke(cli, ["extract", str(manifest), "--out", str(out), "--backbone",
                                    "array_accel=loudnet:build", "--taps", f"array_accel={taps}",
                                    "--rows-per-chunk", "8", "--no-dask", "--device", "cpu", "--quiet", *extra])


def test_float16_overflow_is_refused_naming_node_tap_peak_and_samples(loudnet):
    manifest = _manifest(loudnet / "data")
    out = loudnet / "s.zarr"
    r = _extract(manifest, out, "conv,loud", "--dtype", "float16")
    assert r.exit_code == 2, r.output
    line = r.output.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in r.output
    assert "node array_accel_2 (tap loud of" in line and "overflow float16" in line
    assert "--dtype float32" in line and "s0, s1" in line and "values up to " in line and "e+05" in line  # tanh * 1e6
    assert "Nothing non-finite was written" in line
    features = zarr.open_group(str(out), mode="r")
    assert not features["completion"][:].any()  # no completion record covers anything
    assert not (out / "features" / "array_accel_2" / "c").exists()  # no chunk file of the loud node
    # the fix, rerun on the same --out: the store held no complete chunk, so it is replaced
    r = _extract(manifest, out, "conv,loud", "--dtype", "float32")
    assert r.exit_code == 0, r.output
    assert verify_store(out) == [] and open_store(out).array("array_accel_2").dtype == np.float32


def test_auto_stores_the_loud_node_in_float32_and_the_others_in_float16(loudnet):
    manifest = _manifest(loudnet / "data")
    out = loudnet / "s.zarr"
    r = _extract(manifest, out, "conv,loud,head")
    assert r.exit_code == 0, r.output
    assert verify_store(out) == []
    store = open_store(out)
    dtypes = {n: store.array(n).dtype for n in store.nodes}
    assert dtypes == {"array_accel_1": np.float16, "array_accel_2": np.float32, "array_accel_3": np.float16}
    loud = np.asarray(store.array("array_accel_2")[:])
    assert np.isfinite(loud).all() and np.abs(loud).max() > 65504
    assert store.node_attrs("array_accel_2")["probe_peak"] > 65504
    summary = {ln.split()[0]: ln.split()[-1] for ln in r.output.splitlines() if ln.startswith("  array_accel")}
    assert summary == {"array_accel_1": "float16", "array_accel_2": "float32", "array_accel_3": "float16"}


def test_a_backbone_emitting_nan_is_refused_naming_the_samples(loudnet):
    manifest = _manifest(loudnet / "data", poisoned=(10, 13))
    out = loudnet / "s.zarr"
    r = _extract(manifest, out, "conv,poison", "--on-error", "skip")  # not a read error: never skipped
    assert r.exit_code == 2, r.output
    assert "node array_accel_2 (tap poison of" in r.output and "produced NaN/Inf for sample(s) s10, s13" in r.output
    assert "1/3 chunks are complete and kept" in r.output
    completion = zarr.open_group(str(out), mode="r")["completion"][:]
    assert completion.tolist() == [1, 0, 0]
    poison = np.asarray(zarr.open_group(str(out), mode="r")["features/array_accel_2"][8:16])
    assert np.isnan(poison).all()  # the refused chunk was never written: its rows are the fill value


def test_auto_rule_and_cast_check():
    assert choose_dtype("auto", 100.0) == "float16" and choose_dtype("auto", 65504 / 8) == "float32"
    assert choose_dtype("auto", float("inf")) == "float32" and choose_dtype("float16", 1e9) == "float16"
    values = np.array([[1.0, 2.0], [7e4, 1.0], [np.nan, 0.0]], dtype=np.float32)
    assert nonfinite_rows(values, "float16").tolist() == [False, True, True]
    assert nonfinite_rows(values, "float32").tolist() == [False, False, True]
    rec = unstorable("a_1", "t", values[:2], "float16", ["x", "y"])
    assert rec == {"node": "a_1", "tap": "t", "dtype": "float16", "peak": 7e4, "produced": False, "ids": ["y"]}
    assert unstorable("a_1", "t", values[:2], "float32", ["x", "y"]) is None
