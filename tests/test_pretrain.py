"""Unimodal pretraining on synthetic data in real formats; its checkpoint feeds extraction."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from extract.backbones import get_backbone
from extract.checkpoints import load_checkpoint
from extract.errors import BackboneError, ExtractError
from extract.job import BackboneChoice, extract
from extract.sources.mmimdb import MMIMDBSource
from extract.sources.ntu import NTUSource
from extract.synth import generate
from fusion_search.training.metrics import f1_scores
from fusion_search.training.rundir import LAST
from pipeline.cli import cli
from pipeline.pretrain import pretrain, resume_pretrain
from stores import open_store


@pytest.fixture(scope="module")
def ntu(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ntu") / "data"
    generate("ntu-like", root, samples=16, classes=4, seed=5)
    return root


def test_pretrain_writes_run_and_checkpoint_feeds_extract(ntu, tmp_path):
    src = NTUSource(ntu, size=32)
    res = pretrain(src, "skeleton", "hcn", str(tmp_path / "run"), setting="tiny", epochs=2, batch_size=4,
                   device="cpu", progress=False)
    run = Path(res.out_dir)
    assert {p.name for p in run.iterdir()} >= {"best.pt", "config.yaml", "log.txt", "metrics.jsonl", "summary.json",
                                               "tensorboard"}
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert (run / LAST).is_file()
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    assert all(np.isfinite(r["train_loss"]) and 0 <= r["val_accuracy"] <= 1 for r in lines)
    assert res.best_score == max(r["val_accuracy"] for r in lines) and res.metric == "val_accuracy"
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["kind"] == "pretrain" and cfg["backbone"] == "hcn" and cfg["num_classes"] == 4 and [t["name"] for t in cfg["taps"]][-1] == "fc7"
    model = get_backbone("hcn").build("tiny", 4).eval()
    assert load_checkpoint(model, res.checkpoint) == res.checkpoint_sha256
    # the pretrained weights are what extraction records and uses
    out = extract(src, str(tmp_path / "f.zarr"), [BackboneChoice("skeleton", "hcn", "tiny", res.checkpoint)],
                  rows_per_chunk=8, use_dask=False, device="cpu", progress=False)
    store = open_store(out.store)
    assert store.node_attrs("skeleton_4")["checkpoint_sha256"] == res.checkpoint_sha256
    from extract.backbones.taps import TapReader
    from extract.backbones import prepare_batch

    x = prepare_batch([src.load(src.samples()[0].id, "skeleton")], "skeleton", get_backbone("hcn").setting("tiny").input)
    with torch.inference_mode():
        want = TapReader(model, get_backbone("hcn").tap_specs("tiny")).run(x)["fc7"][0].numpy()
    np.testing.assert_allclose(store.array("skeleton_4")[0].astype(np.float32), want, rtol=2e-3, atol=1e-3)


class Killed(Exception):
    pass


def test_killed_pretrain_resumes_to_the_same_checkpoint(ntu, tmp_path):
    src = NTUSource(ntu, size=32)
    kw = dict(setting="tiny", epochs=3, batch_size=4, device="cpu", progress=False)
    whole = pretrain(src, "skeleton", "hcn", str(tmp_path / "whole"), **kw)

    def kill(epoch):
        if epoch == 2:
            raise Killed

    with pytest.raises(Killed):
        pretrain(src, "skeleton", "hcn", str(tmp_path / "cut"), on_epoch=kill, **kw)
    assert not (tmp_path / "cut" / "summary.json").exists()
    config = yaml.safe_load((tmp_path / "cut" / "config.yaml").read_text())
    (tmp_path / "cut" / "config.yaml").write_text(yaml.safe_dump({**config, "device": "cuda"}))  # begun on a GPU
    cut = resume_pretrain(tmp_path / "cut", source=src, device="cpu", progress=False)
    assert cut.checkpoint_sha256 == whole.checkpoint_sha256 and cut.best_epoch == whole.best_epoch

    def strip(run):
        return [{k: v for k, v in json.loads(x).items() if k != "seconds"}
                for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]

    assert strip("cut") == strip("whole") and len(strip("cut")) == 3
    again = resume_pretrain(tmp_path / "cut", source=src, device="cpu", progress=False)  # finished: as is
    assert again.checkpoint_sha256 == whole.checkpoint_sha256 and len(strip("cut")) == 3
    with pytest.raises(ExtractError, match="exists and is not empty.*bmnas pretrain --resume"):
        pretrain(src, "skeleton", "hcn", str(tmp_path / "cut"), lr=0.5, **kw)


def test_pretrain_cli_resumes_with_only_device(ntu, tmp_path):
    """`bmnas pretrain --resume RUN` reopens the recorded source; any option but --device is refused."""
    args = ["pretrain", str(ntu), "--source-opt", "size=32", "--modality", "skeleton", "--backbone", "hcn",
            "--setting", "tiny", "--epochs", "1", "--batch-size", "4", "--device", "cpu", "--out", str(tmp_path / "r")]
    assert CliRunner().invoke(cli, args).exit_code == 0
    r = CliRunner().invoke(cli, ["pretrain", "--resume", str(tmp_path / "r"), "--epochs", "3"])
    assert r.exit_code == 2 and "drop --epochs" in r.output and len(r.output.strip().splitlines()) == 1, r.output
    r = CliRunner().invoke(cli, ["pretrain", "--resume", str(tmp_path / "r"), "--device", "cpu"])
    assert r.exit_code == 0 and "at epoch 1" in r.output, r.output  # finished: reported as it is
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 2 and "exists and is not empty" in r.output, r.output


def test_pretrain_run_of_the_earlier_layout_gets_one_line(ntu, tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    (old / "config.json").write_text(json.dumps({"backbone": "hcn"}))
    torch.save({"epoch": 1}, old / "last.pt")
    r = CliRunner().invoke(cli, ["pretrain", "--resume", str(old)])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    assert "earlier layout" in r.output and "new --out" in r.output


def test_pretrain_cli_inflates_2d_resnet(ntu, tmp_path):
    spec = get_backbone("inflated_resnet50")
    model3d = spec.build("tiny", 4)
    # torchvision's names: the trunk without its `cnn.` prefix, 2D kernels, an ImageNet `fc`
    sd2 = {k: (v[:, :, v.shape[2] // 2].clone() if v.dim() == 5 else v.clone())
           for k, v in model3d.cnn.state_dict().items()}
    sd2["fc.weight"], sd2["fc.bias"] = torch.randn(1000, 256), torch.randn(1000)  # ImageNet head: not taken
    torch.save(sd2, tmp_path / "resnet50.pth")
    r = CliRunner().invoke(cli, ["pretrain", str(ntu), "--source-opt", "size=32", "--modality", "video",
                                 "--backbone", "inflated_resnet50", "--setting", "tiny", "--epochs", "1",
                                 "--batch-size", "4", "--inflate-from", str(tmp_path / "resnet50.pth"),
                                 "--out", str(tmp_path / "run"), "--device", "cpu"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "best val_accuracy" in r.output
    cfg = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert cfg["inflate_from"].endswith("resnet50.pth") and len(cfg["init_sha256"]) == 64
    assert (tmp_path / "run" / "best.pt").is_file()


def test_pretrain_multilabel_text(tmp_path):
    generate("mmimdb-like", tmp_path / "mm", samples=40, seed=1)
    src = MMIMDBSource(tmp_path / "mm" / "multimodal_imdb.hdf5")
    res = pretrain(src, "text", "maxout_mlp", str(tmp_path / "run"), setting="tiny", epochs=1, batch_size=8,
                   device="cpu", progress=False)
    assert res.metric == "val_f1_weighted" and 0 <= res.best_score <= 1


def test_pretrain_scores_with_the_one_weighted_f1():
    y = np.array([[1, 0], [1, 1], [0, 1]], bool)
    assert f1_scores(y, y)["f1_weighted"] == 1.0
    p = np.array([[1, 0], [0, 0], [0, 1]], bool)  # class 0: f1 2/3 (support 2); class 1: 2/3 (support 2)
    assert f1_scores(p, y)["f1_weighted"] == pytest.approx(2 / 3)


def test_pretrain_bad_options(ntu, tmp_path):
    src = NTUSource(ntu, size=32)
    with pytest.raises(ExtractError, match="inflated_resnet50 only"):
        pretrain(src, "skeleton", "hcn", str(tmp_path / "r"), setting="tiny", inflate_from="x.pth", device="cpu",
                 progress=False)
    with pytest.raises(ExtractError, match="taps: not settable.*tap_choice"):  # a recorded field, not a setting
        pretrain(src, "skeleton", "hcn", str(tmp_path / "r"), setting="tiny", taps=["conv5"], progress=False)
    assert not (tmp_path / "r").exists()
    with pytest.raises(BackboneError, match="reads image, not 'video'"):
        pretrain(src, "video", "vgg19", str(tmp_path / "r"), setting="tiny", device="cpu", progress=False)
    r = CliRunner().invoke(cli, ["pretrain", str(ntu), "--modality", "text", "--backbone", "maxout_mlp",
                                 "--out", str(tmp_path / "r"), "--device", "cpu"])
    assert r.exit_code == 2 and "has no modality 'text'" in r.output
