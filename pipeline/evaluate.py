"""`bmnas evaluate RUN [--split test]`: score a train or finetune run's kept checkpoint on one split.

Writes into the run directory:
  metrics_<split>.json          flat object: accuracy, top5, f1_macro (multiclass) or f1_weighted,
                                f1_micro, f1_macro, f1_samples (multilabel); loss, num_samples,
                                num_parameters, latency_ms_per_sample (batch 1), throughput_samples_per_s,
                                checkpoint_epoch, split, task, run_kind
  predictions_<split>.csv       row, sample_id, label(s), prediction(s), score
  logits_<split>.npy            (N, K) raw logits in the order of the CSV
  per_class_f1_<split>.json     {class name: F1}
  confusion_<split>.png/.csv    multiclass only: rows = true class, columns = predicted
MM-IMDB's paper number is f1_weighted; NTU's and EgoGesture's is accuracy (top-1).
"""

from __future__ import annotations

import csv
import functools
import io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from fusion_search.data import SplitData, require_rows, resolve_device
from fusion_search.training.distributed import SINGLE, World, gathered
from fusion_search.training.engine import predict
from fusion_search.errors import SearchError
from fusion_search.found_network import FoundNetwork, count_parameters
from fusion_search.genotype import Genotype
from fusion_search.training.metrics import confusion_matrix, multiclass_f1_macro, per_class_f1, split_metrics
from fusion_search.training.run_checkpoint import load_run_checkpoint
from pipeline.joint_model import Built, RawSamples, build_model, load_finetune_config, raw_loader, to_device
from fusion_search.training.rundir import BEST
from fusion_search.training.run import Run
from stores.files import write_json_atomic, write_npy_atomic, write_text_atomic
from pipeline.runs import open_splits, open_store_checked

@torch.no_grad()
def latency_ms(model: nn.Module, example: Any, repeats: int = 20, warmup: int = 3) -> float:
    """Median wall time of one forward of a batch of one sample, in milliseconds.

    CUDA is synchronised only for a model on the GPU: under --device cpu no CUDA context is created."""
    was = model.training
    model.eval()
    on_gpu = any(p.is_cuda for p in model.parameters())
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)
    times = []
    for i in range(warmup + repeats):
        sync()
        t0 = time.perf_counter()
        model(example)
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    model.train(was)
    return float(np.median(times) * 1000.0)

