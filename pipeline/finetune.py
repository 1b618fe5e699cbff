"""`bmnas finetune`: backbones + taps + reduction + the found fusion network as one model, trained
jointly from raw data (the paper's evaluation, §3.4: "train the unimodal backbones and the searched
fusion network jointly").

The model is exactly the cache pipeline made differentiable: each backbone runs on its modality, the
taps the genotype reads are hooked and reduced by the same parameter-free `extract.reduction` the
cache used, and the `FoundNetwork` of the genotype fuses them. Node `<modality>_<k>` is the k-th tap
(shallow to deep) of that modality's backbone, as in extraction. Backbone heads are dropped (their
logits were never used). Samples are read and prepared (`extract.backbones.prepare_one`, decord for
video) in torch DataLoader workers.

Training: Adam with two parameter groups (backbones at `backbone_lr_scale` × the fusion lr, default
0.1), cosine annealing with warm restarts as `bmnas train`, gradient accumulation over `accumulate`
batches, AMP (float16 autocast + GradScaler) on CUDA, plain float32 on CPU. Backbone BatchNorm layers
keep their pretrained statistics (`freeze_bn`, default on: fine-tuning batches are small). The
fusion network starts from a `bmnas train` run's best checkpoint when `init_from` is given.
Model selection and the run directory are those of `bmnas train` (best on val, or fixed epochs on
train+val), with the whole model in the checkpoints; killed runs resume exactly on CPU.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler, SequentialSampler

from fusion_search.data import resolve_device
from fusion_search.errors import SearchError
from fusion_search.found_network import FoundNetwork, count_parameters
from fusion_search.genotype import Genotype
from fusion_search.metrics import PRIMARY, loss_fn
from fusion_search.run_checkpoint import load_run_checkpoint
from fusion_search.schedule import weight_optimizer
from pipeline.rundir import BEST, LAST, EpochBook, abs_path, with_logger
from pipeline.train import TRAIN_ON, Schedule, check_run_options, read_run_config
from stores.lock import holds_lock

_NODE = re.compile(r"^(?P<modality>.+)_(?P<k>\d+)$")


@dataclass
class FinetuneConfig(Schedule):
    """Everything that determines a finetune run (with the raw data and checkpoints: its result)."""

    genotype: str = ""
    source: str = ""
    source_kind: str | None = None
    source_split: str | None = None          # the adapter's split preset (NTU: mfas, cross-subject, ...)
    source_opts: dict[str, Any] = field(default_factory=dict)
    backbones: list[dict[str, Any]] = field(default_factory=list)  # {modality, backbone, checkpoint, taps}
    setting: str = "full"
    t_max: int = 32
    grid: int = 4
    init_from: str | None = None
    batch_size: int = 16
    accumulate: int = 1
    backbone_lr_scale: float = 0.1
    freeze_bn: bool = True
    amp: bool = True
    loader_workers: int = 0
    kind: str = "finetune"


def parse_backbone(text: str) -> dict[str, Any]:
    """`MODALITY=NAME[:CHECKPOINT]` -> {"modality", "backbone", "checkpoint"} (the --backbone option)."""
    mod, sep, rest = text.partition("=")
    name, _, ckpt = rest.partition(":")
    if not sep or not mod.strip() or not name.strip():
        raise SearchError(f"--backbone {text!r}: expected MODALITY=NAME:CHECKPOINT (e.g. video=inflated_resnet50:rgb.pt)")
    return {"modality": mod.strip(), "backbone": name.strip(), "checkpoint": ckpt.strip() or None, "taps": None}


def _node_taps(genotype: Genotype) -> dict[str, list[tuple[str, int]]]:
    """modality -> [(node, k)] of the nodes the genotype reads."""
    out: dict[str, list[tuple[str, int]]] = {}
    for node in genotype.used_nodes():
        m = _NODE.match(node)
        if not m:
            raise SearchError(f"genotype node {node!r} is not named <modality>_<k>; "
                              "finetune maps nodes to backbone taps by that name")
        out.setdefault(m["modality"], []).append((node, int(m["k"])))
    return out


class _GradTaps:
    """Forward hooks that reduce the chosen taps on the fly and keep them in the autograd graph.

    HCN runs each body as its own row; such outputs are folded back by max over those rows, the
    merge extraction applies (`extract.backbones.taps.TapReader`), so features match the cache.
    """

    def __init__(self, model: nn.Module, taps: Sequence[tuple[str, Any]], reduction) -> None:
        from extract.backbones import get_module

        self.reduction = reduction
        self.out: dict[str, torch.Tensor] = {}
        self.rows = 0
        for node, tap in taps:
            get_module(model, tap.module).register_forward_hook(self._hook(node, tap.kind))

    def _hook(self, node: str, kind: str):
        from extract.reduction import reduce_tap

        def hook(_mod, _inp, out):
            if isinstance(out, (tuple, list)):
                out = out[0]
            if out.shape[0] != self.rows:
                out = out.reshape(self.rows, -1, *out.shape[1:]).amax(dim=1)
            self.out[node] = reduce_tap(out, kind, self.reduction).float()
        return hook


class JointModel(nn.Module):
    """Backbones (heads removed) -> hooked, reduced taps -> FoundNetwork, differentiable end to end."""

    def __init__(self, backbones: dict[str, nn.Module], taps: dict[str, list[tuple[str, Any]]], reduction,
                 freeze_bn: bool = True) -> None:
        super().__init__()
        self.backbones = nn.ModuleDict(backbones)
        self.freeze_bn = freeze_bn
        self._taps = {m: _GradTaps(bb, taps[m], reduction) for m, bb in backbones.items()}
        self.fusion: FoundNetwork | None = None

    def features(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        feats: dict[str, torch.Tensor] = {}
        for m, bb in self.backbones.items():
            hooks = self._taps[m]
            hooks.out, hooks.rows = {}, inputs[m].shape[0]
            bb(inputs[m])
            feats.update(hooks.out)
            hooks.out = {}
        return feats

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        assert self.fusion is not None
        return self.fusion(self.features(inputs))

    def train(self, mode: bool = True) -> "JointModel":
        super().train(mode)
        if mode and self.freeze_bn:
            for mod in self.backbones.modules():
                if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                    mod.eval()
        return self

    def parameter_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        assert self.fusion is not None
        return ([p for p in self.backbones.parameters() if p.requires_grad],
                [p for p in self.fusion.parameters() if p.requires_grad])


class RawSamples(Dataset):
    """(prepared inputs per modality, label) of listed samples; read in DataLoader workers."""

    def __init__(self, source: Any, samples: list, specs: dict[str, Any]) -> None:
        self.source, self.samples, self.specs = source, samples, specs
        self.labels = source.label_array(samples)
        self.multilabel = source.task == "multilabel"

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        from extract.backbones import prepare_one

        sid = self.samples[i].id
        x = {m: prepare_one(self.source.read(sid, m), m, spec) for m, spec in self.specs.items()}
        y = torch.as_tensor(self.labels[i])
        return x, (y.float() if self.multilabel else y.long())


@dataclass
class Built:
    """A joint model ready to run, and what it reads."""

    model: JointModel
    source: Any
    specs: dict[str, Any]
    node_shapes: dict[str, tuple[int, int]]


def _open_source(cfg: FinetuneConfig):
    from extract.errors import ExtractError
    from extract.sources.registry import open_source

    opts = dict(cfg.source_opts)
    if cfg.source_split:
        opts["split"] = cfg.source_split
    try:
        return open_source(cfg.source, cfg.source_kind, **opts)
    except TypeError as exc:
        raise ExtractError(f"--source-opt: {exc}") from None


def build_model(cfg: FinetuneConfig, genotype: Genotype, *, load_checkpoints: bool = True) -> Built:
    """Open the source, build each needed backbone (checkpoint loaded strictly), probe tap shapes, add fusion."""
    from extract.backbones import get_backbone, prepare_one
    from extract.checkpoints import load_checkpoint
    from extract.reduction import ReductionConfig

    source = _open_source(cfg)
    if genotype.task != source.task or genotype.num_classes != source.num_classes:
        raise SearchError(f"genotype {cfg.genotype} was found for {genotype.task} with {genotype.num_classes} classes; "
                          f"the source {cfg.source} is {source.task} with {source.num_classes} classes")
    wanted = _node_taps(genotype)
    chosen = {b["modality"]: b for b in cfg.backbones}
    missing = sorted(set(wanted) - set(chosen))
    if missing:
        raise SearchError(f"the genotype reads {', '.join(n for m in missing for n, _ in wanted[m])}: "
                          f"give --backbone {missing[0]}=NAME:CHECKPOINT")
    samples = source.samples()
    if not samples:
        raise SearchError(f"source {cfg.source} lists no samples")
    reduction = ReductionConfig(t_max=cfg.t_max, grid=cfg.grid)
    backbones, taps, specs = {}, {}, {}
    probe_ids = [s.id for s in samples[:1]]
    for mod in wanted:  # only the modalities the genotype reads
        b = chosen[mod]
        spec = get_backbone(b["backbone"])
        spec.check_modality(mod)
        tap_specs = spec.tap_specs(cfg.setting, b.get("taps"))
        for node, k in wanted[mod]:
            if k > len(tap_specs):
                raise SearchError(f"genotype node {node} is tap {k} of {mod}, but {b['backbone']} "
                                  f"({cfg.setting}) has {len(tap_specs)} taps: "
                                  f"{', '.join(t.name for t in tap_specs)}")
        inp = spec.setting(cfg.setting).input
        item = prepare_one(source.read(probe_ids[0], mod), mod, inp)
        model = spec.build(cfg.setting, source.num_classes, mod, int(item.shape[-1]) if mod == "text" else None)
        if b.get("checkpoint") and load_checkpoints:
            load_checkpoint(model, b["checkpoint"], head=spec.head)
        parent, _, leaf = spec.head.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, nn.Identity())
        backbones[mod] = model
        taps[mod] = [(node, tap_specs[k - 1]) for node, k in wanted[mod]]
        specs[mod] = inp
    joint = JointModel(backbones, taps, reduction, cfg.freeze_bn)
    probe = RawSamples(source, samples[:1], specs)[0][0]
    joint.eval()
    with torch.no_grad():
        feats = joint.features({m: t[None] for m, t in probe.items()})
    shapes = {n: (int(t.shape[1]), int(t.shape[2])) for n, t in feats.items()}
    joint.fusion = FoundNetwork(genotype, shapes, cfg.dropout)
    return Built(joint, source, specs, shapes)


def _loader(built: Built, split_names: Sequence[str], cfg: FinetuneConfig, device: torch.device, *, shuffle: bool,
            epoch: int = 0, batch_size: int | None = None) -> DataLoader:
    """Pinned host memory only for a CUDA run: pinning creates a CUDA context (and holds GPU memory)."""
    samples = [s for s in built.source.samples() if s.split in split_names]
    if not samples:
        raise SearchError(f"source {cfg.source} has no samples in split(s) {', '.join(split_names)}")
    ds = RawSamples(built.source, samples, built.specs)
    sampler = (RandomSampler(ds, generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))
               if shuffle else SequentialSampler(ds))
    return DataLoader(ds, batch_size=batch_size or cfg.batch_size, sampler=sampler, num_workers=cfg.loader_workers,
                      pin_memory=device.type == "cuda")


def _to(x: dict[str, torch.Tensor], y: torch.Tensor, device: torch.device):
    return {m: t.to(device, non_blocking=True) for m, t in x.items()}, y.to(device, non_blocking=True)


@torch.no_grad()
def predict_loader(model: nn.Module, loader: DataLoader, device: torch.device, amp: bool) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels over a loader (eval mode, train mode restored)."""
    was = model.training
    model.eval()
    logits, labels = [], []
    for x, y in loader:
        x, y = _to(x, y, device)
        with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
            z = model(x)
        logits.append(z.float().cpu().numpy())
        labels.append(y.cpu().numpy())
    model.train(was)
    return np.concatenate(logits), np.concatenate(labels)


