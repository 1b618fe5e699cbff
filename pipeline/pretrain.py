"""`bmnas pretrain`: one backbone + its head on one modality of a source, trained by `engine.fit`.

BM-NAS assumes pretrained unimodal backbones; this stage makes them: train on the train split,
keep the weights with the best validation score, and write a run directory with ``best.pt``
(a plain state_dict that `bmnas extract --checkpoint` loads), ``config.json`` and
``metrics.jsonl`` (one line per epoch).

Resume: ``last.pt`` (weights, optimiser, scheduler, torch RNG, best so far) is written atomically
after every epoch, so rerunning the same command into the same directory after a kill continues
after the last finished epoch and ends with the same ``best.pt`` as an uninterrupted run on the same
device (the CUDA RNG is saved too when used); a finished run is returned as is. The device may change
on rerun; other settings in that directory are an error, never a silent mix.

Training: Adam with one cosine cycle over the epochs down to 0 (`fusion_search.schedule`, stepped
once per epoch), no gradient clipping; batches with fewer than two readable rows are skipped
(BatchNorm). The data side (prepared samples) is `extract.labelled_samples`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from extract.backbones import get_backbone
from extract.checkpoints import inflate_checkpoint, load_checkpoint, save_checkpoint
from extract.errors import DataError, ExtractError
from extract.labelled_samples import LabelledSamples, collate_samples
from fusion_search.engine import EpochTotals, fit, predict
from fusion_search.metrics import PRIMARY, loss_fn, split_metrics
from fusion_search.run_checkpoint import load_run_checkpoint, save_run_checkpoint
from fusion_search.schedule import weight_optimizer
from stores.device import resolve_device, restore_rng, rng_state
from stores.lock import holds_lock


@dataclass
class PretrainResult:
    """Where the run went and how it ended."""

    out_dir: str
    checkpoint: str
    checkpoint_sha256: str
    best_epoch: int
    best_score: float
    metric: str
    epochs: list[dict]


LAST = "last.pt"


def _save_state(path: Path, model: nn.Module, opt, sched, state: dict, device: torch.device) -> None:
    """Everything needed to continue after this epoch (the GPU's RNG too, when used), written atomically."""
    save_run_checkpoint({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                         **rng_state(device), **state}, path)


def _resume_state(out: Path, config: dict, model: nn.Module, opt, sched, device: torch.device) -> dict | None:
    """The state after the last finished epoch of a run with the same config in ``out`` (None: start).

    The device may differ (a run moves to a GPU machine); every other setting must match."""
    path = out / LAST
    if not path.is_file():
        return None
    before = json.loads((out / "config.json").read_text()) if (out / "config.json").is_file() else {}
    changed = sorted(k for k in set(before) | set(config) if k != "device" and before.get(k) != config.get(k))
    if changed:
        raise ExtractError(f"{out} holds a pretrain run with other settings ({', '.join(changed)}); "
                           "rerun with the same settings to resume it, or choose a new --out")
    ckpt = load_run_checkpoint(path, ("model", "optimizer", "scheduler", "epoch"))
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["optimizer"])
    sched.load_state_dict(ckpt["scheduler"])
    restore_rng(ckpt, device)
    lines = (out / "metrics.jsonl").read_text().splitlines()[:ckpt["epoch"]]  # drop an unfinished epoch's line
    (out / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))
    return {k: ckpt[k] for k in ("epoch", "best", "best_epoch", "sha", "history")}


