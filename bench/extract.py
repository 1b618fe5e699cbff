"""Extraction throughput on demo-sized data, measured side by side in one run.

(a) samples/s of `extract` (decode + prepare + forward + hooks + reduction + zarr writes) vs the
    pure backbone forward on the same, already decoded batches, one torch thread each
    (target: overhead <= 15%); the two alternate for --rounds rounds and medians are compared,
    so that a busy moment of a shared machine hits both;
(b) speed-up of a 2-worker dask LocalCluster over a 1-worker one, one torch thread per worker,
    the two alternating for --rounds rounds (median ratio)
    (target: >= 1.6x on 2 cores). Cluster start-up and warm-up are reported apart, not in samples/s.
    "cores busy" is the CPU time of the processes running the tasks over the timed part: a worker
    whose loader and writer threads overlap its forward keeps more than one core busy, which
    bounds what a second worker can add on a 2-core machine.
(c) for comparison only, not the targets' setting (--skip-heavy leaves it out): (a) again with a
    heavier skeleton backbone (hcn full), and (b) with it on samples decoded in RAM beforehand,
    so that the forward dominates each worker's work.
(d) for comparison only (--ntu-samples 0 leaves it out): videos at NTU's own 1920x1080 frame
    size, where decoding dominates each sample; also the uint8 resize vs a float32 one, the
    fast .skeleton parser vs the line-by-line one, --decode-threads 2 vs 1, and extraction from a
    `bmnas data prepare`d copy of the data vs the raw files, side by side.
Data: synthetic ntu-like clips (H.264, 32 px) + NTU .skeleton files, the demo's backbones
(inflated_resnet50 + hcn, tiny).

    python bench/extract.py                # 256 samples
    python bench/extract.py --samples 96   # quicker
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


class _Decoded:
    """The same samples already decoded in RAM: isolates extraction's own overhead from decoding."""

    def __init__(self, source, modalities):
        self.name, self.task, self.num_classes = "decoded", source.task, source.num_classes
        self.class_names, self.modalities = source.class_names, tuple(modalities)
        self._samples = source.samples()
        self._data = {(s.id, m): source.load(s.id, m) for s in self._samples for m in modalities}
        self.path_of = source.path_of
        self.label_array = source.label_array

    def samples(self):
        return list(self._samples)

    def load(self, sample_id, modality):
        return self._data[(sample_id, modality)]

    def read(self, sample_id, modality):  # what extraction calls (the original source checked the data)
        return self.load(sample_id, modality)


class _Forward:
    """The backbones and the same chunk-aligned batches as extraction, to time the bare forward."""

    def __init__(self, source, choices, batch_size: int, rows_per_chunk: int) -> None:
        import torch

        from extract.backbones import get_backbone
        from extract.worker import INIT_SEED

        n = len(source.samples())
        prepared, self.loading = _prepared(source, choices)  # loading: seconds in one thread
        self.choices, self.models, self.batches = choices, [], []
        for c, xs in zip(choices, prepared):
            spec = get_backbone(c.backbone)
            self.models.append(spec.build(c.setting, source.num_classes, c.modality, seed=INIT_SEED).eval())
            per = []
            for start in range(0, n, rows_per_chunk):
                stop = min(start + rows_per_chunk, n)
                per += [torch.stack(xs[a:min(a + batch_size, stop)]) for a in range(start, stop, batch_size)]
            self.batches.append(per)
        self.bare()  # warm-up: one whole pass (after one batch the heavier nets' first pass is still slow)

    def _timed(self, calls) -> float:
        import torch

        with torch.inference_mode():
            t0 = time.perf_counter()
            for call, per in zip(calls, self.batches):
                for x in per:
                    call(x)
            return time.perf_counter() - t0

    def bare(self) -> float:
        """Seconds of one pass of the bare forward over every batch."""
        return self._timed(self.models)

    def hooked(self) -> float:
        """Seconds of one pass through the tap hooks and the reduction, as extraction runs it."""
        from extract.backbones import get_backbone
        from extract.backbones.taps import TapReader

        readers = [TapReader(m, get_backbone(c.backbone).tap_specs(c.setting))
                   for m, c in zip(self.models, self.choices)]
        try:
            return self._timed([r.run for r in readers])
        finally:
            for r in readers:
                r.close()


