"""The demo's spread over seeds: `bmnas demo --seed K` for several K, one table of mean ± spread.

A seed changes the synthetic data, the backbones' pretraining, the searches and the training runs,
so it stands in for another machine's rounding. Per row: the mean over seeds of the row's test
accuracy (each fused row is itself a mean over the demo's training seeds), the sample std over
seeds, and the range. Then how many seeds meet the demo's claim: the found network reaches
>= 75 % test accuracy, leads late fusion by >= 10 points, and trails no other row by more than 1.

    .venv/bin/python bench/demo_spread.py --seeds 0-4 --out bench/_data/demo_spread

Each seed's demo is a subprocess, `bmnas demo --seed K --out OUT/seed_K`, timed as a user would
see it; a rerun reuses the finished seeds' directories (every stage is a cache hit).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.multistart import parse_seeds  # noqa: E402

FOUND = "BM-NAS found network"


def claim_met(rows: list[dict]) -> tuple[bool, str]:
    """The demo's claim for one seed's table, and why not when it fails."""
    acc = {r["method"]: 100 * r["accuracy"] for r in rows}
    found = acc[FOUND]
    late = next(v for k, v in acc.items() if k.startswith("late fusion"))
    others = {k: v for k, v in acc.items() if k != FOUND}
    best_other = max(others, key=others.get)
    why = []
    if found < 75:
        why.append(f"found {found:.1f} < 75")
    if found - late < 10:
        why.append(f"lead over late {found - late:.1f} < 10")
    if others[best_other] - found > 1:
        why.append(f"trails {best_other} by {others[best_other] - found:.1f}")
    return not why, "; ".join(why) or "met"


def run_seed(seed: int, out: Path, bmnas: str) -> tuple[list[dict], float]:
    """One demo (or its cached result); rows and wall seconds."""
    run = out / f"seed_{seed}"
    t0 = time.perf_counter()
    proc = subprocess.run([bmnas, "demo", "--seed", str(seed), "--out", str(run)], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"seed {seed}: bmnas demo failed\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    (run / "demo_stdout.txt").write_text(proc.stdout)
    rows = json.loads((run / "comparison.json").read_text())
    return rows, wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0-4")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "_data" / "demo_spread"))
    ap.add_argument("--bmnas", default=str(Path(sys.executable).with_name("bmnas")))
    args = ap.parse_args()
    seeds = parse_seeds(args.seeds)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    per_seed, met = {}, 0
    for seed in seeds:
        rows, wall = run_seed(seed, out, args.bmnas)
        ok, why = claim_met(rows)
        met += ok
        per_seed[seed] = rows
        found = next(r for r in rows if r["method"] == FOUND)
        print(f"seed {seed}: {wall:.0f}s, found {100 * found['accuracy']:.1f} %, claim {why}", flush=True)
    methods = [r["method"] for r in per_seed[seeds[0]]]
    print(f"\n| method | test accuracy, mean ± std over {len(seeds)} seeds | range |")
    print("|---|---:|---:|")
    for m in methods:
        v = 100 * np.array([next(r["accuracy"] for r in per_seed[s] if r["method"] == m) for s in seeds])
        std = v.std(ddof=1) if len(v) > 1 else 0.0
        name = f"**{m}**" if m == FOUND else m
        print(f"| {name} | {v.mean():.1f} ± {std:.1f} | {v.min():.1f}-{v.max():.1f} |")
    print(f"\nseeds meeting the claim (found >= 75 %, >= 10 points over late fusion, within 1 point of every "
          f"other row): {met}/{len(seeds)} (seeds {args.seeds})")


if __name__ == "__main__":
    main()