@holds_lock("out_dir", "run directory")
def pretrain(
    source: Any,
    modality: str,
    backbone: str,
    out_dir: str,
    *,
    setting: str = "full",
    epochs: int = 10,
    batch_size: int = 16,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    device: str = "auto",
    init_checkpoint: str | None = None,
    inflate_from: str | None = None,
    num_workers: int = 0,
    on_error: str = "fail",
    seed: int = 0,
    progress: bool = True,
    keep_in_memory: bool = False,
    on_epoch: Callable[[int], None] | None = None,
) -> PretrainResult:
    """Train ``backbone`` + head on ``modality`` of ``source``; keep the best epoch on val.

    ``on_epoch(epoch)`` is called after each epoch's state is on disk (tests kill a run there)."""
    spec = get_backbone(backbone)
    spec.check_modality(modality)
    if modality not in source.modalities:
        raise ExtractError(f"source {source.name!r} has no modality {modality!r} (it has {', '.join(source.modalities)})")
    if on_error not in ("fail", "skip"):
        raise ExtractError(f"--on-error must be fail or skip, not {on_error!r}")
    resolve_device(device, ExtractError)  # a bad --device fails before any data is read
    torch.manual_seed(seed)
    samples = source.samples()
    train = [s for s in samples if s.split == "train"]
    val = [s for s in samples if s.split == "val"]
    if not train:
        raise DataError(f"source {source.name!r} has no train samples")
    skip = on_error == "skip"
    train_ds = LabelledSamples(source, train, modality, spec, setting, skip, keep=keep_in_memory)
    first = next((train_ds[i] for i in range(min(len(train_ds), 32)) if train_ds[i] is not None), None)
    if first is None:
        raise DataError(f"no readable {modality} sample among the first train samples of {source.name!r}")
    input_dim = int(first[0].shape[-1]) if modality == "text" else None
    model = spec.build(setting, source.num_classes, modality, input_dim)
    init_sha = None
    if inflate_from:
        if backbone != "inflated_resnet50":
            raise ExtractError("--inflate-from takes 2D ResNet-50 weights for inflated_resnet50 only")
        init_sha = inflate_checkpoint(model, inflate_from, head=spec.head)
    elif init_checkpoint:
        init_sha = load_checkpoint(model, init_checkpoint, head=spec.head)
    dev = resolve_device(device, ExtractError)
    model.to(dev)
    task = source.task
    loader = DataLoader(train_ds, batch_size=batch_size, shuffle=True, num_workers=num_workers,
                        collate_fn=collate_samples, drop_last=len(train) > batch_size)
    val_loader = DataLoader(LabelledSamples(source, val, modality, spec, setting, skip, keep=keep_in_memory),
                            batch_size=batch_size,
                            num_workers=num_workers, collate_fn=collate_samples) if val else None
    opt, sched = weight_optimizer(model.parameters(), lr=lr, weight_decay=weight_decay, lr_min=0.0,
                                  restart_period=max(1, epochs), restart_mult=1)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metric = "val_f1_weighted" if task == "multilabel" else "val_accuracy"
    if not val:
        metric = metric.replace("val_", "train_")
    config = {"backbone": backbone, "setting": setting, "modality": modality,
              "source": getattr(source, "name", "source"), "task": task, "num_classes": source.num_classes,
              "input_dim": input_dim, "epochs": epochs, "batch_size": batch_size, "lr": lr,
              "weight_decay": weight_decay, "seed": seed, "device": str(dev), "metric": metric,
              "init_checkpoint": init_checkpoint, "inflate_from": inflate_from, "init_sha256": init_sha,
              "taps": [asdict(t) for t in spec.tap_specs(setting)]}
    state = _resume_state(out, config, model, opt, sched, dev)
    if state is None:
        (out / "config.json").write_text(json.dumps(config, indent=2))
        state = {"epoch": 0, "best": -float("inf"), "best_epoch": -1, "sha": "", "history": []}
    ev_loader = val_loader if val_loader is not None else loader
    on_device = lambda x, y: (x.to(dev), y.to(dev))  # noqa: E731
    if not state["epoch"]:
        (out / "metrics.jsonl").write_text("")

    def end_epoch(epoch: int, totals: EpochTotals) -> None:
        sched.step(epoch + 1)
        scores = split_metrics(task, *predict(model, (b for b in ev_loader if b is not None), to_device=on_device))
        score = scores.get(PRIMARY[task], float("nan"))
        row = {"epoch": epoch + 1, "train_loss": totals.loss, "eval_loss": scores["loss"], metric: score,
               "seconds": totals.seconds}
        state["history"].append(row)
        with open(out / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(row) + "\n")
        if not np.isnan(score) and score > state["best"] or state["best_epoch"] < 0:
            state.update(best=score, best_epoch=epoch + 1, sha=save_checkpoint(model, out / "best.pt"))
        state["epoch"] = epoch + 1
        _save_state(out / LAST, model, opt, sched, state, dev)
        if on_epoch is not None:
            on_epoch(epoch + 1)

    fit(model, lambda epoch: (b for b in loader if b is not None and len(b[1]) >= 2),  # BatchNorm needs two rows
        lambda z, y: loss_fn(task, z, y), opt, None, epochs=epochs, start_epoch=state["epoch"],
        steps_per_epoch=len(loader), to_device=on_device, on_epoch=end_epoch, progress=progress,
        desc=f"pretrain {backbone}")
    history: list[dict] = state["history"]
    best, best_epoch, sha = state["best"], state["best_epoch"], state["sha"]
    summary = {"best_epoch": best_epoch, metric: best, "checkpoint": str(out / "best.pt"), "checkpoint_sha256": sha}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return PretrainResult(str(out), str(out / "best.pt"), sha, best_epoch, float(best), metric, history)
