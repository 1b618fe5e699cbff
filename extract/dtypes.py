"""Which dtype each node is stored in, and the check that nothing non-finite reaches the store.

Why here: float16 halves a cache, but an activation beyond 65,504 (a random-weights Inflated ResNet's
pooled vector, a large transformer's outlier features) becomes Inf in the cast, and a store is the one
artifact every later stage reads. So `--dtype auto` (the default) keeps float16 only for nodes whose
probe-forward magnitudes stay far inside its range, and every batch is checked after the cast to its
node's dtype before its chunk is written, whichever dtype was chosen.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

DTYPE_CHOICES = ("auto", "float16", "float32")
FLOAT16_MAX = float(np.finfo(np.float16).max)  # 65,504
AUTO_HEADROOM = 8.0  # auto keeps float16 while the probe's peak stays below FLOAT16_MAX / 8


def choose_dtype(requested: str, peak: float) -> str:
    """A node's store dtype: `requested` unless it is "auto", which picks float16 for a probe peak
    (largest |value| of the probe forward) below 1/8 of float16's range and float32 otherwise."""
    if requested != "auto":
        return requested
    return "float16" if math.isfinite(peak) and peak < FLOAT16_MAX / AUTO_HEADROOM else "float32"


def peak_magnitude(values: np.ndarray) -> float:
    """The largest finite |value| (0.0 when there is none): what a message and the auto rule report."""
    finite = np.abs(values[np.isfinite(values)])
    return float(finite.max()) if finite.size else 0.0


def nonfinite_rows(values: np.ndarray, dtype: str) -> np.ndarray:
    """Per row of `values` (rows, ...): True where the values cast to `dtype` hold a NaN or an Inf."""
    with np.errstate(over="ignore"):  # the overflow is what this looks for, not a warning to print
        cast = values.astype(dtype, copy=False)
    return ~np.isfinite(cast.reshape(len(cast), -1)).all(axis=1)


def unstorable(node: str, tap: str, values: np.ndarray, dtype: str, ids: Sequence[str]) -> dict | None:
    """A record of `values` (one batch of one node, float32) that cannot be stored as `dtype`, or None.

    `produced` says whether the backbone itself emitted NaN/Inf (no dtype helps) or the cast overflowed."""
    bad = nonfinite_rows(values, dtype)
    if not bad.any():
        return None
    rows = np.flatnonzero(bad)
    produced = not bool(np.isfinite(values[rows]).all())
    return {"node": node, "tap": tap, "dtype": dtype, "peak": peak_magnitude(values[rows]),
            "produced": produced, "ids": [ids[i] for i in rows]}


def unstorable_message(rec: dict, precision: str) -> str:
    """One line for a refused batch: the node, the tap, the largest magnitude, the samples, what to do."""
    ids = rec["ids"]
    shown = ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
    where = f"node {rec['node']} (tap {rec['tap']})"
    if rec["produced"]:
        fix = ("pass --precision float32 (the float16 forward overflowed)" if precision == "float16"
               else "check the backbone's checkpoint and these samples' files")
        return f"{where}: the backbone produced NaN/Inf for sample(s) {shown}; {fix}"
    return (f"{where}: values up to {rec['peak']:.4g} overflow {rec['dtype']} (largest {FLOAT16_MAX:g}) in "
            f"sample(s) {shown}; extract with --dtype float32 (or --dtype auto, which stores such nodes "
            "in float32)")
