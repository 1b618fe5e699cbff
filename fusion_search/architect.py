"""The architecture step of Algorithm 1 on val (the weight step on train is `engine.fit`'s; the search
runs this one from fit's per-step hook).

The architecture gradient comes from `torch.autograd.grad` w.r.t. α, β, γ only, so the arch step
never computes weight gradients (in particular none for the large reshape projections).
First-order (default, as the official code): ∇_A L_val(w, A).
Second-order (`--unrolled`, DARTS eq. 7-8): ∇_A L_val(w', A) - ξ ∇²_{A,w} L_train(w, A) ∇_{w'} L_val(w', A)
with w' = w - ξ ∇_w L_train(w, A) (one virtual SGD step, ξ = the current weight learning rate) and the
Hessian-vector product by central finite differences at w ± ε v, ε = 0.01 / ||v||. BatchNorm running
statistics are restored after the extra forwards, so `--unrolled` only changes the gradient.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

Batch = tuple[dict[str, torch.Tensor], torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Architect:
    """Updates α, β, γ on validation batches (first- or second-order)."""

    def __init__(self, model: nn.Module, arch: list[nn.Parameter], weights: list[nn.Parameter],
                 optimizer: torch.optim.Optimizer, loss_fn: LossFn, unrolled: bool = False,
                 weight_decay: float = 0.0, fd_eps: float = 0.01) -> None:
        self.model, self.arch, self.weights = model, arch, weights
        self.optimizer, self.loss_fn, self.unrolled = optimizer, loss_fn, unrolled
        self.weight_decay = weight_decay
        self.fd_eps = fd_eps  # DARTS: 0.01 / ||v||

    def step(self, val_batch: Batch, train_batch: Batch | None = None, xi: float = 0.0) -> torch.Tensor:
        """One optimiser step of the architecture; returns the validation loss (detached)."""
        if self.unrolled:
            assert train_batch is not None
            loss, grads = self._unrolled_grads(val_batch, train_batch, xi)
        else:
            loss = self._loss(val_batch)
            grads = torch.autograd.grad(loss, self.arch)
        self.optimizer.zero_grad(set_to_none=True)
        for p, g in zip(self.arch, grads):
            p.grad = g
        self.optimizer.step()
        return loss.detach()

    def _loss(self, batch: Batch) -> torch.Tensor:
        feats, labels = batch
        return self.loss_fn(self.model(feats), labels)

    def _unrolled_grads(self, val_batch: Batch, train_batch: Batch, xi: float):
        buffers = [b.detach().clone() for b in self.model.buffers()]
        w0 = [p.detach().clone() for p in self.weights]
        g_train = torch.autograd.grad(self._loss(train_batch), self.weights, allow_unused=True)
        with torch.no_grad():  # virtual step w' = w - xi (g + wd w)
            for p, g in zip(self.weights, g_train):
                if g is not None:
                    p.sub_(xi * (g + self.weight_decay * p))
        val_loss = self._loss(val_batch)
        grads = torch.autograd.grad(val_loss, self.arch + self.weights, allow_unused=True)
        d_arch = [g if g is not None else torch.zeros_like(p) for g, p in zip(grads[:len(self.arch)], self.arch)]
        v = [g if g is not None else torch.zeros_like(p) for g, p in zip(grads[len(self.arch):], self.weights)]
        eps = self.fd_eps / (torch.sqrt(sum((x * x).sum() for x in v)) + 1e-12)
        hv = []
        for sign in (1.0, -1.0):
            with torch.no_grad():
                for p, p0, vi in zip(self.weights, w0, v):
                    p.copy_(p0 + sign * eps * vi)
            g = torch.autograd.grad(self._loss(train_batch), self.arch, allow_unused=True)
            hv.append([x if x is not None else torch.zeros_like(p) for x, p in zip(g, self.arch)])
        with torch.no_grad():
            for p, p0 in zip(self.weights, w0):
                p.copy_(p0)
            for b, b0 in zip(self.model.buffers(), buffers):
                b.copy_(b0)
        out = [da - xi * (hp - hm) / (2 * eps) for da, hp, hm in zip(d_arch, hv[0], hv[1])]
        return val_loss, out
