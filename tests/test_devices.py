"""Device handling that a CPU can check: RNG restore from real checkpoints, GPU-per-worker assignment,
resume on another --device, options refused with --resume, the GradScaler on a device change.

What only a GPU can show (CUDA RNG, two workers on two GPUs, fp16 taps) is in bench/gpu_check.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from _search_data import planted_store, single_thread  # noqa: F401
from _train_data import searched_genotype, small_store
from pipeline.cli import cli
from stores.device import gpu_slot, host_of, resolve_device, restore_rng, rng_state


def _cli(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _one_line_error(result, text):
    assert result.exit_code == 2, result.output
    lines = [x for x in result.output.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and text in lines[0], result.output


# RNG states come back from a real checkpoint file, whatever dtype or device they were loaded as
def test_restore_rng_from_a_saved_checkpoint_repeats_the_draws(tmp_path):
    torch.manual_seed(5)
    torch.save({"model": {}, **rng_state(torch.device("cpu"))}, tmp_path / "last.pt")
    expected = torch.rand(4)
    torch.rand(100)  # the RNG moves on
    ckpt = torch.load(tmp_path / "last.pt", map_location="cpu", weights_only=True)
    restore_rng(ckpt, torch.device("cpu"))
    assert torch.equal(torch.rand(4), expected)
    # a state that is not a CPU ByteTensor makes torch.set_rng_state raise "RNG state must be a
    # torch.ByteTensor" (a CUDA tensor after map_location=cuda); the CPU's stand-in is another dtype
    with pytest.raises(TypeError, match="ByteTensor"):
        torch.set_rng_state(ckpt["rng"].to(torch.int16))
    restore_rng({"rng": ckpt["rng"].to(torch.int16)}, torch.device("cpu"))
    assert torch.equal(torch.rand(4), expected)
    with pytest.raises(TypeError, match="must be a tensor"):
        restore_rng({"rng": [1, 2]}, torch.device("cpu"))


def test_one_resolver_for_every_room():
    from extract.errors import ExtractError
    from fusion_search.data import resolve_device as search_resolver
    from fusion_search.errors import SearchError

    assert resolve_device("cpu") == search_resolver("cpu") == torch.device("cpu")
    with pytest.raises(SearchError, match="use auto, cpu or cuda"):
        search_resolver("tpu")
    with pytest.raises(ExtractError, match="use auto, cpu or cuda"):
        resolve_device("gpu", ExtractError)
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(SearchError, match="no CUDA device"):
            search_resolver("cuda")


# GPU-per-worker assignment: each worker of a host takes the GPU of its rank among that host's sorted
# addresses, whatever the listing order and however the workers are named
def test_gpu_slots_spread_workers_of_a_host_over_its_gpus():
    a = ["tcp://10.0.0.2:41000", "tcp://10.0.0.1:39999", "tcp://10.0.0.1:40001", "tcp://10.0.0.2:40500",
         "tcp://10.0.0.1:40000"]
    assert host_of("tcp://10.0.0.1:40001") == "10.0.0.1" and host_of("inproc://host/123/1") == "host"
    # host 10.0.0.1: ranks 0, 1, 2 (sorted); 2 GPUs -> 0, 1, 0, GPU 0 shared by two workers
    assert [gpu_slot(x, a, 2) for x in a[1:3] + a[4:]] == [(0, 2), (0, 2), (1, 1)]
    # host 10.0.0.2: two workers, two GPUs -> one each, whatever the listing order
    assert {gpu_slot(x, reversed(a), 2) for x in (a[0], a[3])} == {(0, 1), (1, 1)}
    assert gpu_slot("tcp://10.0.0.3:1", a, 4) == (0, 1)  # a worker not yet listed counts itself
    with pytest.raises(ValueError, match="sees no GPU"):
        gpu_slot(a[0], a, 0)


# resume: a resumed run may change --device and nothing else; any other option is a one-line error
@pytest.mark.usefixtures("single_thread")
def test_search_resume_may_change_the_device_only(tmp_path):
    planted_store(tmp_path / "s.zarr", "joint", n=96)
    (tmp_path / "fast.yaml").write_text("score-min-steps: 4\nplots: false\n")
    out = tmp_path / "run"
    r = _cli("search", "--store", tmp_path / "s.zarr", "--out", out, "--config", tmp_path / "fast.yaml",
             "--cells", "1", "--steps", "1", "--channels", "8", "--length", "4", "--multiplier", "1",
             "--epochs", "1", "--batch-size", "32", "--device", "cpu")
    assert r.exit_code == 0, r.output
    # the run's config says cpu; "auto" differs as a setting though it resolves to the same device here
    r = _cli("search", "--resume", out, "--device", "auto")
    assert r.exit_code == 0, r.output
    _one_line_error(_cli("search", "--resume", out, "--seed", "3", "--device", "cpu"), "drop --seed")


def test_train_and_finetune_resume_refuse_options_they_would_ignore(tmp_path):
    small_store(tmp_path / "s.zarr")
    searched_genotype().save(tmp_path / "g.json")
    run = tmp_path / "run"
    r = _cli("train", "--store", tmp_path / "s.zarr", "--genotype", tmp_path / "g.json", "--out", run,
             "--epochs", "1", "--batch-size", "32", "--device", "cpu")
    assert r.exit_code == 0, r.output
    for option, value in (("--seed", "3"), ("--lr", "0.1"), ("--batch-size", "8"), ("--epochs", "4")):
        _one_line_error(_cli("train", "--resume", run, option, value), f"drop {option}")
    _one_line_error(_cli("finetune", "--resume", run, "--amp"), "drop --amp")
    r = _cli("train", "--resume", run, "--device", "auto")
    assert r.exit_code == 0, r.output


# the GradScaler state crosses devices (CPU <-> CUDA resume) only where both sides have one
def test_scaler_state_is_loaded_only_into_an_enabled_scaler_and_only_when_saved():
    from pipeline.finetune import restore_scaler

    saved = torch.amp.GradScaler("cpu", init_scale=512.0)
    enabled = torch.amp.GradScaler("cpu", init_scale=2.0)
    restore_scaler(enabled, {})  # a run started without AMP saved {}: an enabled scaler starts afresh
    restore_scaler(enabled, None)
    assert enabled.get_scale() == 2.0
    restore_scaler(enabled, saved.state_dict())
    assert enabled.get_scale() == 512.0
    with pytest.raises(RuntimeError):  # what loading {} into an enabled scaler does, unguarded
        torch.amp.GradScaler("cpu").load_state_dict({})
    disabled = torch.amp.GradScaler("cpu", enabled=False)
    restore_scaler(disabled, saved.state_dict())  # an AMP run resumed on CPU: nothing to load
    assert not disabled.is_enabled()


# extraction's placement, decided by the driver from what each worker sees: one GPU per worker of a
# host, `auto` CUDA only when every worker has a GPU, `cuda` refused on workers without one, and
# the compute precision
def test_place_gives_each_worker_of_a_host_its_own_gpu_and_checks_the_workers():
    from extract.errors import ExtractError
    from extract.job import place

    a, b, c = "tcp://10.0.0.1:40001", "tcp://10.0.0.1:40002", "tcp://10.0.0.2:40001"
    p = place("auto", "auto", "float16", {b: 2, a: 2, c: 1})
    assert dict(p.devices) == {a: "cuda:0", b: "cuda:1", c: "cuda:0"} and p.precision == "float16"
    assert p.device_for(b) == torch.device("cuda", 1) and p.device_for("tcp://late:1") == torch.device("cuda", 0)
    assert place("cuda", "auto", "float32", {a: 1}).precision == "float32"  # --dtype float32: computed in float32
    mixed = place("auto", "auto", "float16", {a: 2, c: 0})  # one store is never half GPU, half CPU
    assert set(dict(mixed.devices).values()) == {"cpu"} and mixed.precision == "float32"
    with pytest.raises(ExtractError, match=f"no CUDA device is visible on {c}"):
        place("cuda", "auto", "float16", {a: 2, c: 0})
    assert place("cpu", "float16", "float16", {"": 0}).precision == "float16"  # autocast on the CPU, if asked
    with pytest.raises(ExtractError, match="--precision"):
        place("cpu", "bfloat16", "float16", {"": 0})
    # auto by measurement (extract/precision.py): ResNeXt-101 3D runs faster in float32 on CUDA, the
    # inflated ResNet-50 in float16; a job with one measured slower in float16 computes in float32
    fast = [("inflated_resnet50", "full"), ("hcn", "full")]
    assert place("cuda", "auto", "float16", {a: 1}, fast).precision == "float16"
    assert place("cuda", "auto", "float16", {a: 1}, fast + [("resnext101_3d", "full")]).precision == "float32"
    assert place("cuda", "float16", "float16", {a: 1}, [("resnext101_3d", "full")]).precision == "float16"  # asked
    assert place("cpu", "auto", "float16", {"": 0}, fast).precision == "float32"


@pytest.fixture(scope="module")
def ntu(tmp_path_factory):
    from extract.synth import generate

    root = tmp_path_factory.mktemp("ntu") / "data"
    generate("ntu-like", root, samples=8, classes=4, seed=3)
    return root


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks workers that have no GPU")
def test_extract_device_cuda_is_checked_on_the_workers(ntu, tmp_path):
    from extract.errors import ExtractError
    from extract.job import BackboneChoice, extract
    from extract.sources.ntu import NTUSource

    with pytest.raises(ExtractError, match="no CUDA device is visible on tcp://"):
        extract(NTUSource(ntu, size=32), str(tmp_path / "s.zarr"), [BackboneChoice("skeleton", "hcn", "tiny")],
                workers=1, device="cuda", progress=False)
    assert not (tmp_path / "s.zarr").exists()


def test_float16_extraction_autocasts_keeps_motion_in_float32_and_is_recorded(ntu, tmp_path):
    import numpy as np

    from extract import worker
    from extract.errors import ExtractError
    from extract.job import BackboneChoice, _probe, extract
    from extract.reduction import ReductionConfig
    from extract.sources.ntu import NTUSource
    from stores import open_store

    src = NTUSource(ntu, size=32)
    choice = BackboneChoice("skeleton", "hcn", "tiny")
    kw = dict(rows_per_chunk=4, batch_size=4, use_dask=False, device="cpu", progress=False, dtype="float32")
    half = extract(src, str(tmp_path / "h.zarr"), [choice], precision="float16", **kw)
    full = extract(src, str(tmp_path / "f.zarr"), [choice], **kw)
    assert half.devices == {"local": "cpu"} and half.summary().endswith("devices: local cpu")
    h, f = open_store(half.store), open_store(full.store)
    assert h.attrs["extraction"]["precision"] == "float16" and f.attrs["extraction"]["precision"] == "float32"
    assert h.attrs["extraction"]["device"] == f.attrs["extraction"]["device"] == "cpu"
    for node in h.nodes:  # autocast float16 against float32: 1 % of the tap's norm
        a, b = h.array(node)[...], f.array(node)[...]
        assert not np.array_equal(a, b)  # it did compute in float16
        assert np.linalg.norm(a - b) <= 1e-2 * np.linalg.norm(b), node
    with pytest.raises(ExtractError, match="other settings \\(precision differ\\)"):
        extract(src, str(tmp_path / "h.zarr"), [choice], precision="float32", **kw)

    # inside the forward: motion and its BatchNorm in float32, the convolutions in float16
    ids = [s.id for s in src.samples()]
    entry, _ = _probe(src, ids, choice, ReductionConfig(), src.num_classes)
    lm = worker.get_model(entry, ReductionConfig(), torch.device("cpu"), "float16")
    other = worker.get_model(entry, ReductionConfig(), torch.device("cpu"), "float32")
    assert other is not lm and lm.fp16 and not other.fp16  # one model per (resolved device, precision)
    seen = {}
    hooks = [lm.model.motion_bn.register_forward_pre_hook(lambda m, inp: seen.__setitem__("motion", inp[0].dtype)),
             lm.model.conv5.register_forward_hook(lambda m, inp, out: seen.__setitem__("conv5", out.dtype))]
    rows, inputs, _ = worker._load_rows(src, ids[:2], (entry,))
    try:
        feats = worker._forward((entry,), {entry: lm}, inputs)
    finally:
        for hook in hooks:
            hook.remove()
    assert seen == {"motion": torch.float32, "conv5": torch.float16}
    assert all(v.dtype == np.float32 for v in feats.values())


def test_channels_last_3d_where_measured_faster_keeps_the_taps():
    """extract/precision.py: the inflated ResNet-50 (full) runs channels_last_3d on CUDA only; the
    layout changes no tap value (checked here on the CPU, where the same kernels take either layout)."""
    from extract.job import _probe
    from extract.precision import memory_format
    from extract.reduction import ReductionConfig
    from extract.worker import _forward, get_model

    assert memory_format("inflated_resnet50", "full", torch.device("cuda", 0)) == torch.channels_last_3d
    assert memory_format("inflated_resnet50", "full", torch.device("cpu")) is None
    assert memory_format("resnext101_3d", "full", torch.device("cuda", 0)) is None
    import tempfile
    from pathlib import Path

    from extract.job import BackboneChoice
    from extract.sources.ntu import NTUSource
    from extract.synth import generate
    from extract.worker import _load_rows

    with tempfile.TemporaryDirectory() as d:
        generate("ntu-like", Path(d) / "ntu", samples=4, classes=2, seed=0)
        src = NTUSource(Path(d) / "ntu", size=32)
        ids = [s.id for s in src.samples()]
        entry, _ = _probe(src, ids, BackboneChoice("video", "inflated_resnet50", "tiny"), ReductionConfig(),
                          src.num_classes)
        _, inputs, _ = _load_rows(src, ids, (entry,))
        cpu = torch.device("cpu")
        plain = _forward((entry,), {entry: get_model(entry, ReductionConfig(), cpu)}, inputs)
        lm = get_model(entry, ReductionConfig(), cpu, layout=torch.channels_last_3d)
        conv = next(p for p in lm.model.parameters() if p.dim() == 5 and p.shape[2:].numel() > 1)
        assert conv.is_contiguous(memory_format=torch.channels_last_3d) and not conv.is_contiguous()
        last = _forward((entry,), {entry: lm}, inputs)
    for node in plain:
        np.testing.assert_allclose(last[node], plain[node], rtol=1e-4, atol=1e-5)


def test_usable_cores_is_the_affinity_where_there_is_one(monkeypatch):
    """Linux: the process's CPU affinity (a container's share); a platform without it (macOS): the
    machine's count, never an AttributeError."""
    import os

    from stores.device import usable_cores

    assert usable_cores() == len(os.sched_getaffinity(0)) >= 1
    monkeypatch.delattr(os, "sched_getaffinity")
    assert usable_cores() == (os.cpu_count() or 1)
