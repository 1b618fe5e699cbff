"""The search stage (Algorithm 1) and its run directory, with epoch-boundary checkpoints and resume.

Per train batch: a weight step on it, then an architecture step on the next val batch. After each
epoch: the hypernet's val metrics (no autograd), the derived genotype (eqs. 3, 11, top-2 β), its
score on val, and the best genotype so far (the official code keeps the best on val, too).

Two departures, both off by default (paper behaviour), both used by the demo (so are `cross_modal`
and `op_variants`, see `derive`):
- `arch_warmup_epochs`: weight steps only for the first epochs, as P-DARTS/PC-DARTS do. With few
  steps per epoch, α otherwise moves on the gradients of an untrained hypernet and its ranking is
  settled before the hypernet has learnt any cross-modal term.
- `candidates` k > 1: each epoch, the k best-ranked genotypes by α (eq. 3's pair first, then
  runner-up input pairs, `derive.ranked_pair_sets`) are scored and the best kept. An {Identity,
  Zero} α acts as a gain on its input (BatchNorm follows), so a high α marks a loud input, not
  necessarily the pair the hypernet relies on; on the demo data eq. 3 alone picks two skeleton taps
  while a video/skeleton pair a few ranks down scores far higher on val.

Scoring a genotype (`score: found`, default): the discrete FoundNetwork is trained `score_epochs`
epochs (at least `score_min_steps` optimiser steps, so small splits do not score an untrained net) on
train and evaluated on val, `score_seeds` times (mean; the training seeds derive from the genotype
alone, so any search on the same store scores a genotype the same way); scores are cached by
genotype, so an unchanged genotype costs nothing.
`score: hypernet` uses the hypernet's own val metric instead (the cheap, official behaviour).

Determinism and resume: batches come from the store's seeded order (seed, epoch); val batches from
a separate seeded stream restarted every epoch; the torch RNG, optimisers, scheduler, score cache
and best genotype are checkpointed after each epoch; scoring runs in a forked RNG. A killed search
resumed with `--resume RUN` therefore ends with the same genotype and metrics as an uninterrupted
one (CPU, same seed); work of the interrupted epoch is redone (a run killed before its first
checkpoint starts over with its config.yaml).

Run directory:
  config.yaml            resolved settings (what --resume reads)
  log.txt                human-readable log (appended on resume)
  metrics.jsonl          one JSON line per epoch
  arch_history.jsonl     softmaxed α, β, γ after each epoch
  tensorboard/           metrics.jsonl's numbers and the α/β/γ entropies as TensorBoard scalars
  genotypes/epoch_NNN.json   the genotype derived after each epoch
  genotype.json          the best genotype so far
  checkpoints/last.pt    weights, α/β/γ, optimisers, scheduler, RNG state, best, score cache
  plots/                 alpha.png, beta.png, gamma.png (heatmaps over epochs), metrics.png
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch

from fusion_search.architect import Architect
from fusion_search.config import SearchConfig, config_from_mapping, validate
from fusion_search.data import (SplitData, TensorBatch, budget_bytes, open_feature_store, open_split, require_rows,
                                resolve_device)
from fusion_search.errors import SearchError
from fusion_search.derive import node_modalities, uniform_op_variants
from fusion_search.training.engine import EpochTotals, FitOptions, Step, fit, steps_per_epoch
from fusion_search.evaluation import ScoringRecipe, evaluate, score_genotype
from fusion_search.training.events import EpochEvents, entropies
from fusion_search.genotype import Genotype
from fusion_search.history import plot_history, plot_metrics
from fusion_search.hypernet import Hypernet, HypernetSpec, arch_weights_to_lists
from fusion_search.missing import check_dropout, with_dropout
from fusion_search.training.metrics import PRIMARY, loss_fn
from fusion_search.training.run_checkpoint import load_run_checkpoint, save_run_checkpoint
from fusion_search.training.run import Run, settings_diff
from fusion_search.training.rundir import CONFIG, LAST, METRICS, append_jsonl, keep_epochs, read_config, read_jsonl
from fusion_search.training.schedule import weight_optimizer
from stores.device import restore_rng, rng_state

BatchCallback = Callable[[int, int], None]


@dataclass
class SearchResult:
    run_dir: Path
    genotype_path: Path
    genotype: Genotype
    best_score: float
    best_epoch: int


def _check_store(store, cfg: SearchConfig) -> list[str]:
    """The store must have non-empty train and val splits and the chosen nodes."""
    require_rows(store, ("train", "val"), "search needs train and val splits: write the store with both")
    nodes = list(store.nodes) if not cfg.nodes else [n for n in store.nodes if n in cfg.nodes]
    unknown = [n for n in (cfg.nodes or []) if n not in store.nodes]
    if unknown:
        raise SearchError(f"--nodes: unknown node(s) {', '.join(unknown)}; the store has {', '.join(store.nodes)}")
    reserved = [n for n in nodes if n.startswith("cell_")]
    if reserved:
        raise SearchError(f"--store {store.path}: node name(s) {', '.join(reserved)} clash with Cell names "
                          "(cell_k); rename the modality")
    if len(nodes) < 2:
        raise SearchError(f"--nodes: a Cell fuses two inputs, choose at least two nodes (got {', '.join(nodes) or 'none'})")
    if cfg.cross_modal and len(set(node_modalities(nodes))) < 2:
        raise SearchError(f"--cross-modal: the nodes {', '.join(nodes)} are of one modality; drop --cross-modal "
                          "or search over nodes of two modalities")
    check_dropout(cfg.modality_dropout, nodes)
    return nodes


def _val_stream(val: SplitData, batch_size: int, seed: int, epoch: int, modality_dropout: float = 0.0,
                nodes: Sequence[str] = ()) -> Iterator[TensorBatch]:
    """Endless val batches for the arch steps of one epoch (own seeded order, restarts per epoch), under
    the search's modality dropout."""
    k = 0
    while True:
        yield from with_dropout(val.batches(batch_size, seed, 1_000_000 + epoch * 1000 + k), modality_dropout, nodes,
                                seed + 1, 1_000_000 + epoch * 1000 + k)
        k += 1


