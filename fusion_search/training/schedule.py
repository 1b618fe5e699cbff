"""The paper's weight optimiser, shared by search, training and fine-tuning (one way to build it).

Adam with weight decay, learning rate annealed by cosine with warm restarts (T_0 = restart_period
epochs, T_mult = restart_mult) down to lr_min; the schedulers are stepped with fractional epochs.
Adam runs `foreach` on every device (torch's default only on CUDA): the same values as one tensor at
a time, bit for bit, in a handful of operators instead of about nine per parameter.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch


def weight_optimizer(params: Iterable[Any], *, lr: float, weight_decay: float, lr_min: float,
                     restart_period: int, restart_mult: int
                     ) -> tuple[torch.optim.Adam, torch.optim.lr_scheduler.CosineAnnealingWarmRestarts]:
    """Adam over `params` (tensors or param-group dicts with their own "lr") and its schedule."""
    opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, foreach=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=restart_period, T_mult=restart_mult,
                                                                 eta_min=lr_min)
    return opt, sched
