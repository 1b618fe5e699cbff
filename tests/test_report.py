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


def test_report_plots_f1_per_class_of_a_multilabel_run(tmp_path):
    from _train_data import searched_genotype

    small_store(tmp_path / "m.zarr", task="multilabel", n=96, C=4)
    searched_genotype("multilabel", k=3).save(tmp_path / "g.json")
    train_on_cache(str(tmp_path / "m.zarr"), tmp_path / "g.json", tmp_path / "run", epochs=2, batch_size=24,
                   device="cpu")
    out = CliRunner().invoke(cli, ["report", str(tmp_path / "run")])
    assert out.exit_code == 0, out.output
    page = (tmp_path / "run" / "report.md").read_text()
    assert "## F1 per class (test)" in page and "![per-class F1](report/per_class_f1_test.png)" in page
    assert (tmp_path / "run" / "report" / "per_class_f1_test.png").stat().st_size > 1000
    assert "confusion_test.png" not in page  # multilabel: no confusion matrix
