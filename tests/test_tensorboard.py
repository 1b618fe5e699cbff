"""TensorBoard event files of every run that trains (`RUN/tensorboard/`), read back from disk.

The files are parsed here as TensorBoard reads them: TFRecord frames of `Event` protos, files in name
order, and a `SessionLog.START` at step s dropping what earlier files logged from step s on (how a
resumed run shows each epoch once).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import yaml
from tensorboardX.proto import event_pb2

from _search_data import planted_store, single_thread  # noqa: F401
from _train_data import searched_genotype, small_store
from fusion_search.config import SearchConfig
from fusion_search.training.events import EVENTS, entropies
from fusion_search.search import run_search
from pipeline.train import resume_training, train_on_cache


def read_events(run: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> every (step, value) TensorBoard keeps for the run, in the order written."""
    out: dict[str, list[tuple[int, float]]] = {}
    files = sorted((run / EVENTS).glob("events.out.tfevents.*"))
    assert files, f"no event file under {run / EVENTS}"
    for path in files:
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            if event.HasField("session_log") and event.session_log.status == event_pb2.SessionLog.START:
                for tag in out:
                    out[tag] = [(s, v) for s, v in out[tag] if s < event.step]
            for v in event.summary.value:
                out.setdefault(v.tag, []).append((event.step, v.simple_value))
    return out


def read_scalars(run: Path) -> dict[str, dict[int, float]]:
    """tag -> {step: value}; each step once (a step logged twice fails here)."""
    out = {}
    for tag, points in read_events(run).items():
        steps = [s for s, _ in points]
        assert len(steps) == len(set(steps)), f"{tag}: steps {steps}"
        out[tag] = dict(points)
    return out


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_a_train_run_writes_its_epochs_as_scalars(tmp_path):
    small_store(tmp_path / "s.zarr")
    searched_genotype().save(tmp_path / "g.json")
    train_on_cache(str(tmp_path / "s.zarr"), tmp_path / "g.json", tmp_path / "run", epochs=3, batch_size=16,
                   device="cpu", evaluate_test=False)
    tb = read_scalars(tmp_path / "run")
    hist = _lines(tmp_path / "run" / "metrics.jsonl")
    assert {"train_loss", "lr", "val/accuracy", "val/loss"} <= set(tb)
    for tag, pick in (("train_loss", lambda h: h["train_loss"]), ("val/accuracy", lambda h: h["val"]["accuracy"])):
        assert sorted(tb[tag]) == [1, 2, 3]
        assert [round(tb[tag][h["epoch"]], 5) for h in hist] == [round(pick(h), 5) for h in hist]


def test_a_resumed_run_shows_each_epoch_once(tmp_path):
    small_store(tmp_path / "s.zarr")
    searched_genotype().save(tmp_path / "g.json")
    args = (str(tmp_path / "s.zarr"), tmp_path / "g.json")
    run = tmp_path / "cut"
    train_on_cache(*args, run, epochs=2, batch_size=16, device="cpu", evaluate_test=False)  # "killed" after 2
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["epochs"] = 3
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    import time

    from tensorboardX import SummaryWriter

    with SummaryWriter(str(run / EVENTS), filename_suffix=f".{time.time_ns()}") as w:  # the killed process
        w.add_scalar("train_loss", -1.0, 3)  # had logged epoch 3 before its checkpoint
    assert len(list((run / EVENTS).iterdir())) == 2
    resume_training(run, evaluate_test=False)
    tb = read_scalars(run)
    assert sorted(tb["train_loss"]) == [1, 2, 3] and tb["train_loss"][3] > 0
    assert round(tb["train_loss"][3], 5) == round(_lines(run / "metrics.jsonl")[2]["train_loss"], 5)


def test_a_search_run_writes_architecture_entropies(tmp_path, single_thread):
    planted_store(tmp_path / "p.zarr", "joint", n=120)
    cfg = SearchConfig(store=str(tmp_path / "p.zarr"), cells=1, steps=1, channels=8, length=4, multiplier=1,
                       epochs=2, batch_size=16, score_min_steps=10, score_seeds=1, step_inputs="pair",
                       device="cpu", plots=False)
    run_search(cfg, tmp_path / "search")
    tb = read_scalars(tmp_path / "search")
    for name in ("alpha", "beta", "gamma"):
        values = tb[f"arch/{name}_entropy"]
        assert sorted(values) == [1, 2] and all(0.0 <= v <= 1.0 for v in values.values())
    assert sorted(tb["val/accuracy"]) == [1, 2] and "train_loss" in tb


def test_entropy_is_one_when_uniform_and_zero_when_decided():
    import numpy as np

    e = entropies({"alpha": [np.full((3, 2), 0.5)], "gamma": [np.array([[1.0, 0.0, 0.0, 0.0]])]})
    assert abs(e["alpha_entropy"] - 1.0) < 1e-9 and abs(e["gamma_entropy"]) < 1e-6
