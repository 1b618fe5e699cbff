"""The one run directory of the training stages (search, train, finetune, pretrain), written and resumed alike.

  config.yaml            the resolved settings (what `--resume RUN` reads back; only --device may change)
  log.txt                human-readable log, appended on resume
  metrics.jsonl          one JSON line per finished epoch
  checkpoints/last.pt    everything to continue after the last finished epoch (atomic writes)
  checkpoints/best.pt    the kept weights (train/finetune: best on val, or the last on train+val;
                         pretraining keeps its product, a plain state_dict, as RUN/best.pt)

Creating, opening, locking and finishing a run is `fusion_search.training.run.Run`'s; this module
holds the files' rules: a resumed run drops the metrics lines of an epoch its checkpoint does not
cover (`keep_epochs`), so a killed run resumed ends with the same files as an uninterrupted one. `EpochBook` is the per-epoch bookkeeping of train and finetune (best-on-val
selection); the search keeps its own per-epoch files beside these (`fusion_search.search`).
"""

from __future__ import annotations

import json
import logging
import math
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from fusion_search.errors import SearchError
from fusion_search.training.run_checkpoint import load_run_checkpoint, save_run_checkpoint
from stores.device import restore_rng, rng_state
from stores.files import write_text_atomic

CONFIG = "config.yaml"
LOG = "log.txt"
METRICS = "metrics.jsonl"
LAST = "checkpoints/last.pt"
BEST = "checkpoints/best.pt"


def abs_path(path: str | os.PathLike) -> str:
    """Absolute form of a path a run config records, so evaluate/report/resume work from any directory."""
    return str(Path(path).resolve()) if str(path) else ""


def read_config(run: str | os.PathLike, error: type[Exception] = SearchError, hint: str = "",
                name: str = CONFIG) -> dict[str, Any]:
    """A run directory's config.yaml (or another settings file `name`, e.g. a multi-start's
    manifest) as a mapping; `error` (the caller's room's class) names the file when it is missing or
    is not a YAML mapping, followed by `hint`."""
    import yaml

    path = Path(run) / name
    if not path.is_file():
        raise error(f"{run}: no {name}{'; ' + hint if hint else ''}")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise error(f"{path}: not readable YAML ({str(exc).splitlines()[0]}); restore it from a copy") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise error(f"{path}: not a mapping of settings; restore it from a copy")
    return data


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSON-lines file (metrics.jsonl, arch_history.jsonl); none when it is absent."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with path.open("a") as fh:
        fh.write(json.dumps(record) + "\n")


def keep_epochs(path: Path, epochs_done: int) -> None:
    """Drop the lines of epochs a checkpoint does not cover (a kill between the metrics and checkpoint writes)."""
    if path.exists():
        write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in read_jsonl(path) if r["epoch"] <= epochs_done))