@holds_lock("out_dir", "run directory")
def finetune(genotype_path: str | os.PathLike, source_path: str, backbones: Sequence[str | dict[str, Any]],
             out_dir: str | os.PathLike, *, source_kind: str | None = None, source_split: str | None = None,
             source_opts: dict[str, Any] | None = None, setting: str = "full", init_from: str | None = None,
             epochs: int | None = None, batch_size: int = 16, accumulate: int = 1, device: str = "auto",
             train_on: str = "train", seed: int = 0, progress: bool = False, evaluate_test: bool = True,
             **settings: Any) -> dict[str, Any]:
    """Fine-tune backbones and fusion jointly from raw data into the new run directory `out_dir`.

    `backbones`: `MODALITY=NAME[:CHECKPOINT]` strings (or their parsed dicts). Extra `settings` are
    FinetuneConfig fields (lr, backbone_lr_scale, amp, loader_workers, freeze_bn, t_max, grid, ...).
    """
    epochs = check_run_options(epochs, train_on, settings, FinetuneConfig, "finetune")
    bbs = [parse_backbone(b) if isinstance(b, str) else dict(b) for b in backbones]
    for b in bbs:  # absolute paths: evaluate and resume work from any directory
        if b.get("checkpoint"):
            b["checkpoint"] = abs_path(b["checkpoint"])
    mods = [b["modality"] for b in bbs]
    if len(set(mods)) != len(mods):
        raise SearchError(f"--backbone: one backbone per modality (got {', '.join(mods)})")
    cfg = FinetuneConfig(genotype=abs_path(genotype_path), source=abs_path(source_path), source_kind=source_kind,
                         source_split=source_split, source_opts=dict(source_opts or {}), backbones=bbs,
                         setting=setting, init_from=abs_path(init_from) if init_from else None, epochs=epochs,
                         batch_size=batch_size, accumulate=accumulate, device=device, train_on=train_on, seed=seed,
                         **settings)
    if cfg.train_on not in TRAIN_ON:
        raise SearchError(f"--train-on {cfg.train_on!r}: use train or train+val")
    for name in ("epochs", "batch_size", "accumulate"):
        v = getattr(cfg, name)
        if not isinstance(v, int) or v < 1:
            raise SearchError(f"--{name.replace('_', '-')} {v!r}: use a positive integer")
    run = Path(out_dir)
    if run.exists() and any(run.iterdir()):
        raise SearchError(f"--out {run} exists and is not empty: choose a new run directory or continue it "
                          f"with `bmnas finetune --resume {run}`")
    genotype = Genotype.load(genotype_path)
    torch.manual_seed(cfg.seed)  # the fusion network's initial weights
    built = build_model(cfg, genotype)  # all user errors (checkpoints, nodes, task) before the run dir exists
    if cfg.init_from:
        _init_fusion(built.model, genotype, cfg.init_from)
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    genotype.save(run / "genotype.json")
    (run / "config.yaml").write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
    return _run(cfg, genotype, built, run, resume=False, progress=progress, evaluate_test=evaluate_test)


