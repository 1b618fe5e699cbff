"""Extraction into a real store: real LocalCluster, resume, SIGKILL-and-resume, --on-error, bad input."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from extract.backbones import get_backbone
from extract.checkpoints import save_checkpoint
from extract.errors import DataError, ExtractError
from extract.job import BackboneChoice, extract
from extract.sources.ntu import NTUSource
from extract.synth import generate
from pipeline.cli import cli
from stores import StoreError, open_store, open_writer

TINY = [BackboneChoice("video", "inflated_resnet50", "tiny"), BackboneChoice("skeleton", "hcn", "tiny")]
HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def ntu(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ntu") / "data"
    generate("ntu-like", root, samples=16, classes=4, seed=3)
    return root


def _source(root: Path) -> NTUSource:
    return NTUSource(root, size=32)


def _features(path) -> dict[str, np.ndarray]:
    store = open_store(path)
    return {n: store.array(n)[...] for n in store.nodes}


def _cli(*args: str):
    return CliRunner().invoke(cli, list(map(str, args)), catch_exceptions=False)


def test_localcluster_extraction(ntu, tmp_path):
    """Two worker processes, one thread each, fill one store; equal to the in-process run."""
    ckpt = tmp_path / "hcn.pt"
    sha = save_checkpoint(get_backbone("hcn").build("tiny", 4), ckpt)
    choices = [TINY[0], BackboneChoice("skeleton", "hcn", "tiny", str(ckpt))]
    res = extract(_source(ntu), str(tmp_path / "dask.zarr"), choices, rows_per_chunk=2, batch_size=2,
                  workers=2, threads_per_worker=1, progress=False)
    assert res.chunks_run == res.chunks_total == 8 and res.rows_run == 16
    assert 1 <= len(res.models_built) <= 2  # dask may hand every chunk to the worker that started first
    assert all(n == 2 for n in res.models_built.values())  # each built its 2 backbones once
    assert set(res.devices.values()) == {"cpu"} and all(w.startswith("tcp://") for w in res.devices)
    store = open_store(tmp_path / "dask.zarr")
    assert store.nodes == [f"video_{k}" for k in range(1, 5)] + [f"skeleton_{k}" for k in range(1, 5)]
    assert store.node_shapes["video_3"] == (256, 8) and store.node_shapes["video_4"] == (256, 1)
    assert store.node_shapes["skeleton_1"] == (32, 4) and store.node_shapes["skeleton_3"] == (64, 1)
    attrs = store.node_attrs("skeleton_1")
    assert attrs["checkpoint_sha256"] == sha and attrs["layer"] == "conv5" and attrs["backbone"] == "hcn"
    assert attrs["reduction"] == {"t_max": 32, "grid": 4}
    assert store.array("video_1").dtype == np.float16
    assert sum(len(v) for v in store.splits.values()) == 16
    assert res.bytes_on_disk > 0 and res.compression > 1
    assert res.cpu_seconds > 0 and 0 < res.cores_busy < 2 * (os.cpu_count() or 1)  # the workers' CPU, not ours
    local = extract(_source(ntu), str(tmp_path / "local.zarr"), choices, rows_per_chunk=2, batch_size=2,
                    use_dask=False, progress=False)
    a, b = _features(tmp_path / "dask.zarr"), _features(tmp_path / "local.zarr")
    for node in a:
        assert np.isfinite(a[node]).all()  # same weights in every worker; only thread-count rounding differs
        np.testing.assert_allclose(a[node].astype(np.float32), b[node].astype(np.float32), rtol=2e-3, atol=1e-5)
    assert local.models_built == {os.getpid(): local.models_built[os.getpid()]}
    assert local.cpu_seconds > 0


def test_rerun_skips_completed_chunks(ntu, tmp_path):
    out = str(tmp_path / "f.zarr")
    first = extract(_source(ntu), out, TINY[1:], rows_per_chunk=4, use_dask=False, progress=False)
    before = _features(out)
    again = extract(_source(ntu), out, TINY[1:], rows_per_chunk=4, use_dask=False, progress=False)
    assert first.chunks_run == 4 and again.chunks_run == 0 and again.rows_run == 0
    for node, arr in _features(out).items():
        np.testing.assert_array_equal(arr, before[node])
    with pytest.raises(ExtractError, match="other settings \\(backbones differ\\).*--overwrite"):
        extract(_source(ntu), out, [BackboneChoice("skeleton", "hcn", "tiny", taps=("fc7",))],
                rows_per_chunk=4, use_dask=False, progress=False)
    with pytest.raises(ExtractError, match="reduction differ"):
        from extract.reduction import ReductionConfig

        extract(_source(ntu), out, TINY[1:], rows_per_chunk=4, use_dask=False, progress=False,
                reduction=ReductionConfig(t_max=4))
    res = extract(_source(ntu), out, [BackboneChoice("skeleton", "hcn", "tiny", taps=("fc7",))],
                  rows_per_chunk=4, use_dask=False, progress=False, overwrite=True)
    assert open_store(out).nodes == ["skeleton_1"] and res.chunks_run == 4


def test_in_process_pipeline_reports_each_chunk_once_it_is_on_disk(ntu, tmp_path):
    """--no-dask runs all chunks through one pipeline; a chunk is reported once its record exists,
    in order, and a callback returning False stops it with every written chunk reported."""
    import zarr

    from extract.job import _probe
    from extract.reduction import ReductionConfig
    from extract.worker import Placement, run_chunks

    src, out = _source(ntu), tmp_path / "p.zarr"
    extract(src, str(out), TINY[1:], rows_per_chunk=2, use_dask=False, progress=False)
    zarr.open_array(str(out / "completion"), mode="r+")[...] = 0  # as if never written
    ids = [s.id for s in src.samples()]
    entry, _ = _probe(src, ids, TINY[1], ReductionConfig(), src.num_classes)
    seen = []

    def on_chunk(res):
        seen.append((res.chunk, res.chunk not in open_writer(out).missing_chunks()))
        return len(seen) < 3

    assert run_chunks(src, str(out), ids, list(range(8)), (entry,), ReductionConfig(), Placement((("", "cpu"),)), 2, "fail",
                      on_chunk=on_chunk) == []
    assert [k for k, _ in seen] == list(range(len(seen))) and all(on_disk for _, on_disk in seen)
    assert 3 <= len(seen) < 8  # stopped early; chunks already under way were finished and reported
    assert open_writer(out).missing_chunks() == list(range(len(seen), 8))


def test_local_cluster_worker_settings(monkeypatch):
    """dask sets MALLOC_TRIM_THRESHOLD_ for its workers, which doubles a forward pass's CPU time,
    and samples their stacks every 10 ms; extraction's own cluster does neither, and its workers
    wait passively in OpenMP like the CLI."""
    import dask
    from distributed import Client

    from extract.cluster import TRIM, local_cluster

    monkeypatch.setenv(TRIM, "65536")  # as an earlier nanny of this process leaves it
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    with local_cluster(1, 1) as cluster, Client(cluster) as client:
        assert list(client.run(os.environ.get, TRIM).values()) == [None]
        assert list(client.run(os.environ.get, "OMP_WAIT_POLICY").values()) == ["PASSIVE"]
        assert list(client.run(dask.config.get, "distributed.worker.profile.enabled").values()) == [False]
        assert TRIM not in os.environ


def test_in_process_run_does_not_import_dask(ntu, tmp_path):
    code = (f"import sys; from extract.job import BackboneChoice, extract; from extract.sources.ntu import NTUSource; "
            f"extract(NTUSource({str(ntu)!r}, size=32), {str(tmp_path / 'x.zarr')!r}, "
            f"[BackboneChoice('skeleton', 'hcn', 'tiny')], use_dask=False, progress=False); "
            f"print('distributed' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False"


KILL_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from extract_fixtures import ClipSource
from extract.job import BackboneChoice, extract
for out in {outs!r}:
    res = extract(ClipSource({root!r}, delay={delay}), out, [BackboneChoice("video", "inflated_resnet50", "tiny"),
                  BackboneChoice("skeleton", "hcn", "tiny")], rows_per_chunk=2, batch_size=2, use_dask=False,
                  progress=False)
    print("chunks run", res.chunks_run)
"""


