"""`bmnas ablate`: the paper's ablations (Tables 6 and 7) on the user's own store, as one table.

Table 6 (feature selection, same Cell structure as the searched genotype): random input pairs (a
new random selection per seed), late fusion (deepest tap of each modality), searched.
Table 7 (fusion strategy, same feature selection as the searched genotype): Sum (DARTS), ConcatFC
(MFAS), MHA (Transformer), AoA (AoANet), searched. Every row is a genotype from
`fusion_search.baselines`, trained by `train_on_cache` with the same settings, once per seed; the
searched row is shared by both tables. Each (row, seed) run is one task: dask tasks on a LocalCluster
(or `scheduler`) when more than one worker is available, otherwise one after another.

Output directory (rerunning it skips finished runs and resumes killed ones):
  genotypes/<row>[_seed<s>].json   the genotype of each baseline row (random: one per seed)
  runs/<row>/seed_<s>/             a full `bmnas train` run directory each
  ablation.md                      the tables: mean ± std over seeds (sample std), parameters
  ablation.json                    every per-seed number behind the tables
  ablation.png                     bar chart with std error bars
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from extract.cluster import connect, on_worker
from fusion_search.baselines import baseline_genotype
from fusion_search.errors import SearchError
from fusion_search.genotype import Genotype, inner_name
from fusion_search.missing import modalities_of
from fusion_search.training.metrics import PRIMARY
from pipeline.evaluate import evaluate_run, has_metrics, read_metrics
from pipeline.robustness import NOISE_LEVELS, has_robustness, read_robustness
from fusion_search.training.run import FINISHED, PARTIAL, hold_folder, rerun, run_state, settings_diff
from fusion_search.training.rundir import abs_path
from pipeline.configs import DEFAULT_EPOCHS, TrainConfig
from pipeline.runs import open_store_checked, read_run_config
from pipeline.train import resume_training, train_on_cache
from stores.device import claim_gpu, gpu_slot, usable_cores
from stores.files import write_json_atomic, write_text_atomic


@dataclass(frozen=True)
class Row:
    key: str            # baseline name or "searched"
    label: str          # as the paper's tables name it
    note: str           # framework (Table 7) or what the inputs are (Table 6)
    per_seed: bool = False  # a different genotype per seed (random)


TABLE6 = (Row("random", "Random", "random input pairs, same Cells", per_seed=True),
          Row("late", "Late fusion", "deepest tap of each modality, same Cells"),
          Row("searched", "Searched (BM-NAS)", "the genotype given"))
TABLE7 = (Row("sum", "Sum", "DARTS (ICLR19)"), Row("concatfc", "ConcatFC", "MFAS (CVPR19)"),
          Row("mha", "MHA", "Transformer (NIPS17)"), Row("aoa", "AoA", "AoANet (ICCV19)"),
          Row("searched", "Searched", "BM-NAS"))
PAPER = {"random": 86.35, "late": 89.49, "searched": 90.48, "sum": 87.64, "concatfc": 89.20, "mha": 88.29,
         "aoa": 89.11}  # NTU RGB-D test accuracy (%), Tables 6 and 7


def _genotype_for(row: str, template: Genotype, store, seed: int) -> Genotype:
    return baseline_genotype(row, store.nodes, store.task, store.num_classes, seed=seed, template=template)


def _run_one(store_path: str, genotype_path: str, run_dir: str, split: str, settings: dict[str, Any],
             workers: Sequence[str] = ()) -> dict:
    """One (row, seed) training run; resumes a killed one, reuses a finished one. Runs on dask workers.

    On a dask worker with GPUs, the worker takes its own one by rank among `workers` on its host
    (`stores.device.gpu_slot`, as extraction), and only its share of that GPU's memory for banks."""
    import torch

    worker = on_worker()
    if worker is not None and settings.get("device", "auto") != "cpu" and torch.cuda.is_available():
        index, sharing = gpu_slot(worker.address, workers, torch.cuda.device_count())
        claim_gpu(index, 1.0 / sharing)
    run = Path(run_dir)
    started = run_state(run) in (PARTIAL, FINISHED)
    if started:
        _check_same_run(run, store_path, genotype_path, settings)
    if not run_done(run, split):
        rerun(run, lambda: train_on_cache(store_path, genotype_path, run, evaluate_test=False, **settings),
              lambda: resume_training(run, evaluate_test=False))
        evaluate_run(run, split, plots=False, robustness=NOISE_LEVELS)
    return {**read_metrics(run, split), "missing": _missing(run, split)}


def _missing(run: Path, split: str) -> dict[str, float]:
    """The primary metric with each modality the run's network reads missing (`robustness_<split>.json`)."""
    table = read_robustness(run, split)
    return {m: float(v[table["primary"]]) for m, v in table["missing"].items()}


def run_done(run: Path, split: str) -> bool:
    """Whether one training run of the table is done: finished, with its metrics and robustness on `split`."""
    return run_state(run) == FINISHED and has_metrics(run, split) and has_robustness(run, split)


