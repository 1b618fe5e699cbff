"""Metrics against hand-computed values and scikit-learn."""

import numpy as np
import pytest
import torch

from fusion_search.training.metrics import accuracy, compute_metrics, f1_scores, loss_fn, topk_accuracy


def test_accuracy_and_topk_by_hand():
    logits = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.3, 0.3, 0.4]])
    labels = np.array([1, 2, 0])
    assert accuracy(logits, labels) == pytest.approx(1 / 3)
    assert topk_accuracy(logits, labels, 2) == pytest.approx(2 / 3)   # row 2: classes 2, then 0 or 1
    assert topk_accuracy(logits, labels, 3) == 1.0


def test_f1_by_hand():
    truth = np.array([[1, 0], [1, 1], [0, 1]])
    pred = np.array([[1, 0], [0, 1], [1, 1]])
    # class 0: tp 1 fp 1 fn 1 -> 0.5; class 1: tp 2 fp 0 fn 0 -> 1.0; supports 2, 2
    f = f1_scores(pred, truth)
    assert f["f1_macro"] == pytest.approx(0.75)
    assert f["f1_weighted"] == pytest.approx(0.75)
    assert f["f1_micro"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    assert f["f1_samples"] == pytest.approx((1.0 + 2 / 3 + 2 / 3) / 3)


def test_f1_matches_scikit_learn():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    truth = (rng.random((200, 7)) < np.linspace(0.05, 0.6, 7)).astype(np.uint8)
    truth[:, 3] = 0  # a class without positives
    pred = rng.random((200, 7)) < 0.3
    mine = f1_scores(pred, truth)
    for avg in ("weighted", "micro", "macro", "samples"):
        assert mine[f"f1_{avg}"] == pytest.approx(sk.f1_score(truth, pred, average=avg, zero_division=0), abs=1e-12)


def test_compute_metrics_thresholds_logits_at_half_probability():
    logits = np.array([[2.0, -1.0], [-0.1, 0.1]])
    out = compute_metrics("multilabel", logits, np.array([[1, 0], [0, 1]]))
    assert out["f1_micro"] == 1.0
    mc = compute_metrics("multiclass", np.eye(8)[[0, 1, 2]], np.array([0, 1, 3]))
    assert mc["accuracy"] == pytest.approx(2 / 3) and "top5" in mc


def test_losses():
    z = torch.tensor([[2.0, 0.0]])
    assert loss_fn("multiclass", z, torch.tensor([0])) == pytest.approx(float(torch.log1p(torch.exp(torch.tensor(-2.0)))))
    assert loss_fn("multilabel", z, torch.tensor([[1, 0]], dtype=torch.uint8)) > 0
