"""Evaluation metrics against hand-computed cases, and the files `bmnas evaluate` writes."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from fusion_search.training.metrics import confusion_matrix, f1_scores, multiclass_f1_macro, per_class_f1
from pipeline.evaluate import ModelCost, SplitPredictions, task_metrics, write_evaluation

# multiclass: 6 samples, 4 classes (class 3 never occurs)
Y = np.array([0, 0, 1, 2, 2, 2])
P = np.array([0, 1, 1, 2, 2, 0])
# multilabel: 4 samples, 3 labels
TRUTH = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 0]], dtype=bool)
PRED = np.array([[1, 0, 0], [0, 1, 1], [1, 0, 0], [0, 0, 0]], dtype=bool)


def test_confusion_matrix_and_macro_f1_by_hand():
    cm = confusion_matrix(P, Y, 4)
    assert cm.tolist() == [[1, 1, 0, 0], [0, 1, 0, 0], [1, 0, 2, 0], [0, 0, 0, 0]]
    # class 0: tp 1, fp 1, fn 1 -> 1/2; class 1: tp 1, fp 1, fn 0 -> 2/3; class 2: tp 2, fn 1 -> 4/5
    assert multiclass_f1_macro(P, Y, 4) == pytest.approx((0.5 + 2 / 3 + 0.8) / 3)  # class 3 absent: left out
    onehot = np.eye(4, dtype=bool)
    assert per_class_f1(onehot[P], onehot[Y]) == pytest.approx([0.5, 2 / 3, 0.8, 0.0])


def test_multilabel_f1_by_hand():
    # per class: c0 tp2 -> 1; c1 tp1 fn1 -> 2/3; c2 fp1 fn1 -> 0; supports 2, 2, 1
    assert per_class_f1(PRED, TRUTH) == pytest.approx([1.0, 2 / 3, 0.0])
    f = f1_scores(PRED, TRUTH)
    assert f["f1_weighted"] == pytest.approx((2 * 1 + 2 * 2 / 3 + 0) / 5)
    assert f["f1_micro"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 2))
    assert f["f1_macro"] == pytest.approx((1 + 2 / 3) / 3)
    assert f["f1_samples"] == pytest.approx((2 / 3 + 2 / 3 + 2 / 3 + 0) / 4)  # empty row: 0 (zero_division=0)


def test_agrees_with_scikit_learn():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    y, p = rng.integers(0, 7, 200), rng.integers(0, 6, 200)
    assert multiclass_f1_macro(p, y, 7) == pytest.approx(sk.f1_score(y, p, average="macro"))
    assert confusion_matrix(p, y, 7).tolist() == sk.confusion_matrix(y, p, labels=range(7)).tolist()
    t, q = rng.integers(0, 2, (50, 5)).astype(bool), rng.integers(0, 2, (50, 5)).astype(bool)
    for avg in ("weighted", "micro", "macro", "samples"):
        assert f1_scores(q, t)[f"f1_{avg}"] == pytest.approx(sk.f1_score(t, q, average=avg, zero_division=0))


def test_task_metrics_loss_and_top5_by_hand():
    logits = np.zeros((2, 4), np.float32)
    m = task_metrics("multiclass", 4, logits, np.array([1, 3]))
    assert m["loss"] == pytest.approx(math.log(4), rel=1e-6)  # uniform logits: CE = ln K
    six = np.array([[6, 5, 4, 3, 2, 1], [6, 5, 4, 3, 2, 1]], np.float32)
    m = task_metrics("multiclass", 6, six, np.array([5, 2]))  # row 0: rank 6 (miss), row 1: rank 3 (hit)
    assert m["top5"] == 0.5 and m["accuracy"] == 0.0
    ml = task_metrics("multilabel", 3, np.where(PRED, 2.0, -2.0).astype(np.float32), TRUTH.astype(np.uint8))
    assert ml["f1_weighted"] == pytest.approx(10 / 15)
    # BCE of logit +-2: -log(sigmoid(2)) for right bits, -log(sigmoid(-2)) for wrong ones (3 of 12 bits)
    right, wrong = -math.log(1 / (1 + math.exp(-2))), -math.log(1 / (1 + math.exp(2)))
    assert ml["loss"] == pytest.approx((9 * right + 3 * wrong) / 12, rel=1e-5)


def test_write_evaluation_files(tmp_path):
    logits = np.eye(4, dtype=np.float32)[P] * 3.0
    m = write_evaluation(tmp_path, "val", SplitPredictions("multiclass", 4, logits, Y, [f"id{i}" for i in range(6)],
                                                           ["a", "b", "c", "d"]), ModelCost(123, 1.5, 0.1))
    saved = json.loads((tmp_path / "metrics_val.json").read_text())
    assert saved == m and all(not isinstance(v, (dict, list)) for v in saved.values())  # flat
    assert saved["accuracy"] == pytest.approx(4 / 6) and saved["num_samples"] == 6 and saved["num_parameters"] == 123
    rows = list(csv.DictReader((tmp_path / "predictions_val.csv").open()))
    assert [r["prediction"] for r in rows] == ["a", "b", "b", "c", "c", "a"] and rows[0]["sample_id"] == "id0"
    saved_cm = np.loadtxt(tmp_path / "confusion_val.csv", delimiter=",").astype(int)
    assert saved_cm.tolist() == confusion_matrix(P, Y, 4).tolist()
    assert (tmp_path / "confusion_val.png").stat().st_size > 1000
    assert json.loads((tmp_path / "per_class_f1_val.json").read_text())["c"] == pytest.approx(0.8)
    logits = np.where(PRED, 1.0, -1.0).astype(np.float32)
    ml = write_evaluation(tmp_path, "test", SplitPredictions("multilabel", 3, logits, TRUTH.astype(np.uint8)),
                          ModelCost(7, None, 0.0))
    assert ml["f1_weighted"] == pytest.approx(10 / 15) and "accuracy" not in ml
    rows = list(csv.DictReader((tmp_path / "predictions_test.csv").open()))
    assert rows[1]["labels"] == "1" and rows[1]["predictions"] == "1 2" and rows[3]["predictions"] == ""
    assert np.load(tmp_path / "logits_test.npy").shape == (4, 3)