class _SearchEpochs:
    """The search's side of each epoch of `engine.fit`: after every weight step, an architecture step on
    the next batch of this epoch's own val stream (from `arch_warmup_epochs` on), and its loss."""

    def __init__(self, cfg: SearchConfig, architect: Architect, val: SplitData, on_batch: BatchCallback | None,
                 nodes: list[str]) -> None:
        self.cfg, self.architect, self.val, self.on_batch, self.nodes = cfg, architect, val, on_batch, nodes
        self.arch_loss_sum = 0.0
        self._vals: Iterator[TensorBatch] = iter(())

    def batches(self, train: SplitData) -> Callable[[int], Iterator[TensorBatch]]:
        def epoch_batches(epoch: int) -> Iterator[TensorBatch]:
            self.arch_loss_sum = 0.0
            cfg = self.cfg
            self._vals = _val_stream(self.val, cfg.batch_size, cfg.seed, epoch, cfg.modality_dropout, self.nodes)
            return with_dropout(train.batches(cfg.batch_size, cfg.seed, epoch), cfg.modality_dropout, self.nodes,
                                cfg.seed, epoch)
        return epoch_batches

    def arch_step(self, step: Step) -> None:
        """`step.lr` is ξ, the learning rate of the weight step just taken (second order uses it)."""
        if step.epoch >= self.cfg.arch_warmup_epochs:
            a_loss = self.architect.step(next(self._vals), step.batch, step.lr)
        else:
            a_loss = float("nan")
        self.arch_loss_sum += float(a_loss) * len(step.batch[1])
        if self.on_batch is not None:
            self.on_batch(step.epoch, step.index)


class _RunFiles:
    """The search's files in its run directory (`fusion_search.training.rundir` owns the shared ones)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.config = root / CONFIG
        self.metrics = root / METRICS
        self.history = root / "arch_history.jsonl"
        self.genotypes = root / "genotypes"
        self.genotype = root / "genotype.json"
        self.checkpoint = root / LAST
        self.plots = root / "plots"

    def clear_partial(self) -> None:
        """Remove what an epoch without checkpoint may have written (a kill before the first one)."""
        for path in (self.metrics, self.history, self.genotype):
            path.unlink(missing_ok=True)
        for path in self.genotypes.glob("epoch_*.json") if self.genotypes.is_dir() else ():
            path.unlink()


def load_run_config(run_dir: str | os.PathLike) -> SearchConfig:
    """The resolved config of an existing run (for --resume); its `kind` is the run's, not a setting."""
    data = read_config(run_dir, SearchError, "is it a run directory of `bmnas search`?")
    kind = data.pop("kind", "search")
    if kind != "search":
        raise SearchError(f"{run_dir}: a {kind} run, not a search run; use `bmnas {kind}` with it")
    return config_from_mapping(data, str(Path(run_dir) / CONFIG))


