"""A BM-NAS search at NTU RGB-D's size and shapes: one epoch's time and peak memory, projected to the
whole search and set beside the paper's 38.6 GPU-hours. Not a test.

The store has the paper's 8 taps with the NTU shapes of `bench/search_step.py` (video channels
512, 1024, 2048, 2048; skeleton 128, 256, 1024, 512; T = 8; float16, as `--dtype auto` stores
them), 60 classes and random features (time and memory do not depend on the values). The search
runs the paper's NTU settings (2 Cells x 2 Steps, C = 128, L = 8, batch 96) with bmnas' default
scoring (each epoch's genotype trained `score_seeds` times for max(2 epochs, 300 steps)).

A store of all 56,880 samples is 6.9 GB on disk; this script measures `--rows` stores (default two
sizes, 3,000 and 6,000 rows, split as the paper's search: train 23,760 / val 2,519 of 56,880), and
projects to NTU: per-step times are size-free (measured at both sizes: they agree), so an NTU epoch
is its weight+arch steps, its scoring steps and its val passes at the measured rates; peak memory
is fitted linearly in the rows.

    .venv/bin/python bench/search_scale.py                      # under 2 minutes on 2 CPU cores
    .venv/bin/python bench/search_scale.py --device cuda        # a GPU row (also its peak GPU memory)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHANNELS = [512, 1024, 2048, 2048, 128, 256, 1024, 512]
NODES = [f"video_{i}" for i in range(1, 5)] + [f"skeleton_{i}" for i in range(1, 5)]
T, K, BATCH = 8, 60, 96
NTU_ROWS, NTU_TRAIN, NTU_VAL = 56_880, 23_760, 2_519
PAPER_GPU_HOURS = 38.6
SEARCH_EPOCHS = 30  # the paper's NTU search (DESIGN: epochs 30)


def build_store(path: Path, rows: int) -> None:
    """A float16 store of `rows` random rows with NTU's taps, split in the paper's search proportions."""
    import numpy as np

    from stores import write_store_from_arrays

    rng = np.random.default_rng(0)
    feats = {n: rng.standard_normal((rows, c, T), dtype=np.float32).astype(np.float16)
             for n, c in zip(NODES, CHANNELS)}
    n_train, n_val = round(rows * NTU_TRAIN / NTU_ROWS), round(rows * NTU_VAL / NTU_ROWS)
    order = rng.permutation(rows)
    splits = {"train": np.sort(order[:n_train]), "val": np.sort(order[n_train:n_train + n_val]),
              "test": np.sort(order[n_train + n_val:])}
    write_store_from_arrays(path, features=feats, labels=rng.integers(0, K, rows), splits=splits,
                            task="multiclass", num_classes=K, dtype="float16", rows_per_chunk=512)


def one_epoch(store: str, out: str, device: str) -> dict:
    """In this process (the caller runs it in a fresh one, for its peak memory): one search epoch,
    with the time spent in weight+arch steps and in scoring taken apart."""
    import torch

    import fusion_search.search as search
    from fusion_search.config import SearchConfig

    cfg = SearchConfig(store=store, epochs=1, batch_size=BATCH, channels=128, length=8, cells=2, steps=2,
                       device=device, plots=False)
    spent = {"scoring": 0.0}
    score_runs = search.score_runs

    def timed_score_runs(*args, **kw):
        t0 = time.perf_counter()
        try:
            return score_runs(*args, **kw)
        finally:
            spent["scoring"] += time.perf_counter() - t0

    search.score_runs = timed_score_runs
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    search.run_search(cfg, out)
    total = time.perf_counter() - t0
    return {"epoch_s": total, "scoring_s": spent["scoring"], "search_s": total - spent["scoring"],
            "peak_host_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "peak_gpu_gb": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None}


def _steps(rows: int) -> int:
    return -(-rows // BATCH)


def measure(rows: int, device: str, root: Path) -> dict:
    store = root / f"ntu_{rows}.zarr"
    t0 = time.perf_counter()
    build_store(store, rows)
    built = time.perf_counter() - t0
    code = (f"import sys, json; sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(0, {str(ROOT / 'bench')!r}); "
            f"import search_scale as s; print(json.dumps(s.one_epoch({str(store)!r}, {str(root / f'run_{rows}')!r}, "
            f"{device!r})))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=1200)
    if r.returncode != 0:
        raise SystemExit(r.stderr[-2000:])
    m = json.loads(r.stdout.strip().splitlines()[-1])
    train = round(rows * NTU_TRAIN / NTU_ROWS)
    score_steps = 3 * max(2 * _steps(train), 300)  # score_seeds x max(score_epochs epochs, score_min_steps)
    m.update(rows=rows, store_build_s=built, train_rows=train, search_steps=_steps(train),
             score_steps=score_steps, ms_per_search_step=1000 * m["search_s"] / _steps(train),
             ms_per_score_step=1000 * m["scoring_s"] / score_steps)
    return m


def project(ms: list[dict]) -> dict:
    """NTU's epoch from the per-step rates of the largest measured store; memory fitted in the rows."""
    big = ms[-1]
    steps, score_steps = _steps(NTU_TRAIN), 3 * max(2 * _steps(NTU_TRAIN), 300)
    epoch = steps * big["ms_per_search_step"] / 1000 + score_steps * big["ms_per_score_step"] / 1000
    if len(ms) > 1:
        a, b = ms[0], ms[-1]
        slope = (b["peak_host_gb"] - a["peak_host_gb"]) / (b["rows"] - a["rows"])
        host = b["peak_host_gb"] + slope * (NTU_ROWS - b["rows"])
    else:
        host = float("nan")
    return {"epoch_s": epoch, "search_h": epoch * SEARCH_EPOCHS / 3600, "peak_host_gb": host,
            "search_steps": steps, "score_steps": score_steps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="3000,6000", help="store sizes to measure (comma-separated)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = ap.parse_args()
    import torch

    where = torch.cuda.get_device_name(0) if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"# search at NTU shapes on {where}, torch {torch.__version__}")
    with tempfile.TemporaryDirectory(prefix="bmnas-scale-") as d:
        ms = [measure(int(r), args.device, Path(d)) for r in args.rows.split(",")]
    print("| rows | train rows | epoch (s) | weight+arch steps | ms/step | scoring steps | ms/scoring step | "
          "peak host (GB) | peak GPU (GB) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for m in ms:
        gpu = f"{m['peak_gpu_gb']:.2f}" if m["peak_gpu_gb"] is not None else "—"
        print(f"| {m['rows']:,} | {m['train_rows']:,} | {m['epoch_s']:.1f} | {m['search_steps']} | "
              f"{m['ms_per_search_step']:.1f} | {m['score_steps']} | {m['ms_per_score_step']:.2f} | "
              f"{m['peak_host_gb']:.2f} | {gpu} |")
    p = project(ms)
    print(f"\nprojected NTU ({NTU_ROWS:,} rows, train {NTU_TRAIN:,}): one epoch {p['epoch_s']:.0f} s "
          f"({p['search_steps']} weight+arch steps, {p['score_steps']} scoring steps), {SEARCH_EPOCHS} epochs "
          f"{p['search_h']:.2f} h on this device, against the paper's {PAPER_GPU_HOURS} GPU-hours "
          f"({PAPER_GPU_HOURS / p['search_h']:.0f}x); peak host memory {p['peak_host_gb']:.1f} GB "
          "(linear in the rows, fitted on the two sizes)")


if __name__ == "__main__":
    main()
