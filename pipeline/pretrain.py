"""`bmnas pretrain`: one backbone + its head on one modality of a source, trained by `engine.fit`.

BM-NAS assumes pretrained unimodal backbones; this stage makes them: train on the train split,
keep the weights with the best validation score (ties: the lower validation loss), and write the one
run directory (`fusion_search.training.rundir`: config.yaml, log.txt, metrics.jsonl, checkpoints/last.pt) plus its product
``best.pt`` at the root (a plain state_dict that `bmnas extract --checkpoint` loads) and
``summary.json`` when finished.

Resume: ``checkpoints/last.pt`` (weights, optimiser, scheduler, torch RNG, best so far) is written
atomically after every epoch; `resume_pretrain(RUN)` (`bmnas pretrain --resume RUN`, only --device
may change) continues after the last finished epoch and ends with the same ``best.pt`` as an
uninterrupted run on the same device (the CUDA RNG is saved too when used); a finished run is
returned as is. A directory in the flat layout of older versions (``last.pt`` and ``config.json`` at
its root) is refused in one line naming what to do.

Training: Adam with one cosine cycle over the epochs down to 0 (`fusion_search.training.schedule`, stepped
once per epoch), no gradient clipping; batches with fewer than two readable rows are skipped
(BatchNorm). The data side (prepared samples) is `extract.labelled_samples`.

Under torchrun (`fusion_search.training.distributed`) each process trains on its share of every
global batch (a DistributedSampler order, seeded by --seed and the epoch), the val scores are
gathered over the whole split, and rank 0 alone writes the run. `--on-error skip` is refused there:
a sample skipped on one process would leave the processes with different numbers of steps.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, DistributedSampler

from extract.backbones import resolve_backbone
from extract.checkpoints import inflate_checkpoint, load_checkpoint, save_checkpoint
from extract.errors import DataError, ExtractError
from extract.labelled_samples import LabelledSamples, collate_samples
from extract.sources.registry import open_source
from fusion_search.training.engine import EpochTotals, FitOptions, fit, predict
from fusion_search.training.metrics import PRIMARY, loss_fn, split_metrics
from fusion_search.training.distributed import RANK_RNG, SINGLE, World, die_with_parent, gathered, joined
from fusion_search.training.run import Run, shared_run
from fusion_search.training.rundir import (LAST, METRICS, append_jsonl, improves, keep_epochs, load_training_state,
                                           read_config, save_training_state)
from fusion_search.training.schedule import weight_optimizer
from stores.device import resolve_device
from pipeline.configs import PRETRAIN_SETTABLE, PretrainConfig


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


PRETRAIN_FIELDS = {f.name for f in fields(PretrainConfig)}
OLD_LAYOUT = ("last.pt", "config.json")  # the root files of a pretrain run in older versions' flat layout


@dataclass
class _Parts:
    """What one pretraining run trains and reads, built from its settings."""

    model: nn.Module
    loader: DataLoader
    eval_loader: DataLoader
    device: torch.device
    input_dim: int | None
    init_sha256: str | None
    world: World = SINGLE

    def batches(self, epoch: int) -> Any:
        """One epoch of training batches (this rank's share of each global batch under torchrun)."""
        if isinstance(self.loader.sampler, DistributedSampler):
            self.loader.sampler.set_epoch(epoch)
        return (b for b in self.loader if b is not None and len(b[1]) >= 2)  # BatchNorm: 2 rows

    def scores(self, task: str) -> dict[str, float]:
        """Loss and metrics over the whole eval split (gathered from every rank under torchrun)."""
        to_device = lambda x, y: (x.to(self.device), y.to(self.device))  # noqa: E731
        rows = list(self.eval_loader.sampler) if self.world.size > 1 else []  # (one process: no RNG drawn)
        logits, labels = predict(self.model, (b for b in self.eval_loader if b is not None), to_device=to_device)
        return split_metrics(task, *gathered(self.world, rows, logits, labels))


def _build(source: Any, cfg: PretrainConfig, device: str, *, initialise: bool, world: World = SINGLE) -> _Parts:
    """The model (initial weights from --checkpoint/--inflate-from when `initialise`) and the loaders."""
    modality, setting, batch_size = cfg.modality, cfg.setting, cfg.batch_size
    spec = resolve_backbone(cfg.backbone, modality, cfg.tap_choice)
    inp = spec.input_for(setting, cfg.input)
    if modality not in source.modalities:
        raise ExtractError(f"source {source.name!r} has no modality {modality!r} (it has {', '.join(source.modalities)})")
    if cfg.on_error not in ("fail", "skip"):
        raise ExtractError(f"--on-error must be fail or skip, not {cfg.on_error!r}")
    if cfg.on_error == "skip" and world.size > 1:
        raise ExtractError("--on-error skip: not under torchrun (a sample skipped on one process leaves the "
                           "processes with different step counts); use --on-error fail, or one process")
    batch_size = world.check_batch(batch_size)
    resolve_device(device, ExtractError)  # a bad --device fails before any data is read
    torch.manual_seed(cfg.seed)
    samples = source.samples()
    train = [s for s in samples if s.split == "train"]
    val = [s for s in samples if s.split == "val"]
    if not train:
        raise DataError(f"source {source.name!r} has no train samples")
    skip, keep = cfg.on_error == "skip", cfg.keep_in_memory
    train_ds = LabelledSamples(source, train, modality, spec, inp, skip, keep=keep)
    first = next((train_ds[i] for i in range(min(len(train_ds), 32)) if train_ds[i] is not None), None)
    if first is None:
        raise DataError(f"no readable {modality} sample among the first train samples of {source.name!r}")
    input_dim = int(first[0].shape[-1]) if modality == "text" else None
    model = spec.build(setting, source.num_classes, modality, input_dim, example=first[0])
    init_sha = None
    if cfg.inflate_from:
        if cfg.backbone != "inflated_resnet50":
            raise ExtractError("--inflate-from takes 2D ResNet-50 weights for inflated_resnet50 only")
        init_sha = inflate_checkpoint(model, cfg.inflate_from, head=spec.head) if initialise else None
    elif cfg.init_checkpoint and initialise:
        init_sha = load_checkpoint(model, cfg.init_checkpoint, head=spec.head)
    dev = world.device(resolve_device(device, ExtractError))
    model.to(dev)
    loader = DataLoader(train_ds, batch_size=batch_size, num_workers=cfg.num_workers, collate_fn=collate_samples,
                        drop_last=len(train) > cfg.batch_size, worker_init_fn=die_with_parent,
                        **_order(train_ds, world, True, cfg.seed))
    eval_ds = LabelledSamples(source, val, modality, spec, inp, skip, keep=keep)
    eval_loader = DataLoader(eval_ds, batch_size=batch_size, num_workers=cfg.num_workers, collate_fn=collate_samples,
                             worker_init_fn=die_with_parent, **_order(eval_ds, world, False, cfg.seed)) if val else loader
    return _Parts(model, loader, eval_loader, dev, input_dim, init_sha, world)


def _order(dataset: Any, world: World, shuffle: bool, seed: int) -> dict[str, Any]:
    """One process: the DataLoader's own order (shuffled by the torch RNG); several: rank r's share of
    a DistributedSampler's (the eval split in order, each row once after gathering)."""
    if world.size == 1:
        return {"shuffle": shuffle}
    return {"sampler": DistributedSampler(dataset, num_replicas=world.size, rank=world.rank, shuffle=shuffle,
                                          seed=seed)}


def pretrain(source: Any, modality: str, backbone: str, out_dir: str, *,
             source_location: dict[str, Any] | None = None, on_epoch: Callable[[int], None] | None = None,
             progress: bool = True, **settings: Any) -> PretrainResult:
    """Train ``backbone`` + head on ``modality`` of ``source`` into the new run directory ``out_dir``;
    keep the best epoch on val. ``settings`` are the settable PretrainConfig fields
    (`PRETRAIN_SETTABLE`: setting, epochs, lr, ...); the recorded ones are the run's to fill.

    ``backbone`` is any backbone spec (`extract.backbones.specs`); a torch module needs taps
    (``tap_choice``), its head reads the deepest; ``input`` replaces fields of the backbone's input.

    ``source_location`` ({"path", "kind", "split", "options"}, as `bmnas pretrain` opened the source)
    is recorded so that `--resume` can reopen it. ``on_epoch(epoch)`` is called after each epoch's
    state is on disk (tests kill a run there)."""
    unknown = sorted(set(settings) - set(PRETRAIN_SETTABLE))
    if unknown:
        raise ExtractError(f"pretrain setting(s) {', '.join(unknown)}: not settable; use "
                           f"{', '.join(PRETRAIN_SETTABLE[2:])} (taps: tap_choice, input fields: input)")
    cfg = PretrainConfig(backbone=backbone, modality=modality, source=getattr(source, "name", "source"),
                         source_location=source_location, task=source.task, num_classes=source.num_classes,
                         **settings)
    cfg.tap_choice = list(cfg.tap_choice) if cfg.tap_choice else None
    cfg.input = dict(cfg.input or {})
    spec = resolve_backbone(backbone, modality, cfg.tap_choice)
    cfg.backbone = spec.name  # an hf: path made absolute, so a resume finds it from anywhere
    cfg.taps = [asdict(t) for t in spec.tap_specs(cfg.setting, cfg.tap_choice)]
    with joined(cfg.device) as world:
        cfg.world_size = world.size
        parts = _build(source, cfg, cfg.device, initialise=True, world=world)  # user errors before the run dir
        cfg.metric = ("val_" if parts.eval_loader is not parts.loader else "train_") + \
            ("f1_weighted" if source.task == "multilabel" else "accuracy")
        cfg.device, cfg.input_dim, cfg.init_sha256 = str(parts.device), parts.input_dim, parts.init_sha256
        create = lambda: Run.create(out_dir, "pretrain", asdict(cfg), ExtractError, unstarted=("best.pt",))  # noqa: E731
        with shared_run(world, create, ExtractError) as run:
            return _train(cfg, parts, run, False, progress, on_epoch)


def resume_pretrain(run_dir: str | os.PathLike, *, source: Any = None, device: str | None = None,
                    progress: bool = True, on_epoch: Callable[[int], None] | None = None) -> PretrainResult:
    """Continue a killed pretraining run after its last finished epoch (a finished one is returned as is).

    The source is reopened from the recorded location unless given (a run started from Python with a
    source object); `device` moves the rest of the run, the only setting a resume may change."""
    run = Path(run_dir)
    if all((run / name).is_file() for name in OLD_LAYOUT):
        raise ExtractError(f"--resume {run}: a pretrain run of the earlier layout (last.pt and config.json at its "
                           "root), which this version does not continue: its best.pt stays usable with "
                           "--checkpoint, or start the run again into a new --out")
    started_on = str(read_config(run, ExtractError, "is it a pretrain run directory?").get("device", "auto"))
    with joined(device or started_on) as world, shared_run(world, lambda: _held(run), ExtractError) as held:
        cfg = PretrainConfig(**{k: v for k, v in held.config.items() if k in PRETRAIN_FIELDS})
        if source is None:
            source = _reopen_source(run, cfg.source_location)
        parts = _build(source, cfg, device or cfg.device, initialise=False, world=world)
        return _train(cfg, parts, held, True, progress, on_epoch)


@contextmanager
def _held(run: Path) -> Iterator[Run]:
    with Run.open(run, ("pretrain",), ExtractError) as held:
        held.require_checkpoint()
        yield held


def _reopen_source(run: Path, location: dict[str, Any] | None) -> Any:
    if not location:
        raise ExtractError(f"--resume {run}: the run was started from Python with a source object; resume it "
                           "from Python with resume_pretrain(RUN, source=...)")
    opts = dict(location.get("options") or {})
    if location.get("split"):
        opts["split"] = location["split"]
    return open_source(location["path"], location.get("kind"), **opts)


def _train(cfg: PretrainConfig, parts: _Parts, run: Run, resume: bool, progress: bool,
           on_epoch: Callable[[int], None] | None) -> PretrainResult:
    """The epochs of `engine.fit`, with best-on-eval selection, metrics.jsonl and last.pt after each."""
    model, dev, world = parts.model, parts.device, parts.world
    opt, sched = weight_optimizer(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, lr_min=0.0,
                                  restart_period=max(1, cfg.epochs), restart_mult=1)
    state = {"epoch": 0, "best": -float("inf"), "best_epoch": -1, "sha": "", "history": [], "best_loss": None}
    if resume:
        ckpt = load_training_state(run.path / LAST, model, opt, sched, dev,
                                   ("epoch", "best", "best_epoch", "sha", "history"))
        world.restore_rng(ckpt, dev, cfg.seed + 100_003 * int(ckpt["epoch"]))
        state = {k: ckpt.get(k) for k in state}
        if run.writer:
            keep_epochs(run.path / METRICS, state["epoch"])
        run.log.info("resumed after epoch %d on %d process(es)", state["epoch"], world.size)
    else:
        if world.rank:  # each rank its own stream from here; rank 0 goes on with a 1-process run's
            torch.manual_seed(cfg.seed + world.rank)
        run.log.info("pretrain %s (%s) on %s of %s, device %s, %d process(es)", cfg.backbone, cfg.setting,
                     cfg.modality, cfg.source, dev, world.size)

    def end_epoch(epoch: int, totals: EpochTotals) -> None:
        sched.step(epoch + 1)
        _end_epoch(cfg, parts, run, state, epoch, totals, (opt, sched))
        if on_epoch is not None:
            on_epoch(epoch + 1)

    fit(world.wrap(model), parts.batches, lambda z, y: loss_fn(cfg.task, z, y), opt, None,
        FitOptions(epochs=cfg.epochs, start_epoch=state["epoch"], steps_per_epoch=len(parts.loader),
                   to_device=lambda x, y: (x.to(dev), y.to(dev)), on_epoch=end_epoch, progress=progress and world.main,
                   desc=f"pretrain {cfg.backbone}", world=world))
    best, best_epoch, sha = state["best"], state["best_epoch"], state["sha"]
    summary = {"best_epoch": best_epoch, cfg.metric: best, "checkpoint": str(run.path / "best.pt"),
               "checkpoint_sha256": sha}
    run.write_json("summary.json", summary)
    run.finish(["best.pt", "summary.json"])
    return PretrainResult(str(run.path), str(run.path / "best.pt"), sha, best_epoch, float(best), cfg.metric,
                          state["history"])


def _end_epoch(cfg: PretrainConfig, parts: _Parts, run: Run, state: dict[str, Any], epoch: int,
               totals: EpochTotals, optimisation: tuple[Any, Any]) -> None:
    """Score the eval split, select, and (rank 0) write the epoch's line, best.pt and last.pt."""
    opt, sched = optimisation
    scores = parts.scores(cfg.task)
    score = scores.get(PRIMARY[cfg.task], float("nan"))
    row = {"epoch": epoch + 1, "train_loss": totals.loss, "eval_loss": scores["loss"], cfg.metric: score,
           "seconds": totals.seconds}
    state["history"].append(row)
    improved = state["best_epoch"] < 0 or improves(score, scores["loss"], state["best"], state["best_loss"])
    if improved:
        state.update(best=score, best_loss=scores["loss"], best_epoch=epoch + 1)
    state["epoch"] = epoch + 1
    ranks = parts.world.rng_states(parts.device)
    if run.writer:
        append_jsonl(run.path / METRICS, row)
        run.events.add({**row, "lr": opt.param_groups[0]["lr"]})
        if improved:
            state["sha"] = save_checkpoint(parts.model, run.path / "best.pt")
        save_training_state(run.path / LAST, parts.model, opt, sched, parts.device, **state,
                            **({RANK_RNG: ranks} if ranks else {}))
    run.log.info("epoch %d: train loss %.4f, %s %.4f, best epoch %d (%.1fs)", epoch + 1, totals.loss, cfg.metric,
                 score, state["best_epoch"], row["seconds"])
