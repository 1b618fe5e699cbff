"""Metrics of a model over a whole split, and brief trainings of a found network that score a genotype.

A genotype's score is the val metric of its FoundNetwork after a short training. One training run is
a noisy measurement (init and batch order move it by several points on small val splits), so
`score_genotype` trains `seeds` independent runs and returns each run's score; callers average them.
The seeds depend only on the scoring seed index and the genotype, so any two searches (any search
seed, any machine run) score one genotype the same way.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from fusion_search.data import SplitData
from fusion_search.training.engine import FitOptions, fit, predict, steps_per_epoch
from fusion_search.found_network import FoundNetwork
from fusion_search.genotype import Genotype
from fusion_search.missing import VAL_MASK_SEED, with_dropout
from fusion_search.training.metrics import PRIMARY, loss_fn, split_metrics
from fusion_search.training.schedule import weight_optimizer


def evaluate(model: nn.Module, data: SplitData, task: str, batch_size: int, modality_dropout: float = 0.0,
             nodes: Sequence[str] = ()) -> dict[str, float]:
    """Loss and task metrics over every row of `data` (eval mode, no autograd); restores train mode.
    With `modality_dropout`, under one fixed set of masks over the modalities of `nodes`
    (`fusion_search.missing.VAL_MASK_SEED`: every model scored the same way)."""
    batches = with_dropout(data.batches(batch_size, seed=0, shuffle=False), modality_dropout, nodes, VAL_MASK_SEED, 0)
    logits, labels = predict(model, batches)
    return split_metrics(task, logits, labels)


@dataclass(frozen=True)
class ScoringRecipe:
    """The short training that scores a genotype: Adam, one cosine cycle over the epochs down to lr / 1000,
    at least `min_steps` optimiser steps (small splits do not score an untrained net)."""

    epochs: int = 2
    min_steps: int = 300
    batch_size: int = 96
    lr: float = 1e-3
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    dropout: float = 0.2
    modality_dropout: float = 0.0
    nodes: tuple[str, ...] = ()  # the modalities a sample may lose are those of these nodes

    def epochs_for(self, rows: int) -> int:
        return max(self.epochs, math.ceil(self.min_steps / steps_per_epoch(rows, self.batch_size)))


def train_epochs(model: nn.Module, train: SplitData, task: str, recipe: ScoringRecipe, seed: int) -> None:
    """Train `model` on `train` by `recipe` (batches in the order of `seed`)."""
    epochs = recipe.epochs_for(train.num_rows)
    opt, sched = weight_optimizer(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay,
                                  lr_min=recipe.lr * 1e-3, restart_period=epochs, restart_mult=1)
    def batches(epoch: int):
        return with_dropout(train.batches(recipe.batch_size, seed, epoch), recipe.modality_dropout, recipe.nodes,
                            seed, epoch)

    fit(model, batches, lambda z, y: loss_fn(task, z, y), opt,
        sched, FitOptions(epochs=epochs, grad_clip=recipe.grad_clip,
                          steps_per_epoch=steps_per_epoch(train.num_rows, recipe.batch_size)))


def scoring_seed(index: int, genotype: Genotype) -> int:
    """The training seed of a genotype's `index`-th scoring run (independent of the search seed)."""
    return (index * 1_000_003 + zlib.crc32(genotype.key().encode())) % (2**31)


def score_genotype(genotype: Genotype, train: SplitData, val: SplitData, node_shapes, *, task: str,
                   recipe: ScoringRecipe, seeds: int = 1, first_seed: int = 0) -> list[float]:
    """Val scores of `seeds` short trainings of the genotype's FoundNetwork (scoring runs
    `first_seed` .. `first_seed + seeds - 1`); the global torch RNG is left as it was."""
    device = val.device
    scores = []
    for index in range(first_seed, first_seed + seeds):
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            seed = scoring_seed(index, genotype)
            torch.manual_seed(seed)
            net = FoundNetwork(genotype, node_shapes, recipe.dropout, recipe.modality_dropout > 0).to(device)
            train_epochs(net, train, task, recipe, seed)
            scores.append(float(evaluate(net, val, task, recipe.batch_size, recipe.modality_dropout,
                                         recipe.nodes)[PRIMARY[task]]))
    return scores
