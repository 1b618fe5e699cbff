"""Read throughput of one shuffled-batch pass over an NTU-shaped feature store.

Compares, side by side in one run: our FeatureBank (RAM, after load), our StreamingReader,
plain numpy in RAM, numpy memmap, and h5py chunked. Every method delivers float32 batches of
256 shuffled rows of all 8 nodes; MB/s counts the stored float16 bytes of the rows delivered.
Each method runs in its own process so its peak RSS is its own.

    python bench/store_read.py                 # 20,000 samples (about 2.4 GB per copy on disk)
    python bench/store_read.py --samples 4000  # quicker
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHANNELS = [512, 1024, 2048, 2048, 128, 256, 1024, 512]
NODES = [f"video_{i}" for i in range(1, 5)] + [f"skeleton_{i}" for i in range(1, 5)]
T = 8
BATCH = 256
ROWS_PER_CHUNK = 256


def _peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM: reset at exec, unlike ru_maxrss, which a spawned child
    inherits from its parent)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _block(rng: np.random.Generator, rows: int, c: int) -> np.ndarray:
    """Post-ReLU-like features: non-negative, about half zeros (what max-pooled taps look like)."""
    return np.maximum(rng.standard_normal((rows, c, T), dtype=np.float32), 0).astype(np.float16)


def build(data: Path, n: int, codec: str) -> None:
    """Write the same features as a zarr store, per-node .npy files and an HDF5 file (cached)."""
    import h5py

    from stores import NodeSpec, create_store

    marker = data / f"built-{n}-{codec}"
    if marker.exists():
        return
    data.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    w = create_store(data / "ntu.zarr", task="multiclass", num_classes=60, num_samples=n, dtype="float16",
                     nodes=[NodeSpec(nm, c, T) for nm, c in zip(NODES, CHANNELS)], rows_per_chunk=ROWS_PER_CHUNK,
                     codec=codec, overwrite=True)
    mm = {nm: np.lib.format.open_memmap(data / f"{nm}.npy", mode="w+", dtype=np.float16, shape=(n, c, T))
          for nm, c in zip(NODES, CHANNELS)}
    with h5py.File(data / "ntu.h5", "w") as h5:
        ds = {nm: h5.create_dataset(nm, shape=(n, c, T), dtype="float16", chunks=(16, c, T))
              for nm, c in zip(NODES, CHANNELS)}
        rng = np.random.default_rng(0)
        for k in range(w.num_chunks):
            rows = w.chunk_rows(k)
            block = {nm: _block(rng, rows.stop - rows.start, c) for nm, c in zip(NODES, CHANNELS)}
            w.write_chunk(k, block)
            for nm in NODES:
                mm[nm][rows] = block[nm]
                ds[nm][rows] = block[nm]
    for a in mm.values():
        a.flush()
    w.finalize(np.random.default_rng(1).integers(0, 60, n), {"train": np.arange(n)})
    marker.touch()
    print(f"built {n} samples in {time.perf_counter() - t0:.0f}s under {data}", flush=True)


def _order(n: int) -> list[np.ndarray]:
    perm = np.random.default_rng(0).permutation(n)
    return [perm[i:i + BATCH] for i in range(0, n, BATCH)]


def run_method(name: str, data: str, n: int, max_batches: int, repeats: int, queue) -> None:
    """Open/load once, then time `repeats` passes and keep the fastest (the CPU may be shared)."""
    data_p = Path(data)
    row_bytes = sum(CHANNELS) * T * 2
    t0 = time.perf_counter()
    if name == "FeatureBank (ours)":
        from stores import open_store

        bank = open_store(data_p / "ntu.zarr").bank("train")
        load = time.perf_counter() - t0
        make = lambda: (b for b, _ in bank.batches(BATCH, seed=0))  # noqa: E731
    elif name == "streaming (ours)":
        from stores import open_store

        reader = open_store(data_p / "ntu.zarr").stream("train", window_chunks=8)
        load = time.perf_counter() - t0
        make = lambda: (b for b, _ in reader.batches(BATCH, seed=0))  # noqa: E731
    elif name == "numpy in RAM":
        arrays = {nm: np.load(data_p / f"{nm}.npy").astype(np.float32) for nm in NODES}
        load = time.perf_counter() - t0
        make = lambda: ({nm: a[idx] for nm, a in arrays.items()} for idx in _order(n))  # noqa: E731
    elif name == "numpy memmap":
        arrays = {nm: np.load(data_p / f"{nm}.npy", mmap_mode="r") for nm in NODES}
        load = time.perf_counter() - t0
        make = lambda: ({nm: a[np.sort(idx)].astype(np.float32) for nm, a in arrays.items()}  # noqa: E731
                        for idx in _order(n))
    elif name == "h5py chunked":
        import h5py

        h5 = h5py.File(data_p / "ntu.h5", "r")
        load = time.perf_counter() - t0
        make = lambda: ({nm: h5[nm][np.sort(idx)].astype(np.float32) for nm in NODES}  # noqa: E731
                        for idx in _order(n))
    else:
        raise ValueError(name)
    secs = float("inf")
    for _ in range(repeats):
        rows = done = 0
        t1 = time.perf_counter()
        for batch in make():
            rows += next(iter(batch.values())).shape[0]
            done += 1
            if done >= max_batches:
                break
        secs = min(secs, time.perf_counter() - t1)
    queue.put({"method": name, "load_s": load, "rows": rows, "secs": secs,
               "mb_s": rows * row_bytes / secs / 1e6, "peak_rss_mb": _peak_rss_mb()})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=20000)
    ap.add_argument("--data", default=str(ROOT / "bench" / "_data" / "store_read"))
    ap.add_argument("--codec", default="lz4", choices=["zstd", "lz4"])
    ap.add_argument("--repeats", type=int, default=2, help="timed passes per method; the fastest counts")
    ap.add_argument("--h5py-batches", type=int, default=8, help="h5py is slow: time only this many batches")
    args = ap.parse_args()
    data = Path(args.data) / f"n{args.samples}-{args.codec}"
    build(data, args.samples, args.codec)
    full = -(-args.samples // BATCH)
    methods = [("numpy in RAM", full), ("FeatureBank (ours)", full), ("numpy memmap", full),
               ("streaming (ours)", full), ("h5py chunked", min(full, args.h5py_batches))]
    ctx = mp.get_context("spawn")
    results = {}
    for name, nb in methods:
        q = ctx.Queue()
        p = ctx.Process(target=run_method, args=(name, str(data), args.samples, nb, args.repeats, q))
        p.start()
        results[name] = q.get()
        p.join()
    print(f"\nNTU-shaped store: {args.samples} samples, best of {args.repeats} passes, 8 nodes, T={T}, float16, {args.codec}, "
          f"batch {BATCH}, rows/chunk {ROWS_PER_CHUNK}")
    print(f"{'method':<20} {'load s':>8} {'MB/s':>9} {'batches':>8} {'peak RSS MB':>12}")
    for name, _ in methods:
        r = results[name]
        print(f"{name:<20} {r['load_s']:>8.1f} {r['mb_s']:>9.0f} {r['rows'] // BATCH:>8} {r['peak_rss_mb']:>12.0f}")
    bank = results["FeatureBank (ours)"]["mb_s"] / results["numpy in RAM"]["mb_s"]
    stream = results["streaming (ours)"]["mb_s"] / results["numpy memmap"]["mb_s"]
    print(f"\nFeatureBank / numpy in RAM = {bank:.2f}  (target >= 0.9)")
    print(f"streaming / numpy memmap   = {stream:.2f}  (target >= 0.5)")
    print(f"streaming / h5py chunked   = {results['streaming (ours)']['mb_s'] / results['h5py chunked']['mb_s']:.1f}")


if __name__ == "__main__":
    main()