@holds_lock("run_dir", "run directory")
def resume_finetune(run_dir: str | os.PathLike, *, progress: bool = False, evaluate_test: bool = True,
                    device: str | None = None) -> dict[str, Any]:
    """Continue a killed finetune run after its last completed epoch (`device`: move it, as `resume_training`)."""
    run = Path(run_dir)
    cfg = _load_config(run)
    cfg.device = device or cfg.device
    if not (run / LAST).is_file():
        raise SearchError(f"--resume {run}: no {LAST}; the run stopped before its first epoch ended, start it again")
    genotype = Genotype.load(run / "genotype.json")
    built = build_model(cfg, genotype, load_checkpoints=False)
    return _run(cfg, genotype, built, run, resume=True, progress=progress, evaluate_test=evaluate_test)


def _load_config(run: Path) -> FinetuneConfig:
    data = read_run_config(run)
    if data["kind"] != "finetune":
        raise SearchError(f"{run}: a train run; resume it with `bmnas train --resume {run}`")
    return FinetuneConfig(**data)


def _init_fusion(model: JointModel, genotype: Genotype, init_from: str) -> None:
    """Start the fusion network from a `bmnas train` run trained on the cache of the same genotype."""
    run = Path(init_from)
    cfg = read_run_config(run)
    if cfg["kind"] != "train" or not (run / BEST).is_file():
        raise SearchError(f"--init-from {run}: give a finished `bmnas train` run directory (with {BEST})")
    if Genotype.load(run / "genotype.json").key() != genotype.key():
        raise SearchError(f"--init-from {run}: that run trained another genotype than --genotype")
    state = load_run_checkpoint(run / BEST)["model"]
    try:
        model.fusion.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1].strip()
        raise SearchError(f"--init-from {run}: its weights do not fit these backbones' taps "
                          f"(were the features extracted with other backbones or settings?): {first}") from None


