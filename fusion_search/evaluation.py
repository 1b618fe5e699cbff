"""Forward a model over a whole split without autograd, and briefly train a found network to score a genotype."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fusion_search.data import SplitData
from fusion_search.metrics import compute_metrics, loss_fn


@torch.no_grad()
def evaluate(model: nn.Module, data: SplitData, task: str, batch_size: int) -> dict[str, float]:
    """Loss and task metrics over every row of `data` (eval mode, no autograd); restores train mode."""
    was_training = model.training
    model.eval()
    logits, labels, total = [], [], 0.0
    for feats, y in data.batches(batch_size, seed=0, shuffle=False):
        z = model(feats)
        total += float(loss_fn(task, z, y)) * len(y)
        logits.append(z.float().cpu().numpy())
        labels.append(y.cpu().numpy())
    model.train(was_training)
    if not labels:
        return {"loss": float("nan")}
    lab = np.concatenate(labels)
    out = {"loss": total / len(lab)}
    out.update(compute_metrics(task, np.concatenate(logits), lab if task == "multiclass" else lab > 0.5))
    return out


def train_epochs(model: nn.Module, train: SplitData, task: str, *, epochs: int, batch_size: int, seed: int,
                 lr: float = 1e-3, weight_decay: float = 3e-4, grad_clip: float = 5.0) -> None:
    """Adam with cosine decay over `epochs` on `train` (the short schedule that scores a genotype)."""
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = max(1, epochs * -(-train.num_rows // batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=lr * 1e-3)
    model.train()
    for epoch in range(epochs):
        for feats, y in train.batches(batch_size, seed, epoch):
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(task, model(feats), y)
            loss.backward()
            if grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            opt.step()
            sched.step()
