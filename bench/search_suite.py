"""The search on real data: stores built from data that ships inside packages, searched and compared
with the fixed fusions over training seeds.

Stores (each modality a small 1D CNN, `bench/suite_nets.py`, pretrained by `bmnas pretrain` on the
train split only, as a user would; then `extract`, a multi-start search with the demo's small-data
recipe and fixed fusions scored beside it, and `train` of every row over 3 training seeds):
- `digits`: scikit-learn's 8x8 handwritten digits, the left and right image halves as two modalities
  (each (8 rows, 4 columns) as 8 channels x 4 steps); 1,797 samples, test 540;
- `basicmotions`, `japanesevowels` (with the `bench` extra's sktime): BasicMotions' accelerometer
  and gyroscope (3 + 3 channels, 100 steps), JapaneseVowels' 12 LPC channels split 6 + 6. These are
  small (80 / 640 samples), so the suite repeats `--splits` random stratified splits and averages.

Rows per store: the kept network (what `genotype.json` holds: the best-validated of the searched and
fixed candidates), the search's own pick, late fusion, each modality alone, random inputs, Sum and
ConcatFC on the searched pick's inputs; test metric mean ± std over training seeds (and splits), the
search's wall time. The table goes to stdout and, with `--write`, to bench/results.md.

    .venv/bin/python bench/search_suite.py --stores digits --out bench/_data/search_suite
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.append(str(BENCH))  # after the project: bench/extract.py must not shadow the extract package
os.environ["PYTHONPATH"] = os.pathsep.join([str(BENCH.parent), os.environ.get("PYTHONPATH", ""), str(BENCH)])

SPEC = "suite_nets:series_cnn"
TAPS = ("conv1", "conv2", "conv3", "pool")
TRAIN_SEEDS = (0, 1, 2)
SEARCH_SEEDS = [0, 1]
SEARCH = dict(cells=2, steps=2, channels=32, length=8, epochs=25, batch_size=64, arch_lr=1e-2, arch_warmup_epochs=15,
              score_min_steps=300, score_seeds=2, cross_modal=True, op_variants=True, device="cpu")
TRAIN_EPOCHS = 31  # 1+2+4+8+16: the end of a warm-restart cycle
PRETRAIN_EPOCHS = 30
QUICK = dict(epochs=2, arch_warmup_epochs=1, score_min_steps=20, op_variants=False)  # --quick: a smoke run


def _digits() -> tuple[dict[str, np.ndarray], np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    img = d.images.astype(np.float32) / 16.0  # (n, 8, 8)
    return {"left": img[:, :, :4], "right": img[:, :, 4:]}, d.target.astype(np.int64)


def _resampled(frame, steps: int) -> np.ndarray:
    """One variable-length multichannel series (time x channels) linearly resampled to `steps`."""
    a = np.asarray(frame, dtype=np.float32)
    t = np.linspace(0, len(a) - 1, steps)
    return np.stack([np.interp(t, np.arange(len(a)), a[:, c]) for c in range(a.shape[1])]).astype(np.float32)


def _sktime(name: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    from sktime.datasets import load_basic_motions, load_japanese_vowels

    if name == "basicmotions":
        X, y = load_basic_motions(return_type="numpy3D")
        X = X.astype(np.float32)
    else:  # utterances of 7-29 frames: resampled to 24 (no padding value is invented)
        df, y = load_japanese_vowels(return_type="pd-multiindex")
        X = np.stack([_resampled(df.loc[i].to_numpy(), 24) for i in df.index.get_level_values(0).unique()])
    classes = sorted(set(y))
    y = np.asarray([classes.index(v) for v in y], np.int64)
    half = X.shape[1] // 2
    names = ("acc", "gyro") if name == "basicmotions" else ("lpc_lo", "lpc_hi")
    return {names[0]: X[:, :half], names[1]: X[:, half:]}, y


def load(name: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    return _digits() if name == "digits" else _sktime(name)


def _split(y: np.ndarray, seed: int, test: float = 0.3, val: float = 0.15) -> np.ndarray:
    """Stratified train/val/test labels per sample."""
    rng = np.random.default_rng(seed)
    out = np.empty(len(y), dtype=object)
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_test, n_val = round(len(idx) * test), round(len(idx) * val)
        out[idx[:n_test]], out[idx[n_test:n_test + n_val]], out[idx[n_test + n_val:]] = "test", "val", "train"
    return out


def write_manifest(root: Path, mods: dict[str, np.ndarray], y: np.ndarray, splits: np.ndarray) -> Path:
    """`.npy` files per sample and modality, listed in manifest.csv (columns array_<modality>)."""
    root.mkdir(parents=True, exist_ok=True)
    lines = ["id,split,label," + ",".join(f"array_{m}" for m in mods)]
    for i in range(len(y)):
        for m, x in mods.items():
            (root / m).mkdir(exist_ok=True)
            np.save(root / m / f"{i}.npy", x[i])
        lines.append(f"s{i},{splits[i]},{y[i]}," + ",".join(f"{m}/{i}.npy" for m in mods))
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root / "manifest.csv"


def build_store(work: Path, mods: dict[str, np.ndarray], y: np.ndarray, split_seed: int) -> Path:
    """Manifest -> one pretrained backbone per modality (train split only) -> extracted store."""
    from extract.job import BackboneChoice, extract
    from extract.sources.registry import open_source
    from pipeline.pretrain import pretrain

    store = work / "store.zarr"
    if store.exists():
        return store
    manifest = write_manifest(work / "raw", mods, y, _split(y, split_seed))
    source = open_source(manifest)
    ckpts = {}
    for m in mods:
        run = work / "pretrain" / m
        res = pretrain(source, f"array_{m}", SPEC, str(run), tap_choice=list(TAPS), epochs=PRETRAIN_EPOCHS, batch_size=32, lr=3e-3,
                       device="cpu", progress=False, seed=split_seed)
        print(f"    pretrain {m}: best {res.metric} {res.best_score:.3f}", flush=True)
        ckpts[m] = res.checkpoint
    extract(source, str(store), [BackboneChoice(f"array_{m}", SPEC, checkpoint=ckpts[m], taps=TAPS) for m in mods],
            use_dask=False, device="cpu", dtype="float32", progress=False)
    return store


def rows_for(store: Path, search_dir: Path) -> dict[str, Path]:
    """Genotype files of every row, from the multi-start's candidates.json."""
    from fusion_search.baselines import baseline_for_store
    from fusion_search.genotype import Genotype
    from stores import open_store

    record = json.loads((search_dir / "candidates.json").read_text())
    by_name = {c["name"]: c for c in record["candidates"]}
    out = search_dir.parent / "genotypes"
    out.mkdir(exist_ok=True)
    pick = Genotype.from_dict(by_name[record["searched_pick"]]["genotype"], "pick")
    genotypes = {"kept": Genotype.from_dict(by_name[record["kept"]]["genotype"], "kept"), "searched pick": pick}
    genotypes.update({c["name"]: Genotype.from_dict(c["genotype"], c["name"])
                      for c in record["candidates"] if c["kind"] == "fixed"})
    opened = open_store(store)
    for name in ("random", "sum", "concatfc"):
        genotypes[name] = baseline_for_store(name, opened, seed=0, template=pick)
    paths = {}
    for name, g in genotypes.items():
        paths[name] = out / f"{name.replace(' ', '_')}.json"
        g.save(paths[name])
    return paths