def restore_scaler(scaler: torch.amp.GradScaler, state: dict[str, Any] | None) -> None:
    """Load a checkpoint's GradScaler state when both sides use one: a run started on CPU saved an
    empty state, which an enabled scaler refuses (resumed on CUDA it starts from a fresh scale), and
    a disabled scaler (resumed on CPU) has nothing to load."""
    if scaler.is_enabled() and state:
        scaler.load_state_dict(state)


def _run(cfg: FinetuneConfig, genotype: Genotype, built: Built, run: Path, *, resume: bool, progress: bool,
         evaluate_test: bool) -> dict[str, Any]:
    return with_logger(run, "finetune", lambda log: _loop(cfg, built, run, log, resume, progress, evaluate_test))


def _loop(cfg: FinetuneConfig, built: Built, run: Path, log: logging.Logger, resume: bool, progress: bool,
          evaluate_test: bool) -> dict[str, Any]:
    from tqdm import tqdm

    from pipeline.evaluate import task_metrics

    device = resolve_device(cfg.device)
    amp = cfg.amp and device.type == "cuda"
    task, key = built.source.task, PRIMARY[built.source.task]
    model = built.model.to(device)
    torch.manual_seed(cfg.seed)
    bb_params, fusion_params = model.parameter_groups()
    opt, sched = weight_optimizer([{"params": fusion_params, "lr": cfg.lr},
                                   {"params": bb_params, "lr": cfg.lr * cfg.backbone_lr_scale}],
                                  lr=cfg.lr, weight_decay=cfg.weight_decay, lr_min=cfg.lr_min,
                                  restart_period=cfg.restart_period, restart_mult=cfg.restart_mult)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    book = EpochBook(run, key)
    if resume:
        ckpt = book.restore(device)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        restore_scaler(scaler, ckpt.get("scaler"))
        log.info("resumed after epoch %d", book.epoch)
    else:
        log.info("finetune %s on %s: backbones %s, %d backbone + %d fusion parameters, device %s, amp %s",
                 cfg.genotype, cfg.source, ", ".join(f"{b['modality']}={b['backbone']}" for b in cfg.backbones),
                 sum(p.numel() for p in bb_params), sum(p.numel() for p in fusion_params), device, amp)
    splits = cfg.train_on.split("+")
    val_loader = _loader(built, ["val"], cfg, device, shuffle=False) if cfg.train_on == "train" else None
    for epoch in range(book.epoch, cfg.epochs):
        t0 = time.perf_counter()
        loader = _loader(built, splits, cfg, device, shuffle=True, epoch=epoch)
        n_batches = len(loader)
        model.train()
        opt.zero_grad(set_to_none=True)
        total, rows = 0.0, 0
        bar = tqdm(loader, disable=not progress, leave=False, desc=f"finetune {epoch + 1}/{cfg.epochs}")
        for i, (x, y) in enumerate(bar):
            x, y = _to(x, y, device)
            with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
                logits = model(x)
            loss = loss_fn(task, logits.float(), y)
            scaler.scale(loss / cfg.accumulate).backward()
            total += float(loss.detach()) * len(y)
            rows += len(y)
            if (i + 1) % cfg.accumulate == 0 or i + 1 == n_batches:
                scaler.unscale_(opt)
                if cfg.grad_clip > 0:
                    nn.utils.clip_grad_norm_(bb_params + fusion_params, cfg.grad_clip)
                scaler.step(opt)
                scaler.update()
                opt.zero_grad(set_to_none=True)
                sched.step(epoch + (i + 1) / n_batches)
        record: dict[str, Any] = {"epoch": epoch + 1, "train_loss": total / max(rows, 1),
                                  "lr": opt.param_groups[0]["lr"], "backbone_lr": opt.param_groups[1]["lr"]}
        if val_loader is not None:
            record["val"] = task_metrics(task, built.source.num_classes, *predict_loader(model, val_loader, device, amp))
        record["seconds"] = time.perf_counter() - t0
        log.info(book.end_epoch(record, model, {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                                                "scaler": scaler.state_dict()}, device))
    summary = book.summary({"epochs": cfg.epochs, "train_on": cfg.train_on, "num_parameters": count_parameters(model),
                            "fusion_parameters": count_parameters(model.fusion), "test": None})
    if evaluate_test and any(s.split == "test" for s in built.source.samples()):
        summary["test"] = evaluate_finetune_run(run, "test", built=built)
    return summary