def task_metrics(task: str, num_classes: int, logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """All metrics of `bmnas evaluate`: the loss and task metrics of a split, plus multiclass macro-F1."""
    out = split_metrics(task, logits, labels)
    if task == "multiclass":
        out["f1_macro"] = multiclass_f1_macro(logits.argmax(1), labels, num_classes) if len(labels) else 0.0
    return out

def _class_names(names: Sequence[str] | None, k: int) -> list[str]:
    return list(names) if names and len(names) == k else [str(i) for i in range(k)]

@dataclass(frozen=True)
class SplitPredictions:
    """What a model predicted on one split: logits and labels row by row, with the split's sample ids
    and the task's class names (None: the row numbers, class indices)."""

    task: str
    num_classes: int
    logits: np.ndarray
    labels: np.ndarray
    sample_ids: Sequence[str] | None = None
    class_names: Sequence[str] | None = None


@dataclass(frozen=True)
class ModelCost:
    """What the predictions cost: the model's parameters, one sample's latency, the split's seconds."""

    num_parameters: int
    latency: float | None
    seconds: float


def write_evaluation(run_dir: str | os.PathLike, split: str, preds: SplitPredictions, cost: ModelCost, *,
                     extra: Mapping[str, Any] | None = None, plots: bool = True) -> dict[str, Any]:
    """Write every evaluation file of one split (see module docstring); returns the flat metrics.

    `plots=False` skips the confusion-matrix image (ablations evaluate dozens of runs)."""
    run = Path(run_dir)
    task, num_classes, logits, labels = preds.task, preds.num_classes, preds.logits, preds.labels
    sample_ids, class_names = preds.sample_ids, preds.class_names
    num_parameters, latency, seconds = cost.num_parameters, cost.latency, cost.seconds
    names = _class_names(class_names, num_classes)
    n = len(labels)
    metrics: dict[str, Any] = {"split": split, "task": task, **task_metrics(task, num_classes, logits, labels),
                               "num_samples": int(n), "num_parameters": int(num_parameters),
                               "latency_ms_per_sample": latency,
                               "throughput_samples_per_s": (n / seconds) if seconds > 0 else None,
                               **dict(extra or {})}
    write_npy_atomic(run / f"logits_{split}.npy", logits.astype(np.float32))
    ids = list(sample_ids) if sample_ids is not None else [""] * n
    table, pred = _predictions(task, logits, labels, ids, names)
    if task == "multiclass":
        per_class = per_class_f1(np.eye(num_classes, dtype=bool)[pred], np.eye(num_classes, dtype=bool)[labels])
        cm = confusion_matrix(pred, labels, num_classes)
        write_text_atomic(run / f"confusion_{split}.csv", "".join(",".join(map(str, r)) + "\n" for r in cm))
        if plots:
            _plot_confusion(cm, names, run / f"confusion_{split}.png", metrics.get("accuracy", 0.0), split)
    else:
        per_class = per_class_f1(pred, labels > 0.5)
    write_text_atomic(run / f"predictions_{split}.csv", table)
    write_json_atomic(run / f"per_class_f1_{split}.json", {nm: float(f) for nm, f in zip(names, per_class)}, indent=1)
    write_json_atomic(run / f"metrics_{split}.json", metrics, indent=1)
    return metrics


def _predictions(task: str, logits: np.ndarray, labels: np.ndarray, ids: list[str],
                 names: list[str]) -> tuple[str, np.ndarray]:
    """predictions_<split>.csv's text (one row per sample, class names) and the predictions."""
    fh = io.StringIO(newline="")
    w = csv.writer(fh)
    n = len(labels)
    if task == "multiclass":
        prob = torch.from_numpy(logits).softmax(1).numpy() if n else logits
        pred = logits.argmax(1) if n else np.zeros(0, np.int64)
        w.writerow(["row", "sample_id", "label", "prediction", "score"])
        for r in range(n):
            w.writerow([r, ids[r], names[int(labels[r])], names[int(pred[r])], f"{prob[r, pred[r]]:.4f}"])
    else:
        pred = logits > 0.0
        w.writerow(["row", "sample_id", "labels", "predictions"])
        for r in range(n):
            w.writerow([r, ids[r], " ".join(names[j] for j in np.flatnonzero(labels[r] > 0.5)),
                        " ".join(names[j] for j in np.flatnonzero(pred[r]))])
    return fh.getvalue(), pred

def _plot_confusion(cm: np.ndarray, names: list[str], path: Path, acc: float, split: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = cm.shape[0]
    side = min(12.0, 2.5 + 0.25 * k)
    fig, ax = plt.subplots(figsize=(side, side))
    rates = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    im = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{split}: accuracy {acc:.4f} (row-normalised)", fontsize=9)
    if k <= 30:
        ax.set_xticks(range(k))
        ax.set_yticks(range(k))
        ax.set_xticklabels(names, rotation=90, fontsize=6)
        ax.set_yticklabels(names, fontsize=6)
        if k <= 12:
            for i in range(k):
                for j in range(k):
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if rates[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

def _first_example(data: SplitData) -> Any:
    feats, _ = next(data.batches(1, seed=0, shuffle=False))
    return feats

def evaluate_run(run_dir: str | os.PathLike, split: str = "test", *, device: str | None = None,
                 batch_size: int | None = None, plots: bool = True, accept_changed_store: bool = False,
                 robustness: Sequence[str] | None = None) -> dict[str, Any]:
    """`bmnas evaluate`: a train or finetune run's kept checkpoint (best on val, or last for train+val)
    on `split`, holding the run's lock (two evaluations never race on its result files). A train run
    whose store is no longer the one it read is refused unless `accept_changed_store`. `robustness`
    (noise levels): also the missing / noisy modality table (`pipeline.robustness`)."""
    with Run.open(run_dir, ("train", "finetune"), outputs=False) as run:
        store = None
        if run.kind == "train":
            genotype = Genotype.load(run.path / "genotype.json")
            store = open_store_checked(run.config["store"], genotype, str(run.path / "genotype.json"),
                                       accept_changed_store)
            run.check_store(store, accept_changed_store)
        built = None
        if run.kind == "finetune" and robustness is not None:  # one joint model for both evaluations
            built = build_model(load_finetune_config(run.path), Genotype.load(run.path / "genotype.json"),
                                load_checkpoints=False)
        metrics = evaluate_held_run(run.path, run.config, split, device=device, batch_size=batch_size, plots=plots,
                                    store=store, built=built)
        if robustness is not None:
            evaluate_robustness(run.path, run.config, split, robustness, device=device, batch_size=batch_size,
                                store=store, plots=plots, built=built)
        return metrics


def evaluate_robustness(run: Path, cfg: dict[str, Any], split: str, levels: Sequence[str], *,
                        device: str | None = None, batch_size: int | None = None, store: Any = None,
                        plots: bool = True, built: Built | None = None) -> dict[str, Any]:
    """robustness_<split>.json of a held train or finetune run (`pipeline.robustness`); returns the table.
    `built`: a finetune run's joint model when the caller built it already."""
    from pipeline.robustness import (finetune_run_inputs, parse_noise_levels, robustness_table, train_run_inputs,
                                     write_robustness)

    levels = parse_noise_levels(levels)
    if not (run / BEST).is_file():
        raise SearchError(f"{run}: no {BEST}; the run has not finished an epoch yet")
    dev = resolve_device(device or cfg.get("device", "auto"))
    bs = int(batch_size or cfg.get("batch_size", 96))
    genotype = Genotype.load(run / "genotype.json")
    if cfg["kind"] == "finetune":
        net, data, std = finetune_run_inputs(run, split, bs, dev, built)
    else:
        store = store or open_store_checked(cfg["store"], genotype, str(run / "genotype.json"))
        require_rows(store, [split], "choose another --split")
        net, data, std = train_run_inputs(run, cfg, split, store, bs, dev)
    logits = run / f"logits_{split}.npy"  # the plain evaluation's, written just before: the full row
    table = robustness_table(net, data, std, task=genotype.task, levels=levels, batch_size=bs, device=dev,
                             metrics=functools.partial(task_metrics, genotype.task, genotype.num_classes),
                             full_logits=np.load(logits) if logits.is_file() else None)
    write_robustness(run, split, table, plots)
    return table


def evaluate_held_run(run: Path, cfg: dict[str, Any], split: str = "test", *, device: str | None = None,
                      batch_size: int | None = None, plots: bool = True, store: Any = None,
                      built: Built | None = None) -> dict[str, Any]:
    """`evaluate_run` for a caller that holds the run already (the end of `train`); `cfg` its config.
    `store`: the train run's store when the caller has it open and checked already; `built`: a
    finetune run's joint model when the caller built it already."""
    if cfg["kind"] == "finetune":
        return evaluate_finetune_run(run, split, device=device, batch_size=batch_size, plots=plots, built=built)
    if not (run / BEST).is_file():
        raise SearchError(f"{run}: no {BEST}; the run has not finished an epoch yet")
    genotype = Genotype.load(run / "genotype.json")
    store = store or open_store_checked(cfg["store"], genotype, str(run / "genotype.json"))
    require_rows(store, [split], "choose another --split")
    dev = resolve_device(device or cfg.get("device", "auto"))
    bs = int(batch_size or cfg.get("batch_size", 96))
    model = FoundNetwork(genotype, store.node_shapes, float(cfg.get("dropout", 0.2)),
                         float(cfg.get("modality_dropout", 0.0)) > 0).to(dev)
    ckpt = load_run_checkpoint(run / BEST)
    model.load_state_dict(ckpt["model"])
    data = open_splits(store, [split], genotype.used_nodes(), dev)
    t0 = time.perf_counter()
    logits, labels = predict(model, data.batches(bs, seed=0, shuffle=False))
    seconds = time.perf_counter() - t0
    rows = store.split_rows(split)
    ids = store.sample_ids
    sample_ids = [str(ids[r]) for r in rows] if ids is not None else [str(r) for r in rows]
    return write_evaluation(run, split,
                            SplitPredictions(store.task, store.num_classes, logits, labels, sample_ids,
                                             store.class_names),
                            ModelCost(count_parameters(model), latency_ms(model, _first_example(data)), seconds),
                            extra={"checkpoint_epoch": int(ckpt["epoch"]), "run_kind": "train"}, plots=plots)

def evaluate_finetune_run(run_dir: str | os.PathLike, split: str = "test", *, device: str | None = None,
                          batch_size: int | None = None, built: Built | None = None,
                          plots: bool = True, world: World = SINGLE) -> dict[str, Any]:
    """`bmnas evaluate` for a finetune run: the kept whole-model checkpoint on a split of the raw data.

    In a `world` of several processes each predicts its share and rank 0 writes the whole split's
    files (the others return {})."""
    run = Path(run_dir)
    cfg = load_finetune_config(run)
    if not (run / BEST).is_file():
        raise SearchError(f"{run}: no {BEST}; the run has not finished an epoch yet")
    genotype = Genotype.load(run / "genotype.json")
    built = built or build_model(cfg, genotype, load_checkpoints=False)
    dev = world.device(resolve_device(device or cfg.device))
    amp = cfg.amp and dev.type == "cuda"
    model = built.model.to(dev)
    ckpt = load_run_checkpoint(run / BEST)
    model.load_state_dict(ckpt["model"])
    loader = raw_loader(built, [split], cfg, dev, world, shuffle=False, batch_size=batch_size or cfg.batch_size)
    t0 = time.perf_counter()
    logits, labels = gathered(world, list(loader.sampler),
                              *predict(model, loader, amp=amp, to_device=functools.partial(to_device, device=dev)))
    seconds = time.perf_counter() - t0
    if not world.main:
        return {}
    ids = [s.id for s in built.source.samples() if s.split == split]
    x, _ = RawSamples(built.source, [s for s in built.source.samples() if s.split == split][:1], built.specs)[0]
    example = {m: t[None].to(dev) for m, t in x.items()}
    return write_evaluation(run, split,
                            SplitPredictions(built.source.task, built.source.num_classes, logits, labels, ids,
                                             getattr(built.source, "class_names", None)),
                            ModelCost(count_parameters(model), latency_ms(model, example, repeats=5, warmup=1),
                                      seconds),
                            extra={"checkpoint_epoch": int(ckpt["epoch"]), "run_kind": "finetune",
                                   "fusion_parameters": count_parameters(model.fusion)},
                            plots=plots)

def has_metrics(run_dir: str | os.PathLike, split: str = "test") -> bool:
    """Whether a run holds the metrics of `split` (`bmnas evaluate` or the end of train/finetune wrote them)."""
    return (Path(run_dir) / f"metrics_{split}.json").is_file()


def read_metrics(run_dir: str | os.PathLike, split: str = "test") -> dict[str, Any]:
    """The metrics_<split>.json a run wrote (for ablate, report and the demo)."""
    path = Path(run_dir) / f"metrics_{split}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not written yet; run `bmnas evaluate {run_dir} --split {split}`")
    return json.loads(path.read_text())