def run_store(name: str, out: Path, split_seed: int, workers: int, cache: Path | None = None) -> dict:
    """One store (built from a dataset, or an existing `cache`): search, then every row's trainings."""
    from fusion_search.config import SearchConfig
    from fusion_search.training.metrics import PRIMARY
    from pipeline.ablate import train_runs
    from stores import open_store
    from pipeline.multistart import run_multistart

    work = out / f"{name}_split{split_seed}"
    if cache is None:
        mods, y = load(name)
        store = build_store(work, mods, y, split_seed)
    else:
        store = cache
    metric = PRIMARY[open_store(store).task]
    t0 = time.perf_counter()
    cfg = SearchConfig(store=str(store), seed=0, **SEARCH)
    res = run_multistart(cfg, work / "search", SEARCH_SEEDS, workers=workers, echo=lambda s: None)
    search_s = time.perf_counter() - t0
    paths = rows_for(store, work / "search")
    tasks = [(row, s, g, work / "train" / row.replace(" ", "_") / f"seed_{s}") for row, g in paths.items()
             for s in TRAIN_SEEDS]
    settings = [{"epochs": TRAIN_EPOCHS, "batch_size": 64, "seed": s, "device": "cpu"} for _, s, _, _ in tasks]
    metrics = train_runs(tasks, settings, str(store), "test", workers)
    scores: dict[str, list[float]] = {}
    for (row, _, _, _), m in zip(tasks, metrics):
        scores.setdefault(row, []).append(100 * m[metric])
    return {"store": name, "split": split_seed, "scores": scores, "search_s": search_s, "metric": metric,
            "kept": res.selected.name, "n_test": int(metrics[0]["num_samples"])}


