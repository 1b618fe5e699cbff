"""Peak memory (RSS) of a search over the 20,000-sample NTU-shaped store: in RAM vs streaming.

Reuses the store `bench/store_read.py` builds (8 NTU nodes, T=8, float16, 2.4 GB) through a small
store of its own whose `features/` links to it, with splits train = 16,000 and val = 4,000 rows.
Each mode runs `run_search` (NTU configuration: 2 Cells, 2 Steps, C=128, L=8, batch 96) for a
number of steps in its own process and reports that process's peak RSS (VmHWM) and time.

    python bench/search_memory.py              # 100 search steps per mode
    python bench/search_memory.py --steps 30   # quicker
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


class _Enough(Exception):
    """Raised from the batch callback to stop a search after the measured steps."""


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def linked_store(source: Path, out: Path, n: int) -> Path:
    """A store sharing `source`'s feature arrays, with its own labels and train/val splits."""
    import zarr

    src = zarr.open_group(str(source), mode="r")
    g = zarr.open_group(str(out), mode="w", zarr_format=3)
    g.attrs["bmnas"] = {k: v for k, v in dict(src.attrs)["bmnas"].items() if k != "extraction"}
    g.create_array("labels", shape=(n,), dtype="int64")[...] = src["labels"][...]
    cut = n * 4 // 5
    g.create_array("splits/train", shape=(cut,), dtype="int64")[...] = np.arange(cut)
    g.create_array("splits/val", shape=(n - cut,), dtype="int64")[...] = np.arange(cut, n)
    os.symlink(source / "features", out / "features")
    return out


def run_mode(store: str, mode: str, steps: int, queue) -> None:
    import torch

    from fusion_search.config import SearchConfig
    from fusion_search.search import run_search

    torch.set_num_threads(2)
    budget = 1e-3 if mode == "streaming" else None  # a tiny budget forces the streaming reader
    cfg = SearchConfig(store=store, cells=2, steps=2, channels=128, length=8, multiplier=2, epochs=1,
                       batch_size=96, score="hypernet", device="cpu", memory_budget_gb=budget)
    t0 = time.perf_counter()
    first: list[float] = []

    def stop_after(epoch: int, i: int) -> None:
        if not first:
            first.append(time.perf_counter() - t0)  # data loaded, first step done
        if i + 1 >= steps:
            raise _Enough

    with tempfile.TemporaryDirectory() as tmp:
        try:
            run_search(cfg, Path(tmp) / "run", on_batch=stop_after)
        except _Enough:
            pass
    total = time.perf_counter() - t0
    queue.put({"mode": mode, "peak_rss_mb": _peak_rss_mb(), "first_step_s": first[0] if first else float("nan"),
               "ms_per_step": (total - first[0]) * 1000 / max(1, steps - 1) if first else float("nan")})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=20000)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--data", default=str(ROOT / "bench" / "_data" / "store_read"))
    args = ap.parse_args()
    import store_read

    data = Path(args.data) / f"n{args.samples}-lz4"
    store_read.build(data, args.samples, "lz4")
    with tempfile.TemporaryDirectory() as tmp:
        store = linked_store(data / "ntu.zarr", Path(tmp) / "search.zarr", args.samples)
        ctx = mp.get_context("spawn")
        rows = []
        for mode in ("in RAM (FeatureBank)", "streaming"):
            q = ctx.Queue()
            p = ctx.Process(target=run_mode, args=(str(store), "streaming" if mode == "streaming" else "ram",
                                                   args.steps, q))
            p.start()
            r = q.get()
            p.join()
            r["mode"] = mode
            rows.append(r)
    print(f"search over the NTU-shaped store: {args.samples} samples (train {args.samples * 4 // 5}, "
          f"val {args.samples // 5}), 8 nodes, float16; {args.steps} first-order steps per mode, batch 96")
    print(f"{'mode':<22} {'peak RSS MB':>12} {'load + 1st step s':>18} {'ms/step':>9}")
    for r in rows:
        print(f"{r['mode']:<22} {r['peak_rss_mb']:>12.0f} {r['first_step_s']:>18.1f} {r['ms_per_step']:>9.0f}")
    print(f"streaming / RAM peak RSS = {rows[1]['peak_rss_mb'] / rows[0]['peak_rss_mb']:.2f}")


if __name__ == "__main__":
    main()