# what a search writes before its first checkpoint, beside what every run writes (`Run.create`)
SEARCH_UNSTARTED = ("arch_history.jsonl", "genotypes", "plots")


def run_search(cfg: SearchConfig, out: str | os.PathLike, *, resume: bool = False, progress: bool = False,
               on_batch: BatchCallback | None = None, accept_changed_store: bool = False) -> SearchResult:
    """Run (or resume) a search into run directory `out`; returns the best genotype. A resumed run
    killed before its first checkpoint starts over in place with its config; a resume on a store that
    is not the one the run read is refused unless `accept_changed_store`."""
    validate(cfg)
    if resume:
        with Run.open(out, ("search",)) as run:
            store = open_feature_store(cfg.store)
            run.check_store(store, accept_changed_store)
            return _in_run(cfg, run, progress, on_batch, (store, _check_store(store, cfg)))
    store = open_feature_store(cfg.store)
    nodes = _check_store(store, cfg)  # every user error before the run directory is written
    with Run.create(out, "search", cfg.to_dict(), unstarted=SEARCH_UNSTARTED) as run:
        run.bind_store(store)
        return _in_run(cfg, run, progress, on_batch, (store, nodes), new=True)


def _in_run(cfg: SearchConfig, run: Run, progress: bool, on_batch: BatchCallback | None, checked: tuple,
            new: bool = False) -> SearchResult:
    """The search in a held run on its opened, checked store: resumed from its checkpoint, restarted
    when it has none."""
    files = _RunFiles(run.path)
    resume = files.checkpoint.is_file()
    if not resume and not new:
        files.clear_partial()
        run.log.info("no checkpoint yet: restarting the search from its first epoch")
    store, nodes = checked
    files.genotypes.mkdir(parents=True, exist_ok=True)
    result = _search(_Search(cfg, store, nodes, resolve_device(cfg.device), files, run.log, run.events), resume,
                     progress, on_batch)
    run.finish(["genotype.json"])
    return result


def _search(run: "_Search", resume: bool, progress: bool, on_batch: BatchCallback | None) -> SearchResult:
    """Algorithm 1's epochs through `engine.fit`, from the checkpoint's epoch when resuming."""
    cfg = run.cfg
    if resume:
        run.restore()
    else:
        run.log.info("search on %s: %d train / %d val rows, nodes %s, device %s, %d weight parameters",
                     run.store_path, run.train.num_rows, run.val.num_rows, ",".join(run.nodes), run.device,
                     sum(p.numel() for p in run.weights))
    loop = _SearchEpochs(cfg, run.architect, run.val, on_batch, run.nodes)
    fit(run.step_model, loop.batches(run.train), run.loss, run.w_opt, run.sched,
        FitOptions(epochs=cfg.epochs, start_epoch=run.state["epoch"], params=run.weights, grad_clip=cfg.grad_clip,
                   steps_per_epoch=steps_per_epoch(run.train.num_rows, cfg.batch_size), on_step=loop.arch_step,
                   on_epoch=lambda epoch, totals: run.end_epoch(epoch, totals, loop, progress), progress=progress,
                   desc="epoch", leave=True))
    return run.finish()


