"""The demo's spread over seeds: `bmnas demo --seed K` for several K, one table of mean ± spread.

A seed changes the synthetic data, the backbones' pretraining, the searches and the training runs,
so it stands in for another machine's rounding. Per row: the mean over seeds of the row's test
metric (each fused row is itself a mean over the demo's training seeds), the sample std over
seeds, and the range. Then how many seeds meet the demo's claim:

- `--dataset ntu-like` (accuracy): the found network reaches >= 75 %, leads late fusion by >= 10
  points, and trails no other row by more than 1;
- `--dataset mmimdb-like` (weighted F1): the found network beats both one-modality ceilings of
  `bmnas_synth.json` and late fusion; over all seeds, its mean lead over late fusion must exceed the
  larger of the two rows' spreads over seeds.

    .venv/bin/python bench/demo_spread.py --seeds 0-4 --out bench/_data/demo_spread
    .venv/bin/python bench/demo_spread.py --dataset mmimdb-like --seeds 0-4

Each seed's demo is a subprocess, `bmnas demo --dataset D --seed K --out OUT/seed_K`, timed as a user
would see it; a rerun reuses the finished seeds' directories (every stage is a cache hit).
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
METRIC = {"ntu-like": "accuracy", "mmimdb-like": "f1_weighted"}


def _values(rows: list[dict], metric: str) -> dict[str, float]:
    return {r["method"]: 100 * r[metric] for r in rows}


def _late(values: dict[str, float]) -> float:
    return next(v for k, v in values.items() if k.startswith("late fusion"))


def claim_met(rows: list[dict], dataset: str = "ntu-like") -> tuple[bool, str]:
    """The demo's claim for one seed's table, and why not when it fails."""
    if dataset == "mmimdb-like":
        return _fusion_claim_met(_values(rows, "f1_weighted"))
    acc = _values(rows, "accuracy")
    found = acc[FOUND]
    late = _late(acc)
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


def _fusion_claim_met(f1: dict[str, float]) -> tuple[bool, str]:
    """mmimdb-like: the found network passes what one modality can give, and late fusion."""
    found, late = f1[FOUND], _late(f1)
    ceilings = {k: v for k, v in f1.items() if "oracle knowing the" in k and "both" not in k}
    why = [f"found {found:.1f} <= {k.split(': ')[-1]} {v:.1f}" for k, v in ceilings.items() if found <= v]
    if found <= late:
        why.append(f"found {found:.1f} <= late fusion {late:.1f}")
    return not why, "; ".join(why) or "met"


def margin_over_spread(per_seed: dict[int, list[dict]], metric: str) -> tuple[bool, str]:
    """Across seeds: the found network's mean lead over late fusion against both rows' spreads."""
    found = np.array([_values(rows, metric)[FOUND] for rows in per_seed.values()])
    late = np.array([_late(_values(rows, metric)) for rows in per_seed.values()])
    if len(found) < 2:
        return False, "one seed: no spread to compare with"
    lead, spread = (found - late).mean(), max(found.std(ddof=1), late.std(ddof=1))
    return lead > spread, f"mean lead over late fusion {lead:.1f} points, larger spread over seeds {spread:.1f}"


def run_seed(seed: int, out: Path, bmnas: str, dataset: str) -> tuple[list[dict], float]:
    """One demo (or its cached result); rows and wall seconds."""
    run = out / f"seed_{seed}"
    t0 = time.perf_counter()
    cmd = [bmnas, "demo", "--dataset", dataset, "--seed", str(seed), "--out", str(run)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"seed {seed}: bmnas demo failed\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    (run / "demo_stdout.txt").write_text(proc.stdout)
    rows = json.loads((run / "comparison.json").read_text())
    return rows, wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="ntu-like", choices=sorted(METRIC))
    ap.add_argument("--seeds", default="0-4")
    ap.add_argument("--out", default=None, help="default: bench/_data/demo_spread[_mmimdb]")
    ap.add_argument("--bmnas", default=str(Path(sys.executable).with_name("bmnas")))
    args = ap.parse_args()
    seeds, metric = parse_seeds(args.seeds), METRIC[args.dataset]
    data = Path(__file__).resolve().parent / "_data"
    out = Path(args.out) if args.out else data / ("demo_spread" if args.dataset == "ntu-like" else "demo_spread_mmimdb")
    out.mkdir(parents=True, exist_ok=True)
    per_seed, met = {}, 0
    for seed in seeds:
        rows, wall = run_seed(seed, out, args.bmnas, args.dataset)
        ok, why = claim_met(rows, args.dataset)
        met += ok
        per_seed[seed] = rows
        found = _values(rows, metric)[FOUND]
        print(f"seed {seed}: {wall:.0f}s, found {found:.1f} %, claim {why}", flush=True)
    methods = [r["method"] for r in per_seed[seeds[0]]]
    cross = "cross_f1" in per_seed[seeds[0]][0]
    print(f"\n| method | test {metric}, mean ± std over {len(seeds)} seeds | range |"
          + (" cross-modal genres' F1, mean |" if cross else ""))
    print("|---|---:|---:|" + ("---:|" if cross else ""))
    for m in methods:
        rows = [next(r for r in per_seed[s] if r["method"] == m) for s in seeds]
        v = 100 * np.array([r[metric] for r in rows])
        std = v.std(ddof=1) if len(v) > 1 else 0.0
        name = f"**{m}**" if m == FOUND else m
        line = f"| {name} | {v.mean():.1f} ± {std:.1f} | {v.min():.1f}-{v.max():.1f} |"
        if cross:
            line += f" {100 * np.mean([r['cross_f1'] for r in rows]):.1f} |" if "cross_f1" in rows[0] else " — |"
        print(line)
    if args.dataset == "mmimdb-like":
        ok, why = margin_over_spread(per_seed, metric)
        print(f"\nseeds where the found network beats both one-modality ceilings and late fusion: "
              f"{met}/{len(seeds)} (seeds {args.seeds}); {why}: {'met' if ok else 'NOT met'}")
    else:
        print(f"\nseeds meeting the claim (found >= 75 %, >= 10 points over late fusion, within 1 point of every "
              f"other row): {met}/{len(seeds)} (seeds {args.seeds})")


if __name__ == "__main__":
    main()
