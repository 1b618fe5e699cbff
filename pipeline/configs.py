"""The settings of the pretrain, train and finetune stages: one dataclass each, the defaults in one place.

Why a module of its own: the command line takes its options' defaults from these fields, and must
not import torch to print its help (the optimiser is built on demand).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from fusion_search.errors import SearchError

TRAIN_ON = ("train", "train+val")
DEFAULT_EPOCHS = 30


@dataclass
class Schedule:
    """The optimisation settings train and finetune share (paper: Adam, cosine warm restarts)."""

    epochs: int = DEFAULT_EPOCHS
    seed: int = 0
    device: str = "auto"
    train_on: str = "train"
    lr: float = 1e-3
    lr_min: float = 1e-6
    restart_period: int = 1
    restart_mult: int = 2
    weight_decay: float = 3e-4
    dropout: float = 0.2
    grad_clip: float = 5.0
    modality_dropout: float = 0.0  # P of a training sample losing one modality (`fusion_search.missing`)

    def optimizer(self, params: Any) -> tuple[Any, Any]:
        """The paper's Adam and cosine warm restarts over `params` (tensors or param-group dicts)."""
        from fusion_search.training.schedule import weight_optimizer

        return weight_optimizer(params, lr=self.lr, weight_decay=self.weight_decay, lr_min=self.lr_min,
                                restart_period=self.restart_period, restart_mult=self.restart_mult)

    def __post_init__(self) -> None:
        """Refuse rates a run cannot use (a negative or NaN --lr trains into NaN) before anything is written."""
        for name, low, strict in (("lr", 0.0, True), ("lr_min", 0.0, False), ("weight_decay", 0.0, False),
                                  ("grad_clip", 0.0, True)):
            value = getattr(self, name)
            ok = isinstance(value, (int, float)) and math.isfinite(value) and (value > low if strict else value >= low)
            if not ok:
                raise SearchError(f"--{name.replace('_', '-')} {value!r}: use a finite number "
                                  f"{'above' if strict else 'of at least'} {low:g}")


@dataclass
class TrainConfig(Schedule):
    """Everything that determines a training run (with the store's contents: its result)."""

    store: str = ""
    genotype: str = ""                  # the file given; the run keeps its own copy
    batch_size: int = 96
    memory_budget_gb: float | None = None
    world_size: int = 1                 # processes training together (torchrun); recorded, not set
    sync_bn: bool = False               # under torchrun on CUDA: BatchNorm over the global batch
    kind: str = "train"


@dataclass
class FinetuneConfig(Schedule):
    """Everything that determines a finetune run (with the raw data and checkpoints: its result)."""

    genotype: str = ""
    source: str = ""
    source_kind: str | None = None
    source_split: str | None = None          # the adapter's split preset (NTU: mfas, cross-subject, ...)
    source_opts: dict[str, Any] = field(default_factory=dict)
    # {modality, backbone, setting, checkpoint, checkpoint_sha256, taps, input, inflate}: extraction's choices
    backbones: list[dict[str, Any]] = field(default_factory=list)
    store: str | None = None  # the store whose record gave the backbones, taps and reduction
    setting: str = "full"
    t_max: int = 32
    grid: int = 4
    init_from: str | None = None
    batch_size: int = 16
    accumulate: int = 1
    backbone_lr_scale: float = 0.1
    freeze_bn: bool = True
    amp: bool = True
    loader_workers: int = 2  # DataLoader processes decoding raw samples
    world_size: int = 1      # processes training together (torchrun); recorded, not set
    sync_bn: bool = False    # under torchrun on CUDA: BatchNorm over the global batch
    kind: str = "finetune"


@dataclass
class PretrainConfig:
    """Everything that determines a pretraining run (with the source: its result). The first group
    is what a user sets; the second is recorded when the run starts (config.yaml holds both)."""

    backbone: str = ""
    modality: str = ""
    setting: str = "full"
    epochs: int = 10
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    device: str = "auto"
    num_workers: int = 0                   # DataLoader processes (--loader-workers)
    on_error: str = "fail"
    keep_in_memory: bool = False
    init_checkpoint: str | None = None     # --checkpoint: start from these weights
    inflate_from: str | None = None        # 2D ResNet-50 weights for inflated_resnet50
    tap_choice: list[str] | None = None    # --taps (a torch module's head reads the deepest)
    input: dict[str, Any] = field(default_factory=dict)  # --input fields replacing the default preparation
    # recorded when the run starts (not settable: PRETRAIN_SETTABLE ends above)
    kind: str = "pretrain"
    source: str = "source"
    source_location: dict[str, Any] | None = None  # how `bmnas pretrain` opened the source (for --resume)
    task: str = ""
    num_classes: int = 0
    input_dim: int | None = None
    metric: str = ""
    init_sha256: str | None = None
    taps: list[dict[str, Any]] = field(default_factory=list)  # the resolved tap specs
    world_size: int = 1                    # processes training together (torchrun)


PRETRAIN_SETTABLE = ("backbone", "modality", "setting", "epochs", "batch_size", "lr", "weight_decay", "seed", "device",
                     "num_workers", "on_error", "keep_in_memory", "init_checkpoint", "inflate_from", "tap_choice", "input")