class _Search:
    """One search's hypernet, optimisers and bookkeeping (epoch, best genotype, score cache): built in
    a fixed RNG order from the seed, restored from last.pt, advanced one epoch at a time."""

    def __init__(self, cfg: SearchConfig, store, nodes: list[str], device: torch.device, files: _RunFiles,
                 log, events: EpochEvents) -> None:
        self.cfg, self.files, self.log, self.device, self.task = cfg, files, log, device, store.task
        self.nodes, self.store_path = nodes, store.path
        self.node_attrs = {n: store.node_attrs(n) for n in nodes}  # each saved genotype's provenance
        self.events = events
        budget = budget_bytes(cfg.memory_budget_gb)
        self.train = open_split(store, "train", nodes, device, budget)
        self.val = open_split(store, "val", nodes, device, budget)
        self.scoring = _Scoring(cfg, self.train, self.val, dict(store.node_shapes), store.task)
        torch.manual_seed(cfg.seed)
        spec = HypernetSpec(nodes=tuple(nodes), node_shapes=dict(store.node_shapes), task=store.task,
                            num_classes=store.num_classes, cells=cfg.cells, steps=cfg.steps, C=cfg.channels,
                            L=cfg.length, multiplier=cfg.multiplier, primitives=tuple(cfg.primitives),
                            step_inputs=cfg.step_inputs, dropout=cfg.dropout, cross_modal=cfg.cross_modal,
                            learned_placeholders=cfg.modality_dropout > 0)
        self.model = Hypernet(spec).to(device)
        self.weights, arch = self.model.weight_parameters(), self.model.arch_parameters()
        self.w_opt, self.sched = weight_optimizer(self.weights, lr=cfg.weight_lr, weight_decay=cfg.weight_decay,
                                                  lr_min=cfg.weight_lr_min, restart_period=cfg.restart_period,
                                                  restart_mult=cfg.restart_mult)
        self.a_opt = torch.optim.Adam(arch, lr=cfg.arch_lr, betas=(0.5, 0.999), weight_decay=cfg.arch_weight_decay,
                                      foreach=True)
        self.loss = lambda z, y: loss_fn(store.task, z, y)
        # the steps run the compiled hypernet with --compile (the same parameters; checkpoints hold self.model's)
        self.step_model = torch.compile(self.model) if cfg.compile else self.model
        self.architect = Architect(self.step_model, arch, self.weights, self.a_opt, self.loss, unrolled=cfg.unrolled,
                                   weight_decay=cfg.weight_decay)
        self.key = PRIMARY[store.task]
        self.state: dict = {"epoch": 0, "best": None, "scores": {}}

    def restore(self) -> None:
        """Continue after the checkpoint's epoch (its settings must be this run's)."""
        files = self.files
        ckpt = load_run_checkpoint(files.checkpoint, ("config", "model"))
        if settings_diff(ckpt["config"], self.cfg.to_dict()):  # all but the device (a resume may move a run)
            raise SearchError(f"--resume {files.root}: config.yaml differs from the checkpoint's settings; restore it")
        self.model.load_state_dict(ckpt["model"])
        self.w_opt.load_state_dict(ckpt["weight_optimizer"])
        self.a_opt.load_state_dict(ckpt["arch_optimizer"])
        self.sched.load_state_dict(ckpt["scheduler"])
        restore_rng(ckpt, self.device)
        self.state = {"epoch": ckpt["epoch"], "best": ckpt["best"], "scores": ckpt["scores"]}
        keep_epochs(files.metrics, self.state["epoch"])
        keep_epochs(files.history, self.state["epoch"])
        self.log.info("resumed after epoch %d", self.state["epoch"])

    def end_epoch(self, epoch: int, totals: EpochTotals, loop: _SearchEpochs, progress: bool) -> None:
        """Score this epoch's genotype, keep the best, write the epoch's lines and the checkpoint."""
        state, files, key = self.state, self.files, self.key
        val_metrics = evaluate(self.model, self.val, self.task, self.cfg.batch_size, self.cfg.modality_dropout,
                               self.nodes)
        genotype, score = self.scoring.best_candidate(self.model, epoch, state["scores"], val_metrics[key])
        best = state["best"]
        if score is not None and (best is None or score > best["score"]):
            state["best"] = best = {"score": score, "epoch": epoch + 1, "genotype": genotype.to_dict()}
            self.save(genotype, files.genotype)
        self.save(genotype, files.genotypes / f"epoch_{epoch + 1:03d}.json")
        record = totals.record(epoch, self.w_opt.param_groups[0]["lr"])
        record.update({"arch_val_loss": None if best is None else loop.arch_loss_sum / max(totals.rows, 1),
                       "val": val_metrics, "genotype_score": score, "best_score": best and best["score"],
                       "best_epoch": best and best["epoch"]})
        append_jsonl(files.metrics, record)
        weights = self.model.arch_weights()
        append_jsonl(files.history, {"epoch": epoch + 1, **arch_weights_to_lists(weights)})
        self.events.add({**record, "arch": entropies(weights)})
        state["epoch"] = epoch + 1
        _save_checkpoint(files.checkpoint, self.cfg, self.model, self.w_opt, self.a_opt, self.sched, state,
                         self.device)
        scored = ("arch warm-up, genotype not scored" if best is None else
                  f"genotype {key} {score:.4f}, best {best['score']:.4f} @ {best['epoch']}")
        msg = (f"epoch {epoch + 1}/{self.cfg.epochs}: train loss {record['train_loss']:.4f}, val {key} "
               f"{val_metrics.get(key, float('nan')):.4f} (hypernet), {scored} ({totals.seconds:.1f}s)")
        self.log.info(msg)
        if progress:
            from tqdm import tqdm

            tqdm.write(msg)

    def save(self, genotype: Genotype, path: Path) -> None:
        """A genotype file with the provenance of the nodes it reads (genotype format v2)."""
        genotype.with_provenance(self.node_attrs.__getitem__).save(path)

    def finish(self) -> SearchResult:
        """Plots, and the best genotype written as the run's genotype.json."""
        files, key = self.files, self.key
        if self.cfg.plots:
            plot_history(read_jsonl(files.history), self.nodes, self.cfg.primitives, files.plots)
            plot_metrics(read_jsonl(files.metrics), key, files.plots)
        best = self.state["best"]
        genotype = Genotype.from_dict(best["genotype"], "checkpoint").with_provenance(self.node_attrs.__getitem__)
        genotype.save(files.genotype)
        self.log.info("best genotype (epoch %d, val %s %.4f): %s", best["epoch"], key, best["score"], files.genotype)
        return SearchResult(files.root, files.genotype, genotype, best["score"], best["epoch"])


