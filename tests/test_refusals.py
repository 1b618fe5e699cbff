"""Bad files and options planted in real run directories give one line and exit 2, never a traceback:
truncated or pickle-payload checkpoints, a full disk (/dev/full), a run path under a file, bad rates
and a genotype asking for C = 1e9."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from _search_data import single_thread  # noqa: F401
from _train_data import searched_genotype, small_store
from pipeline.cli import cli

pytestmark = pytest.mark.usefixtures("single_thread")

TRAIN = ["--epochs", "1", "--batch-size", "32", "--device", "cpu"]
SEARCH = ["--cells", "1", "--steps", "1", "--channels", "8", "--length", "4", "--multiplier", "1", "--epochs", "1",
          "--batch-size", "32", "--device", "cpu"]


class Payload:
    """What a malicious checkpoint pickles: a call made while loading."""

    def __reduce__(self):
        return (os.getcwd, ())


def _one_line(argv: list[str], needle: str) -> None:
    r = CliRunner().invoke(cli, argv)
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert r.exit_code == 2, r.output
    assert lines[-1].startswith("error: ") and needle in lines[-1], r.output
    assert "Traceback" not in r.output


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("t")
    small_store(d / "s.zarr")
    searched_genotype().save(d / "g.json")
    r = CliRunner().invoke(cli, ["train", "--store", str(d / "s.zarr"), "--genotype", str(d / "g.json"),
                                 "--out", str(d / "run"), *TRAIN])
    assert r.exit_code == 0, r.output
    return d


def _copy_run(trained: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(trained / "run", run)
    return run


def test_truncated_last_checkpoint_at_train_resume(trained, tmp_path):
    run = _copy_run(trained, tmp_path)
    last = run / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    _one_line(["train", "--resume", str(run)], "last.pt is not a readable bmnas checkpoint")


def test_pickle_payload_checkpoints_are_refused(trained, tmp_path):
    run = _copy_run(trained, tmp_path)
    for name in ("last.pt", "best.pt"):
        torch.save({"model": Payload()}, run / "checkpoints" / name)
    _one_line(["train", "--resume", str(run)], "last.pt is not a readable bmnas checkpoint")
    _one_line(["evaluate", str(run)], "best.pt is not a readable bmnas checkpoint")


def test_search_resume_with_truncated_checkpoint_and_full_disk(trained, tmp_path, monkeypatch):
    run = tmp_path / "search"
    r = CliRunner().invoke(cli, ["search", "--store", str(trained / "s.zarr"), "--out", str(run), *SEARCH])
    assert r.exit_code == 0, r.output
    ckpt = next((run / "checkpoints").glob("*.pt"))
    saved = ckpt.read_bytes()
    ckpt.write_bytes(saved[:100])
    _one_line(["search", "--resume", str(run)], "is not a readable bmnas checkpoint")
    ckpt.write_bytes(saved)
    cfg = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(cfg.replace("epochs: 1", "epochs: 2"))
    torch.save({**torch.load(ckpt, weights_only=True), "config": {**torch.load(ckpt, weights_only=True)["config"],
                                                                  "epochs": 2}}, ckpt)
    # the checkpoint's temporary file on a device that is always full: its write fails with ENOSPC
    # (the atomic writer's temporary names are unique; a fixed one lets the test put /dev/full there)
    monkeypatch.setattr("stores.files.uuid.uuid4", lambda: uuid.UUID(int=0))
    ckpt.with_name(f"{ckpt.name}.{'0' * 12}.partial").symlink_to("/dev/full")
    _one_line(["search", "--resume", str(run)], "no space left on the device")
    assert torch.load(ckpt, weights_only=True)["config"]["epochs"] == 2  # the previous checkpoint is readable


def test_run_path_under_a_file_and_bad_rates(trained, tmp_path):
    (tmp_path / "afile").write_text("x")
    store, genotype = str(trained / "s.zarr"), str(trained / "g.json")
    _one_line(["train", "--store", store, "--genotype", genotype, "--out", str(tmp_path / "afile" / "run"), *TRAIN],
              "cannot create the run directory")
    _one_line(["search", "--store", store, "--out", str(tmp_path / "afile" / "run"), *SEARCH],
              "cannot create the run directory")
    for lr in ("-1", "nan"):
        _one_line(["train", "--store", store, "--genotype", genotype, "--out", str(tmp_path / "r"), "--lr", lr,
                   *TRAIN], f"--lr {float(lr)}: use a finite number above 0")
    assert not (tmp_path / "r").exists()


def test_genotype_asking_for_a_billion_channels(trained, tmp_path):
    g = json.loads((trained / "g.json").read_text())
    g["C"] = 10 ** 9
    (tmp_path / "huge.json").write_text(json.dumps(g))
    _one_line(["train", "--store", str(trained / "s.zarr"), "--genotype", str(tmp_path / "huge.json"),
               "--out", str(tmp_path / "r"), *TRAIN], "C must be an integer in 1..4096, got 1000000000")