def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    from extract_fixtures import make_clips

    make_clips(tmp_path / "clips", n=8)
    out = tmp_path / "killed.zarr"
    script = KILL_SCRIPT.format(tests=str(HERE), root=str(tmp_path / "clips"), delay=0.2, outs=[str(out)])
    proc = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.time() + 90
    done = 0
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
        try:
            done = 4 - len(open_writer(out).missing_chunks())
        except Exception:  # store not created yet
            continue
        if done >= 1:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 1 <= done < 4, "the kill should land mid-run"
    missing = open_writer(out).missing_chunks()
    with pytest.raises(StoreError):
        open_store(out)  # unfinished: no labels/splits yet
    # resume and the uninterrupted run: the same command in the same kind of process
    script = KILL_SCRIPT.format(tests=str(HERE), root=str(tmp_path / "clips"), delay=0,
                                outs=[str(out), str(tmp_path / "whole.zarr")])
    printed = subprocess.run([sys.executable, "-c", script], check=True, timeout=120, capture_output=True,
                             text=True).stdout
    runs = [int(line.split()[-1]) for line in printed.splitlines() if line.startswith("chunks run")]
    assert runs == [len(missing), 4]  # the resume ran only the chunks without a completion record
    a, b = _features(out), _features(tmp_path / "whole.zarr")
    for node in b:
        np.testing.assert_array_equal(a[node], b[node])
    sa, sb = open_store(out), open_store(tmp_path / "whole.zarr")
    assert {k: v.tolist() for k, v in sa.splits.items()} == {k: v.tolist() for k, v in sb.splits.items()}


