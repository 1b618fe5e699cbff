"""`bmnas report RUN...`: a markdown page per run, and a comparison page for several runs.

A run is a `train`, `finetune` or `search` run directory. Its page (`RUN/report.md`, images under
`RUN/report/`) holds the metrics table (every `metrics_<split>.json`), learning curves from
`metrics.jsonl`, the genotype as a tree and a drawing, the architecture-weight heatmaps (α, β, γ over
epochs) when the run, or the search run its genotype came from, has `arch_history.jsonl`, and the
confusion matrix when `evaluate` drew one. With several runs a comparison page puts their metrics in
one table and their validation curves in one plot. A multilabel run's page also plots F1 per class
(`per_class_f1_<split>.json`), so classes that need both modalities show apart from the easy ones.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fusion_search.errors import SearchError
from fusion_search.genotype import Genotype, show
from fusion_search.history import plot_history
from fusion_search.training.metrics import PRIMARY
from fusion_search.training.rundir import read_config, read_jsonl
from stores.files import write_text_atomic

_SKIP = {"split", "task", "run_kind"}


def _run_info(run: Path) -> dict[str, Any]:
    """Kind, config, genotype path and metrics of a run directory."""
    cfg = read_config(run, SearchError, "give train, finetune or search run directories")
    kind = cfg.get("kind", "search")
    metrics = {p.stem[len("metrics_"):]: json.loads(p.read_text()) for p in sorted(run.glob("metrics_*.json"))}
    return {"run": run, "kind": kind, "config": cfg, "genotype": run / "genotype.json",
            "history": read_jsonl(run / "metrics.jsonl"), "metrics": metrics}


def _arch_history(info: dict[str, Any]) -> tuple[Path | None, dict | None]:
    """The arch_history.jsonl of this search run, or of the search run the trained genotype came from."""
    run = info["run"]
    if (run / "arch_history.jsonl").is_file():
        return run / "arch_history.jsonl", info["config"]
    src = info["config"].get("genotype")
    if src:
        parent = Path(src).resolve().parent
        for d in (parent, parent.parent):
            if (d / "arch_history.jsonl").is_file() and (d / "config.yaml").is_file():
                return d / "arch_history.jsonl", read_config(d)
    return None, None


def _primary(info: dict[str, Any]) -> str:
    for m in info["metrics"].values():
        return PRIMARY.get(m.get("task", ""), "accuracy")
    return "f1_weighted" if any("f1_weighted" in str(h.get("val", {})) for h in info["history"]) else "accuracy"


def _curves(history: list[dict], key: str, path: Path, title: str) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not history:
        return None
    ep = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    a.plot(ep, [h.get("train_loss", float("nan")) for h in history], label="train loss")
    if any("val" in h for h in history):
        a.plot(ep, [h.get("val", {}).get("loss", float("nan")) for h in history], label="val loss")
        b.plot(ep, [h.get("val", {}).get(key, float("nan")) for h in history], label=f"val {key}")
    if key == "accuracy" and any("train_accuracy" in h for h in history):
        b.plot(ep, [h.get("train_accuracy", float("nan")) for h in history], label="train accuracy")
    if any("genotype_score" in h for h in history):
        b.plot(ep, [np.nan if h.get("genotype_score") is None else h["genotype_score"] for h in history], label=f"val {key} (derived genotype)")
    for ax in (a, b):
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _per_class_f1_plot(f1: dict[str, float], path: Path, title: str) -> Path:
    """One bar per class, in class order: a multilabel run's easy classes and hard ones apart
    (mmimdb-like: genres 12-22 need both modalities), which the weighted mean hides."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, values = list(f1), list(f1.values())
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.22 * len(names)))
    ax.barh(range(len(names)), values, color="tab:blue")
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels([f"{i}: {n}" for i, n in enumerate(names)], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("F1")
    for i, v in enumerate(values):
        ax.text(min(v + 0.01, 0.9), i, f"{v:.2f}", va="center", fontsize=6)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _metrics_table(metrics: dict[str, dict]) -> list[str]:
    if not metrics:
        return ["No `metrics_<split>.json` yet: run `bmnas evaluate RUN --split test`."]
    keys = sorted({k for m in metrics.values() for k, v in m.items()
                   if k not in _SKIP and isinstance(v, (int, float)) and not isinstance(v, bool)})
    lines = ["| metric | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    for k in keys:
        lines.append(f"| {k} | " + " | ".join(_num(m.get(k)) for m in metrics.values()) + " |")
    return lines


def _num(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.4f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def _split_sections(run: Path, split: str, metrics: dict[str, Any], img: Path) -> list[str]:
    """The confusion matrix, per-class F1 and robustness table of one evaluated split, where written."""
    from pipeline.robustness import robustness_rows

    lines: list[str] = []
    if (run / f"confusion_{split}.png").is_file():
        lines += [f"## Confusion matrix ({split})", "", f"![confusion](confusion_{split}.png)", ""]
    per_class = run / f"per_class_f1_{split}.json"
    if metrics.get("task") == "multilabel" and per_class.is_file():
        plot = _per_class_f1_plot(json.loads(per_class.read_text()), img / f"per_class_f1_{split}.png",
                                  f"{run.name}: F1 per class on {split} (weighted {metrics.get('f1_weighted', 0):.4f})")
        lines += [f"## F1 per class ({split})", "", f"![per-class F1](report/{plot.name})", ""]
    robust = run / f"robustness_{split}.json"
    if robust.is_file():
        lines += [f"## Robustness ({split}): a modality missing, or noise on it (σ x its std on train)", ""]
        lines += robustness_rows(json.loads(robust.read_text())) + ["", f"![robustness](robustness_{split}.png)", ""]
    return lines


def run_report(run_dir: str | os.PathLike) -> Path:
    """Write RUN/report.md (images in RUN/report/); returns its path."""
    from fusion_search.render import render

    info = _run_info(Path(run_dir))
    run = info["run"]
    img = run / "report"
    img.mkdir(exist_ok=True)
    key = _primary(info)
    cfg = info["config"]
    lines = [f"# {info['kind']} run `{run}`", ""]
    settings = {k: v for k, v in cfg.items() if k != "kind" and not isinstance(v, (list, dict))}
    lines += ["| setting | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in settings.items()] + [""]
    lines += ["## Metrics", ""] + _metrics_table(info["metrics"]) + [""]
    curve = _curves(info["history"], key, img / "curves.png", f"{run.name}: {key}")
    if curve:
        lines += ["## Learning curves", "", "![curves](report/curves.png)", ""]
    for split, metrics in info["metrics"].items():
        lines += _split_sections(run, split, metrics, img)
    if info["genotype"].is_file():
        g = Genotype.load(info["genotype"])
        render(g, img / "genotype.png", "matplotlib")
        lines += ["## Genotype", "", "```", show(g), "```", "", "![genotype](report/genotype.png)", ""]
    hist_path, search_cfg = _arch_history(info)
    if hist_path is not None:
        history = read_jsonl(hist_path)
        nodes = search_cfg.get("nodes") or (Genotype.load(info["genotype"]).nodes if info["genotype"].is_file() else [])
        prims = search_cfg.get("primitives") or []
        try:
            written = plot_history(history, list(nodes), list(prims), img)
        except (KeyError, IndexError, ValueError):  # history of another layout: skip, never fail the report
            written = []
        if written:
            lines += [f"## Architecture weights (from `{hist_path}`)", ""]
            lines += [f"![{p.stem}](report/{p.name})" for p in written] + [""]
    path = run / "report.md"
    write_text_atomic(path, "\n".join(lines) + "\n")
    return path


def write_report(run_dirs: Sequence[str | os.PathLike], out: str | os.PathLike | None = None) -> list[Path]:
    """A page per run, plus (several runs) a comparison page at `out` (default: comparison.md beside
    the first run). Returns the pages written, the comparison last."""
    if not run_dirs:
        raise SearchError("report: give at least one run directory")
    pages = [run_report(r) for r in run_dirs]
    if len(run_dirs) == 1 and out is None:
        return pages
    path = Path(out) if out is not None else Path(run_dirs[0]).resolve().parent / "comparison.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    infos = [_run_info(Path(r)) for r in run_dirs]
    key = _primary(infos[0])
    cols = ["run", "kind", "genotype", "parameters"]
    splits = sorted({s for i in infos for s in i["metrics"]})
    lines = [f"# Comparison of {len(infos)} runs", "", "| " + " | ".join(cols + [f"{key} ({s})" for s in splits]) + " |",
             "|" + "---|" * (len(cols) + len(splits))]
    names = [i["run"].name for i in infos]
    labels = [i["run"].name if names.count(i["run"].name) == 1 else f"{i['run'].parent.name}/{i['run'].name}"
              for i in infos]
    for i, label in zip(infos, labels):
        params = next((m.get("num_parameters") for m in i["metrics"].values()), None)
        g = Genotype.load(i["genotype"]) if i["genotype"].is_file() else None
        cells = "; ".join(f"({c.inputs[0]}, {c.inputs[1]}): " + ", ".join(s.op for s in c.steps)
                          for c in g.cells) if g else "—"
        link = os.path.relpath(i["run"] / "report.md", path.parent)
        values = " | ".join(_num(i["metrics"].get(s, {}).get(key)) for s in splits)
        lines.append(f"| [{label}]({link}) | {i['kind']} | {cells} | {_num(params)} | {values} |")
    lines += _robustness_comparison(infos, labels)
    plot = _compare_curves(infos, key, path.with_suffix(".png"))
    if plot:
        lines += ["", f"![validation curves]({plot.name})"]
    write_text_atomic(path, "\n".join(lines) + "\n")
    return pages + [path]


def _robustness_comparison(infos: list[dict], labels: list[str]) -> list[str]:
    """One row per run holding a robustness table (`bmnas evaluate --robustness`): its primary metric
    with all modalities, each one missing, and noise on each at every level; test split first."""
    from pipeline.robustness import read_robustness

    found = []
    for info, label in zip(infos, labels):
        split = next((s for s in ("test", "val", "train") if (info["run"] / f"robustness_{s}.json").is_file()), None)
        if split is not None:
            found.append((label, split, read_robustness(info["run"], split)))
    if not found:
        return []
    first = found[0][2]
    key = first["primary"]
    cols = ["all"] + [f"no {m}" for m in first["missing"]] + [f"{m} σ={s}" for m, lv in first["noise"].items()
                                                              for s in lv]
    lines = ["", f"## Robustness ({key}): a modality missing, or noise on it (σ x its std on train)", "",
             "| run | split | " + " | ".join(cols) + " |", "|---|---|" + "---:|" * len(cols)]
    for label, split, t in found:
        values = [t["full"].get(key)] + [t["missing"].get(m, {}).get(key) for m in first["missing"]]
        values += [t["noise"].get(m, {}).get(s, {}).get(key) for m, lv in first["noise"].items() for s in lv]
        lines.append(f"| {label} | {split} | " + " | ".join(_num(v) for v in values) + " |")
    return lines


def _compare_curves(infos: list[dict], key: str, path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = [(i["run"].name, [h["epoch"] for h in i["history"] if "val" in h],
               [h["val"].get(key, float("nan")) for h in i["history"] if "val" in h]) for i in infos]
    series = [s for s in series if s[1]]
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, ep, vals in series:
        ax.plot(ep, vals, marker=".", label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"val {key}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
