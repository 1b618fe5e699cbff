"""Training for a missing modality: `--modality-dropout` 0 against 0.3, side by side, over seeds.

The planted store of tests/test_robustness.py (label = 2·bit(a_2) + bit(b_3): one modality alone
reaches at most 50 % accuracy, both 100 %), `bmnas train` then `bmnas evaluate --robustness`, for
two genotypes: `glu`, one Cell LinearGLU(a_2, b_3) (a multiplicative fusion: a missing value input
zeroes its output unless the network learned a placeholder), and `searched`, the searched-like
genotype of the train tests (ConcatFC, LinearGLU, Sum, Attention Steps). Printed: test accuracy with
both modalities, with each missing, and with noise σ = 1 and 2 on each; mean ± sample std over the
seeds (each seed a new store and a new training).

    .venv/bin/python bench/robustness_planted.py --seeds 3 --epochs 40     # about two minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from _search_data import planted_store  # noqa: E402
from _train_data import glu_genotype, searched_genotype  # noqa: E402

from pipeline.evaluate import evaluate_run  # noqa: E402
from pipeline.train import train_on_cache  # noqa: E402

COLUMNS = ("all", "no a", "no b", "a σ=1", "b σ=1", "a σ=2", "b σ=2")


GENOTYPES = {"glu": glu_genotype, "searched": searched_genotype}


def _row(table: dict) -> list[float]:
    noise = table["noise"]
    return [table["full"]["accuracy"], table["missing"]["a"]["accuracy"], table["missing"]["b"]["accuracy"],
            noise["a"]["1"]["accuracy"], noise["b"]["1"]["accuracy"], noise["a"]["2"]["accuracy"],
            noise["b"]["2"]["accuracy"]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--dropouts", default="0,0.3")
    ap.add_argument("--genotypes", default="glu,searched")
    args = ap.parse_args()
    dropouts = [float(p) for p in args.dropouts.split(",")]
    names = args.genotypes.split(",")
    results: dict[tuple[str, float], list[list[float]]] = {(g, p): [] for g in names for p in dropouts}
    with tempfile.TemporaryDirectory(prefix="bmnas-robust-") as d:
        for seed in range(args.seeds):
            store = Path(d) / f"s{seed}.zarr"
            planted_store(store, "joint", n=4000, signal=2.0, seed=seed)
            for name in names:
                GENOTYPES[name]().save(Path(d) / f"{name}.json")
                for p in dropouts:
                    run = Path(d) / f"run_{seed}_{name}_{p}"
                    train_on_cache(str(store), Path(d) / f"{name}.json", run, epochs=args.epochs, batch_size=64,
                                   seed=seed, device="cpu", modality_dropout=p, evaluate_test=False)
                    evaluate_run(run, "test", robustness=["1", "2"])
                    results[name, p].append(_row(json.loads((run / "robustness_test.json").read_text())))
    print("| genotype | --modality-dropout | " + " | ".join(COLUMNS) + " |")
    print("|---|---|" + "---:|" * len(COLUMNS))
    for (name, p), rows in results.items():
        arr = np.asarray(rows) * 100
        cells = [f"{m:.1f} ± {s:.1f}" for m, s in zip(arr.mean(0), arr.std(0, ddof=1) if len(arr) > 1 else 0 * arr[0])]
        print(f"| {name} | {p:g} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
