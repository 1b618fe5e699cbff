"""The demo pipeline end to end at a reduced size: real files, real dask cluster, real runs."""

from __future__ import annotations

import json

import pytest

from pipeline.demo import DemoConfig, run_demo


@pytest.mark.slow
def test_demo_runs_end_to_end_and_reuses_its_cache(tmp_path, capsys):
    cfg = DemoConfig.quick(out=str(tmp_path / "demo"))
    result = run_demo(cfg)
    out = capsys.readouterr().out
    methods = [r["method"] for r in result["rows"]]
    assert methods[0].startswith("unimodal video") and methods[1].startswith("unimodal skeleton")
    assert "BM-NAS found network" in methods and any(m.startswith("late fusion") for m in methods)
    for r in result["rows"]:
        assert 0.0 <= r["accuracy"] <= 1.0 and r["parameters"] > 0
    root = tmp_path / "demo"
    assert (root / "features.zarr").is_dir() and (root / "search" / "genotype.json").is_file()
    metrics = json.loads((root / "train" / "found" / "seed_0" / "metrics_test.json").read_text())
    assert metrics["num_samples"] > 0 and "accuracy" in metrics
    assert "| BM-NAS found network |" in (root / "comparison.md").read_text()
    assert "| method | test accuracy | seeds | parameters |" in out and "cache hit" not in out
    kept = json.loads((root / "search" / "seeds.json").read_text())["kept_seed"]  # multi-start over 2 seeds
    assert kept in (0, 1) and (root / "search" / "seed_1" / "genotype.json").is_file()
    search = [json.loads(x) for x in (root / "search" / f"seed_{kept}" / "metrics.jsonl").read_text().splitlines()]
    assert search[0]["genotype_score"] is None and search[1]["genotype_score"] is not None  # arch warm-up

    again = run_demo(cfg)  # every stage is reused
    out = capsys.readouterr().out
    assert out.count("cache hit") == 6
    assert again["rows"] == result["rows"]