def _check_same_run(run: Path, store_path: str, genotype_path: str, settings: dict[str, Any]) -> None:
    """A run reused or resumed must be the one asked for: the same store, genotype and settings (the
    device may differ); else its figures would stand for another training."""
    cfg = read_run_config(run)
    wanted = {k: v for k, v in {**settings, "store": abs_path(store_path)}.items() if k in cfg}
    changed = settings_diff({k: cfg[k] for k in wanted}, wanted)
    if Genotype.load(run / "genotype.json").key() != Genotype.load(genotype_path).key():
        changed.append("genotype")
    if changed:
        raise SearchError(f"{run} was trained with other {', '.join(changed)} than this run asks for; "
                          "give a new --out (or the settings it was made with)")


def _tasks(store, template: Genotype, template_path: Path, out: Path,
           seeds: Sequence[int]) -> list[tuple[str, int, Path, Path]]:
    """(row, seed, genotype file, run dir) of every run; the searched row trains the user's own file
    (so `bmnas report` finds the search run's architecture weights beside it)."""
    gdir = out / "genotypes"
    gdir.mkdir(parents=True, exist_ok=True)
    tasks, seen = [], set()
    for row in TABLE6 + TABLE7:
        if row.key in seen:
            continue
        seen.add(row.key)
        for s in seeds:
            gpath = gdir / (f"{row.key}_seed{s}.json" if row.per_seed else f"{row.key}.json")
            if row.key == "searched":
                gpath = template_path.resolve()
            elif not gpath.exists():
                _genotype_for(row.key, template, store, s).save(gpath)
            tasks.append((row.key, s, gpath, out / "runs" / row.key / f"seed_{s}"))
    return tasks


def train_runs(tasks, settings: list[dict], store_path: str, split: str, workers: int | None,
               scheduler: str | None = None) -> list[dict]:
    """Train every (row, seed, genotype file, run dir) task, on dask when more than one worker is
    available; finished runs are reused, killed ones resumed; metrics in task order."""
    args = [(store_path, str(g), str(r), split, st) for (_, _, g, r), st in zip(tasks, settings)]
    n_workers = workers if workers is not None else min(usable_cores(), len(tasks))
    if scheduler is None and n_workers <= 1:
        return [_run_one(*a) for a in args]
    try:
        with connect(scheduler, n_workers) as client:
            addresses = tuple(client.scheduler_info()["workers"])
            futures = [client.submit(_run_one, *a, addresses, pure=False, retries=0) for a in args]
            return client.gather(futures)
    except ConnectionError as exc:
        raise SearchError(f"--scheduler {scheduler}: {exc}") from None


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample std (0 for one value), as the paper's tables report."""
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def run_ablation(store_path: str, genotype_path: str | os.PathLike, out_dir: str | os.PathLike, *,
                 seeds: int | Sequence[int] = 5, epochs: int | None = None, workers: int | None = None,
                 scheduler: str | None = None, **settings: Any) -> Path:
    """Train every Table 6/7 row over `seeds` (a count -> 0..n-1, or a list); returns ablation.md.
    `settings` are TrainConfig fields (batch_size, device, train_on, lr, ...; TrainConfig's defaults)."""
    train_on = settings.setdefault("train_on", TrainConfig.train_on)
    seed_list = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seed_list or len(set(seed_list)) != len(seed_list):
        raise SearchError(f"--seeds {seeds!r}: give a positive count or distinct seeds")
    if epochs is None:
        if train_on == "train+val":
            raise SearchError("--train-on train+val needs a fixed --epochs")
        epochs = DEFAULT_EPOCHS
    template = Genotype.load(genotype_path)
    store = open_store_checked(store_path, template, str(genotype_path))
    with hold_folder(out_dir, ABLATION_FILES, "ablation") as out:
        return _ablate(store, store_path, template, Path(genotype_path), out, seed_list,
                       dict(settings, epochs=epochs), (workers, scheduler))


# what an ablation writes into its --out
ABLATION_FILES = ("genotypes", "runs", "ablation.json", "ablation.png", "ablation.md")


