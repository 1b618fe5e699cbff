"""One optimisation step of a joint model through `fit`, as a script: run alone it is the 1-process
step, under torchrun each rank trains on its share of the same global batch. BatchNorm in eval mode,
dropout off and plain SGD, so the two must agree to float tolerance. Rank 0 saves the weights before and after to ARGV[2].

    python tests/_ddp_step.py DATA_DIR OUT.pt        (DATA_DIR as tests/test_distributed.py writes it)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fusion_search.genotype import Genotype
from fusion_search.training.distributed import joined, shard_rows
from fusion_search.training.engine import FitOptions, fit
from fusion_search.training.metrics import loss_fn
from pipeline.configs import FinetuneConfig
from pipeline.joint_model import RawSamples, build_model

GLOBAL_BATCH = 8


class EvalNoise(nn.Module):
    """The model with every BatchNorm and dropout layer (HCN's Dropout2d too) in eval mode while it
    trains: per-rank batch statistics and dropout masks differ."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)

    def train(self, mode: bool = True) -> "EvalNoise":
        super().train(mode)
        for m in self.modules():
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)):
                m.eval()
        return self


def main(data: Path, out: Path) -> None:
    with joined("cpu") as world:
        g = Genotype.load(data / "g.json")
        backbones = [{"modality": "video", "backbone": "inflated_resnet50", "checkpoint": str(data / "rgb.pt")},
                     {"modality": "skeleton", "backbone": "hcn", "checkpoint": str(data / "hcn.pt")}]
        cfg = FinetuneConfig(genotype=str(data / "g.json"), source=str(data / "ntu"), setting="tiny",
                             backbones=backbones, dropout=0.0)
        torch.manual_seed(0)
        built = build_model(cfg, g)
        train = [s for s in built.source.samples() if s.split == "train"][:GLOBAL_BATCH]
        mine = shard_rows(np.arange(GLOBAL_BATCH), world)
        items = [RawSamples(built.source, [train[i]], built.specs)[0] for i in mine]
        batch = ({m: torch.stack([x[m] for x, _ in items]) for m in items[0][0]}, torch.stack([y for _, y in items]))
        before = {k: v.clone() for k, v in built.model.state_dict().items()}
        model = EvalNoise(built.model)
        bb, fusion = built.model.parameter_groups()
        opt = torch.optim.SGD(bb + fusion, lr=0.1)  # linear in the gradient: Adam's first step is about
        # lr x sign(g), which turns rounding noise in a gradient near 0 into a step of lr
        fit(world.wrap(model), lambda epoch: [batch], lambda z, y: loss_fn("multiclass", z, y), opt, None,
            FitOptions(epochs=1, params=bb + fusion, grad_clip=cfg.grad_clip, world=world))
        if world.main:
            torch.save({"before": before, "after": built.model.state_dict()}, out)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
