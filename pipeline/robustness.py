"""`bmnas evaluate RUN --robustness`: a run's kept network on one split with each modality missing in
turn, and with Gaussian noise on each modality's features at a few levels.

  robustness_<split>.json   {"full": METRICS, "missing": {modality: METRICS},
                             "noise": {modality: {sigma: METRICS}}, "noise_std": {node: std on train}}
  robustness_<split>.png    the primary metric of every condition as bars

METRICS are those of `metrics_<split>.json` (loss, accuracy / F1s). "Missing" is the mask of
`fusion_search.missing` over every sample of the split. Noise adds sigma x (the node's standard
deviation over the train split) x N(0, 1) to the features the fusion network reads: the cached
nodes for a train run, the backbones' reduced taps for a finetune run (whose train std is measured
on its first `STD_SAMPLES` train samples: a pass of the backbones over all of train costs an
epoch). Noise draws come from a generator seeded by (modality, sigma): reruns give the same table.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from fusion_search.errors import SearchError
from fusion_search.missing import mask_key, modalities_of
from fusion_search.training.metrics import PRIMARY

NOISE_LEVELS = ("0.5", "1", "2")
STD_SAMPLES = 512
Features = dict[str, torch.Tensor]


def parse_noise_levels(text: str | Sequence[str]) -> list[str]:
    """`--noise-levels 0.5,1,2`: the sigmas as given (they are the JSON keys), each a positive number."""
    items = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if str(t).strip()]
    for t in items:
        try:
            ok = math.isfinite(float(t)) and float(t) > 0
        except ValueError:
            ok = False
        if not ok:
            raise SearchError(f"--noise-levels {t!r}: give positive numbers separated by commas, e.g. 0.5,1,2")
    if not items:
        raise SearchError("--noise-levels: give at least one level, e.g. 0.5,1,2")
    return items


@dataclass
class SplitFeatures:
    """What the fusion network reads on one split, in split order (CPU tensors), and its labels."""

    feats: Features
    labels: np.ndarray

    @property
    def rows(self) -> int:
        return len(self.labels)


def node_std(batches: Callable[[], Any], nodes: Sequence[str]) -> dict[str, float]:
    """Each node's standard deviation over every value of the batches (float64 sums)."""
    sums = {n: [0.0, 0.0, 0] for n in nodes}
    for feats, _ in batches():
        for n in nodes:
            x = feats[n].double()
            s = sums[n]
            s[0] += float(x.sum())
            s[1] += float((x * x).sum())
            s[2] += x.numel()
    out = {}
    for n, (total, squares, count) in sums.items():
        mean = total / max(count, 1)
        out[n] = math.sqrt(max(squares / max(count, 1) - mean * mean, 0.0))
    return out


def robustness_table(net: nn.Module, data: SplitFeatures, std: dict[str, float], *, task: str,
                     metrics: Callable[[np.ndarray, np.ndarray], dict[str, float]], levels: Sequence[str],
                     batch_size: int, device: torch.device, full_logits: np.ndarray | None = None) -> dict[str, Any]:
    """The full / missing / noise table of `net` on `data` (see the module docstring). `full_logits`:
    the split's logits as the plain evaluation predicted them, for the full row (not predicted again)."""
    modalities = modalities_of(list(data.feats))

    def score(change: Callable[[Features, int], Features] | None) -> dict[str, float]:
        return metrics(_predict(net, data, change, batch_size, device), data.labels)

    full = score(None) if full_logits is None else metrics(full_logits, data.labels)
    table: dict[str, Any] = {"full": full, "missing": {}, "noise": {}, "noise_std": std, "primary": PRIMARY[task]}
    for m in modalities:
        table["missing"][m] = score(lambda f, rows, m=m: {**f, mask_key(m): torch.ones(rows, dtype=torch.bool)})
    for m in modalities:
        nodes = [n for n in data.feats if modalities_of([n]) == [m]]
        table["noise"][m] = {s: score(_noise(nodes, float(s), std, f"{m}:{s}")) for s in levels}
    return table


def _noise(nodes: Sequence[str], sigma: float, std: dict[str, float], key: str) -> Callable[[Features, int], Features]:
    gen = torch.Generator().manual_seed(zlib.crc32(key.encode()))

    def change(feats: Features, rows: int) -> Features:
        out = dict(feats)
        for n in nodes:
            out[n] = feats[n] + sigma * std[n] * torch.randn(feats[n].shape, generator=gen)
        return out
    return change


@torch.no_grad()
def _predict(net: nn.Module, data: SplitFeatures, change: Callable[[Features, int], Features] | None,
             batch_size: int, device: torch.device) -> np.ndarray:
    was = net.training
    net.eval()
    out = []
    try:
        for start in range(0, data.rows, batch_size):
            feats = {n: t[start:start + batch_size] for n, t in data.feats.items()}
            rows = len(next(iter(feats.values())))
            if change is not None:
                feats = change(feats, rows)
            out.append(net({k: v.to(device) for k, v in feats.items()}).float().cpu().numpy())
    finally:
        net.train(was)
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def write_robustness(run: Path, split: str, table: dict[str, Any], plots: bool = True) -> Path:
    """robustness_<split>.json and (with `plots`) its bar chart."""
    from stores.files import write_json_atomic

    path = run / f"robustness_{split}.json"
    write_json_atomic(path, table, indent=1)
    if plots:
        _plot(table, run / f"robustness_{split}.png", split)
    return path


