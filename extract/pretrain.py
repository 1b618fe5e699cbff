"""Unimodal pretraining: one backbone + its head on one modality of a source.

BM-NAS assumes pretrained unimodal backbones; this stage makes them: train on the train split,
keep the weights with the best validation score, and write a run directory with ``best.pt``
(a plain state_dict that `bmnas extract --checkpoint` loads), ``config.json`` and
``metrics.jsonl`` (one line per epoch).

Resume: ``last.pt`` (weights, optimiser, scheduler, torch RNG, best so far) is written atomically
after every epoch, so rerunning the same command into the same directory after a kill continues
after the last finished epoch and ends with the same ``best.pt`` as an uninterrupted run on the same
device (the CUDA RNG is saved too when used); a finished run is returned as is. The device may change
on rerun; other settings in that directory are an error, never a silent mix.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from extract.backbones import get_backbone
from extract.checkpoints import inflate_checkpoint, load_checkpoint, save_checkpoint
from extract.errors import DataError, ExtractError
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


class _Samples(Dataset):
    """Prepared (input, label) pairs; with skip=True unreadable samples become None.

    With ``keep=True`` each prepared input is kept in memory after its first read, so later epochs
    skip decoding (worth it for small data sets such as the demo's; off by default because a real
    data set does not fit in RAM).
    """

    def __init__(self, source: Any, samples: list, modality: str, spec: Any, setting: str, skip: bool,
                 keep: bool = False):
        self.source, self.samples, self.modality, self.spec, self.skip = source, samples, modality, spec, skip
        self.setting = setting
        self.labels = source.label_array(samples)
        self.kept: dict[int, Any] | None = {} if keep else None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        if self.kept is not None and i in self.kept:
            return self.kept[i]
        item = self._read(i)
        if self.kept is not None:
            self.kept[i] = item
        return item

    def _read(self, i: int):
        sid = self.samples[i].id
        try:
            x = self.spec.prepare_input(self.source.read(sid, self.modality), self.modality, self.setting)
        except Exception as exc:  # noqa: BLE001
            if self.skip:
                return None
            raise DataError(f"sample {sid} ({self.source.path_of(sid, self.modality)}): {exc}; "
                            "fix the file or pass --on-error skip") from exc
        return x, torch.as_tensor(self.labels[i])


def _collate(items):
    items = [it for it in items if it is not None]
    if not items:
        return None
    return torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])


def weighted_f1(y: np.ndarray, pred: np.ndarray) -> float:
    """Support-weighted F1 over labels (MM-IMDB's F1-W)."""
    tp = (y & pred).sum(0).astype(float)
    prec = tp / np.maximum(pred.sum(0), 1)
    rec = tp / np.maximum(y.sum(0), 1)
    f1 = np.where(prec + rec > 0, 2 * prec * rec / np.maximum(prec + rec, 1e-12), 0.0)
    support = y.sum(0)
    return float((f1 * support).sum() / max(support.sum(), 1))


def _evaluate(model: nn.Module, loader: DataLoader, task: str, device: torch.device, loss_fn) -> tuple[float, float]:
    model.eval()
    losses, ys, outs = [], [], []
    with torch.inference_mode():
        for batch in loader:
            if batch is None:
                continue
            x, y = batch[0].to(device), batch[1].to(device)
            logits = model(x)
            losses.append(float(loss_fn(logits, y.float() if task == "multilabel" else y)) * len(y))
            ys.append(y.cpu().numpy())
            outs.append(logits.float().cpu().numpy())
    if not ys:
        return float("nan"), float("nan")
    y, out = np.concatenate(ys), np.concatenate(outs)
    score = weighted_f1(y.astype(bool), out > 0) if task == "multilabel" else float((out.argmax(1) == y).mean())
    return sum(losses) / len(y), score


LAST = "last.pt"


def _save_state(path: Path, model: nn.Module, opt, sched, state: dict, device: torch.device) -> None:
    """Everything needed to continue after this epoch (the GPU's RNG too, when used), written atomically."""
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                **rng_state(device), **state}, tmp)
    tmp.replace(path)


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
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
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
    train_ds = _Samples(source, train, modality, spec, setting, skip, keep=keep_in_memory)
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
    loss_fn = nn.BCEWithLogitsLoss() if task == "multilabel" else nn.CrossEntropyLoss()
    loader = DataLoader(train_ds, batch_size=batch_size, shuffle=True, num_workers=num_workers,
                        collate_fn=_collate, drop_last=len(train) > batch_size)
    val_loader = DataLoader(_Samples(source, val, modality, spec, setting, skip, keep=keep_in_memory),
                            batch_size=batch_size,
                            num_workers=num_workers, collate_fn=_collate) if val else None
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs))
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
    history: list[dict] = state["history"]
    best, best_epoch, sha = state["best"], state["best_epoch"], state["sha"]
    from tqdm import tqdm

    with open(out / "metrics.jsonl", "a" if state["epoch"] else "w") as log:
        for epoch in tqdm(range(state["epoch"], epochs), desc=f"pretrain {backbone}", disable=not progress,
                          leave=False, initial=state["epoch"], total=epochs):
            model.train()
            t0, total, seen = time.perf_counter(), 0.0, 0
            for batch in loader:
                if batch is None or len(batch[1]) < 2:  # BatchNorm needs two rows
                    continue
                x, y = batch[0].to(dev), batch[1].to(dev)
                loss = loss_fn(model(x), y.float() if task == "multilabel" else y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total, seen = total + loss.item() * len(y), seen + len(y)
            sched.step()
            ev_loader = val_loader if val_loader is not None else loader
            ev_loss, score = _evaluate(model, ev_loader, task, dev, loss_fn)
            row = {"epoch": epoch + 1, "train_loss": total / max(seen, 1), "eval_loss": ev_loss, metric: score,
                   "seconds": time.perf_counter() - t0}
            history.append(row)
            log.write(json.dumps(row) + "\n")
            log.flush()
            if not np.isnan(score) and score > best or best_epoch < 0:
                best, best_epoch = score, epoch + 1
                sha = save_checkpoint(model, out / "best.pt")
            _save_state(out / LAST, model, opt, sched, {"epoch": epoch + 1, "best": best, "best_epoch": best_epoch,
                                                        "sha": sha, "history": history}, dev)
            if on_epoch is not None:
                on_epoch(epoch + 1)
    summary = {"best_epoch": best_epoch, metric: best, "checkpoint": str(out / "best.pt"), "checkpoint_sha256": sha}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return PretrainResult(str(out), str(out / "best.pt"), sha, best_epoch, float(best), metric, history)