def table(results: list[dict]) -> str:
    """One row per (store, method): test accuracy mean ± std over training seeds and splits."""
    from pipeline.ablate import mean_std

    lines = ["| store | method | test metric (accuracy; multilabel: F1-W), mean ± std | per seed |",
             "|---|---|---:|---|"]
    for name in dict.fromkeys(r["store"] for r in results):
        runs = [r for r in results if r["store"] == name]
        rows = list(runs[0]["scores"])
        for row in rows:
            vals = [v for r in runs for v in r["scores"][row]]
            m, s = mean_std(vals)
            lines.append(f"| {name} | {row} | {m:.1f} ± {s:.1f} | {', '.join(f'{v:.1f}' for v in vals)} |")
        kept = ", ".join(r["kept"] for r in runs)
        secs = sum(r["search_s"] for r in runs) / len(runs)
        lines.append(f"| {name} | (kept: {kept}; search {secs:.0f} s; test {runs[0]['n_test']} samples x "
                     f"{len(runs)} split(s)) | | |")
    return "\n".join(lines)


def target(results: list[dict]) -> list[str]:
    """Per store: kept mean >= max(late, best single) - 1 and its spread <= late's + 1."""
    from pipeline.ablate import mean_std

    out = []
    for name in dict.fromkeys(r["store"] for r in results):
        runs = [r for r in results if r["store"] == name]
        vals = {row: [v for r in runs for v in r["scores"][row]] for row in runs[0]["scores"]}
        kept, late = mean_std(vals["kept"]), mean_std(vals.get("late", [float("nan")]))
        single = max(mean_std(v)[0] for k, v in vals.items() if k.startswith("unimodal_"))
        ok = kept[0] >= max(late[0], single) - 1 and kept[1] <= late[1] + 1
        out.append(f"{name}: kept {kept[0]:.1f} ± {kept[1]:.1f}, late {late[0]:.1f} ± {late[1]:.1f}, best single "
                   f"{single:.1f}: target {'met' if ok else 'NOT met'}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stores", default="digits,basicmotions,japanesevowels")
    ap.add_argument("--splits", type=int, default=1, help="random splits per store (small stores: more)")
    ap.add_argument("--cache", action="append", default=[], metavar="NAME=STORE",
                    help="also an existing store (e.g. a demo's features.zarr), with its own splits")
    ap.add_argument("--out", default=str(BENCH / "_data" / "search_suite"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--write", action="store_true", help="append the table to bench/results.md")
    ap.add_argument("--quick", action="store_true", help="a smoke run: a few epochs everywhere")
    args = ap.parse_args()
    if args.quick:
        global TRAIN_EPOCHS, PRETRAIN_EPOCHS
        SEARCH.update(QUICK)
        TRAIN_EPOCHS, PRETRAIN_EPOCHS = 2, 2
    out = Path(args.out)
    results = []
    for name in (n for n in args.stores.split(",") if n):
        for split in range(args.splits):
            print(f"{name} split {split}", flush=True)
            results.append(run_store(name, out, split, args.workers))
    for item in args.cache:
        name, _, path = item.partition("=")
        print(f"{name} ({path})", flush=True)
        results.append(run_store(name, out, 0, args.workers, cache=Path(path)))
    text = table(results) + "\n\n" + "\n".join(target(results))
    print(text)
    if args.write:
        with open(BENCH / "results.md", "a") as fh:
            fh.write(f"\n## search_suite.py ({time.strftime('%Y-%m-%d')})\n\n`{' '.join(sys.argv)}`\n\n{text}\n")


if __name__ == "__main__":
    main()
