"""`bmnas train` / `bmnas evaluate` on small real stores: round trip, protocols, resume, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from fusion_search.errors import SearchError
from fusion_search.genotype import Genotype
from pipeline.cli import cli
from stores import open_store
from pipeline.evaluate import evaluate_run
from fusion_search.training.rundir import BEST, LAST
from pipeline.train import resume_training, train_on_cache
from _train_data import NODES, searched_genotype, small_store


@pytest.fixture
def setup(tmp_path):
    small_store(tmp_path / "s.zarr")
    searched_genotype().save(tmp_path / "g.json")
    return tmp_path


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def _best_epoch(hist) -> int:
    """The best val accuracy; among epochs tied on it (to float rounding), the lowest val loss."""
    return max(hist, key=lambda h: (round(h["val"]["accuracy"], 9), -h["val"]["loss"]))["epoch"]


def test_a_saturated_val_metric_keeps_the_epoch_of_lowest_val_loss(setup):
    """Small val splits reach accuracy 1.0 within a few epochs; the kept checkpoint is the tied epoch
    with the lowest val loss, not the first (an undertrained network)."""
    d = setup
    summary = train_on_cache(str(d / "s.zarr"), d / "g.json", d / "run", epochs=15, batch_size=16, device="cpu",
                             lr=1e-2)
    hist = _lines(d / "run" / "metrics.jsonl")
    top = max(round(h["val"]["accuracy"], 9) for h in hist)
    tied = [h for h in hist if round(h["val"]["accuracy"], 9) == top]
    assert len(tied) >= 2  # the case this guards: several epochs at the best val accuracy
    assert summary["best_epoch"] == _best_epoch(hist) != tied[0]["epoch"]
    assert torch.load(d / "run" / BEST, weights_only=True)["epoch"] == summary["best_epoch"]


def test_improves_orders_metric_then_loss_and_never_takes_nan():
    from fusion_search.training.rundir import improves

    assert improves(0.9, 5.0, 0.8, 0.1) and not improves(0.8, 0.01, 0.9, 5.0)
    assert improves(0.9, 0.2, 0.9, 0.3) and not improves(0.9, 0.3, 0.9, 0.2)
    assert improves(0.1 + 0.2, 0.2, 0.3, 0.3)  # the same count summed in another order is a tie
    assert not improves(float("nan"), 0.1, 0.5, 1.0) and not improves(0.5, float("nan"), 0.5, 1.0)
    assert improves(0.5, 1.0, None, None) and improves(0.5, 1.0, float("nan"), None)


def test_train_evaluate_round_trip(setup):
    d = setup
    summary = train_on_cache(str(d / "s.zarr"), d / "g.json", d / "run", epochs=4, batch_size=16, device="cpu",
                             lr=5e-3)
    run = d / "run"
    hist = _lines(run / "metrics.jsonl")
    assert [h["epoch"] for h in hist] == [1, 2, 3, 4]
    best = _best_epoch(hist)
    assert summary["best_epoch"] == best and torch.load(run / BEST, weights_only=True)["epoch"] == best
    test = json.loads((run / "metrics_test.json").read_text())
    assert test == summary["test"]
    assert test["num_samples"] == 20 and test["num_parameters"] == summary["num_parameters"] > 0
    assert test["checkpoint_epoch"] == best and test["latency_ms_per_sample"] > 0
    assert test["accuracy"] > 0.6  # planted pair read by the genotype: well above chance (0.25)
    # evaluating the run again gives the same numbers (from the kept checkpoint)
    again = evaluate_run(run, "test")
    assert again["accuracy"] == test["accuracy"] and again["loss"] == pytest.approx(test["loss"])
    val = evaluate_run(run, "val")
    assert val["accuracy"] == pytest.approx(hist[best - 1]["val"]["accuracy"])
    first = (run / "predictions_test.csv").read_text().splitlines()[1].split(",")
    assert first[1] == str(open_store(d / "s.zarr").split_rows("test")[0])  # no sample_ids: the store row
    assert Genotype.load(run / "genotype.json").key() == searched_genotype().key()


def test_train_plus_val_fixed_epochs_and_multilabel(tmp_path):
    small_store(tmp_path / "m.zarr", task="multilabel")
    searched_genotype("multilabel", 3).save(tmp_path / "g.json")
    with pytest.raises(SearchError, match="give --epochs"):
        train_on_cache(str(tmp_path / "m.zarr"), tmp_path / "g.json", tmp_path / "r0", train_on="train+val")
    s = train_on_cache(str(tmp_path / "m.zarr"), tmp_path / "g.json", tmp_path / "r", epochs=2, batch_size=16,
                       device="cpu", train_on="train+val")
    assert s["best_epoch"] == 2 and torch.load(tmp_path / "r" / BEST, weights_only=True)["epoch"] == 2
    hist = _lines(tmp_path / "r" / "metrics.jsonl")
    assert all("val" not in h for h in hist)  # no selection on val: it is training data here
    m = json.loads((tmp_path / "r" / "metrics_test.json").read_text())
    assert {"f1_weighted", "f1_micro", "f1_macro", "f1_samples", "num_samples", "num_parameters"} <= set(m)
    assert set(json.loads((tmp_path / "r" / "per_class_f1_test.json").read_text())) == {"0", "1", "2"}


def test_resume_continues_exactly(setup):
    d = setup
    args = (str(d / "s.zarr"), d / "g.json")
    train_on_cache(*args, d / "full", epochs=3, batch_size=16, device="cpu", evaluate_test=False)
    # a run "killed" after epoch 2: the same run with 2 epochs, then its config set back to 3
    # (nothing but the loop bound depends on the epoch count), plus a metrics line of the
    # unfinished epoch 3 written before the kill
    train_on_cache(*args, d / "cut", epochs=2, batch_size=16, device="cpu", evaluate_test=False)
    cfg = yaml.safe_load((d / "cut" / "config.yaml").read_text())
    cfg["epochs"] = 3
    (d / "cut" / "config.yaml").write_text(yaml.safe_dump(cfg))
    with (d / "cut" / "metrics.jsonl").open("a") as fh:
        fh.write(json.dumps({"epoch": 3, "train_loss": -1.0}) + "\n")
    resume_training(d / "cut", evaluate_test=False)
    a = torch.load(d / "full" / LAST, weights_only=True)["model"]
    b = torch.load(d / "cut" / LAST, weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _lines(d / "full" / "metrics.jsonl")[2]["train_loss"] == _lines(d / "cut" / "metrics.jsonl")[2]["train_loss"]
    assert len(_lines(d / "cut" / "metrics.jsonl")) == 3


def test_cli_train_evaluate_and_bad_input(setup):
    d = setup
    runner = CliRunner()
    res = runner.invoke(cli, ["train", "--store", str(d / "s.zarr"), "--genotype", str(d / "g.json"), "--out",
                              str(d / "run"), "--epochs", "1", "--batch-size", "32", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "test: " in res.output and (d / "run" / "metrics_test.json").is_file()
    res = runner.invoke(cli, ["evaluate", str(d / "run"), "--split", "val"])
    assert res.exit_code == 0 and (d / "run" / "metrics_val.json").is_file()

    def fails(argv, needle):
        r = runner.invoke(cli, argv)
        assert r.exit_code == 2, r.output
        assert needle in r.output and "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1

    base = ["train", "--store", str(d / "s.zarr"), "--out", str(d / "x")]
    fails(base + ["--genotype", str(d / "g.json"), "--train-on", "train+val"], "give --epochs")
    other = searched_genotype().to_dict()
    other["nodes"] = NODES + ["depth_1"]
    other["cells"][1]["inputs"] = ["cell_1", "depth_1"]  # a node the store lacks
    Genotype.from_dict(other).save(d / "absent.json")
    fails(base + ["--genotype", str(d / "absent.json")], "depth_1")
    searched_genotype("multilabel", 4).save(d / "task.json")
    fails(base + ["--genotype", str(d / "task.json")], "multilabel")
    fails(["train", "--store", str(d / "s.zarr"), "--genotype", str(d / "g.json"), "--out", str(d / "run")],
          "not empty")
    fails(["evaluate", str(d)], "config.yaml")
    fails(["evaluate", str(d / "run"), "--split", "holdout"], "holdout")


def test_train_plus_val_streams_when_it_does_not_fit(setup):
    from pipeline.runs import open_splits

    store = open_store(setup / "s.zarr")
    nodes = ["a_2", "b_3"]
    banked = open_splits(store, ["train", "val"], nodes, torch.device("cpu"))
    streamed = open_splits(store, ["train", "val"], nodes, torch.device("cpu"), memory_budget_bytes=0)
    assert banked.in_ram and not streamed.in_ram and banked.num_rows == streamed.num_rows == 140
    want = np.sort(np.concatenate([store.labels("train"), store.labels("val")]))
    for data in (banked, streamed):
        for epoch in (0, 1):  # every train and val row exactly once per epoch, in a seeded order
            rows = [(f["a_2"].numpy(), y.numpy()) for f, y in data.batches(32, seed=3, epoch=epoch)]
            feats = np.concatenate([r[0] for r in rows])
            assert np.array_equal(np.sort(np.concatenate([r[1] for r in rows])), want)
            assert len({x.tobytes() for x in feats}) == 140
    a = [y.numpy() for _, y in streamed.batches(32, seed=3, epoch=1)]
    b = [y.numpy() for _, y in streamed.batches(32, seed=3, epoch=1)]
    assert all(np.array_equal(x, z) for x, z in zip(a, b))