def _broken_copy(ntu: Path, tmp_path: Path, row: int) -> tuple[Path, str, Path]:
    root = tmp_path / "broken"
    shutil.copytree(ntu, root)
    sid = _source(root).samples()[row].id
    avi = next(root.rglob(f"{sid}_rgb.avi"))
    data = avi.read_bytes()
    avi.write_bytes(data[: len(data) // 4])
    return root, sid, avi


def test_on_error_skip_records_truncated_video(ntu, tmp_path):
    root, sid, avi = _broken_copy(ntu, tmp_path, row=5)
    out = tmp_path / "skip.zarr"
    r = _cli("extract", root, "--out", out, "--backbone", "video=inflated_resnet50", "--backbone", "skeleton=hcn",
             "--setting", "tiny", "--source-opt", "size=32", "--rows-per-chunk", 4, "--no-dask",
             "--on-error", "skip", "--quiet")
    assert r.exit_code == 0, r.output
    assert f"skipped {sid}" in r.output
    store = open_store(out)
    (rec,) = store.attrs["skipped"]
    assert rec["id"] == sid and rec["path"] == str(avi) and "truncated" in rec["reason"]
    assert all(5 not in rows for rows in store.splits.values())
    assert sum(len(v) for v in store.splits.values()) == 15
    for node in store.nodes:
        arr = store.array(node)[...]
        assert np.isnan(arr[5]).all()  # never zero-filled
        assert np.isfinite(np.delete(arr, 5, axis=0)).all()
    # the rerun retries only the chunk holding the skipped sample, and records it again
    again = extract(_source(root), str(out), TINY, rows_per_chunk=4, use_dask=False, on_error="skip",
                    progress=False)
    assert again.chunks_run == 1 and [s["id"] for s in again.skipped] == [sid]
    assert open_store(out).attrs["skipped"][0]["id"] == sid


def test_on_error_fail_names_sample_keeps_chunks_and_resumes(ntu, tmp_path):
    root, sid, avi = _broken_copy(ntu, tmp_path, row=9)
    good = next(ntu.rglob(avi.name))
    out = tmp_path / "fail.zarr"
    args = ["extract", root, "--out", out, "--backbone", "video=inflated_resnet50", "--setting", "tiny",
            "--source-opt", "size=32", "--rows-per-chunk", 4, "--no-dask", "--quiet"]
    r = _cli(*args)
    assert r.exit_code == 2
    line = r.output.strip().splitlines()[-1]
    assert line.startswith("error: sample " + sid) and str(avi) in line and "2/4 chunks" in line
    assert open_writer(out).missing_chunks() == [2, 3]
    shutil.copy(good, avi)  # fix the file, rerun: resumes from chunk 2
    r = _cli(*args)
    assert r.exit_code == 0, r.output
    assert "2/4 chunks extracted" in r.output
    assert np.isfinite(open_store(out).array("video_2")[...]).all()


def test_failed_dask_task_keeps_the_written_chunks_and_resumes(ntu, tmp_path):
    """A task that raises on a worker (here: the store cannot take chunk 2's file, its directory is a
    file) ends the run in one line that says what is kept; the fixed rerun writes only that chunk."""
    import zarr

    out = tmp_path / "s.zarr"
    args = ["extract", ntu, "--out", out, "--backbone", "skeleton=hcn", "--setting", "tiny", "--rows-per-chunk", 4,
            "--workers", 1, "--quiet"]
    assert _cli(*args).exit_code == 0
    before = _features(out)
    zarr.open_group(out, mode="r+")["completion"][2] = 0  # as if the run had stopped before chunk 2
    blocker = out / "features" / "skeleton_1" / "c" / "2"
    shutil.rmtree(blocker)
    blocker.write_text("not a directory")
    r = _cli(*args)
    assert r.exit_code == 2, r.output
    line = r.output.strip().splitlines()[-1]
    assert line.startswith("error: an extraction task failed: task failed: ") and "Traceback" not in r.output
    assert line.endswith("3/4 chunks are complete and kept; rerun the same command to resume")
    assert open_writer(out).missing_chunks() == [2]
    blocker.unlink()
    r = _cli(*args)
    assert r.exit_code == 0 and "1/4 chunks extracted" in r.output, r.output
    for node, arr in _features(out).items():
        np.testing.assert_array_equal(arr, before[node])


def test_task_error_says_full_disk_in_words():
    """What a failed dask task reports: a full disk as the machine's state, anything else as is."""
    import errno

    from extract.job import _task_error

    assert _task_error(OSError(errno.ENOSPC, "No space left on device", "/data/s.zarr/c/1")) == \
        "no space left on the device writing /data/s.zarr/c/1; free space first"
    assert _task_error(OSError(errno.ENOSPC, "No space left on device")).startswith("no space left on the device writing the store")
    assert _task_error(KeyError("x")) == "task failed: KeyError('x')"


@pytest.fixture
def small_disk(tmp_path):
    """A 200 KiB tmpfs: a real full disk (ENOSPC) for the store; grown to 8 MiB by calling it.

    The test's store takes ~85 pages of 4 KiB (metadata 17, each of its 4 tasks ~17): this one fills
    up in a task, before the last metadata the driver writes (at 300 KiB all 4 tasks could fit)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root with CAP_SYS_ADMIN")
    try:
        yield mnt, lambda: subprocess.run(["mount", "-o", "remount,size=8m", str(mnt)], check=True)
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_full_disk_keeps_the_written_chunks_and_resumes(ntu, small_disk):
    """The store's file system fills up in a dask task: one line, the chunks on disk kept; once
    there is space, the same command finishes the store."""
    mnt, grow = small_disk
    args = ["extract", ntu, "--out", mnt / "s.zarr", "--backbone", "video=inflated_resnet50", "--backbone", "skeleton=hcn",
            "--setting", "tiny", "--source-opt", "size=32", "--rows-per-chunk", 4, "--dtype", "float32", "--workers", 1,
            "--quiet"]
    r = _cli(*args)
    assert r.exit_code == 2, r.output
    line = r.output.strip().splitlines()[-1]
    assert line.startswith("error: an extraction task failed: no space left on the device") and "Traceback" not in r.output
    kept = int(line.split(" chunks are complete and kept")[0].split()[-1].split("/")[0])
    assert 0 < kept < 4 and len(open_writer(mnt / "s.zarr").missing_chunks()) == 4 - kept
    grow()
    r = _cli(*args)
    assert r.exit_code == 0 and f"{4 - kept}/4 chunks extracted" in r.output, r.output
    assert _cli("store", "verify", mnt / "s.zarr").exit_code == 0
    assert sum(len(v) for v in open_store(mnt / "s.zarr").splits.values()) == 16


def test_bad_input_is_one_line_and_exit_2(ntu, tmp_path):
    base = ["extract", ntu, "--source-opt", "size=32", "--setting", "tiny", "--no-dask", "--quiet"]
    cases = {
        "unknown backbone 'resnet9'": ["--out", tmp_path / "a.zarr", "--backbone", "video=resnet9"],
        "has no tap 'layer9'": ["--out", tmp_path / "b.zarr", "--backbone", "video=inflated_resnet50",
                                "--taps", "video=layer9"],
        "reads video, not 'skeleton'": ["--out", tmp_path / "c.zarr", "--backbone", "skeleton=inflated_resnet50"],
        "expected MODALITY=VALUE": ["--out", tmp_path / "d.zarr", "--backbone", "hcn"],
    }
    save_checkpoint(get_backbone("vgg19").build("tiny", 3), tmp_path / "vgg.pt")
    cases["does not fit the architecture"] = ["--out", tmp_path / "e.zarr", "--backbone", "skeleton=hcn",
                                              "--checkpoint", f"skeleton={tmp_path / 'vgg.pt'}"]
    (tmp_path / "file").write_text("x")
    cases["cannot create the store"] = ["--out", tmp_path / "file" / "f.zarr", "--backbone", "skeleton=hcn"]
    for want, extra in cases.items():
        r = _cli(*base, *extra)
        assert r.exit_code == 2, (want, r.output)
        assert want in r.output and len(r.output.strip().splitlines()) == 1, r.output
    r = _cli("extract", tmp_path / "nothing", "--out", tmp_path / "g.zarr", "--backbone", "skeleton=hcn")
    assert r.exit_code == 2 and "no such file" in r.output


def test_scheduler_that_does_not_answer(ntu, tmp_path):
    t0 = time.time()
    with pytest.raises(ExtractError, match="did not answer within 2s"):
        extract(_source(ntu), str(tmp_path / "s.zarr"), TINY[1:], scheduler="tcp://127.0.0.1:9", timeout=2,
                progress=False)
    assert time.time() - t0 < 30
    assert not (tmp_path / "s.zarr").exists()  # nothing written before the cluster answered


def test_source_without_readable_samples(tmp_path):
    from extract_fixtures import make_clips

    src = make_clips(tmp_path / "c", n=3, truncate=(0, 1, 2))
    with pytest.raises(DataError, match="no readable video sample"):
        extract(src, str(tmp_path / "x.zarr"), TINY[:1], use_dask=False, progress=False)


def test_existing_scheduler(ntu, tmp_path):
    """--scheduler ADDRESS: tasks go to a cluster this run did not start, which stays up after."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=":0") as cluster:
        res = extract(_source(ntu), str(tmp_path / "s.zarr"), TINY[1:], rows_per_chunk=8,
                      scheduler=cluster.scheduler_address, progress=False)
        assert res.chunks_run == 2 and len(res.models_built) == 1
        with Client(cluster) as client:  # still serving
            assert len(client.scheduler_info()["workers"]) == 1
    assert np.isfinite(open_store(tmp_path / "s.zarr").array("skeleton_1")[...]).all()


def test_extract_inflate_from_2d_resnet(ntu, tmp_path):
    from extract.checkpoints import sha256_file

    model3d = get_backbone("inflated_resnet50").build("tiny", 4)
    # torchvision's names: the trunk without its `cnn.` prefix, 2D kernels, an ImageNet `fc`
    sd2 = {k: (v[:, :, v.shape[2] // 2].clone() if v.dim() == 5 else v.clone())
           for k, v in model3d.cnn.state_dict().items()}
    import torch

    sd2["fc.weight"], sd2["fc.bias"] = torch.randn(1000, 256), torch.randn(1000)
    torch.save(sd2, tmp_path / "resnet50.pth")
    base = ["extract", ntu, "--source-opt", "size=32", "--setting", "tiny", "--no-dask", "--quiet",
            "--rows-per-chunk", 8, "--taps", "video=layer4"]
    r = _cli(*base, "--out", tmp_path / "i.zarr", "--backbone", "video=inflated_resnet50",
             "--inflate-from", tmp_path / "resnet50.pth")
    assert r.exit_code == 0, r.output
    attrs = open_store(tmp_path / "i.zarr").node_attrs("video_1")
    assert attrs["checkpoint_sha256"] == sha256_file(tmp_path / "resnet50.pth") and "inflated" in attrs["init"]
    r = _cli(*base, "--out", tmp_path / "j.zarr", "--backbone", "video=hcn", "--inflate-from", tmp_path / "resnet50.pth")
    assert r.exit_code == 2 and "--inflate-from needs exactly one" in r.output


def test_decode_threads_read_a_batch_in_parallel_into_the_same_store(ntu, tmp_path):
    """--decode-threads 3: the samples of each batch are decoded (decord) and prepared by three
    threads; the store is the one a single loader thread writes, value for value."""
    src = _source(ntu)
    one = extract(src, str(tmp_path / "one.zarr"), TINY, use_dask=False, progress=False, batch_size=4, dtype="float32")
    three = extract(src, str(tmp_path / "three.zarr"), TINY, use_dask=False, progress=False, batch_size=4,
                    dtype="float32", decode_threads=3)
    assert one.rows_run == three.rows_run == 16
    a, b = _features(tmp_path / "one.zarr"), _features(tmp_path / "three.zarr")
    assert set(a) == set(b) and all(np.array_equal(a[n], b[n]) for n in a)
    r = CliRunner().invoke(cli, ["extract", str(ntu), "--out", str(tmp_path / "bad.zarr"), "--backbone",
                                 "skeleton=hcn", "--setting", "tiny", "--no-dask", "--decode-threads", "0"])
    assert r.exit_code == 2 and "--decode-threads 0: use a positive integer" in r.output, r.output
    r = CliRunner().invoke(cli, ["extract", str(ntu), "--out", str(tmp_path / "bad.zarr"), "--backbone",
                                 "skeleton=hcn", "--setting", "tiny", "--no-dask", "--decode-threads", "many"])
    assert r.exit_code == 2 and "--decode-threads 'many': use a positive integer or auto" in r.output, r.output


def test_decode_threads_auto_gives_a_gpu_worker_its_share_of_the_host():
    """auto: a CUDA worker takes its host's cores divided among the host's workers; a CPU worker one
    loader thread (its cores run the forward); a number given is kept."""
    import torch

    from extract.worker import Placement, decode_threads_for

    a, b, c = "tcp://10.0.0.5:4001", "tcp://10.0.0.5:4002", "tcp://10.0.0.6:4001"
    gpu = Placement(((a, "cuda:0"), (b, "cuda:1"), (c, "cuda:0")))
    assert decode_threads_for("auto", torch.device("cuda", 0), a, gpu, cores=16) == 8
    assert decode_threads_for("auto", torch.device("cuda", 0), c, gpu, cores=16) == 16
    assert decode_threads_for("auto", torch.device("cuda", 0), "", Placement((("", "cuda:0"),)), cores=2) == 2
    cpu = Placement(((a, "cpu"), (b, "cpu")))
    assert decode_threads_for("auto", torch.device("cpu"), a, cpu, cores=16) == 1
    assert decode_threads_for(3, torch.device("cpu"), a, cpu, cores=16) == 3
