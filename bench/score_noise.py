"""How noisy is a genotype's score, and does the search keep the best genotype beyond that noise?

For each store: a search's distinct per-epoch genotypes (from a finished search run, or a short
search run here) are each scored by `--runs` independent scoring runs (the search's own scoring:
a FoundNetwork trained `--min-steps` steps, val metric). Printed per genotype: mean and std over the
runs; per store: the noise of one run (pooled std), of the mean of 3 runs (the search's default
`score_seeds`), the kept genotype's rank by the many-run mean, and its margin over the runner-up.

    .venv/bin/python bench/score_noise.py                                  # planted joint + xor stores
    .venv/bin/python bench/score_noise.py --search-run demo_out/search/seed_0   # a real search's genotypes
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _search_data import planted_store  # noqa: E402

from fusion_search.config import SearchConfig, config_from_mapping  # noqa: E402
from fusion_search.data import open_split, resolve_device  # noqa: E402
from fusion_search.genotype import Genotype  # noqa: E402
from fusion_search.search import run_search, score_runs  # noqa: E402
from stores import open_store  # noqa: E402


def distinct_genotypes(run: Path) -> list[tuple[int, Genotype]]:
    """(first epoch, genotype) of each distinct genotype a search derived."""
    seen, out = set(), []
    for path in sorted((run / "genotypes").glob("epoch_*.json")):
        g = Genotype.load(path)
        if g.key() not in seen:
            seen.add(g.key())
            out.append((int(path.stem.split("_")[1]), g))
    return out


def measure(run: Path, runs: int, min_steps: int | None) -> None:
    import yaml

    cfg = config_from_mapping(yaml.safe_load((run / "config.yaml").read_text()), str(run / "config.yaml"))
    steps = cfg.score_min_steps if min_steps is None else min_steps
    store = open_store(cfg.store)
    kept = Genotype.load(run / "genotype.json").key()
    device = resolve_device("cpu")
    rows = []
    for epoch, g in distinct_genotypes(run):
        nodes = g.used_nodes()
        train, val = (open_split(store, s, nodes, device) for s in ("train", "val"))
        s = np.array(score_runs(replace(cfg, score_min_steps=steps), g, train, val, store.node_shapes, store.task,
                                runs=runs, first=500))
        cells = "; ".join(f"({', '.join(c.inputs)}) {'+'.join(x.op for x in c.steps)}" for c in g.cells)
        rows.append((s.mean(), s.std(ddof=1), epoch, g.key() == kept, cells))
        print(f"  epoch {epoch:3d}: {s.mean():.3f} ± {s.std(ddof=1):.3f} over {runs} runs"
              f"{'  <- kept by the search' if g.key() == kept else ''}  {cells}", flush=True)
    noise = float(np.sqrt(np.mean([r[1] ** 2 for r in rows])))
    ranked = sorted(rows, key=lambda r: -r[0])
    rank = next(i for i, r in enumerate(ranked) if r[3]) + 1 if any(r[3] for r in rows) else None
    print(f"  noise of one scoring run (pooled std): {noise:.3f}; of a 3-run mean: {noise / np.sqrt(3):.3f}")
    if len(ranked) > 1:
        print(f"  best by the {runs}-run mean leads the runner-up by {ranked[0][0] - ranked[1][0]:.3f} "
              f"({(ranked[0][0] - ranked[1][0]) / (noise / np.sqrt(3)):.1f} x the 3-run noise)")
    print(f"  the search's kept genotype ranks {rank} of {len(rows)} by the {runs}-run mean", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--search-run", action="append", help="finished search run directory (repeatable)")
    ap.add_argument("--runs", type=int, default=6, help="scoring runs per genotype")
    ap.add_argument("--min-steps", type=int, help="scoring steps (default: the search's score_min_steps)")
    ap.add_argument("--score-seeds", type=int, default=3, help="score_seeds of the planted searches run here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    runs = [Path(r) for r in args.search_run or []]
    if not runs:
        root = Path(tempfile.mkdtemp(prefix="bmnas-noise-"))
        for kind in ("joint", "xor"):
            planted_store(root / f"{kind}.zarr", kind, n=480)
            cfg = SearchConfig(store=str(root / f"{kind}.zarr"), cells=1, steps=1, channels=16, length=4,
                               multiplier=1, epochs=10, batch_size=32, arch_lr=3e-3, score_min_steps=100,
                               score_seeds=args.score_seeds, step_inputs="pair", device="cpu", plots=False)
            run_search(cfg, root / kind)
            runs.append(root / kind)
    for run in runs:
        print(f"{run}:", flush=True)
        measure(run, args.runs, args.min_steps)


if __name__ == "__main__":
    main()
