"""The one training engine: `fit` (the epochs of optimiser steps) and `predict` (logits of a split).

Search scoring, the search loop, `bmnas train` and `bmnas finetune` all train through `fit`, so
gradient clipping, AMP, gradient accumulation and the schedule's fractional-epoch stepping are
written once. What differs between stages goes through two hooks:
- `on_step(step)` after every optimiser step, before the schedule moves (the search's architecture
  step runs here, with the learning rate the weight step used);
- `on_epoch(epoch, totals)` after every epoch (validation, model selection, checkpoints, logs).

A step is exactly `zero_grad → forward → loss → grads of params → clip → step`; with
`accumulate` k, the grads of k batches (each loss / k) are summed before one step; with AMP the
forward runs under float16 autocast and the loss through a GradScaler (unscaled before clipping).
With a `world` of several processes (`fusion_search.training.distributed`) the model comes wrapped in
DistributedDataParallel: each rank's loss is weighted by its share of the global batch, gradients
flow through `backward` (DDP averages them over the ranks, once per optimiser step) and the epoch's
totals are summed over the ranks before `on_epoch` sees them.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from fusion_search.training.distributed import SINGLE, World, share_weight

Batch = tuple[Any, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
ToDevice = Callable[[Any, torch.Tensor], Batch]


@dataclass
class Step:
    """One optimiser step, as `on_step` sees it (loss and logits of its last batch, detached)."""

    epoch: int
    index: int          # batch index within the epoch
    batch: Batch
    loss: torch.Tensor
    logits: torch.Tensor
    lr: float           # the first param group's learning rate this step used


@dataclass
class EpochTotals:
    """Row-weighted train loss (and accuracy for int labels) of one epoch."""

    loss_sum: float = 0.0
    rows: int = 0
    correct: float = 0.0
    multiclass: bool = False
    started: float = 0.0  # time.perf_counter() when the epoch began

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        n = len(labels)
        self.loss_sum += float(loss) * n
        self.rows += n
        if labels.dim() == 1:
            self.multiclass = True
            self.correct += float((logits.argmax(1) == labels).sum())

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.rows, 1)

    @property
    def accuracy(self) -> float | None:
        return self.correct / max(self.rows, 1) if self.multiclass else None

    @property
    def seconds(self) -> float:
        """Since the epoch began (read in `on_epoch`, it includes validation)."""
        return time.perf_counter() - self.started

    def summed(self, world: World) -> "EpochTotals":
        """The totals of every rank's rows (this rank's alone in a one-process world)."""
        if world.size == 1:
            return self
        loss_sum, rows, correct = world.sum([self.loss_sum, self.rows, self.correct])
        return EpochTotals(loss_sum, int(rows), correct, self.multiclass, self.started)

    def record(self, epoch: int, lr: float) -> dict[str, Any]:
        """The first fields of an epoch's metrics.jsonl line."""
        out: dict[str, Any] = {"epoch": epoch + 1, "train_loss": self.loss, "lr": lr}
        if self.multiclass:
            out["train_accuracy"] = self.accuracy
        return out


@dataclass
class FitOptions:
    """How `fit` runs its epochs: everything but the model, data, loss, optimiser and schedule.

    `params` (default: every parameter needing grad) are the ones stepped and clipped.
    `steps_per_epoch` defaults to `len(batches(epoch))`; with `accumulate` k, batch i steps when
    (i + 1) is a multiple of k or i is the epoch's last (index steps_per_epoch - 1)."""

    epochs: int
    start_epoch: int = 0
    params: Sequence[nn.Parameter] | None = None
    grad_clip: float = 0.0
    accumulate: int = 1
    amp: bool = False
    scaler: torch.amp.GradScaler | None = None
    steps_per_epoch: int | None = None
    to_device: ToDevice | None = None
    on_step: Callable[[Step], None] | None = None
    on_epoch: Callable[[int, EpochTotals], None] | None = None
    progress: bool = False
    desc: str = "train"
    leave: bool = False
    world: World = SINGLE


