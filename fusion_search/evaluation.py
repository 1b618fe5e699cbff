"""Forward a model over a whole split without autograd, and briefly train a found network to score a genotype.

A genotype's score is the val metric of its FoundNetwork after a short training. One training run is
a noisy measurement (init and batch order move it by several points on small val splits), so
`score_genotype` trains `seeds` independent runs and returns each run's score; callers average them.
The seeds depend only on the scoring seed index and the genotype, so any two searches (any search
seed, any machine run) score one genotype the same way.
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import torch
from torch import nn

from fusion_search.data import SplitData
from fusion_search.found_network import FoundNetwork
from fusion_search.genotype import Genotype
from fusion_search.metrics import PRIMARY, compute_metrics, loss_fn


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


def scoring_seed(index: int, genotype: Genotype) -> int:
    """The training seed of a genotype's `index`-th scoring run (independent of the search seed)."""
    return (index * 1_000_003 + zlib.crc32(genotype.key().encode())) % (2**31)


def score_genotype(genotype: Genotype, train: SplitData, val: SplitData, node_shapes, *, task: str,
                   seeds: int = 1, first_seed: int = 0, epochs: int = 2, min_steps: int = 300,
                   batch_size: int = 96, lr: float = 1e-3, weight_decay: float = 3e-4, grad_clip: float = 5.0,
                   dropout: float = 0.2) -> list[float]:
    """Val scores of `seeds` short trainings of the genotype's FoundNetwork (scoring runs
    `first_seed` .. `first_seed + seeds - 1`); the global torch RNG is left as it was."""
    device = val.device
    per_epoch = math.ceil(train.num_rows / batch_size)
    n_epochs = max(epochs, math.ceil(min_steps / per_epoch))
    scores = []
    for index in range(first_seed, first_seed + seeds):
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            seed = scoring_seed(index, genotype)
            torch.manual_seed(seed)
            net = FoundNetwork(genotype, node_shapes, dropout).to(device)
            train_epochs(net, train, task, epochs=n_epochs, batch_size=batch_size, seed=seed, lr=lr,
                         weight_decay=weight_decay, grad_clip=grad_clip)
            scores.append(float(evaluate(net, val, task, batch_size)[PRIMARY[task]]))
    return scores