def _prepared(source, choices) -> tuple[list[list], float]:
    """Every sample read and prepared for each backbone, and the seconds that took in one thread."""
    ids = [s.id for s in source.samples()]
    out, seconds = [], 0.0
    for c in choices:
        spec, inp = c.resolve()
        spec.prepare_input(source.load(ids[0], c.modality), c.modality, inp)  # first-call costs
        t0 = time.perf_counter()
        out.append([spec.prepare_input(source.load(i, c.modality), c.modality, inp) for i in ids])
        seconds += time.perf_counter() - t0
    return out, seconds


def _burn(_: int) -> float:
    t0 = time.perf_counter()
    x = 0
    for i in range(4_000_000):
        x += i
    return time.perf_counter() - t0


def _machine_ceiling() -> float:
    """Speed-up of 2 processes over 1 on a pure CPU loop: what this machine can give (b) right now."""
    import multiprocessing as mp

    t0 = time.perf_counter()
    _burn(0)
    one = time.perf_counter() - t0
    with mp.get_context("spawn").Pool(2) as pool:
        pool.map(_burn, [0, 0])  # start-up
        t0 = time.perf_counter()
        pool.map(_burn, [0, 1])
        two = time.perf_counter() - t0
    return 2 * one / two


def _write_cost(path: Path, repeats: int = 5) -> float:
    """Seconds per sample to write one row chunk (every node, then its record) into this store."""
    from stores import open_writer

    w = open_writer(path)
    rows = w.chunk_rows(0)
    data = {n: w._group[f"features/{n}"][rows] for n in w.nodes}  # rewrite chunk 0 with its own values
    t0 = time.perf_counter()
    for _ in range(repeats):
        w.write_chunk(0, data)
    return (time.perf_counter() - t0) / repeats / (rows.stop - rows.start)


def _part_a(source, choices, common: dict, tmp: Path, args, target: str = " (target <= +15%)") -> dict[str, float]:
    """(a): extraction vs the bare forward in one process, in alternating rounds (medians); returns
    seconds per sample of the forward (F), of reading + preparing from files (L), of the writes (W)."""
    from statistics import median

    from extract.job import extract

    n = len(source.samples())
    fw = _Forward(source, choices, args.batch_size, args.rows_per_chunk)
    hooked_s = fw.hooked()
    decoded = _Decoded(source, tuple(c.modality for c in choices))
    bare, mem = [], []
    for _ in range(args.rounds):  # alternate, so that a busy moment of a shared machine hits both
        bare.append(fw.bare())
        mem.append(extract(decoded, str(tmp / "m.zarr"), choices, use_dask=False, **common))
    ext = extract(source, str(tmp / "a.zarr"), choices, use_dask=False, **common)
    fwd_s, mem_s = median(bare), median(r.seconds for r in mem)
    rounds = [r.seconds / b - 1 for b, r in zip(bare, mem)]
    print(f"  pure backbone forward (decoded batches)   {n / fwd_s:8.1f} samples/s   (median of {args.rounds} "
          f"rounds, each followed by the extraction in RAM)")
    print(f"  same forward + tap hooks + reduction      {n / hooked_s:8.1f} samples/s   "
          f"overhead {hooked_s / fwd_s - 1:+.0%}")
    print(f"  extract, samples decoded in RAM           {n / mem_s:8.1f} samples/s   "
          f"overhead {mem_s / fwd_s - 1:+.0%}{target}: hooks, reduction, zarr writes; "
          f"{median(r.cores_busy for r in mem):.2f} cores busy; rounds {min(rounds):+.0%} .. {max(rounds):+.0%}")
    print(f"  extract from files (decord + .skeleton)   {ext.samples_per_s:8.1f} samples/s   "
          f"overhead {ext.seconds / fwd_s - 1:+.0%}: decoding included; {ext.cores_busy:.2f} cores busy")
    per_sample_write = _write_cost(tmp / "m.zarr")
    print(f"  zarr write of one chunk (all nodes)      {per_sample_write * 1e3:8.2f} ms/sample "
          f"(= {per_sample_write * n / fwd_s:.0%} of the forward time per sample)")
    print(f"  reading + preparing from files, one thread {fw.loading / n * 1e3:6.2f} ms/sample "
          f"(= {fw.loading / fwd_s:.0%} of the forward time per sample)")
    print(f"  not in the figures above: warm-up (models built, first forward) {mem[0].startup_seconds:.1f}s "
          f"in RAM, {ext.startup_seconds:.1f}s from files")
    return {"F": fwd_s / n, "L": fw.loading / n, "W": per_sample_write}


