"""`bmnas train`: train a found genotype on cached features, keep the best checkpoint, evaluate on test.

Two protocols (paper §3.4):
- `train_on="train"` (default): train on the train split, evaluate on val after every epoch, keep the
  checkpoint with the best val score (accuracy / weighted F1; ties: the lower val loss,
  `fusion_search.training.rundir.improves`), evaluate that one on test;
- `train_on="train+val"`: the paper's final protocol, train on train ∪ val for a fixed number of
  epochs (no model selection, so `epochs` must be given) and evaluate the last weights on test.

Schedule as the paper/official code: Adam lr 1e-3, weight decay 3e-4, cosine annealing with warm
restarts to 1e-6 (T_0 = 1 epoch, T_mult = 2), gradient clipping at 5, dropout 0.2.

Run directory (resumable like search: everything needed to continue is saved after each epoch, so a
killed run resumed with `resume=True` ends with the same weights as an uninterrupted one on CPU):
  config.yaml            kind: train + resolved settings (what resume and evaluate read)
  genotype.json          the genotype trained (a copy: the run stays valid if the original moves)
  log.txt, metrics.jsonl one JSON line per epoch (train loss/accuracy, val metrics, lr, seconds)
  tensorboard/           the same numbers as TensorBoard scalars (`fusion_search.training.events`)
  checkpoints/last.pt    model, optimiser, scheduler, RNG, best score (for resume)
  checkpoints/best.pt    {"model", "epoch", "score"}: the weights `evaluate` and `finetune` load
  metrics_test.json ...  written by `pipeline.evaluate.evaluate_held_run` at the end
  run.json               kind, status ("finished" once the test evaluation is written), times, results
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Any, Iterator

import torch

from fusion_search.data import budget_bytes, resolve_device
from fusion_search.training.engine import EpochTotals, FitOptions, fit, steps_per_epoch
from fusion_search.errors import SearchError
from fusion_search.evaluation import evaluate
from fusion_search.found_network import FoundNetwork, count_parameters
from fusion_search.genotype import Genotype
from fusion_search.missing import check_dropout, with_dropout
from fusion_search.training.metrics import PRIMARY, loss_fn
from fusion_search.training.distributed import RANK_RNG, World, joined
from fusion_search.training.run import Run, shared_run
from fusion_search.training.rundir import abs_path
from pipeline.evaluate import evaluate_held_run
from pipeline.configs import TRAIN_ON, TrainConfig
from pipeline.runs import check_run_options, open_splits, open_store_checked, read_run_config
from stores import FeatureStore

def _validate(cfg: TrainConfig) -> None:
    if cfg.train_on not in TRAIN_ON:
        raise SearchError(f"--train-on {cfg.train_on!r}: use train or train+val")
    if not isinstance(cfg.epochs, int) or cfg.epochs < 1:
        raise SearchError(f"--epochs {cfg.epochs!r}: use a positive integer")
    if not isinstance(cfg.batch_size, int) or cfg.batch_size < 1:
        raise SearchError(f"--batch-size {cfg.batch_size!r}: use a positive integer")
    if not 0.0 <= float(cfg.dropout) < 1.0:
        raise SearchError(f"dropout {cfg.dropout!r}: use a value in [0, 1)")


def train_on_cache(store_path: str, genotype_path: str | os.PathLike, out_dir: str | os.PathLike, *,
                   epochs: int | None = None, progress: bool = False, evaluate_test: bool = True,
                   accept_changed_store: bool = False, **settings: Any) -> dict[str, Any]:
    """Train `genotype_path` on `store_path` into the new run directory `out_dir`; returns the summary.

    `settings` are TrainConfig fields (batch_size, seed, device, train_on, lr, dropout, ...; their
    defaults are TrainConfig's). `epochs=None` means DEFAULT_EPOCHS with `train_on="train"`;
    `train+val` needs a fixed count (no val to stop on). A genotype whose recorded node provenance
    differs from the store's nodes is refused unless `accept_changed_store`.
    """
    epochs = check_run_options(epochs, settings.get("train_on", TrainConfig.train_on), settings, TrainConfig,
                               "training")
    # absolute paths: `evaluate`, `report` and resume work from any directory
    cfg = TrainConfig(**{**settings, "store": abs_path(store_path), "genotype": abs_path(genotype_path),
                         "epochs": epochs})
    _validate(cfg)
    genotype = Genotype.load(genotype_path)
    check_dropout(cfg.modality_dropout, genotype.used_nodes())
    store = open_store_checked(cfg.store, genotype, str(genotype_path), accept_changed_store)
    with joined(cfg.device) as world:
        cfg.world_size = world.size
        world.check_batch(cfg.batch_size)
        world.check_sync_bn(cfg.sync_bn)
        with shared_run(world, lambda: Run.create(out_dir, "train", dataclasses.asdict(cfg))) as run:
            run.bind_store(store)
            if run.writer:
                genotype.save(run.path / "genotype.json")
            return _train(cfg, genotype, run, world, resume=False, progress=progress, evaluate_test=evaluate_test,
                          store=store)


def resume_training(run_dir: str | os.PathLike, *, progress: bool = False, evaluate_test: bool = True,
                    device: str | None = None, accept_changed_store: bool = False) -> dict[str, Any]:
    """Continue a killed `train` run from its last completed epoch (a finished run just re-evaluates).

    `device` moves the rest of the run (the only setting a resume may change; config.yaml keeps
    the original)."""
    with joined(device or TrainConfig(**read_run_config(run_dir)).device) as world, \
            shared_run(world, lambda: _held_for_resume(run_dir, accept_changed_store)) as run:
        cfg = TrainConfig(**run.config)
        cfg.device = device or cfg.device
        world.check_batch(cfg.batch_size)
        genotype = Genotype.load(run.path / "genotype.json")
        store = open_store_checked(cfg.store, genotype, str(run.path / "genotype.json"), accept_changed_store)
        return _train(cfg, genotype, run, world, resume=True, progress=progress, evaluate_test=evaluate_test,
                      store=store)


@contextlib.contextmanager
def _held_for_resume(run_dir: str | os.PathLike, accept_changed_store: bool) -> Iterator[Run]:
    """The train run at `run_dir`, held, with a checkpoint and the store it read (or an accepted change)."""
    with Run.open(run_dir, ("train",)) as run:
        run.require_checkpoint()
        genotype = Genotype.load(run.path / "genotype.json")
        store = open_store_checked(run.config["store"], genotype, str(run.path / "genotype.json"),
                                   accept_changed_store)
        run.check_store(store, accept_changed_store)
        yield run


def _train(cfg: TrainConfig, genotype: Genotype, run: Run, world: World, *, resume: bool, progress: bool,
           evaluate_test: bool, store: FeatureStore) -> dict[str, Any]:
    """The run's epochs and its test evaluation (rank 0's: the others wait), on `store` (opened and
    checked once per command)."""
    summary = _loop(cfg, genotype, run, world, store, resume, progress and world.main)
    if evaluate_test and len(store.splits.get("test", ())) > 0:
        if world.main:
            summary["test"] = evaluate_held_run(run.path, run.config, "test", store=store)
            run.log.info("test (checkpoint of epoch %d): %s %.4f", summary["best_epoch"], PRIMARY[store.task],
                         summary["test"].get(PRIMARY[store.task], float("nan")))
        world.barrier()
    run.finish(["metrics_test.json"] if summary["test"] is not None else [])
    return summary


def _loop(cfg: TrainConfig, genotype: Genotype, run: Run, world: World, store: FeatureStore, resume: bool,
          progress: bool) -> dict[str, Any]:
    from tqdm import tqdm

    task, key = store.task, PRIMARY[store.task]
    device = world.device(resolve_device(cfg.device))
    nodes = genotype.used_nodes()
    budget = budget_bytes(cfg.memory_budget_gb)
    train = open_splits(store, cfg.train_on.split("+"), nodes, device, budget)
    val = open_splits(store, ["val"], nodes, device, budget) if cfg.train_on == "train" else None
    torch.manual_seed(cfg.seed)
    model = FoundNetwork(genotype, store.node_shapes, cfg.dropout, cfg.modality_dropout > 0).to(device)
    if world.rank:  # each rank its own dropout stream; rank 0 goes on with a 1-process run's
        torch.manual_seed(cfg.seed + world.rank)
    params = [p for p in model.parameters() if p.requires_grad]
    opt, sched = cfg.optimizer(params)
    log, book = run.log, run.book(key)
    if resume:
        world.restore_rng(book.restore(model, opt, sched, device), device, cfg.seed + 100_003 * book.epoch)
        log.info("resumed after epoch %d on %d process(es)", book.epoch, world.size)
    else:
        log.info("train %s on %s (%s): %d rows, nodes %s, device %s, %d parameters, %d process(es)",
                 run.path / "genotype.json", store.path, cfg.train_on, train.num_rows, ",".join(nodes), device,
                 count_parameters(model), world.size)

    def end_epoch(epoch: int, totals: EpochTotals) -> None:
        record = totals.record(epoch, opt.param_groups[0]["lr"])
        if val is not None:  # every rank scores the whole (cached) split: the same numbers, no gathering
            record["val"] = evaluate(model, val, task, cfg.batch_size)
        record["seconds"] = totals.seconds
        ranks = world.rng_states(device)
        msg = book.end_epoch(record, model, opt, sched, device, **({RANK_RNG: ranks} if ranks else {}))
        log.info(msg)
        if progress:
            tqdm.write(msg)

    def batches(epoch: int):
        return with_dropout(train.batches(cfg.batch_size, cfg.seed, epoch, world=world), cfg.modality_dropout, nodes,
                            cfg.seed + 100_003 * world.rank, epoch)

    fit(world.wrap(model, cfg.sync_bn), batches, lambda z, y: loss_fn(task, z, y), opt, sched,
        FitOptions(epochs=cfg.epochs, start_epoch=book.epoch, params=params, grad_clip=cfg.grad_clip,
                   steps_per_epoch=steps_per_epoch(train.num_rows, cfg.batch_size), on_epoch=end_epoch,
                   progress=progress, world=world))
    return book.summary({"epochs": cfg.epochs, "train_on": cfg.train_on,
                         "num_parameters": count_parameters(model), "test": None})
