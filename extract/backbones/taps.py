"""Read a backbone's taps with forward hooks and reduce them on the fly."""

from __future__ import annotations

import torch
import torch.nn as nn

from extract.backbones.registry import TapSpec, get_module
from extract.reduction import ReductionConfig, reduce_tap


class TapReader:
    """Hooks the given taps of a model; ``run(x)`` returns {tap name: (B, C, T) float32 on CPU}.

    A tap whose output has a multiple of the batch's rows (HCN runs each body as its own row)
    is folded back by max over those rows, the merge the network itself applies later.
    """

    def __init__(self, model: nn.Module, taps: list[TapSpec], reduction: ReductionConfig = ReductionConfig()):
        self.model, self.taps, self.reduction = model, taps, reduction
        self._out: dict[str, torch.Tensor] = {}
        self._batch = 0
        self._handles = [get_module(model, t.module).register_forward_hook(self._hook(t)) for t in taps]

    def _hook(self, tap: TapSpec):
        def hook(_mod, _inp, out):
            if isinstance(out, (tuple, list)):
                out = out[0]
            if out.shape[0] != self._batch:
                out = out.reshape(self._batch, -1, *out.shape[1:]).amax(dim=1)
            self._out[tap.name] = reduce_tap(out, tap.kind, self.reduction)
        return hook

    def run(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Forward once; the logits are discarded, the reduced taps returned as float32 on CPU."""
        self._out, self._batch = {}, x.shape[0]
        self.model(x)
        out = {name: t.float().cpu() for name, t in self._out.items()}
        self._out = {}
        for tap in self.taps:
            if tap.channels is not None and out[tap.name].shape[1] != tap.channels:
                raise RuntimeError(f"tap {tap.name} gave {out[tap.name].shape[1]} channels, "
                                   f"its declaration says {tap.channels}")
        return out

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
