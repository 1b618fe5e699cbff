"""`bmnas finetune` and `bmnas train` under torchrun: real torchrun processes, 2 ranks on CPU (gloo).

On 48 ntu-like samples with tiny backbones: one run directory written by rank 0 (config says
world_size 2, one metrics line per epoch, test metrics over the whole split), a kill -9 of every
rank resumed under torchrun to the metrics of an uninterrupted run, one optimisation step of 2
processes equal to the 1-process step on the same global batch, and a global batch that does not
divide over the ranks refused before a run directory exists.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

from fusion_search.training.distributed import World, shard_rows

BIN = Path(sys.executable).parent
TESTS = Path(__file__).parent


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from extract.backbones import get_backbone
    from extract.checkpoints import save_checkpoint
    from extract.job import BackboneChoice, extract
    from extract.sources.registry import open_source
    from extract.synth import generate
    from fusion_search.genotype import Genotype

    d = tmp_path_factory.mktemp("ddp")
    generate("ntu-like", d / "ntu", samples=48, classes=4, seed=0)
    torch.manual_seed(0)
    save_checkpoint(get_backbone("inflated_resnet50").build("tiny", 4, "video"), d / "rgb.pt")
    save_checkpoint(get_backbone("hcn").build("tiny", 4, "skeleton"), d / "hcn.pt")
    extract(open_source(d / "ntu"), str(d / "s.zarr"),
            [BackboneChoice("video", "inflated_resnet50", "tiny", str(d / "rgb.pt")),
             BackboneChoice("skeleton", "hcn", "tiny", str(d / "hcn.pt"))],
            use_dask=False, dtype="float32", device="cpu", progress=False, batch_size=8)
    Genotype.from_dict({  # reads video_3 of 4 taps: the video backbone's last block is cut off
        "format": "bmnas-genotype", "version": 1, "task": "multiclass", "num_classes": 4, "C": 8, "L": 4,
        "multiplier": 1, "nodes": ["video_1", "video_2", "video_3", "video_4",
                                   "skeleton_1", "skeleton_2", "skeleton_3", "skeleton_4"],
        "cells": [{"inputs": ["video_2", "skeleton_4"], "steps": [{"op": "ConcatFC", "inputs": [0, 1]}],
                   "concat": [2]},
                  {"inputs": ["cell_1", "video_3"], "steps": [{"op": "Attention", "inputs": [0, 1]}],
                   "concat": [2]}],
        "output": ["cell_1", "cell_2"]}).save(d / "g.json")
    return d


def _torchrun(*argv: str, n: int = 2, **popen) -> list[str]:
    runner = [str(BIN / "torchrun")] if (BIN / "torchrun").is_file() else [sys.executable, "-m", "torch.distributed.run"]
    return [*runner, "--standalone", f"--nproc-per-node={n}", *argv]


def _env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "OMP_NUM_THREADS": "1"}


def _finetune(d: Path, out: Path, *extra: str) -> list[str]:
    return ["finetune", "--store", str(d / "s.zarr"), "--genotype", str(d / "g.json"), "--source", str(d / "ntu"),
            "--out", str(out), "--batch-size", "4", "--loader-workers", "1", "--device", "cpu", *extra]


def _epochs(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _without_seconds(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def test_shards_of_a_global_batch_are_the_batch_padded_to_the_ranks():
    rows = np.arange(10, 17)  # 7 rows over 2 ranks: padded with the first row
    parts = [shard_rows(rows, World(rank=r, size=2)) for r in range(2)]
    assert [len(p) for p in parts] == [4, 4]
    assert sorted(np.concatenate(parts).tolist()) == sorted(rows.tolist() + [10])
    assert shard_rows(rows, World()) is rows


def test_finetune_under_torchrun_writes_one_run(data, tmp_path):
    run = tmp_path / "ft"
    r = subprocess.run(_torchrun("--no-python", "bmnas", *_finetune(data, run, "--epochs", "2")),
                       capture_output=True, text=True, env=_env(), timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ft"]  # one run directory, its lock released
    import yaml

    assert yaml.safe_load((run / "config.yaml").read_text())["world_size"] == 2
    assert [e["epoch"] for e in _epochs(run)] == [1, 2]
    metrics = json.loads((run / "metrics_test.json").read_text())
    assert metrics["num_samples"] == sum(1 for line in (run / "predictions_test.csv").read_text().splitlines()[1:])
    assert json.loads((run / "run.json").read_text())["status"] == "finished"
    assert r.stdout.count("checkpoint of epoch") == 1  # rank 0 reports for both


def test_kill_of_every_rank_resumes_to_the_uninterrupted_metrics(data, tmp_path):
    """The bmnas script's path in place of `--no-python bmnas` (torchrun runs it with Python)."""
    script = str(BIN / "bmnas")
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    r = subprocess.run(_torchrun(script, *_finetune(data, whole, "--epochs", "5")), capture_output=True, text=True,
                       env=_env(), timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    proc = subprocess.Popen(_torchrun(script, *_finetune(data, killed, "--epochs", "5")), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    ranks: list = []
    while time.time() < deadline and proc.poll() is None:
        if (killed / "checkpoints" / "last.pt").is_file():  # the first epoch is checkpointed
            ranks = psutil.Process(proc.pid).children(recursive=True)
            os.killpg(proc.pid, signal.SIGKILL)  # torchrun's group; the ranks (groups of their own) die with it
            break
        time.sleep(0.02)
    proc.wait()
    psutil.wait_procs(ranks, timeout=30)
    assert ranks and not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in ranks)
    assert json.loads((killed / "run.json").read_text())["status"] == "running"  # killed mid-run
    r = subprocess.run(_torchrun(script, "finetune", "--resume", str(killed)), capture_output=True, text=True,
                       env=_env(), timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert [e["epoch"] for e in _epochs(killed)] == [1, 2, 3, 4, 5]
    assert _without_seconds(_epochs(killed)) == _without_seconds(_epochs(whole))
    test = [json.loads((run / "metrics_test.json").read_text()) for run in (whole, killed)]
    assert test[0]["accuracy"] == test[1]["accuracy"] and test[0]["loss"] == test[1]["loss"]


def test_one_step_of_two_processes_equals_one_process(data, tmp_path):
    script = str(TESTS / "_ddp_step.py")
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    r = subprocess.run([sys.executable, script, str(data), str(one)], capture_output=True, text=True, env=_env(),
                       timeout=300)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(_torchrun(script, str(data), str(two)), capture_output=True, text=True, env=_env(), timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    a, b = torch.load(one), torch.load(two)
    moved = 0
    for k, before in a["before"].items():
        assert torch.equal(before, b["before"][k]), k
        step_a, step_b = a["after"][k] - before, b["after"][k] - before
        if step_a.is_floating_point() and step_a.norm() > 0:
            moved += 1  # the steps agree to float rounding (another partition of the batch's sums)
            assert float((step_a - step_b).norm()) <= 1e-3 * float(step_a.norm()) + 1e-9, k
        else:
            assert torch.equal(step_a, step_b), k
    assert moved > 50


def test_train_under_torchrun_and_its_refusals(data, tmp_path):
    base = ["train", "--store", str(data / "s.zarr"), "--genotype", str(data / "g.json"), "--epochs", "2",
            "--device", "cpu"]
    r = subprocess.run(_torchrun("--no-python", "bmnas", *base, "--out", str(tmp_path / "tr"), "--batch-size", "8"),
                       capture_output=True, text=True, env=_env(), timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert [e["epoch"] for e in _epochs(tmp_path / "tr")] == [1, 2]
    assert (tmp_path / "tr" / "metrics_test.json").is_file()
    r = subprocess.run(_torchrun("--no-python", "bmnas", *base, "--out", str(tmp_path / "odd"), "--batch-size", "7"),
                       capture_output=True, text=True, env=_env(), timeout=300)
    assert r.returncode != 0
    assert "--batch-size 7 is the global batch and does not divide over 2 processes" in r.stderr
    assert not (tmp_path / "odd").exists()
    r = subprocess.run(_torchrun("--no-python", "bmnas", *base, "--out", str(tmp_path / "sync"), "--sync-bn"),
                       capture_output=True, text=True, env=_env(), timeout=300)
    assert r.returncode != 0 and "--sync-bn: SyncBatchNorm runs on CUDA processes only" in r.stderr
    assert not (tmp_path / "sync").exists()


def test_pretrain_under_torchrun(data, tmp_path):
    """`bmnas pretrain` shares the engine: 2 processes write one run (world_size 2, one line per epoch,
    best.pt), and --on-error skip is refused there in one line."""
    import yaml

    base = ["pretrain", str(data / "ntu"), "--modality", "skeleton", "--backbone", "hcn", "--setting", "tiny",
            "--epochs", "2", "--batch-size", "4", "--device", "cpu"]
    r = subprocess.run(_torchrun("--no-python", "bmnas", *base, "--out", str(tmp_path / "pre")), capture_output=True,
                       text=True, env=_env(), timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    run = tmp_path / "pre"
    assert yaml.safe_load((run / "config.yaml").read_text())["world_size"] == 2
    assert [e["epoch"] for e in _epochs(run)] == [1, 2] and (run / "best.pt").is_file()
    assert r.stdout.count("best ") == 1  # rank 0 reports for both
    r = subprocess.run(_torchrun("--no-python", "bmnas", *base, "--out", str(tmp_path / "skip"), "--on-error", "skip"),
                       capture_output=True, text=True, env=_env(), timeout=300)
    assert r.returncode != 0 and "--on-error skip: not under torchrun" in r.stderr
    assert not (tmp_path / "skip").exists()


def test_a_one_process_run_resumes_under_torchrun(data, tmp_path):
    """Another number of processes on --resume: the global batches stay; rank 0 goes on with the
    checkpoint's RNG, the other ranks start streams of their own (the checkpoint holds none for them)."""
    import yaml

    from pipeline.train import train_on_cache

    run = tmp_path / "tr"
    train_on_cache(str(data / "s.zarr"), data / "g.json", run, epochs=1, batch_size=8, device="cpu",
                   evaluate_test=False)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["epochs"] = 2  # as if killed after epoch 1 of 2
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    r = subprocess.run(_torchrun("--no-python", "bmnas", "train", "--resume", str(run)), capture_output=True,
                       text=True, env=_env(), timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert [e["epoch"] for e in _epochs(run)] == [1, 2]
    assert "resumed after epoch 1 on 2 process(es)" in (run / "log.txt").read_text()
