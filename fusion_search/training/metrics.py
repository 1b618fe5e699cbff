"""Task losses and metrics: accuracy/top-k for multiclass; F1 at 0.5 (weighted, micro, macro, samples) for multilabel.

Weighted F1 is the MM-IMDB number the paper reports (class-support-weighted mean of per-class F1).
Classes or samples with no true and no predicted positive count as F1 = 0, as scikit-learn's
default (`zero_division=0`) does, so figures are comparable with published ones.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

PRIMARY = {"multiclass": "accuracy", "multilabel": "f1_weighted"}


def loss_fn(task: str, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy (multiclass, int labels) or BCE with logits (multilabel, multi-hot labels)."""
    if task == "multiclass":
        return F.cross_entropy(logits, labels)
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(logits, axis=1) == labels)) if len(labels) else 0.0


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of rows whose true class is among the k largest logits."""
    k = min(k, logits.shape[1])
    top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    return float(np.mean((top == labels[:, None]).any(axis=1))) if len(labels) else 0.0


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    denom = 2 * tp + fp + fn
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)


def f1_scores(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Weighted, micro, macro and samples F1 of binary (N, K) predictions against multi-hot truth."""
    pred = pred.astype(bool)
    truth = truth.astype(bool)
    tp = (pred & truth).sum(0).astype(np.float64)
    fp = (pred & ~truth).sum(0).astype(np.float64)
    fn = (~pred & truth).sum(0).astype(np.float64)
    per_class = _f1(tp, fp, fn)
    support = truth.sum(0).astype(np.float64)
    stp = (pred & truth).sum(1).astype(np.float64)
    sfp = (pred & ~truth).sum(1).astype(np.float64)
    sfn = (~pred & truth).sum(1).astype(np.float64)
    return {
        "f1_weighted": float((per_class * support).sum() / support.sum()) if support.sum() else 0.0,
        "f1_micro": float(_f1(tp.sum(), fp.sum(), fn.sum())),
        "f1_macro": float(per_class.mean()),
        "f1_samples": float(_f1(stp, sfp, sfn).mean()) if len(pred) else 0.0,
    }


def compute_metrics(task: str, logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """All metrics of a task from stacked logits and labels (multilabel thresholds sigmoid at 0.5)."""
    if task == "multiclass":
        out = {"accuracy": accuracy(logits, labels)}
        if logits.shape[1] > 5:
            out["top5"] = topk_accuracy(logits, labels, 5)
        return out
    return f1_scores(logits > 0.0, labels)  # sigmoid(z) > 0.5  <=>  z > 0


def split_metrics(task: str, logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The mean loss and every metric of a task over a whole split's stacked logits and labels."""
    if len(labels) == 0:
        return {"loss": float("nan")}
    target = torch.from_numpy(labels).long() if task == "multiclass" else torch.from_numpy(labels.astype(np.float32))
    out = {"loss": float(loss_fn(task, torch.from_numpy(logits), target))}
    out.update(compute_metrics(task, logits, labels if task == "multiclass" else labels > 0.5))
    return out


# --- evaluation extras (for `bmnas evaluate`) ---

def per_class_f1(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """F1 of each column of binary (N, K) predictions against multi-hot truth (0 where undefined)."""
    pred = pred.astype(bool)
    truth = truth.astype(bool)
    tp = (pred & truth).sum(0).astype(np.float64)
    return _f1(tp, (pred & ~truth).sum(0).astype(np.float64), (~pred & truth).sum(0).astype(np.float64))


def confusion_matrix(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K) counts, rows = true class, columns = predicted class."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (labels.astype(np.int64), pred.astype(np.int64)), 1)
    return cm


def multiclass_f1_macro(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    """Mean one-vs-rest F1 over the classes that occur in truth or prediction (scikit-learn's macro)."""
    cm = confusion_matrix(pred, labels, num_classes).astype(np.float64)
    tp = np.diag(cm)
    f1 = _f1(tp, cm.sum(0) - tp, cm.sum(1) - tp)
    present = (cm.sum(0) + cm.sum(1)) > 0
    return float(f1[present].mean()) if present.any() else 0.0
