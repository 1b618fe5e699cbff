"""One writer per store and per run directory: a second process is told who holds it and changes
nothing (`--overwrite` included); a killed holder leaves no stale lock."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from _search_data import planted_store
from pipeline.cli import cli
from stores import open_store, verify_store
from stores.errors import BusyError
from stores.lock import lock_path

HERE = Path(__file__).parent

SLOW_EXTRACT = """
import sys
sys.path.insert(0, {tests!r})
from extract_fixtures import ClipSource
from extract.job import BackboneChoice, extract
extract(ClipSource({root!r}, delay=0.3), {out!r}, [BackboneChoice("skeleton", "hcn", "tiny")], rows_per_chunk=2,
        batch_size=2, use_dask=False, progress=False)
"""

SEARCH = ["--cells", "1", "--steps", "1", "--channels", "8", "--length", "4", "--multiplier", "1",
          "--batch-size", "32", "--device", "cpu"]


def _holder_of(path: Path, proc: subprocess.Popen) -> dict:
    """Wait until ``proc`` holds the lock of ``path``; its holder record."""
    holder = lock_path(path).with_name(lock_path(path).name + ".holder")
    deadline = time.time() + 90
    while time.time() < deadline and proc.poll() is None:
        if holder.is_file() and holder.read_text():
            return json.loads(holder.read_text())
        time.sleep(0.1)
    raise AssertionError("the first process never took the lock")


def test_overwrite_never_deletes_a_store_another_process_writes(tmp_path):
    from extract.job import BackboneChoice, extract
    from extract_fixtures import ClipSource, make_clips

    make_clips(tmp_path / "clips", n=8)
    out = tmp_path / "s.zarr"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_EXTRACT.format(tests=str(HERE), root=str(tmp_path / "clips"),
                                                                      out=str(out))])
    try:
        holder = _holder_of(out, proc)
        assert holder["pid"] == proc.pid
        with pytest.raises(BusyError, match=f"the store {out} is in use by pid {proc.pid} on "):
            extract(ClipSource(tmp_path / "clips"), str(out), [BackboneChoice("video", "inflated_resnet50", "tiny")],
                    overwrite=True, use_dask=False, progress=False)
        assert proc.wait(timeout=120) == 0  # the first writer finishes its store, undisturbed
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
    assert verify_store(out) == [] and open_store(out).num_samples == 8


def test_second_search_resume_is_refused_and_a_killed_holder_frees_the_lock(tmp_path):
    store = tmp_path / "s.zarr"
    planted_store(store, "joint", n=160)
    run = tmp_path / "run"
    r = CliRunner().invoke(cli, ["search", "--store", str(store), "--out", str(run), "--epochs", "1", *SEARCH])
    assert r.exit_code == 0, r.output
    before = (run / "metrics.jsonl").read_text()
    hold = ("import sys, time; from stores.lock import exclusive\n"
            f"with exclusive({str(run)!r}, 'run directory'):\n    time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", hold])
    try:
        _holder_of(run, proc)
        r = CliRunner().invoke(cli, ["search", "--resume", str(run)])
        assert r.exit_code == 2 and f"the run directory {run} is in use by pid {proc.pid}" in r.output, r.output
        assert (run / "metrics.jsonl").read_text() == before
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    r = CliRunner().invoke(cli, ["search", "--resume", str(run)])  # the OS freed the killed holder's lock
    assert r.exit_code == 0, r.output


COUNTER = """
import sys
from pathlib import Path
from stores.errors import BusyError
from stores.lock import exclusive
target, done = Path({target!r}), 0
while done < 150:
    try:
        with exclusive(target, "run directory"):
            counter = target / "n"
            counter.write_text(str(int(counter.read_text()) + 1))  # a lost update shows a second holder
            done += 1
    except BusyError:
        pass
"""


def test_the_lock_file_is_removed_on_release_and_still_excludes(tmp_path):
    """No `.NAME.lock` stays beside an --out after a command, taken or refused; processes racing to take
    and release (unlinking) one lock never hold it together."""
    target = tmp_path / "run"
    target.mkdir()
    (target / "n").write_text("0")
    procs = [subprocess.Popen([sys.executable, "-c", COUNTER.format(target=str(target))]) for _ in range(4)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0, 0, 0]
    assert (target / "n").read_text() == "600"
    store = tmp_path / "s.zarr"
    planted_store(store, "joint", n=160)
    assert CliRunner().invoke(cli, ["search", "--store", str(store), "--out", str(tmp_path / "ok"), "--epochs", "1",
                                    *SEARCH]).exit_code == 0
    (tmp_path / "file").write_text("mine")
    assert CliRunner().invoke(cli, ["search", "--store", str(store), "--out", str(tmp_path / "file"), "--epochs", "1",
                                    *SEARCH]).exit_code == 2
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
