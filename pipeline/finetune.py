"""`bmnas finetune`: backbones + taps + reduction + the found fusion network as one model, trained
jointly from raw data (the paper's evaluation, §3.4: "train the unimodal backbones and the searched
fusion network jointly").

The joint model and the raw samples it reads are `pipeline.joint_model`'s.

Training: Adam with two parameter groups (backbones at `backbone_lr_scale` × the fusion lr, default
0.1), cosine annealing with warm restarts as `bmnas train`, gradient accumulation over `accumulate`
batches, AMP (float16 autocast + GradScaler) on CUDA, plain float32 on CPU. Backbone BatchNorm layers
keep their pretrained statistics (`freeze_bn`, default on: fine-tuning batches are small). The
fusion network starts from a `bmnas train` run's best checkpoint when `init_from` is given.
Model selection and the run directory are those of `bmnas train` (best on val, or fixed epochs on
train+val), with the whole model in the checkpoints; killed runs resume exactly on CPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from extract.backbones import resolve_backbone
from extract.prepare import options_for_prepared
from fusion_search.data import open_feature_store, resolve_device
from fusion_search.training.engine import EpochTotals, FitOptions, fit, predict
from fusion_search.errors import SearchError
from fusion_search.found_network import count_parameters
from fusion_search.genotype import Genotype, check_provenance
from fusion_search.missing import check_dropout, with_dropout
from fusion_search.training.metrics import PRIMARY, loss_fn
from fusion_search.training.run_checkpoint import load_run_checkpoint
from fusion_search.training.distributed import RANK_RNG, World, gathered, joined
from fusion_search.training.run import Run, shared_run
from fusion_search.training.rundir import BEST, abs_path
from pipeline.evaluate import evaluate_finetune_run, task_metrics
from pipeline.configs import TRAIN_ON, FinetuneConfig
from pipeline.joint_model import (Built, JointModel, backbones_from_store, build_model, load_finetune_config,
                                  raw_loader, to_device)
from pipeline.runs import check_run_options, read_run_config


def finetune(genotype_path: str | os.PathLike, source_path: str, backbones: Sequence[dict[str, Any]],
             out_dir: str | os.PathLike, *, epochs: int | None = None, progress: bool = False,
             evaluate_test: bool = True, setting_given: bool = False, accept_changed_store: bool = False,
             **settings: Any) -> dict[str, Any]:
    """Fine-tune backbones and fusion jointly from raw data into the new run directory `out_dir`.

    `backbones`: per modality {modality, backbone (a spec), checkpoint, taps, setting, input}, as
    extraction takes them. `settings` are FinetuneConfig fields (store, source_kind, source_split,
    source_opts, setting, init_from, batch_size, lr, backbone_lr_scale, amp, loader_workers, ...;
    their defaults are FinetuneConfig's). With `store`, the store's record gives every backbone, its
    checkpoint (and sha256, checked), taps, input, setting and the reduction; `backbones` then
    override fields of it, and `setting_given` lays `setting` over every recorded backbone.
    Under torchrun, every process runs this together (`fusion_search.training.distributed`).
    """
    cfg, opened = _config(genotype_path, source_path, backbones, epochs, setting_given, settings)
    with joined(cfg.device) as world:
        cfg.world_size = world.size
        world.check_batch(cfg.batch_size)
        world.check_sync_bn(cfg.sync_bn)
        genotype = Genotype.load(genotype_path)
        check_dropout(cfg.modality_dropout, genotype.used_nodes())
        torch.manual_seed(cfg.seed)  # the fusion network's initial weights
        built = build_model(cfg, genotype)  # all user errors (checkpoints, nodes, task) before the run dir exists
        if opened is not None:
            _check_made_from(opened, genotype, str(genotype_path), built, cfg.source, accept_changed_store)
        if cfg.init_from:
            _init_fusion(built.model, genotype, cfg.init_from)
        with shared_run(world, lambda: Run.create(out_dir, "finetune", dataclasses.asdict(cfg))) as run:
            if run.writer:
                genotype.save(run.path / "genotype.json")
            return _run(cfg, built, run, world, resume=False, progress=progress, evaluate_test=evaluate_test)


def _config(genotype_path: str | os.PathLike, source_path: str, backbones: Sequence[dict[str, Any]],
            epochs: int | None, setting_given: bool, settings: dict[str, Any]) -> tuple[FinetuneConfig, Any]:
    """The resolved, checked settings of a new finetune run, and its --store opened (None without)."""
    bbs = [_named(dict(b)) for b in backbones]
    store, source_opts = settings.pop("store", None), settings.pop("source_opts", None)
    setting = settings.pop("setting", FinetuneConfig.setting)
    init_from = settings.pop("init_from", None)
    opened = open_feature_store(store) if store is not None else None  # opened once for every check
    if opened is not None:
        bbs, source_opts = _from_store(opened, bbs, settings, source_opts, setting if setting_given else None,
                                       source_path=source_path)
    epochs = check_run_options(epochs, settings.get("train_on", FinetuneConfig.train_on), settings, FinetuneConfig,
                               "finetune")
    for b in bbs:  # absolute paths: evaluate and resume work from any directory
        if b.get("taps"):
            b["taps"] = list(b["taps"])
        if b.get("checkpoint"):
            b["checkpoint"] = abs_path(b["checkpoint"])
    mods = [b["modality"] for b in bbs]
    if len(set(mods)) != len(mods):
        raise SearchError(f"--backbone: one backbone per modality (got {', '.join(mods)})")
    cfg = FinetuneConfig(**settings, genotype=abs_path(genotype_path), source=abs_path(source_path),
                         source_opts=dict(source_opts or {}), backbones=bbs, setting=setting,
                         init_from=abs_path(init_from) if init_from else None, epochs=epochs,
                         store=abs_path(store) if store else None)
    if cfg.train_on not in TRAIN_ON:
        raise SearchError(f"--train-on {cfg.train_on!r}: use train or train+val")
    for name in ("epochs", "batch_size", "accumulate"):
        v = getattr(cfg, name)
        if not isinstance(v, int) or v < 1:
            raise SearchError(f"--{name.replace('_', '-')} {v!r}: use a positive integer")
    return cfg, opened


def _check_made_from(store: Any, genotype: Genotype, genotype_file: str, built: Built, source: str,
                     accept_changed: bool) -> None:
    """Refuse a genotype found on other nodes than the opened `store`'s (`check_provenance`), and raw
    data that is not what the store was extracted from (its sample ids are not the store's):
    fine-tuning would train and report on another data set without a word."""
    check_provenance(genotype, store.node_attrs, genotype_file, accept_changed)
    ids = store.sample_ids
    if ids is None:
        return  # a bring-your-own store without ids: nothing to compare
    known = {str(i) for i in ids}
    theirs = [s.id for s in built.source.samples()]
    foreign = [i for i in theirs if i not in known]
    if foreign:
        raise SearchError(f"--source {source}: {len(foreign)} of its {len(theirs)} samples are not in --store "
                          f"{store.path} (e.g. {foreign[0]}); give the raw data the store was extracted from")


def _named(b: dict[str, Any]) -> dict[str, Any]:
    """A backbone choice with its spec as every process resolves it (an hf: path made absolute)."""
    if b.get("backbone"):
        b["backbone"] = resolve_backbone(b["backbone"], b["modality"], b.get("taps")).name
    return b


def _from_store(opened: Any, given: list[dict[str, Any]], settings: dict[str, Any],
                source_opts: dict[str, Any] | None, setting: str | None, source_path: str | None = None
                ) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The store's backbones with the given fields laid over them; its reduction and source options
    where the call names none (none at all for `source_path` a `bmnas data prepare`d copy made with
    them: its arrays are that reading already). Another backbone spec than recorded drops the
    recorded checkpoint and sha256; another setting drops the recorded input (it was the old
    setting's); given input fields replace the recorded ones field by field."""
    recorded, reduction = backbones_from_store(opened)
    by_mod = {b["modality"]: b for b in recorded}
    for b in by_mod.values():
        if setting is not None and setting != b.get("setting"):
            b.update(setting=setting, input={})  # the recorded input was the old setting's
    for g in given:
        mod = g["modality"]
        if mod not in by_mod:
            raise SearchError(f"--backbone {mod}=...: the store {opened.path} has no {mod} backbone "
                              f"(it has {', '.join(by_mod)})")
        b = by_mod[mod]
        if g.get("backbone") and g["backbone"] != b["backbone"]:
            b.update(checkpoint=None, checkpoint_sha256=None, inflate=False)
        fields = {**(b.get("input") or {}), **(g.get("input") or {})}
        b.update({k: v for k, v in g.items() if v is not None and k != "input"})
        b["input"] = fields
    for key in ("t_max", "grid"):
        if settings.get(key) is None and key in reduction:
            settings[key] = reduction[key]
    if source_opts:
        return list(by_mod.values()), source_opts
    prov = opened.attrs.get("extraction") or {}
    recorded = dict(prov.get("source_options") or {})
    prepared = options_for_prepared(source_path, prov.get("source", ""), recorded) if source_path else None
    return list(by_mod.values()), recorded if prepared is None else prepared


def resume_finetune(run_dir: str | os.PathLike, *, progress: bool = False, evaluate_test: bool = True,
                    device: str | None = None) -> dict[str, Any]:
    """Continue a killed finetune run after its last completed epoch (`device`: move it, as `resume_training`)."""
    with joined(device or load_finetune_config(Path(run_dir)).device) as world, \
            shared_run(world, lambda: _held_for_resume(run_dir)) as run:
        cfg = FinetuneConfig(**run.config)
        cfg.device = device or cfg.device
        world.check_batch(cfg.batch_size)
        genotype = Genotype.load(run.path / "genotype.json")
        built = build_model(cfg, genotype, load_checkpoints=False)
        return _run(cfg, built, run, world, resume=True, progress=progress, evaluate_test=evaluate_test)


@contextlib.contextmanager
def _held_for_resume(run_dir: str | os.PathLike) -> Iterator[Run]:
    with Run.open(run_dir, ("finetune",)) as run:
        run.require_checkpoint()
        load_finetune_config(run.path)  # a train run is refused with the command to use
        yield run


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


def _run(cfg: FinetuneConfig, built: Built, run: Run, world: World, *, resume: bool, progress: bool,
         evaluate_test: bool) -> dict[str, Any]:
    summary = _loop(cfg, built, run, world, resume, progress and world.main)
    if evaluate_test and any(s.split == "test" for s in built.source.samples()):
        world.barrier()  # best.pt is written (by rank 0) before any rank loads it
        summary["test"] = evaluate_finetune_run(run.path, "test", built=built, world=world)
    run.finish(["metrics_test.json"] if summary["test"] is not None else [])
    return summary


def _loop(cfg: FinetuneConfig, built: Built, run: Run, world: World, resume: bool,
          progress: bool) -> dict[str, Any]:
    device = world.device(resolve_device(cfg.device))
    amp = cfg.amp and device.type == "cuda"
    task, key = built.source.task, PRIMARY[built.source.task]
    model = built.model.to(device)
    torch.manual_seed(cfg.seed + world.rank)  # each rank its own dropout stream; rank 0's is a 1-process run's
    bb_params, fusion_params = model.parameter_groups()
    opt, sched = cfg.optimizer([{"params": fusion_params, "lr": cfg.lr},
                                {"params": bb_params, "lr": cfg.lr * cfg.backbone_lr_scale}])
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    log, book = run.log, run.book(key)
    if resume:
        ckpt = book.restore(model, opt, sched, device)
        restore_scaler(scaler, ckpt.get("scaler"))
        world.restore_rng(ckpt, device, cfg.seed + 100_003 * book.epoch)
        log.info("resumed after epoch %d on %d process(es)", book.epoch, world.size)
    else:
        log.info("finetune %s on %s: backbones %s, %d backbone + %d fusion parameters, device %s, amp %s, "
                 "%d process(es)", cfg.genotype, cfg.source,
                 ", ".join(f"{b['modality']}={b['backbone']}" for b in cfg.backbones),
                 sum(p.numel() for p in bb_params), sum(p.numel() for p in fusion_params), device, amp, world.size)
    splits = cfg.train_on.split("+")
    on_device = functools.partial(to_device, device=device)
    val_loader = raw_loader(built, ["val"], cfg, device, world, shuffle=False) if cfg.train_on == "train" else None

    def end_epoch(epoch: int, totals: EpochTotals) -> None:
        record = {**totals.record(epoch, opt.param_groups[0]["lr"]), "backbone_lr": opt.param_groups[1]["lr"]}
        if val_loader is not None:
            logits, labels = predict(model, val_loader, amp=amp, to_device=on_device)
            record["val"] = task_metrics(task, built.source.num_classes,
                                         *gathered(world, list(val_loader.sampler), logits, labels))
        record["seconds"] = totals.seconds
        ranks = world.rng_states(device)
        log.info(book.end_epoch(record, model, opt, sched, device, scaler=scaler.state_dict(),
                                **({RANK_RNG: ranks} if ranks else {})))

    def batches(epoch: int):
        return with_dropout(raw_loader(built, splits, cfg, device, world, shuffle=True, epoch=epoch),
                            cfg.modality_dropout, list(built.node_shapes), cfg.seed + 100_003 * world.rank, epoch)

    fit(world.wrap(model, cfg.sync_bn), batches, lambda z, y: loss_fn(task, z, y), opt, sched,
        FitOptions(epochs=cfg.epochs, start_epoch=book.epoch, params=bb_params + fusion_params, grad_clip=cfg.grad_clip,
                   accumulate=cfg.accumulate, amp=amp, scaler=scaler, to_device=on_device, on_epoch=end_epoch,
                   progress=progress, desc="finetune", world=world))
    return book.summary({"epochs": cfg.epochs, "train_on": cfg.train_on, "num_parameters": count_parameters(model),
                         "fusion_parameters": count_parameters(model.fusion), "test": None})