@dataclass
class _Scoring:
    """What scoring a derived genotype needs (see module docstring); the cache of scores by genotype
    key is the run's checkpointed state, passed in."""

    cfg: SearchConfig
    train: SplitData
    val: SplitData
    node_shapes: dict
    task: str

    def best_candidate(self, model: Hypernet, epoch: int, cache: dict,
                       hypernet_score: float) -> tuple[Genotype, float | None]:
        """This epoch's genotype: the best-scoring of the `candidates` α-ranked ones and, with
        `op_variants`, their one-primitive variants (ties: α rank, then primitive order). During the
        arch warm-up α is untouched, so its genotype is reported but not scored (None)."""
        cfg = self.cfg
        if epoch < cfg.arch_warmup_epochs:
            return model.genotype(), None
        k = cfg.candidates if cfg.score == "found" else 1  # the hypernet's own score cannot rank candidates
        candidates = model.candidates(k)
        if cfg.op_variants and cfg.score == "found":
            candidates += [v for g in candidates for v in uniform_op_variants(g, cfg.primitives)]
        best_g, best_s, seen = None, None, set()
        for g in candidates:
            if g.key() in seen:
                continue
            seen.add(g.key())
            s = self.score(g, cache, hypernet_score)
            if best_s is None or s > best_s:
                best_g, best_s = g, s
        return best_g, best_s

    def score(self, genotype: Genotype, cache: dict, hypernet_score: float) -> float:
        """Val score of a derived genotype: the mean over `score_seeds` short trainings; cached by genotype."""
        if self.cfg.score == "hypernet":
            return float(hypernet_score)
        k = genotype.key()
        if k not in cache:
            scores = score_runs(self.cfg, genotype, self.train, self.val, self.node_shapes, self.task,
                                runs=self.cfg.score_seeds, first=0)
            cache[k] = sum(scores) / len(scores)
        return cache[k]


def score_runs(cfg: SearchConfig, genotype: Genotype, train: SplitData, val: SplitData, node_shapes: dict,
               task: str, *, runs: int, first: int) -> list[float]:
    """Val scores of scoring runs `first` .. `first + runs - 1` of a genotype, trained with the
    search's scoring settings (the one place those settings meet `score_genotype`)."""
    recipe = ScoringRecipe(epochs=cfg.score_epochs, min_steps=cfg.score_min_steps, batch_size=cfg.batch_size,
                           lr=cfg.weight_lr, weight_decay=cfg.weight_decay, grad_clip=cfg.grad_clip, dropout=cfg.dropout,
                           modality_dropout=cfg.modality_dropout, nodes=tuple(genotype.nodes))
    return score_genotype(genotype, train, val, node_shapes, task=task, recipe=recipe, seeds=runs, first_seed=first)


def _save_checkpoint(path: Path, cfg, model, w_opt, a_opt, sched, state, device) -> None:
    """Everything needed to continue exactly after this epoch; written atomically."""
    ckpt = {"config": cfg.to_dict(), "epoch": state["epoch"], "best": state["best"], "scores": state["scores"],
            "model": model.state_dict(), "weight_optimizer": w_opt.state_dict(),
            "arch_optimizer": a_opt.state_dict(), "scheduler": sched.state_dict(), **rng_state(device)}
    save_run_checkpoint(ckpt, path)
