"""`Run`, the one owner of a run directory: its states, the refusal of what it did not make, the lock
against a second process (`bmnas evaluate` included), the finished marker, and checkpoints that a
kill mid-write never leaves unreadable."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from _train_data import searched_genotype, small_store
from fusion_search.errors import SearchError
from fusion_search.training.run import FINISHED, NEW, PARTIAL, RUN_RECORD, UNSTARTED, Run, settings_diff
from fusion_search.training.run_checkpoint import load_run_checkpoint, save_run_checkpoint
from fusion_search.training.rundir import LAST
from pipeline.cli import cli
from pipeline.train import train_on_cache
from stores.errors import BusyError

HERE = Path(__file__).parent

HOLD = """
import sys, time
sys.path.insert(0, {tests!r})
from fusion_search.training.run import Run
with Run.open({run!r}, ("train",)):
    print("held", flush=True)
    time.sleep(60)
"""

WRITE_LOOP = """
import torch
from fusion_search.training.run_checkpoint import save_run_checkpoint
print("writing", flush=True)
i = 0
while True:
    i += 1
    save_run_checkpoint({{"model": {{"w": torch.full((4_000_000,), float(i))}}, "epoch": i}}, {path!r})
"""


def test_states_new_unstarted_partial_finished(tmp_path):
    out = tmp_path / "run"
    assert Run(out, "train", SearchError).state == NEW
    out.mkdir()
    assert Run(out, "train", SearchError).state == NEW  # an empty folder is new
    with Run.create(out, "train", {"epochs": 2}) as run:
        assert run.state == UNSTARTED and run.config == {"kind": "train", "epochs": 2}
        assert run.record()["status"] == "running" and run.record()["kind"] == "train"
        save_run_checkpoint({"model": {}}, out / LAST)
        assert run.state == PARTIAL
        run.finish(["metrics_test.json"])
        assert run.state == FINISHED
    rec = json.loads((out / RUN_RECORD).read_text())
    assert rec["status"] == "finished" and rec["results"] == ["metrics_test.json"] and rec["ended"] >= rec["started"]
    with Run.open(out, ("train",)) as again:
        assert again.kind == "train" and again.state == FINISHED and again.config["epochs"] == 2


def test_create_replaces_only_an_unstarted_run_of_its_kind(tmp_path):
    out = tmp_path / "run"
    with Run.create(out, "train", {"epochs": 1}):
        pass  # killed before its first checkpoint: unstarted
    with Run.create(out, "train", {"epochs": 3}) as run:  # nothing in it was worth keeping
        assert run.config["epochs"] == 3
    with pytest.raises(SearchError, match="exists and is not empty: choose a new run directory$"):
        with Run.create(out, "finetune", {}):
            pass
    save_run_checkpoint({"model": {}}, out / LAST)
    with pytest.raises(SearchError, match="or continue it with `bmnas train --resume"):
        with Run.create(out, "train", {}):
            pass
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(SearchError, match="exists and is not empty"):
        with Run.create(mine, "train", {}):
            pass
    assert (mine / "notes.txt").read_text() == "keep" and sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


def test_open_checks_the_kind_and_reads_legacy_search_configs(tmp_path):
    legacy = tmp_path / "search"
    legacy.mkdir()
    (legacy / "config.yaml").write_text("epochs: 2\n")  # a search run written before configs named a kind
    with Run.open(legacy, ("search",)) as run:
        assert run.kind == "search" and run.state == UNSTARTED and run.record() == {}
    with pytest.raises(SearchError, match="a search run, not a train or finetune run; use `bmnas search`"):
        with Run.open(legacy, ("train", "finetune")):
            pass
    with pytest.raises(SearchError, match="no config.yaml"):
        with Run.open(tmp_path / "nothing", ("train",)):
            pass


def test_settings_diff_names_what_differs():
    assert settings_diff({"a": 1, "device": "cpu"}, {"a": 1, "device": "cuda"}) == []
    assert settings_diff({"a": 1, "b": 2}, {"a": 2, "c": 3}) == ["a", "b", "c"]


@pytest.fixture
def trained(tmp_path):
    small_store(tmp_path / "s.zarr")
    searched_genotype().save(tmp_path / "g.json")
    train_on_cache(str(tmp_path / "s.zarr"), tmp_path / "g.json", tmp_path / "run", epochs=1, batch_size=32,
                   device="cpu")
    return tmp_path / "run"


def test_a_train_run_is_finished_once_its_test_metrics_are_written(trained):
    rec = json.loads((trained / RUN_RECORD).read_text())
    assert rec["kind"] == "train" and rec["status"] == "finished" and rec["results"] == ["metrics_test.json"]
    assert (trained / "metrics_test.json").is_file()
    (trained / RUN_RECORD).unlink()  # a run written before run.json existed still evaluates
    r = CliRunner().invoke(cli, ["evaluate", str(trained), "--split", "val"])
    assert r.exit_code == 0, r.output


def test_evaluate_and_resume_refuse_a_run_another_process_holds(trained):
    proc = subprocess.Popen([sys.executable, "-c", HOLD.format(tests=str(HERE), run=str(trained))],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        before = (trained / "metrics_test.json").read_bytes()
        for argv in (["evaluate", str(trained)], ["train", "--resume", str(trained)]):
            r = CliRunner().invoke(cli, argv)
            assert r.exit_code == 2 and f"pid {proc.pid}" in r.output, r.output
            assert len(r.output.strip().splitlines()) == 1
        assert (trained / "metrics_test.json").read_bytes() == before
        with pytest.raises(BusyError):
            with Run.open(trained, ("train",)):
                pass
    finally:
        proc.kill()
        proc.wait()


def test_out_naming_a_file_is_one_line(tmp_path):
    small_store(tmp_path / "s.zarr")
    searched_genotype().save(tmp_path / "g.json")
    (tmp_path / "file").write_text("mine")
    r = CliRunner().invoke(cli, ["train", "--store", str(tmp_path / "s.zarr"), "--genotype", str(tmp_path / "g.json"),
                                 "--out", str(tmp_path / "file"), "--epochs", "1", "--device", "cpu"])
    assert r.exit_code == 2 and "is a file, not a run directory" in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1 and (tmp_path / "file").read_text() == "mine"


def test_a_kill_while_a_checkpoint_is_written_leaves_the_previous_one_readable(tmp_path):
    path = tmp_path / "last.pt"
    save_run_checkpoint({"model": {"w": torch.zeros(3)}, "epoch": 0}, path)
    for delay in (0.3, 0.7, 1.1):
        proc = subprocess.Popen([sys.executable, "-c", WRITE_LOOP.format(path=str(path))], stdout=subprocess.PIPE,
                                text=True)
        assert proc.stdout.readline().strip() == "writing"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        ckpt = load_run_checkpoint(path, ("model", "epoch"))
        assert float(ckpt["model"]["w"][0]) == float(ckpt["epoch"])  # a whole checkpoint, old or new


def test_rerun_starts_resumes_or_reuses_by_state(tmp_path):
    from fusion_search.training.run import rerun

    out = tmp_path / "run"
    pick = lambda reuse=None: rerun(out, lambda: "start", lambda: "resume", reuse)  # noqa: E731
    assert pick() == "start"
    with Run.create(out, "train", {}) as run:
        assert pick() == "start"  # unstarted: Run.create will replace it
        save_run_checkpoint({"model": {}}, out / LAST)
        assert pick() == "resume"
        run.finish()
    assert pick(lambda: "reuse") == "reuse" and pick() == "resume"  # a finished run without reuse re-reports