def _part_b(source, choices, common: dict, tmp: Path, costs: dict[str, float], rounds: int,
            target: str = " (target >= 1.6x)") -> float:
    """(b): 2 dask workers vs 1, one thread each, alternating for ``rounds`` rounds; shows the round
    with the median speed-up (upper median for an even count) and returns that speed-up.
    ``costs``: from part (a)."""
    from extract.job import extract

    results = [{w: extract(source, str(tmp / f"w{w}.zarr"), choices, workers=w, threads_per_worker=1, **common)
                for w in (1, 2)} for _ in range(rounds)]
    ratios = [r[2].samples_per_s / r[1].samples_per_s for r in results]
    middle = sorted(range(rounds), key=ratios.__getitem__)[rounds // 2]
    runs = results[middle]
    for w, r in runs.items():
        print(f"  {w} worker{'s' if w > 1 else ' '}  {r.samples_per_s:8.1f} samples/s   {r.cores_busy:.2f} cores busy, "
              f"{r.cpu_seconds / r.rows_run * 1e3:.1f} ms CPU/sample (cluster start {r.startup_seconds:.1f}s, "
              f"{r.bytes_on_disk / 2**20:.2f} MiB, compression {r.compression:.2f}x)")
    speedup = ratios[middle]
    print(f"  speed-up 2 vs 1 worker: {speedup:.2f}x{target} (median of {rounds} alternating rounds: "
          f"{', '.join(f'{x:.2f}' for x in ratios)}); this machine's own 2-vs-1-process "
          f"speed-up on a CPU loop now: {_machine_ceiling():.2f}x")
    one, two = runs[1], runs[2]
    print(f"  = {two.cores_busy:.2f}/{one.cores_busy:.2f} cores busy x {one.cpu_seconds / one.rows_run * 1e3:.1f}/"
          f"{two.cpu_seconds / two.rows_run * 1e3:.1f} ms CPU per sample: 1 worker already keeps "
          f"{one.cores_busy:.2f} cores busy, its loader thread overlapping the forward")
    f, ld, w = costs["F"], costs["L"], costs["W"]
    print(f"  from part (a)'s costs, reading+preparing L = {ld * 1e3:.2f}, forward F = {f * 1e3:.2f}, writes "
          f"W = {w * 1e3:.2f} ms/sample: a worker whose loader fully overlaps its forward takes max(L, F) per "
          f"sample, 2 workers on 2 cores at least (L+F+W)/2, so 2 vs 1 = 2 max(L, F)/(L+F+W) = "
          f"{2 * max(ld, f) / (ld + f + w):.2f}x with ideal overlap")
    return speedup


def _part_c(source, common: dict, tmp: Path, args) -> None:
    """(c), for comparison only: a heavier skeleton backbone, and (b) without decoding in the workers."""
    from extract.job import BackboneChoice

    heavy = [BackboneChoice("skeleton", "hcn", "full")]
    tmp.mkdir()
    print(f"\n(c) NOT the targets' setting, for comparison: skeleton only, hcn full, a heavier forward; "
          f"same samples (load average {_load()})")
    costs = _part_a(source, heavy, common, tmp, args, target="")
    mem = _Decoded(source, ("skeleton",))
    _, load_s = _prepared(mem, heavy)
    print(f"  (b) with these samples decoded in RAM beforehand, so that the forward dominates each worker "
          f"(load average {_load()}):")
    _part_b(mem, heavy, common, tmp, dict(costs, L=load_s / len(mem.samples())), args.rounds, target="")


def _ntu_sized(out: Path, samples: int, frames: int = 60) -> Path:
    """ntu-like samples whose videos are re-encoded at NTU's own frame size, 1920x1080 (the
    content drawn at 64 px and scaled up: decoding cost depends on the frame size, not on detail)."""
    import numpy as np

    from extract.sources.video import read_video, write_video
    from extract.synth.ntu_like import generate_ntu_like

    generate_ntu_like(out, samples=samples, classes=8, seed=0, size=64, frames=frames)
    for path in sorted((out / "nturgb+d_rgb").glob("*_rgb.avi")):
        small = read_video(path, frames=frames, size=None)
        big = small.repeat(17, axis=1)[:, 4:1084].repeat(30, axis=2)  # 64x64 -> 1088x1920 -> 1080x1920
        write_video(path, np.ascontiguousarray(big), crf=23)
    return out


def _float_resize(frames, size: int):
    """`resize_crop`'s resize done through float32 instead of its uint8 path: the comparison."""
    import torch
    import torch.nn.functional as F

    t, h, w, c = frames.shape
    scale = max(size / h, size / w)
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    x = torch.from_numpy(frames.copy()).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    x = x[:, :, top:top + size, left:left + size]
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def _demo_backbones() -> list:
    """The demo's backbones: the targets' setting, and part (d)'s."""
    from extract.job import BackboneChoice

    return [BackboneChoice("video", "inflated_resnet50", "tiny"), BackboneChoice("skeleton", "hcn", "tiny")]


def _part_d(tmp: Path, args) -> None:
    """(d), not the targets' setting: videos at NTU's 1920x1080, where decoding dominates a sample."""
    from extract.sources.ntu import NTUSource
    from extract.sources.skeleton_file import _parse_exact, _parse_regular
    from extract.sources.video import read_video, resize_crop

    t0 = time.perf_counter()
    source = NTUSource(_ntu_sized(tmp / "data", args.ntu_samples), size=32)
    ids = [s.id for s in source.samples()]
    print(f"\n(d) NOT the targets' setting: {len(ids)} ntu-like samples with 60-frame 1920x1080 H.264 videos "
          f"(NTU's frame size; written in {time.perf_counter() - t0:.0f}s), 8 frames decoded and resized to "
          f"32 px, same tiny backbones, chunk {args.ntu_chunk} (load average {_load()})")
    videos = [source.path_of(i, "video") for i in ids[:8]]
    t0 = time.perf_counter()
    decoded = [read_video(v, frames=8, size=None) for v in videos]
    t1 = time.perf_counter()
    [resize_crop(d, 32) for d in decoded]
    t2 = time.perf_counter()
    [_float_resize(d, 32) for d in decoded]
    t3 = time.perf_counter()
    n = len(videos)
    print(f"  decode 8 of 60 frames {(t1 - t0) / n * 1e3:7.1f} ms/sample; resize to 32 px, uint8 path "
          f"{(t2 - t1) / n * 1e3:.1f} ms vs the float32 path it replaced {(t3 - t2) / n * 1e3:.1f} ms "
          f"({(t3 - t2) / (t2 - t1):.0f}x)")
    skeletons = [source.path_of(i, "skeleton") for i in ids]
    lines = [Path(p).read_text().splitlines() for p in skeletons]
    t0 = time.perf_counter()
    [_parse_regular(ls) for ls in lines]
    t1 = time.perf_counter()
    [_parse_exact(p, ls) for p, ls in zip(skeletons, lines)]
    t2 = time.perf_counter()
    print(f"  .skeleton parse (60 frames) fast parser {(t1 - t0) / len(ids) * 1e3:.2f} ms/sample vs the "
          f"line-by-line one {(t2 - t1) / len(ids) * 1e3:.2f} ms ({(t2 - t1) / (t1 - t0):.1f}x)")
    choices = _demo_backbones()
    common = dict(rows_per_chunk=args.ntu_chunk, batch_size=args.ntu_chunk, device="cpu", progress=False,
                  overwrite=True)
    sized = argparse.Namespace(**dict(vars(args), rounds=1, batch_size=args.ntu_chunk, rows_per_chunk=args.ntu_chunk))
    costs = _part_a(source, choices, common, tmp, sized, target="")
    _part_b(source, choices, common, tmp, costs, args.rounds, target=" (the target's 1.6x, at NTU's frame size)")
    _decode_threads(source, choices, common, tmp, args.rounds)
    _prepared_rate(source, choices, common, tmp, args.rounds)


def _prepared_rate(source, choices, common: dict, tmp: Path, rounds: int) -> None:
    """`bmnas data prepare` once (2 processes), then extraction from the prepared dataset against the
    raw one in one process (no dask), alternating for `rounds` rounds; and one sample's read of each."""
    import statistics

    from extract.job import extract
    from extract.prepare import prepare_dataset
    from extract.sources.manifest import ManifestSource

    t0 = time.perf_counter()
    done = prepare_dataset(source, tmp / "prepared", workers=2, progress=False)
    once = time.perf_counter() - t0
    ready = ManifestSource(tmp / "prepared" / "manifest.jsonl")
    ids = [s.id for s in source.samples()][:8]
    reads = {}
    for name, src in (("raw", source), ("prepared", ready)):
        t0 = time.perf_counter()
        [src.read(i, m) for i in ids for m in src.modalities]
        reads[name] = (time.perf_counter() - t0) / len(ids) * 1e3
    n = len(source.samples())
    rates: dict[str, list[float]] = {"raw": [], "prepared": []}
    for _ in range(rounds):
        for name, src in (("raw", source), ("prepared", ready)):
            t0 = time.perf_counter()
            extract(src, str(tmp / f"from_{name}.zarr"), choices, use_dask=False, **common)
            rates[name].append(n / (time.perf_counter() - t0))
    raw, prep = statistics.median(rates["raw"]), statistics.median(rates["prepared"])
    print(f"  bmnas data prepare (2 processes, once): {done.written / once:.1f} samples/s; reading a sample "
          f"(video + skeleton) {reads['raw']:.1f} ms raw vs {reads['prepared']:.2f} ms prepared; extract from "
          f"the prepared dataset {prep:.1f} vs {raw:.1f} samples/s from the raw one ({prep / raw:.1f}x, median of "
          f"{rounds}, one process, no dask)")


def _decode_threads(source, choices, common: dict, tmp: Path, rounds: int) -> None:
    """--decode-threads 2 against 1 in one process (no dask), alternating for `rounds` rounds."""
    import statistics

    from extract.job import extract

    n = len(source.samples())
    rates: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(rounds):
        for k in rates:
            t0 = time.perf_counter()
            extract(source, str(tmp / f"decode{k}.zarr"), choices, use_dask=False, decode_threads=k, **common)
            rates[k].append(n / (time.perf_counter() - t0))
    one, two = statistics.median(rates[1]), statistics.median(rates[2])
    print(f"  --decode-threads 2 vs 1, one process, no dask: {two:.1f} vs {one:.1f} samples/s ({two / one:.2f}x, "
          f"median of {rounds})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--rows-per-chunk", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds in (a) (forward, extraction) and (b) (1 worker, 2 workers)")
    ap.add_argument("--skip-heavy", action="store_true", help="leave out part (c), the heavier skeleton backbone")
    ap.add_argument("--ntu-samples", type=int, default=48, help="samples of part (d), NTU-sized videos; 0 leaves it out")
    ap.add_argument("--ntu-chunk", type=int, default=8, help="rows per chunk (and batch) in part (d)")
    args = ap.parse_args()

    import torch

    from extract.sources.ntu import NTUSource
    from extract.synth import generate

    torch.set_num_threads(1)
    choices = _demo_backbones()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        generate("ntu-like", tmp / "data", samples=args.samples, classes=8, seed=0)
        source = NTUSource(tmp / "data", size=32)
        common = dict(rows_per_chunk=args.rows_per_chunk, batch_size=args.batch_size, device="cpu",
                      progress=False, overwrite=True)
        print(f"{len(source.samples())} ntu-like samples (video 8x32x32 + skeleton 32 frames), backbones "
              f"{', '.join(c.backbone for c in choices)} (tiny), chunk {args.rows_per_chunk}, batch {args.batch_size}")
        print(f"\n(a) one process, one torch thread (load average {_load()} on {os.cpu_count()} cores)")
        costs = _part_a(source, choices, common, tmp, args)
        print(f"\n(b) dask LocalCluster, processes, one thread per worker (load average {_load()})")
        _part_b(source, choices, common, tmp, costs, args.rounds)
        if not args.skip_heavy:
            _part_c(source, common, tmp / "heavy", args)
        if args.ntu_samples:
            (tmp / "ntu").mkdir()
            _part_d(tmp / "ntu", args)
        print(f"\nload average at the end: {_load()}")


def _load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


if __name__ == "__main__":
    main()
