"""What the cache buys: a search epoch with the backbones inside the loop vs. from the feature cache.

The official BM-NAS code runs the frozen backbones inside every search step (and back-propagates
through them although they are not updated). bmnas extracts their taps once and searches on the
cache. Both paths here step the *same* hypernet (first-order: weight step on a train batch, arch
step on a val batch) on the *same* samples:

- backbones in the loop: raw batch -> backbones with tap hooks + reduction -> hypernet step,
  the weight step back-propagating into the (not updated) backbone parameters as the official code
  does; the arch step here does not (the official one does), and raw inputs are random tensors
  already in memory (no decoding), so the ratio is a lower bound;
- cache: the same taps written once to a real zarr store, loaded as a FeatureBank -> hypernet step.

Configurations:
- `tiny`: the demo's tiny inflated_resnet50 (8 x 32 x 32 video) + tiny HCN, demo hypernet (C=32).
- `ntu`: full inflated_resnet50 at a reduced frame size (8 x 64 x 64 instead of 8 x 224 x 224) +
  full HCN (2 x 25 x 32), NTU hypernet (2 Cells, 2 Steps, C=128, L=8), 60 classes.
Reference (official code, 2-core machine): ~11 s/sample with backbones vs ~40 ms/sample on cached
unreduced taps, ~275x. Target here: >= 200x at NTU shapes.

    python bench/search_cache.py [--quick] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from extract.backbones import get_backbone  # noqa: E402
from extract.backbones.taps import TapReader  # noqa: E402
from fusion_search.architect import Architect  # noqa: E402
from fusion_search.training.engine import train_step  # noqa: E402
from fusion_search.hypernet import Hypernet, HypernetSpec  # noqa: E402
from fusion_search.training.metrics import loss_fn  # noqa: E402
from stores import write_store_from_arrays  # noqa: E402

CONFIGS = {  # batch: search batch from the cache; loop_batch: batch with backbones in the loop
    "tiny": {"setting": "tiny", "video": (8, 32, 32), "C": 32, "L": 8, "classes": 8, "batch": 64,
             "loop_batch": 64, "samples": 640, "loop_batches": 4},
    "ntu": {"setting": "full", "video": (8, 64, 64), "C": 128, "L": 8, "classes": 60, "batch": 96,
            "loop_batch": 8, "samples": 960, "loop_batches": 2},
}


class Backbones(torch.nn.Module):
    """Video + skeleton backbones with tap readers: raw batch -> {node: (B, C, T)}."""

    def __init__(self, setting: str, classes: int) -> None:
        super().__init__()
        self.readers = {}
        self.models = torch.nn.ModuleDict()
        for modality, name in (("video", "inflated_resnet50"), ("skeleton", "hcn")):
            spec = get_backbone(name)
            model = spec.build(setting, classes, modality, seed=0).eval()
            self.models[modality] = model
            self.readers[modality] = TapReader(model, spec.tap_specs(setting))

    def forward(self, raw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for modality, reader in self.readers.items():
            taps = reader.run(raw[modality])
            out.update({f"{modality}_{k}": taps[t.name] for k, t in enumerate(reader.taps, 1)})
        return out


def raw_batch(cfg: dict, n: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    t, h, w = cfg["video"]
    return {"video": torch.randn(n, 3, t, h, w, generator=g), "skeleton": torch.randn(n, 3, 32, 25, 2, generator=g)}


def make_search(shapes: dict[str, tuple[int, int]], cfg: dict, through: list[torch.nn.Parameter] = ()):
    """A hypernet and its step. `through`: extra parameters whose gradients the weight step also
    computes without updating them (the backbones, as the official code back-propagates into them)."""
    spec = HypernetSpec(nodes=tuple(shapes), node_shapes=shapes, task="multiclass", num_classes=cfg["classes"],
                        cells=2, steps=2, C=cfg["C"], L=cfg["L"], multiplier=2)
    torch.manual_seed(0)
    model = Hypernet(spec)
    w, a = model.weight_parameters(), model.arch_parameters()
    lossf = lambda z, y: loss_fn("multiclass", z, y)  # noqa: E731
    w_opt = torch.optim.Adam(w, lr=1e-3, weight_decay=3e-4)
    arch = Architect(model, a, w, torch.optim.Adam(a, lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3), lossf)

    grads_for = w + list(through)

    def step(train, val) -> None:
        train_step(model, grads_for, w_opt, lossf, train, 5.0)
        arch.step(val)
    return step


def run(name: str, quick: bool) -> float:
    cfg = dict(CONFIGS[name])
    if quick:
        cfg["samples"] = cfg["batch"] * 4
        cfg["loop_batches"] = 1
    g = torch.Generator().manual_seed(0)
    backbones = Backbones(cfg["setting"], cfg["classes"])
    n, b, lb = cfg["samples"], cfg["batch"], cfg["loop_batch"]
    nb = cfg["loop_batches"]
    raws = [raw_batch(cfg, lb, g) for _ in range(2 * nb + 2)]
    labels = torch.randint(0, cfg["classes"], (n,), generator=g)
    with torch.inference_mode():
        shapes = {k: tuple(v.shape[1:]) for k, v in backbones(raws[0]).items()}
    print(f"\n[{name}] nodes: " + ", ".join(f"{k}{list(v)}" for k, v in shapes.items()))

    # backbones in the loop (params keep requires_grad, as in the official code)
    step = make_search(shapes, cfg, list(backbones.parameters()))
    ys = labels[:lb]
    step((backbones(raws[-2]), ys), (backbones(raws[-1]), ys))  # warm-up
    t0 = time.perf_counter()
    for i in range(nb):
        step((backbones(raws[2 * i]), ys), (backbones(raws[2 * i + 1]), ys))
    loop_ms = (time.perf_counter() - t0) * 1000 / (nb * lb)

    # cache: taps of the same shapes in a real zarr store on disk, loaded as a bank, one whole epoch.
    # Their values are random: the hypernet's cost does not depend on them, and running the full
    # backbones over every sample here would take longer than the benchmark itself.
    rng = np.random.default_rng(0)
    half = n // 2
    with tempfile.TemporaryDirectory() as tmp:
        arrays = {k: np.maximum(rng.standard_normal((n,) + v, dtype=np.float32), 0) for k, v in shapes.items()}
        store = write_store_from_arrays(Path(tmp) / "cache.zarr", arrays, labels.numpy(),
                                        {"train": np.arange(half), "val": np.arange(half, n)},
                                        task="multiclass", num_classes=cfg["classes"], dtype="float16")
        train_bank, val_bank = store.bank("train"), store.bank("val")
        step = make_search(shapes, cfg)

        def tensors(batch):
            x, y = batch
            return {k: torch.from_numpy(v) for k, v in x.items()}, torch.from_numpy(y)

        first = next(iter(train_bank.batches(b, seed=0)))
        step(tensors(first), tensors(first))  # warm-up
        t0 = time.perf_counter()
        for tr, va in zip(train_bank.batches(b, seed=0, epoch=1), val_bank.batches(b, seed=0, epoch=1)):
            step(tensors(tr), tensors(va))
        cache_ms = (time.perf_counter() - t0) * 1000 / half
    ratio = loop_ms / cache_ms
    print(f"[{name}] backbones in the loop: {loop_ms:9.2f} ms/sample ({nb} steps of {lb})")
    print(f"[{name}] from the cache:        {cache_ms:9.2f} ms/sample ({half // b} steps of {b}, one epoch of {half})")
    print(f"[{name}] cache speed-up:        {ratio:9.0f}x")
    return ratio


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer samples and steps")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", choices=sorted(CONFIGS))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ratios = {name: run(name, args.quick) for name in CONFIGS if args.only in (None, name)}
    print("\nsummary: " + ", ".join(f"{k} {v:.0f}x" for k, v in ratios.items())
          + "  (target >= 200x at NTU shapes; official code ~275x on unreduced taps)")


if __name__ == "__main__":
    main()
