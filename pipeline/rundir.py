"""Epoch bookkeeping shared by `train` and `finetune` run directories.

After each epoch, in this order: the best checkpoint (when the val score improved, or always when
there is no val split), one line of metrics.jsonl, then checkpoints/last.pt holding everything to
continue. A kill between the writes leaves a metrics line the checkpoint does not cover; `restore`
drops it, so a resumed run ends with the same files as an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from fusion_search.run_checkpoint import load_run_checkpoint, save_run_checkpoint
from stores.device import restore_rng, rng_state

LAST = "checkpoints/last.pt"
BEST = "checkpoints/best.pt"


def abs_path(path: str | os.PathLike) -> str:
    """Absolute form of a path a run config records, so evaluate/report/resume work from any directory."""
    return str(Path(path).resolve()) if str(path) else ""


def run_logger(run: Path, kind: str) -> tuple[logging.Logger, logging.Handler]:
    """A logger appending to RUN/log.txt (remove the handler when done)."""
    log = logging.getLogger(f"bmnas.{kind}.{run.resolve()}")
    log.setLevel(logging.INFO)
    log.propagate = False
    handler = logging.FileHandler(run / "log.txt")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(handler)
    return log, handler


def with_logger(run: Path, kind: str, body: Callable[[logging.Logger], Any]) -> Any:
    log, handler = run_logger(run, kind)
    try:
        return body(log)
    finally:
        log.removeHandler(handler)
        handler.close()


class EpochBook:
    """Best-on-val selection and the per-epoch files of a run directory."""

    def __init__(self, run: Path, key: str) -> None:
        self.run, self.key = run, key
        self.state: dict[str, Any] = {"epoch": 0, "best_score": None, "best_epoch": 0}

    def restore(self, device: torch.device) -> dict[str, Any]:
        """Load last.pt; returns it (model/optimiser states for the caller), restores RNG and bookkeeping."""
        ckpt = load_run_checkpoint(self.run / LAST, ("model", "rng", *self.state))
        restore_rng(ckpt, device)
        self.state = {k: ckpt[k] for k in self.state}
        path = self.run / "metrics.jsonl"
        if path.exists():
            keep = [ln for ln in path.read_text().splitlines()
                    if ln.strip() and json.loads(ln)["epoch"] <= self.state["epoch"]]
            path.write_text("".join(ln + "\n" for ln in keep))
        return ckpt

    @property
    def epoch(self) -> int:
        return int(self.state["epoch"])

    def end_epoch(self, record: dict[str, Any], model: nn.Module, resume_state: dict[str, Any],
                  device: torch.device) -> str:
        """Select, write best.pt / metrics.jsonl / last.pt for the epoch in `record`; returns a log line."""
        epoch = int(record["epoch"])
        improved = True
        if "val" in record:
            score = float(record["val"].get(self.key, float("nan")))
            improved = self.state["best_score"] is None or score > self.state["best_score"]
            if improved:
                self.state["best_score"] = score
        if improved:
            self.state["best_epoch"] = epoch
            save_run_checkpoint({"model": model.state_dict(), "epoch": epoch, "score": self.state["best_score"]},
                        self.run / BEST)
        self.state["epoch"] = epoch
        with (self.run / "metrics.jsonl").open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        save_run_checkpoint({"model": model.state_dict(), **resume_state, **rng_state(device), **self.state},
                    self.run / LAST)
        val = f", val {self.key} {record['val'].get(self.key, float('nan')):.4f}" if "val" in record else ""
        return (f"epoch {epoch}: train loss {record['train_loss']:.4f}{val}, best epoch {self.state['best_epoch']} "
                f"({record.get('seconds', 0.0):.1f}s)")

    def summary(self, run_kind_fields: dict[str, Any]) -> dict[str, Any]:
        return {"run_dir": str(self.run), "best_epoch": self.state["best_epoch"],
                "best_val": self.state["best_score"], **run_kind_fields}