def fit(model: nn.Module, batches: Callable[[int], Iterable[Batch]], loss: LossFn,
        optimizer: torch.optim.Optimizer, scheduler: Any, options: FitOptions) -> None:
    """Train `model` for epochs `options.start_epoch` .. `options.epochs - 1` on `batches(epoch)`.

    `scheduler` is stepped with fractional epochs (`epoch + done / steps_per_epoch`) after every
    optimiser step, as the paper's cosine warm restarts want (`fusion_search.training.schedule`); None: no
    schedule."""
    from tqdm import tqdm

    o = options
    params = [p for p in model.parameters() if p.requires_grad] if o.params is None else list(o.params)
    scaler = o.scaler or torch.amp.GradScaler("cuda", enabled=False)
    for epoch in range(o.start_epoch, o.epochs):
        model.train()
        totals = EpochTotals(started=time.perf_counter())
        it = batches(epoch)
        n = max(1, o.steps_per_epoch if o.steps_per_epoch is not None else len(it))  # type: ignore[arg-type]
        bar = tqdm(it, total=n, disable=not o.progress, desc=f"{o.desc} {epoch + 1}/{o.epochs}", leave=o.leave,
                   dynamic_ncols=True)
        optimizer.zero_grad(set_to_none=True)
        for i, batch in enumerate(bar):
            if o.to_device is not None:
                batch = o.to_device(*batch)
            steps = not (i + 1) % o.accumulate or i + 1 == n
            if o.world.size > 1:
                w_loss, logits = _ddp_forward_backward(model, loss, batch, o, scaler, steps)
            else:
                w_loss, logits = _forward_backward(model, params, loss, batch, o.amp, scaler, o.accumulate)
            totals.add(w_loss, logits, batch[1])
            if not steps:
                continue
            lr = float(optimizer.param_groups[0]["lr"])
            _optimizer_step(optimizer, params, scaler, o.grad_clip)
            if o.on_step is not None:
                o.on_step(Step(epoch, i, batch, w_loss, logits, lr))
            if scheduler is not None:
                scheduler.step(epoch + (i + 1) / n)
            post = {"loss": f"{totals.loss:.4f}"}
            if totals.multiclass:
                post["acc"] = f"{totals.accuracy:.3f}"
            bar.set_postfix(post, refresh=False)
        if o.on_epoch is not None:
            o.on_epoch(epoch, totals.summed(o.world))


def train_step(model: nn.Module, params: Sequence[nn.Parameter], optimizer: torch.optim.Optimizer, loss: LossFn,
               batch: Batch, grad_clip: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimiser step of `fit` on one batch, without schedule or hooks (the benchmarks time it)."""
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    optimizer.zero_grad(set_to_none=True)
    out = _forward_backward(model, list(params), loss, batch, False, scaler, 1)
    _optimizer_step(optimizer, list(params), scaler, grad_clip)
    return out


def _forward_backward(model: nn.Module, params: list[nn.Parameter], loss: LossFn, batch: Batch, amp: bool,
                      scaler: torch.amp.GradScaler, accumulate: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward one batch and add its gradients to `params` (.grad); returns (loss, logits) detached."""
    feats, labels = batch
    with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
        logits = model(feats)
    value = loss(logits.float(), labels)
    scaled = scaler.scale(value / accumulate) if accumulate > 1 else scaler.scale(value)
    grads = torch.autograd.grad(scaled, params, allow_unused=True)
    for p, g in zip(params, grads):
        if g is not None:
            p.grad = g if p.grad is None else p.grad + g
    return value.detach(), logits.detach()


def _ddp_forward_backward(model: nn.Module, loss: LossFn, batch: Batch, o: FitOptions, scaler: torch.amp.GradScaler,
                          steps: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """`_forward_backward` of a DDP-wrapped model: the rank's loss weighted by its share of the global
    batch, gradients through `backward`, averaged over the ranks only on a batch that steps."""
    feats, labels = batch
    weight = share_weight(len(labels), o.world) / o.accumulate
    with model.no_sync() if not steps else nullcontext():  # type: ignore[operator]
        with torch.autocast("cuda", dtype=torch.float16, enabled=o.amp):
            logits = model(feats)
        value = loss(logits.float(), labels)
        scaler.scale(value * weight).backward()
    return value.detach(), logits.detach()


def _optimizer_step(optimizer: torch.optim.Optimizer, params: list[nn.Parameter], scaler: torch.amp.GradScaler,
                    grad_clip: float) -> None:
    if scaler.is_enabled():
        scaler.unscale_(optimizer)
    if grad_clip > 0:
        nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], grad_clip, foreach=True)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


@torch.no_grad()
def predict(model: nn.Module, batches: Iterable[Batch], *, amp: bool = False,
            to_device: ToDevice | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Logits (float32) and labels of every batch, in order (eval mode, no autograd; mode restored)."""
    was_training = model.training
    model.eval()
    logits, labels = [], []
    try:
        for batch in batches:
            feats, y = to_device(*batch) if to_device is not None else batch
            with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
                z = model(feats)
            logits.append(z.float().cpu().numpy())
            labels.append(y.cpu().numpy())
    finally:
        model.train(was_training)
    if not labels:
        return np.zeros((0, 0), np.float32), np.zeros(0)
    return np.concatenate(logits), np.concatenate(labels)


def steps_per_epoch(rows: int, batch_size: int) -> int:
    """Batches of a split per epoch (the last one partial)."""
    return max(1, math.ceil(rows / batch_size))