def _ablate(store, store_path: str, template: Genotype, genotype_path: Path, out: Path, seed_list: list[int],
            settings: dict[str, Any], where: tuple[int | None, str | None]) -> Path:
    """Every run of the tables in the held folder `out`, then the summary, plot and markdown."""
    workers, scheduler = where
    epochs, train_on = settings["epochs"], settings["train_on"]
    split = "test" if len(store.splits.get("test", ())) else "val"
    tasks = _tasks(store, template, genotype_path, out, seed_list)
    per_seed = [dict(settings, seed=s) for _, s, _, _ in tasks]
    results = train_runs(tasks, per_seed, store_path, split, workers, scheduler)
    key = PRIMARY[store.task]
    modalities = modalities_of(store.nodes)
    by_row: dict[str, dict[str, Any]] = {}
    for (row, s, gpath, run), m in zip(tasks, results):
        r = by_row.setdefault(row, {"values": [], "seeds": [], "params": [], "runs": [], "genotypes": [],
                                    "missing": {mod: [] for mod in modalities}})
        r["values"].append(float(m[key]))
        for mod in modalities:  # a network that does not read a modality loses nothing without it
            r["missing"][mod].append(m["missing"].get(mod, float(m[key])))
        r["seeds"].append(s)
        r["params"].append(int(m["num_parameters"]))
        r["runs"].append(str(run))
        r["genotypes"].append(str(gpath))
    summary = {"store": str(store_path), "genotype": str(genotype_path), "metric": key, "split": split,
               "seeds": seed_list, "epochs": epochs, "train_on": train_on, "modalities": modalities, "rows": by_row}
    write_json_atomic(out / "ablation.json", summary, indent=1)
    _plot(by_row, key, split, out / "ablation.png")
    path = out / "ablation.md"
    write_text_atomic(path, ablation_markdown(summary, template))
    return path


def _fmt(mean: float, std: float, n: int, scale: float) -> str:
    return f"{mean * scale:.2f} ± {std * scale:.2f}" if n > 1 else f"{mean * scale:.2f}"


def _inputs_text(g: Genotype) -> str:
    return "; ".join(f"({c.inputs[0]}, {c.inputs[1]})" for c in g.cells)


def _cells_text(g: Genotype) -> str:
    def cell(c) -> str:
        return ", ".join(f"{s.op}({inner_name(s.inputs[0])}, {inner_name(s.inputs[1])})" for s in c.steps)
    return " | ".join(cell(c) for c in g.cells)


def ablation_markdown(summary: dict[str, Any], template: Genotype) -> str:
    """The two tables of `ablation.md` from the numbers in `ablation.json`."""
    key, rows, n = summary["metric"], summary["rows"], len(summary["seeds"])
    unit = "%"
    head = (f"# Ablations on `{summary['store']}`\n\n"
            f"Searched genotype: `{summary['genotype']}`; metric: {key} on {summary['split']} ({unit}), "
            f"mean ± sample std over {n} seed(s) {summary['seeds']}; {summary['epochs']} epochs on "
            f"{summary['train_on']} per run. Paper column: NTU RGB-D test accuracy from the paper's tables "
            "(other data, other backbones: compare the ordering, not the values).\n\n"
            f"- searched feature selection: {_inputs_text(template)}\n"
            "- no <modality>: the same runs with that modality missing (`bmnas evaluate --robustness`)\n"
            f"- searched Cells: {_cells_text(template)}\n")

    mods = summary.get("modalities", [])

    def table(title: str, first: str, second: str, spec: tuple[Row, ...]) -> str:
        missing_head = "".join(f" no {m} ({unit}) |" for m in mods)
        lines = [f"\n## {title}\n", f"| {first} | {second} | {key} ({unit}) | per seed |{missing_head} parameters | "
                 "paper (%) |", "|---|---|---|---|" + "---|" * len(mods) + "---|---|"]
        for row in spec:
            r = rows[row.key]
            mean, std = mean_std(r["values"])
            params = sorted(set(r["params"]))
            ptxt = f"{params[0]:,}" if len(params) == 1 else f"{min(params):,}–{max(params):,}"
            seeds = ", ".join(f"{v * 100:.2f}" for v in r["values"])
            missing = "".join(f" {_fmt(*mean_std(r['missing'][m]), n, 100)} |" for m in mods)
            lines.append(f"| {row.label} | {row.note} | {_fmt(mean, std, n, 100)} | {seeds} |{missing} {ptxt} | "
                         f"{PAPER[row.key]:.2f} |")
        return "\n".join(lines) + "\n"

    return (head + table("Feature selection (cf. paper Table 6: same Cell structure)", "Features", "inputs", TABLE6)
            + table("Fusion strategy (cf. paper Table 7: same feature selection)", "Fusion", "framework", TABLE7)
            + "\n![ablation](ablation.png)\n")


def _plot(by_row: dict[str, dict[str, Any]], key: str, split: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), gridspec_kw={"width_ratios": [3, 5]})
    for ax, spec, title in ((axes[0], TABLE6, "feature selection (Table 6)"),
                            (axes[1], TABLE7, "fusion strategy (Table 7)")):
        stats = [mean_std(by_row[r.key]["values"]) for r in spec]
        means = [m * 100 for m, _ in stats]
        stds = [s * 100 for _, s in stats]
        colors = ["#d62728" if r.key == "searched" else "#1f77b4" for r in spec]
        ax.bar(range(len(spec)), means, yerr=stds, capsize=4, color=colors)
        ax.set_xticks(range(len(spec)))
        ax.set_xticklabels([r.label for r in spec], fontsize=8)
        lo = min(m - s for m, s in zip(means, stds))
        ax.set_ylim(max(0.0, lo - 5), min(100.0, max(m + s for m, s in zip(means, stds)) + 3))
        ax.set_title(title, fontsize=9)
        ax.set_ylabel(f"{key} on {split} (%)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