def _plot(table: dict[str, Any], path: Path, split: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = table["primary"]
    names = ["full"] + [f"no {m}" for m in table["missing"]]
    values = [table["full"].get(key, float("nan"))] + [v.get(key, float("nan")) for v in table["missing"].values()]
    for m, levels in table["noise"].items():
        names += [f"{m} σ={s}" for s in levels]
        values += [v.get(key, float("nan")) for v in levels.values()]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(names) + 1.5), 3.2))
    ax.bar(range(len(names)), values, color=["#4c72b0"] + ["#dd8452"] * len(table["missing"])
           + ["#55a868"] * (len(names) - 1 - len(table["missing"])))
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel(f"{split} {key}")
    ax.set_ylim(0, 1)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def robustness_rows(table: dict[str, Any]) -> list[str]:
    """The table as markdown rows (condition | primary metric), for report pages."""
    key = table["primary"]
    rows = [f"| condition | {key} |", "|---|---|", f"| all modalities | {table['full'].get(key, float('nan')):.4f} |"]
    rows += [f"| {m} missing | {v.get(key, float('nan')):.4f} |" for m, v in table["missing"].items()]
    for m, levels in table["noise"].items():
        rows += [f"| {m} noise σ={s} | {v.get(key, float('nan')):.4f} |" for s, v in levels.items()]
    return rows


def _collect(batches: Any) -> SplitFeatures:
    feats: dict[str, list[torch.Tensor]] = {}
    labels = []
    for f, y in batches:
        for n, t in f.items():
            feats.setdefault(n, []).append(t.detach().float().cpu())
        labels.append(y.cpu().numpy())
    return SplitFeatures({n: torch.cat(ts) for n, ts in feats.items()}, np.concatenate(labels))


def train_run_inputs(run: Path, cfg: dict[str, Any], split: str, store: Any, batch_size: int,
                     device: torch.device) -> tuple[nn.Module, SplitFeatures, dict[str, float]]:
    """A train run's kept network, the split's cached nodes it reads, and their std on train."""
    from fusion_search.found_network import FoundNetwork
    from fusion_search.genotype import Genotype
    from fusion_search.training.rundir import BEST
    from fusion_search.training.run_checkpoint import load_run_checkpoint
    from pipeline.runs import open_splits

    genotype = Genotype.load(run / "genotype.json")
    nodes = genotype.used_nodes()
    net = FoundNetwork(genotype, store.node_shapes, float(cfg.get("dropout", 0.2)),
                       float(cfg.get("modality_dropout", 0.0)) > 0).to(device)
    net.load_state_dict(load_run_checkpoint(run / BEST)["model"])
    cpu = torch.device("cpu")
    data = _collect(open_splits(store, [split], nodes, cpu).batches(batch_size, seed=0, shuffle=False))
    train = open_splits(store, ["train"], nodes, cpu)
    return net, data, node_std(lambda: train.batches(batch_size, seed=0, shuffle=False), nodes)


def finetune_run_inputs(run: Path, split: str, batch_size: int, device: torch.device,
                        built: Any = None) -> tuple[nn.Module, SplitFeatures, dict[str, float]]:
    """A finetune run's kept fusion network, the split's taps as its fine-tuned backbones compute
    them, and the taps' std on (the first `STD_SAMPLES` samples of) train. `built`: the run's joint
    model when the caller built it already (`pipeline.joint_model.build_model`)."""
    import functools
    import itertools

    from fusion_search.genotype import Genotype
    from fusion_search.training.rundir import BEST
    from fusion_search.training.run_checkpoint import load_run_checkpoint
    from pipeline.joint_model import build_model, load_finetune_config, raw_loader, to_device

    cfg = load_finetune_config(run)
    built = built or build_model(cfg, Genotype.load(run / "genotype.json"), load_checkpoints=False)
    model = built.model.to(device).eval()
    model.load_state_dict(load_run_checkpoint(run / BEST)["model"])
    move = functools.partial(to_device, device=device)

    def taps(splits: list[str], limit: int | None) -> SplitFeatures:
        loader = raw_loader(built, splits, cfg, device, shuffle=False, batch_size=batch_size)
        with torch.no_grad():
            batches = ((model.features(x), y) for x, y in itertools.starmap(move, loader))
            return _collect(itertools.islice(batches, None if limit is None else math.ceil(limit / batch_size)))

    data = taps([split], None)
    train = taps(["train"], STD_SAMPLES)
    return model.fusion, data, node_std(lambda: [(train.feats, None)], list(train.feats))


def has_robustness(run: Path, split: str) -> bool:
    return (Path(run) / f"robustness_{split}.json").is_file()


def read_robustness(run: Path, split: str) -> dict[str, Any]:
    """The robustness_<split>.json a run holds (for ablate, report and the demo)."""
    import json

    path = Path(run) / f"robustness_{split}.json"
    if not path.is_file():
        raise SearchError(f"{path}: not written yet; run `bmnas evaluate {run} --split {split} --robustness`")
    return json.loads(path.read_text())
