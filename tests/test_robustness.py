"""Missing and noisy modalities: the mask (`fusion_search.missing`), `--modality-dropout` in train,
finetune and search, `bmnas evaluate --robustness`, and the robustness columns of ablate and report.

The planted store: label = 2·bit(a_2) + bit(b_3), so one modality alone can reach at most 50 %
accuracy and both together 100 %. Its test split is 500 rows, so "at most 50 %" holds to a few
points. The network: LinearGLU(a_2, b_3), a multiplicative fusion, which without modality dropout
loses b with a (its zero placeholder zeroes the product) and with it learns a placeholder for a.
"""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from click.testing import CliRunner

from _search_data import planted_store
from _train_data import glu_genotype, searched_genotype
from fusion_search.missing import ModalityDropout, apply_missing, mask_key
from pipeline.cli import cli


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    d = tmp_path_factory.mktemp("robust")
    planted_store(d / "s.zarr", "joint", n=4000, signal=2.0, seed=0)
    glu_genotype().save(d / "g.json")
    runs = {}
    for p in ("0", "0.3"):
        runs[p] = d / f"p{p}"
        r = CliRunner().invoke(cli, ["train", "--store", str(d / "s.zarr"), "--genotype", str(d / "g.json"),
                                     "--out", str(runs[p]), "--epochs", "40", "--batch-size", "64", "--device", "cpu",
                                     "--modality-dropout", p])
        assert r.exit_code == 0, r.output
        r = CliRunner().invoke(cli, ["evaluate", str(runs[p]), "--robustness"])
        assert r.exit_code == 0, r.output
    return d, runs


def test_dropout_trained_network_keeps_both_and_degrades_gracefully(planted):
    d, runs = planted
    assert yaml.safe_load((runs["0.3"] / "config.yaml").read_text())["modality_dropout"] == 0.3
    tables = {p: json.loads((run / "robustness_test.json").read_text()) for p, run in runs.items()}
    t = tables["0.3"]
    assert set(t) >= {"full", "missing", "noise"} and set(t["missing"]) == {"a", "b"}
    assert set(t["noise"]["a"]) == {"0.5", "1", "2"}  # sigma keys as given
    assert t["full"]["accuracy"] >= 0.9
    assert all(0.45 <= t["missing"][m]["accuracy"] for m in ("a", "b"))
    assert tables["0"]["full"]["accuracy"] >= 0.9 and tables["0"]["missing"]["a"]["accuracy"] <= 0.35  # without
    for table in tables.values():  # the mask removes the modality: nothing reads its bit any more
        assert all(table["missing"][m]["accuracy"] <= 0.56 for m in ("a", "b"))
        assert table["noise"]["a"]["2"]["accuracy"] <= table["noise"]["a"]["0.5"]["accuracy"] + 1e-9
    assert (runs["0.3"] / "robustness_test.png").is_file()
    metrics = json.loads((runs["0.3"] / "metrics_test.json").read_text())
    assert metrics["accuracy"] == t["full"]["accuracy"]  # "full" is the plain evaluation


def test_report_shows_the_robustness_table(planted, tmp_path):
    d, runs = planted
    r = CliRunner().invoke(cli, ["report", str(runs["0"]), str(runs["0.3"]), "--out", str(tmp_path / "cmp.md")])
    assert r.exit_code == 0, r.output
    page = (tmp_path / "cmp.md").read_text()
    assert "## Robustness (accuracy)" in page and "| no a | no b |" in page
    assert "| a missing |" in (runs["0.3"] / "report.md").read_text()


def test_robustness_refusals(planted, tmp_path):
    d, runs = planted
    base = ["train", "--store", str(d / "s.zarr"), "--out", str(tmp_path / "r"), "--epochs", "1", "--device", "cpu"]
    only_a = searched_genotype().to_dict()
    only_a["cells"] = [{"inputs": ["a_2", "a_3"], "steps": [{"op": "Sum", "inputs": [0, 1]}], "concat": [2]}]
    only_a.update(output=["cell_1"], multiplier=1)
    (tmp_path / "a.json").write_text(json.dumps(only_a))
    for extra, said in ((["--genotype", str(d / "g.json"), "--modality-dropout", "1"], "use a probability in [0, 1)"),
                        (["--genotype", str(tmp_path / "a.json"), "--modality-dropout", "0.3"],
                         "the network reads one modality (a)")):
        r = CliRunner().invoke(cli, base + extra)
        assert r.exit_code == 2 and said in r.output and len(r.output.strip().splitlines()) == 1, r.output
        assert not (tmp_path / "r").exists()
    for argv, said in (([str(runs["0"]), "--robustness", "--noise-levels", "1,x"], "--noise-levels 'x'"),
                       ([str(runs["0"]), "--noise-levels", "1"], "--noise-levels: only with --robustness")):
        r = CliRunner().invoke(cli, ["evaluate", *argv])
        assert r.exit_code == 2 and said in r.output, r.output


def test_modality_dropout_masks():
    feats = {"a_1": torch.ones(2000, 3, 4), "b_1": torch.ones(2000, 3, 4)}
    batches = [(feats, torch.zeros(2000))]
    (masked, _), = list(ModalityDropout(batches, 0.3, ["a", "b"], seed=0, epoch=0))
    a, b = masked[mask_key("a")], masked[mask_key("b")]
    assert not (a & b).any()  # never all modalities of a sample
    assert abs(float((a | b).float().mean()) - 0.3) < 0.04 and abs(float(a.float().mean()) - 0.15) < 0.03
    (again, _), = list(ModalityDropout(batches, 0.3, ["a", "b"], seed=0, epoch=0))
    assert torch.equal(again[mask_key("a")], a)  # seeded by (seed, epoch): a resume draws the same masks
    states = apply_missing({"a_1": torch.ones(2000, 5, 2), "b_1": torch.ones(2000, 5, 2)}, masked)
    assert torch.equal(states["a_1"][:, 0, 0] == 0, a) and torch.equal(states["b_1"][:, 0, 0] == 0, b)


def test_search_scores_under_modality_dropout(tmp_path):
    """A search with --modality-dropout records it, and its hypernet and candidates are scored on val
    under the masks: scores below those of the same search without it on this store."""
    planted_store(tmp_path / "s.zarr", "joint", n=320, signal=2.0)
    scores = {}
    for p in ("0", "0.5"):
        r = CliRunner().invoke(cli, ["search", "--store", str(tmp_path / "s.zarr"), "--out", str(tmp_path / p),
                                     "--epochs", "2", "--batch-size", "32", "--channels", "8", "--length", "4",
                                     "--score-seeds", "1", "--device", "cpu", "--modality-dropout", p])
        assert r.exit_code == 0, r.output
        lines = [json.loads(x) for x in (tmp_path / p / "metrics.jsonl").read_text().splitlines()]
        scores[p] = lines[-1]["val"]["accuracy"]
    assert yaml.safe_load((tmp_path / "0.5" / "config.yaml").read_text())["modality_dropout"] == 0.5
    assert scores["0.5"] < scores["0"]
