"""The forward of each video backbone per precision and memory layout, side by side: the measurement
behind `extract/precision.py`'s table, rerun on the machine at hand. Not a test.

For each case (backbone, setting, frames x size, batch) the model runs as extraction runs it (eval
mode, inference mode, tap hooks and reduction through `TapReader`, cudnn.benchmark on CUDA) on one
batch of random frames prepared as the backbone reads them, in four variants: float32, float16
autocast, and each with channels_last_3d weights and inputs. It prints the median ms per batch,
clips/s, the fastest variant, and what `--precision auto` and the layout table choose for that
backbone on this device, flagged where the measurement disagrees.

`--extract N` also runs `extract` (one process, no dask, `--precision auto`, `--decode-threads`
auto unless given) over N random clips of the case's shape saved as a `bmnas data prepare` folder (so no
video decoding: what is left is reading, input preparation, the forward, hooks, reduction and the
store's writes), and prints its clips/s against the forward-only bound of the variant auto chose,
with the GPU's mean utilisation over the run (sampled from nvidia-smi) on CUDA.

    python bench/backbone_speed.py --device cuda --extract 512   # the table's shapes (full settings)
    python bench/backbone_speed.py --small --extract 32          # tiny settings at 32 px: a quick CPU run
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# (backbone, setting, frames, size, batch): the shapes extract/precision.py's table was measured at
CASES = [("resnext101_3d", "full", 32, 112, 16), ("inflated_resnet50", "full", 8, 224, 32)]
SMALL = [("resnext101_3d", "tiny", 8, 32, 4), ("inflated_resnet50", "tiny", 8, 32, 4)]


def _model_and_batch(name: str, setting: str, frames: int, size: int, batch: int, device):
    import numpy as np
    import torch

    from extract.backbones import get_backbone
    from extract.backbones.taps import TapReader
    from extract.worker import INIT_SEED

    spec = get_backbone(name)
    inp = spec.input_for(setting, {"frames": frames, "size": size})
    rng = np.random.default_rng(0)
    clip = rng.integers(0, 256, (frames, size, size, 3), dtype=np.uint8)
    x = torch.stack([spec.prepare_input(clip, "video", inp)] * batch).to(device)
    model = spec.build(setting, 60, "video", seed=INIT_SEED).to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, TapReader(model, spec.tap_specs(setting)), x


def _time(run, x, fp16: bool, device, repeats: int) -> float:
    """Median ms of `run(x)` over `repeats` after 3 warm-up calls (cudnn picks its kernels then)."""
    import torch

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.float16, enabled=fp16):
        for i in range(3 + repeats):
            sync()
            t0 = time.perf_counter()
            run(x)
            sync()
            if i >= 3:
                times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def measure(case: tuple, device, repeats: int) -> dict[str, float]:
    """ms per batch of each variant of one case."""
    import torch

    name, setting, frames, size, batch = case
    model, reader, x = _model_and_batch(name, setting, frames, size, batch, device)
    out = {}
    try:
        for fp16 in (False, True):
            out["float16" if fp16 else "float32"] = _time(reader.run, x, fp16, device, repeats)
        for p in model.parameters():
            if p.dim() == 5:
                p.data = p.data.contiguous(memory_format=torch.channels_last_3d)
        xc = x.contiguous(memory_format=torch.channels_last_3d)
        for fp16 in (False, True):
            out[("float16" if fp16 else "float32") + " channels_last_3d"] = _time(reader.run, xc, fp16, device, repeats)
    finally:
        reader.close()
    return out


def _prepared_clips(root: Path, n: int, frames: int, size: int) -> Path:
    """N random clips as a `bmnas data prepare` folder: video .npy files listed in manifest.jsonl."""
    import json

    import numpy as np

    rng = np.random.default_rng(1)
    (root / "video").mkdir(parents=True)
    rows = []
    for i in range(n):
        np.save(root / "video" / f"{i:07d}.npy", rng.integers(0, 256, (frames, size, size, 3), dtype=np.uint8))
        split = ("train", "val", "test")[i % 3]
        rows.append(json.dumps({"id": f"clip{i:05d}", "split": split, "label": i % 4, "video": f"video/{i:07d}.npy"}))
    (root / "classes.txt").write_text("".join(f"{k}\n" for k in range(4)))
    (root / "manifest.jsonl").write_text("".join(f"{r}\n" for r in rows))
    return root / "manifest.jsonl"


class _GpuUse:
    """Mean GPU utilisation (%) over a block, sampled from nvidia-smi every 0.2 s (None off CUDA)."""

    def __init__(self, device) -> None:
        self.device, self.samples, self.stop = device, [], None

    def __enter__(self) -> "_GpuUse":
        import threading

        if self.device.type == "cuda":
            self.stop = threading.Event()
            self.thread = threading.Thread(target=self._poll, daemon=True)
            self.thread.start()
        return self

    def _poll(self) -> None:
        import subprocess

        index = str(self.device.index or 0)
        while not self.stop.wait(0.2):
            res = subprocess.run(["nvidia-smi", "-i", index, "--query-gpu=utilization.gpu",
                                  "--format=csv,noheader,nounits"], capture_output=True, text=True)
            if res.returncode == 0 and res.stdout.strip().isdigit():
                self.samples.append(int(res.stdout.strip()))

    def __exit__(self, *exc) -> None:
        if self.stop is not None:
            self.stop.set()
            self.thread.join()

    @property
    def mean(self) -> float | None:
        return statistics.mean(self.samples) if self.samples else None


def extraction_row(case: tuple, device, n: int, decode_threads: int | str, bound_ms: float) -> None:
    """`extract` of n prepared clips of the case against the forward-only bound (ms per batch)."""
    import tempfile

    from extract.job import BackboneChoice, extract
    from extract.sources.manifest import ManifestSource

    name, setting, frames, size, batch = case
    with tempfile.TemporaryDirectory() as tmp:
        source = ManifestSource(_prepared_clips(Path(tmp) / "clips", n, frames, size))
        choice = BackboneChoice("video", name, setting, input=(("frames", frames), ("size", size)))
        with _GpuUse(device) as use:
            res = extract(source, str(Path(tmp) / "f.zarr"), [choice], use_dask=False, device=device.type,
                          batch_size=batch, rows_per_chunk=batch * 4, decode_threads=decode_threads, progress=False)
    rate, bound = res.samples_per_s, batch / bound_ms * 1000
    util = f", GPU utilisation {use.mean:.0f} % over the whole call" if use.mean is not None else ""
    print(f"  extract {n} prepared clips, --decode-threads {decode_threads}: {rate:.1f} clips/s = "
          f"{rate / bound:.0%} of the forward-only bound {bound:.1f} ({res.cores_busy:.2f} cores busy{util})")


def main() -> None:
    import torch

    from extract.precision import FASTER_ON_CUDA, auto_precision, memory_format

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--small", action="store_true", help="tiny settings at 32 px (a quick check of the script)")
    ap.add_argument("--extract", type=int, default=0, metavar="N", help="also extract N prepared clips per case")
    ap.add_argument("--decode-threads", default="auto", type=lambda v: v if v == "auto" else int(v),
                    help="loader threads of the extraction (default auto: the cores, on a GPU)")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"backbone forward per precision and layout on {where}, torch {torch.__version__}; "
          f"median of {args.repeats} batches, tap hooks and reduction included")
    for case in SMALL if args.small else CASES:
        name, setting, frames, size, batch = case
        ms = measure(case, device, args.repeats)
        best = min(ms, key=ms.get)
        chosen = auto_precision(device.type == "cuda", "float16", [(name, setting)])
        if memory_format(name, setting, device) is not None:
            chosen += " channels_last_3d"
        table = "in the table" if (name, setting) in FASTER_ON_CUDA else "not in the table"
        print(f"{name} ({setting}), {frames} x {size}², batch {batch}:")
        for variant, value in ms.items():
            print(f"  {variant:<26} {value:8.1f} ms  {batch / value * 1000:8.1f} clips/s")
        verdict = "agrees" if chosen == best else f"DISAGREES: {ms[chosen] / ms[best]:.2f}x the fastest"
        if device.type != "cuda":  # the table is CUDA's; on the CPU extraction keeps float32, default layout
            verdict = "the table is for CUDA"
        print(f"  fastest: {best}; auto chooses {chosen} ({table}): {verdict}")
        if args.extract:
            extraction_row(case, device, args.extract, args.decode_threads, ms[chosen if device.type == "cuda" else "float32"])


if __name__ == "__main__":
    main()
