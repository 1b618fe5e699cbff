"""`bmnas report`: per-run pages (metrics, curves, genotype, arch weights) and a comparison page."""

from __future__ import annotations

import shutil

from click.testing import CliRunner

from fusion_search.config import SearchConfig
from fusion_search.search import run_search
from pipeline.cli import cli
from pipeline.train import train_on_cache
from _train_data import small_store


def test_report_on_search_and_train_runs(tmp_path):
    small_store(tmp_path / "s.zarr", n=96, C=4)
    cfg = SearchConfig(store=str(tmp_path / "s.zarr"), epochs=1, batch_size=24, channels=4, length=2,
                       score="hypernet", device="cpu")
    res = run_search(cfg, tmp_path / "search")
    train_on_cache(str(tmp_path / "s.zarr"), res.genotype_path, tmp_path / "a", epochs=2, batch_size=24, device="cpu")
    shutil.copy(res.genotype_path, tmp_path / "copy.json")  # a genotype away from its search run
    train_on_cache(str(tmp_path / "s.zarr"), tmp_path / "copy.json", tmp_path / "b", epochs=1, batch_size=24,
                   device="cpu")
    out = CliRunner().invoke(cli, ["report", str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "search"),
                                   "--out", str(tmp_path / "cmp.md")])
    assert out.exit_code == 0, out.output
    page = (tmp_path / "a" / "report.md").read_text()
    assert "## Metrics" in page and "| accuracy |" in page and "| num_parameters |" in page
    assert "![curves](report/curves.png)" in page and "![genotype](report/genotype.png)" in page
    assert "cell_1" in page and "confusion_test.png" in page
    # the trained genotype came from a search run: its α/β/γ heatmaps are on the page
    assert "## Architecture weights" in page and "report/alpha.png" in page
    for name in ("curves.png", "genotype.png", "alpha.png", "beta.png", "gamma.png"):
        assert (tmp_path / "a" / "report" / name).stat().st_size > 1000
    assert "Architecture weights" not in (tmp_path / "b" / "report.md").read_text()
    assert "## Architecture weights" in (tmp_path / "search" / "report.md").read_text()
    cmp = (tmp_path / "cmp.md").read_text()
    assert "Comparison of 3 runs" in cmp and "(a/report.md)" in cmp and "accuracy (test)" in cmp
    assert (tmp_path / "cmp.png").is_file()
    bad = CliRunner().invoke(cli, ["report", str(tmp_path)])
    assert bad.exit_code == 2 and "config.yaml" in bad.output
