"""A run is bound to the data it was made from: a store re-extracted from other raw data under the same
path is refused by `search --resume` and `evaluate` (nothing overwritten), a genotype found on a store
whose `skeleton_1` is another layer is refused by `train`, and `--accept-changed-store` goes on and is
recorded. Real extraction, real search and training runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from extract.synth import generate
from pipeline.cli import cli
from stores import open_store
from stores.identity import store_identity

SEARCH = ["--cells", "1", "--steps", "1", "--channels", "8", "--length", "4", "--multiplier", "1", "--epochs", "1",
          "--batch-size", "6", "--device", "cpu"]


def _ok(*args) -> str:
    r = CliRunner().invoke(cli, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r.output


def _refused(*args) -> str:
    r = CliRunner().invoke(cli, [str(a) for a in args])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    return r.output


def _extract(raw: Path, out: Path, taps: str, *extra) -> None:
    _ok("extract", raw, "--out", out, "--backbone", "skeleton=hcn", "--setting", "tiny", "--taps",
        f"skeleton={taps}", "--rows-per-chunk", "8", "--no-dask", "--device", "cpu", "--quiet", *extra)


@pytest.fixture(scope="module")
def raws(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("raw")
    generate("ntu-like", root / "a", samples=32, classes=4, seed=3)
    generate("ntu-like", root / "b", samples=32, classes=4, seed=7)
    (root / "fast.yaml").write_text("score-min-steps: 5\nplots: false\n")
    SEARCH.extend(["--config", str(root / "fast.yaml")])
    return root / "a", root / "b"


def test_a_re_extracted_store_is_refused_by_resume_and_evaluate(raws, tmp_path):
    a, b = raws
    store = tmp_path / "s.zarr"
    _extract(a, store, "conv5,conv6,fc7")
    before = store_identity(open_store(store))
    _ok("search", "--store", store, "--out", tmp_path / "search", *SEARCH)
    genotype = tmp_path / "search" / "genotype.json"
    assert set(json.loads(genotype.read_text())["provenance"]) <= {"skeleton_1", "skeleton_2", "skeleton_3"}
    _ok("train", "--store", store, "--genotype", genotype, "--out", tmp_path / "train", "--epochs", "1",
        "--batch-size", "6", "--device", "cpu")
    record = json.loads((tmp_path / "train" / "run.json").read_text())
    assert record["store"]["fingerprint"] == before["fingerprint"]
    _ok("evaluate", tmp_path / "train")  # the same store: evaluates
    metrics = (tmp_path / "train" / "metrics_test.json").read_bytes()
    _extract(b, store, "conv5,conv6,fc7", "--overwrite")  # other raw data under the same path
    after = store_identity(open_store(store))
    assert after["parts"]["nodes"] == before["parts"]["nodes"]
    assert all(after["parts"][p] != before["parts"][p] for p in ("samples", "content"))
    out = _refused("search", "--resume", tmp_path / "search")
    assert "is not the store" in out and "samples" in out and "content" in out and "--accept-changed-store" in out
    out = _refused("evaluate", tmp_path / "train")
    assert "is not the store" in out
    assert (tmp_path / "train" / "metrics_test.json").read_bytes() == metrics  # nothing overwritten
    _ok("evaluate", tmp_path / "train", "--accept-changed-store")
    accepted = json.loads((tmp_path / "train" / "run.json").read_text())["accepted_store_changes"]
    assert len(accepted) == 1 and "samples" in accepted[0]["changed"]


def test_a_genotype_of_a_store_with_other_taps_is_refused_by_train(raws, tmp_path):
    a, _ = raws
    few, full = tmp_path / "few.zarr", tmp_path / "full.zarr"
    _extract(a, few, "conv6,fc7")  # skeleton_1 is conv6 here
    _extract(a, full, "conv5,conv6,fc7")  # and conv5 here
    _ok("search", "--store", few, "--out", tmp_path / "search", *SEARCH)
    genotype = tmp_path / "search" / "genotype.json"
    args = ["train", "--store", full, "--genotype", genotype, "--epochs", "1", "--batch-size", "6", "--device", "cpu"]
    reads = set(json.loads(genotype.read_text())["provenance"])
    out = _refused(*args, "--out", tmp_path / "t")
    node = sorted(reads)[0]
    assert f"node {node} was" in out and "layer differ" in out and not (tmp_path / "t").exists()
    _ok(*args, "--out", tmp_path / "t2", "--accept-changed-store")
