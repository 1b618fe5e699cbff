"""How often does a search recover a planted feature pair? `sum` vs `pair` step inputs, several seeds.

Stores come from tests/_search_data.py: six look-alike nodes, the label depends on a_2 and b_3 only.
`joint`: 4 classes = 2·bit(a_2) + bit(b_3) (each node alone carries half);
`xor`: 2 classes = bit(a_2) XOR bit(b_3) (no signal in either node alone).
A run counts as recovered when some Cell of the best genotype reads exactly {a_2, b_3}.

    .venv/bin/python bench/search_planted.py --kinds joint,xor --modes sum,pair --seeds 0,1,2,3,4
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _search_data import PLANTED, planted_store  # noqa: E402

from fusion_search.config import SearchConfig  # noqa: E402
from fusion_search.search import run_search  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kinds", default="joint,xor")
    ap.add_argument("--modes", default="sum,pair")
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--cells", type=int, default=2)
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--n", type=int, default=480, help="samples per store")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--score-min-steps", type=int, default=300)
    ap.add_argument("--score-seeds", type=int, default=3, help="training runs averaged per genotype score")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--arch-lr", type=float, default=3e-4, help="architecture Adam lr (the design default 3e-4)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    root = Path(tempfile.mkdtemp(prefix="bmnas-planted-"))
    print(f"planted pair {PLANTED}; {args.cells} cells x {args.steps} steps, C=16, L=4, {args.epochs} epochs, "
          f"batch {args.batch_size}, arch lr {args.arch_lr}, {args.n} samples, {args.score_seeds} scoring runs")
    for kind in args.kinds.split(","):
        store = root / f"{kind}.zarr"
        planted_store(store, kind, n=args.n)
        for mode in args.modes.split(","):
            hits, t0 = 0, time.perf_counter()
            for seed in seeds:
                cfg = SearchConfig(store=str(store), cells=args.cells, steps=args.steps, channels=16, length=4,
                                   multiplier=1, epochs=args.epochs, batch_size=args.batch_size, seed=seed,
                                   step_inputs=mode, arch_lr=args.arch_lr, score_min_steps=args.score_min_steps,
                                   score_seeds=args.score_seeds, device="cpu", plots=False)
                r = run_search(cfg, root / f"{kind}-{mode}-{seed}")
                pairs = [set(c.inputs) for c in r.genotype.cells]
                ok = set(PLANTED) in pairs
                hits += ok
                print(f"  {kind:5s} {mode:4s} seed {seed}: cells {[tuple(c.inputs) for c in r.genotype.cells]} "
                      f"ops {[[s.op for s in c.steps] for c in r.genotype.cells]} val {r.best_score:.3f} "
                      f"{'recovered' if ok else 'missed'}", flush=True)
            print(f"{kind:5s} {mode:4s}: recovered {hits}/{len(seeds)} ({time.perf_counter() - t0:.0f}s)", flush=True)


if __name__ == "__main__":
    main()