def evaluate_finetune_run(run_dir: str | os.PathLike, split: str = "test", *, device: str | None = None,
                          batch_size: int | None = None, built: Built | None = None,
                          plots: bool = True) -> dict[str, Any]:
    """`bmnas evaluate` for a finetune run: the kept whole-model checkpoint on a split of the raw data."""
    from pipeline.evaluate import latency_ms, write_evaluation

    run = Path(run_dir)
    cfg = _load_config(run)
    if not (run / BEST).is_file():
        raise SearchError(f"{run}: no {BEST}; the run has not finished an epoch yet")
    genotype = Genotype.load(run / "genotype.json")
    built = built or build_model(cfg, genotype, load_checkpoints=False)
    dev = resolve_device(device or cfg.device)
    amp = cfg.amp and dev.type == "cuda"
    model = built.model.to(dev)
    ckpt = load_run_checkpoint(run / BEST)
    model.load_state_dict(ckpt["model"])
    loader = _loader(built, [split], cfg, dev, shuffle=False, batch_size=batch_size)
    t0 = time.perf_counter()
    logits, labels = predict_loader(model, loader, dev, amp)
    seconds = time.perf_counter() - t0
    ids = [s.id for s in built.source.samples() if s.split == split]
    x, _ = RawSamples(built.source, [s for s in built.source.samples() if s.split == split][:1], built.specs)[0]
    example = {m: t[None].to(dev) for m, t in x.items()}
    return write_evaluation(run, split, task=built.source.task, num_classes=built.source.num_classes, logits=logits,
                            labels=labels, sample_ids=ids, num_parameters=count_parameters(model),
                            latency=latency_ms(model, example, repeats=5, warmup=1), seconds=seconds,
                            class_names=getattr(built.source, "class_names", None),
                            extra={"checkpoint_epoch": int(ckpt["epoch"]), "run_kind": "finetune",
                                   "fusion_parameters": count_parameters(model.fusion)}, plots=plots)