@contextmanager
def run_log(run: Path, kind: str) -> Iterator[logging.Logger]:
    """A logger appending to RUN/log.txt while the block runs."""
    log = logging.getLogger(f"bmnas.{kind}.{run.resolve()}")
    log.setLevel(logging.INFO)
    log.propagate = False
    handler = logging.FileHandler(run / LOG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(handler)
    try:
        yield log
    finally:
        log.removeHandler(handler)
        handler.close()


def save_training_state(path: Path, model: nn.Module, optimizer: Any, scheduler: Any, device: torch.device,
                        **extra: Any) -> None:
    """last.pt: weights, optimiser, schedule, RNG (the GPU's too, when used) and `extra`, written atomically."""
    save_run_checkpoint({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "scheduler": scheduler.state_dict(), **rng_state(device), **extra}, path)


def load_training_state(path: Path, model: nn.Module, optimizer: Any, scheduler: Any, device: torch.device,
                        keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """Load a last.pt into model, optimiser and schedule and restore the RNG; returns the checkpoint
    (holding at least `keys`) for the stage's own state."""
    ckpt = load_run_checkpoint(path, ("model", "optimizer", "scheduler", "rng", *keys))
    model.load_state_dict(ckpt["model"])
    try:
        optimizer.load_state_dict(ckpt["optimizer"])
    except ValueError as exc:  # another set of trained parameters (an older bmnas froze fewer)
        raise SearchError(f"{path}: its optimiser state does not fit this run's trained parameters ({exc}); "
                          "start the run again in a new directory") from None
    scheduler.load_state_dict(ckpt["scheduler"])
    restore_rng(ckpt, device)
    return ckpt


def improves(score: float, loss: float, best_score: float | None, best_loss: float | None) -> bool:
    """Whether an epoch's val (metric, loss) beats the best so far: a higher metric, or the same metric
    (to float rounding) at a lower loss. Why the loss: on a small val split the metric saturates within
    a few epochs (every row right), and the first epoch at that value is an undertrained network."""
    if math.isnan(score):
        return False
    if best_score is None or math.isnan(best_score):
        return True
    if round(score, 9) != round(best_score, 9):
        return score > best_score
    return not math.isnan(loss) and (best_loss is None or math.isnan(best_loss) or loss < best_loss)


class EpochBook:
    """Best-on-val selection (`improves`) and the per-epoch files of a train or finetune run.

    After each epoch, in this order: best.pt (when the val score improved, or always when there is no
    val split), one line of metrics.jsonl (and its TensorBoard scalars), then last.pt holding
    everything to continue."""

    def __init__(self, run: Path, key: str, events: Any = None, writes: bool = True) -> None:
        self.run, self.key, self.events = run, key, events  # events: an EpochEvents, or None
        self.writes = writes  # False: a rank of a torchrun launch other than 0 keeps the state, writes nothing
        self.state: dict[str, Any] = {"epoch": 0, "best_score": None, "best_epoch": 0, "best_loss": None}

    def restore(self, model: nn.Module, optimizer: Any, scheduler: Any, device: torch.device) -> dict[str, Any]:
        """Continue from last.pt (training state, RNG, bookkeeping); returns it for the stage's own extras."""
        ckpt = load_training_state(self.run / LAST, model, optimizer, scheduler, device,
                                   ("epoch", "best_score", "best_epoch"))
        self.state = {k: ckpt.get(k) for k in self.state}
        if self.writes:
            keep_epochs(self.run / METRICS, self.epoch)
        return ckpt

    @property
    def epoch(self) -> int:
        return int(self.state["epoch"])

    def end_epoch(self, record: dict[str, Any], model: nn.Module, optimizer: Any, scheduler: Any,
                  device: torch.device, **extra: Any) -> str:
        """Select, write best.pt / metrics.jsonl / last.pt (with `extra`) for the epoch in `record`;
        returns a log line."""
        epoch = int(record["epoch"])
        improved = True
        if "val" in record:
            score = float(record["val"].get(self.key, float("nan")))
            loss = float(record["val"].get("loss", float("nan")))
            improved = self.state["best_score"] is None or improves(score, loss, self.state["best_score"],
                                                                    self.state["best_loss"])
            if improved:
                self.state["best_score"], self.state["best_loss"] = score, loss
        if improved:
            self.state["best_epoch"] = epoch
        self.state["epoch"] = epoch
        if self.writes:
            self._write(record, improved, model, optimizer, scheduler, device, extra)
        val = f", val {self.key} {record['val'].get(self.key, float('nan')):.4f}" if "val" in record else ""
        return (f"epoch {epoch}: train loss {record['train_loss']:.4f}{val}, best epoch {self.state['best_epoch']} "
                f"({record.get('seconds', 0.0):.1f}s)")

    def _write(self, record: dict[str, Any], improved: bool, model: nn.Module, optimizer: Any, scheduler: Any,
               device: torch.device, extra: dict[str, Any]) -> None:
        if improved:
            save_run_checkpoint({"model": model.state_dict(), "epoch": self.state["epoch"],
                                 "score": self.state["best_score"]}, self.run / BEST)
        append_jsonl(self.run / METRICS, record)
        if self.events is not None:
            self.events.add(record)
        save_training_state(self.run / LAST, model, optimizer, scheduler, device, **extra, **self.state)

    def summary(self, run_kind_fields: dict[str, Any]) -> dict[str, Any]:
        return {"run_dir": str(self.run), "best_epoch": self.state["best_epoch"],
                "best_val": self.state["best_score"], **run_kind_fields}
