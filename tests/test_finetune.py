"""`bmnas finetune` on synthetic NTU-format raw data (decord in DataLoader workers), real checkpoints.

The chain is the real one: ntu-like files -> extraction with checkpoints -> store -> `train` on the
cache -> `finetune` from raw data starting from that train run. The joint model must compute the
very features the cache holds (same backbones, taps, reduction), or fine-tuning would start from a
different network than the one trained on the cache.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from extract.backbones import get_backbone
from extract.checkpoints import read_state_dict, save_checkpoint
from fusion_search.baselines import baseline_genotype
from fusion_search.genotype import Genotype
from pipeline.cli import cli
from pipeline.evaluate import evaluate_run
from pipeline.finetune import finetune
from pipeline.configs import FinetuneConfig
from pipeline.joint_model import build_model
from fusion_search.training.rundir import BEST
from pipeline.train import train_on_cache


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    from extract.job import BackboneChoice, extract
    from extract.sources.registry import open_source
    from extract.synth import generate

    d = tmp_path_factory.mktemp("ft")
    generate("ntu-like", d / "ntu", samples=24, classes=4, seed=0)
    torch.manual_seed(0)
    rgb = save_checkpoint(get_backbone("inflated_resnet50").build("tiny", 4, "video"), d / "rgb.pt")
    save_checkpoint(get_backbone("hcn").build("tiny", 4, "skeleton"), d / "hcn.pt")
    assert len(rgb) == 64
    extract(open_source(d / "ntu"), str(d / "s.zarr"),
            [BackboneChoice("video", "inflated_resnet50", "tiny", str(d / "rgb.pt")),
             BackboneChoice("skeleton", "hcn", "tiny", str(d / "hcn.pt"))],
            use_dask=False, dtype="float32", device="cpu", progress=False, batch_size=8)
    from stores import open_store

    store = open_store(d / "s.zarr")
    g = baseline_genotype("random", store.nodes, store.task, store.num_classes, seed=1, C=8, L=4)
    g = Genotype.from_dict({**g.to_dict(), "cells": [
        {"inputs": ["video_2", "skeleton_4"], "steps": [{"op": "ConcatFC", "inputs": [0, 1]}], "concat": [2]},
        {"inputs": ["cell_1", "video_4"], "steps": [{"op": "Attention", "inputs": [0, 1]}], "concat": [2]}]})
    g.save(d / "g.json")
    train_on_cache(str(d / "s.zarr"), d / "g.json", d / "cache_run", epochs=1, batch_size=8, device="cpu")
    backbones = [{"modality": "video", "backbone": "inflated_resnet50", "checkpoint": str(d / "rgb.pt")},
                 {"modality": "skeleton", "backbone": "hcn", "checkpoint": str(d / "hcn.pt")}]
    return d, store, g, backbones


def _cli_args(backbones) -> list[str]:
    """The --backbone/--checkpoint options that name the given backbones."""
    out = []
    for b in backbones:
        out += ["--backbone", f"{b['modality']}={b['backbone']}", "--checkpoint", f"{b['modality']}={b['checkpoint']}"]
    return out


def test_joint_model_computes_the_cached_features(chain):
    d, store, g, backbones = chain
    cfg = FinetuneConfig(genotype=str(d / "g.json"), source=str(d / "ntu"), setting="tiny",
                         backbones=backbones)
    built = build_model(cfg, g)
    assert set(built.node_shapes) == set(g.used_nodes()) == {"video_2", "video_4", "skeleton_4"}
    assert all(built.node_shapes[n] == store.node_shapes[n] for n in built.node_shapes)
    samples = built.source.samples()
    ids = [str(i) for i in store.sample_ids]
    from pipeline.joint_model import RawSamples

    model = built.model.eval()
    for row in (0, 5):
        x, y = RawSamples(built.source, [samples[row]], built.specs)[0]
        assert ids[row] == samples[row].id and int(y) == int(store.labels()[row])
        with torch.no_grad():
            feats = model.features({m: t[None] for m, t in x.items()})
        for node, t in feats.items():
            np.testing.assert_allclose(t[0].numpy(), store.array(node)[row], rtol=1e-4, atol=1e-4)
    keys = set(model.state_dict())
    assert "backbones.video.fc.weight" not in keys and "backbones.skeleton.fc8.weight" not in keys  # heads dropped
    assert "backbones.skeleton.fc7.0.weight" in keys


def test_init_from_starts_the_fusion_network_at_the_train_runs_weights(chain):
    """--init-from: fine-tuning starts from the very network `bmnas train` fitted on the cache (the
    features match, above; here the weights), and a run of another genotype is refused."""
    from fusion_search.training.run_checkpoint import load_run_checkpoint
    from pipeline.finetune import _init_fusion

    d, store, g, backbones = chain
    cfg = FinetuneConfig(genotype=str(d / "g.json"), source=str(d / "ntu"), setting="tiny",
                         backbones=backbones)
    built = build_model(cfg, g)
    trained = load_run_checkpoint(d / "cache_run" / BEST)["model"]
    fresh = built.model.fusion.state_dict()
    assert set(fresh) == set(trained) and any(not torch.equal(fresh[k], trained[k]) for k in trained)
    _init_fusion(built.model, g, str(d / "cache_run"))
    loaded = built.model.fusion.state_dict()
    assert all(torch.equal(loaded[k], trained[k]) for k in trained)

    other = Genotype.from_dict({**g.to_dict(), "cells": [{**g.to_dict()["cells"][0],
                                                          "steps": [{"op": "Sum", "inputs": [0, 1]}]},
                                                         g.to_dict()["cells"][1]]})
    other.save(d / "other.json")
    r = CliRunner().invoke(cli, ["finetune", "--genotype", str(d / "other.json"), "--source", str(d / "ntu"),
                                 "--setting", "tiny", "--out", str(d / "other_ft"), "--epochs", "1", "--device", "cpu",
                                 *_cli_args(backbones), "--init-from", str(d / "cache_run")])
    assert r.exit_code == 2 and "trained another genotype than --genotype" in r.output, r.output
    assert "Traceback" not in r.output and not (d / "other_ft").exists()  # refused before a run directory


def test_finetune_one_epoch_from_raw_data(chain):
    d, store, g, backbones = chain
    s = finetune(d / "g.json", str(d / "ntu"), backbones, d / "ft", setting="tiny", init_from=str(d / "cache_run"),
                 epochs=1, batch_size=4, accumulate=2, device="cpu", loader_workers=2)
    run = d / "ft"
    cache_run = json.loads((d / "cache_run" / "metrics_test.json").read_text())
    assert s["fusion_parameters"] == cache_run["num_parameters"]  # the same found network
    assert s["num_parameters"] > s["fusion_parameters"]
    test = json.loads((run / "metrics_test.json").read_text())
    assert test["run_kind"] == "finetune" and "accuracy" in test
    assert test["num_samples"] == len(store.splits["test"])
    # backbones were trained (small lr, but moved) from their checkpoints; fusion from the train run
    state = torch.load(run / BEST, weights_only=True)["model"]
    rgb0 = read_state_dict(d / "rgb.pt")
    assert not torch.equal(state["backbones.video.cnn.conv1.weight"], rgb0["cnn.conv1.weight"])
    hist = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))  # curves for TensorBoard too
    assert hist[0]["backbone_lr"] == pytest.approx(0.1 * hist[0]["lr"])
    assert "accuracy" in hist[0]["val"]
    again = evaluate_run(run, "test")  # `bmnas evaluate` dispatches on the run kind
    assert again["accuracy"] == test["accuracy"] and again["num_parameters"] == test["num_parameters"]


def test_finetune_bad_input(chain):
    d, store, g, backbones = chain
    runner = CliRunner()
    base = ["finetune", "--genotype", str(d / "g.json"), "--source", str(d / "ntu"), "--setting", "tiny",
            "--out", str(d / "bad"), "--epochs", "1", "--device", "cpu"]

    def fails(argv, needle):
        r = runner.invoke(cli, argv)
        assert r.exit_code == 2, r.output
        assert needle in r.output and "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1

    # the skeleton checkpoint given for the video backbone
    fails(base + _cli_args([{**backbones[0], "checkpoint": str(d / "hcn.pt")}, backbones[1]]),
          "does not fit the architecture")
    fails(base + _cli_args(backbones[:1]), "--backbone skeleton=")
    fails(base + ["--backbone", "video"] + _cli_args(backbones[1:]), "MODALITY=")
    fails(base + ["--checkpoint", f"depth={d / 'hcn.pt'}"] + _cli_args(backbones), "no --backbone")
    fails(base, "--store")
    deep = g.to_dict()
    deep["nodes"] = list(g.nodes) + ["video_7"]
    deep["cells"][1]["inputs"] = ["cell_1", "video_7"]
    Genotype.from_dict(deep).save(d / "deep.json")
    fails(["finetune", "--genotype", str(d / "deep.json")] + base[3:] + _cli_args(backbones), "has 4 taps")
    fails(base[:-4] + ["--train-on", "train+val"] + _cli_args(backbones), "give --epochs")
    fails(base + _cli_args(backbones) + ["--init-from", str(d / "ntu")], "config.yaml")
    assert not (d / "bad").exists()  # nothing written for bad input


def test_finetune_resume_is_exact(chain):
    """A run 'killed' after epoch 1 (its config then says 2) resumes to the weights of an uninterrupted one.
    Skeleton-only genotype: no video decoding, so two short runs stay cheap."""
    import yaml

    d, store, g, backbones = chain
    sk = Genotype.from_dict({**g.to_dict(), "cells": [
        {"inputs": ["skeleton_2", "skeleton_4"], "steps": [{"op": "LinearGLU", "inputs": [0, 1]}], "concat": [2]},
        {"inputs": ["cell_1", "skeleton_3"], "steps": [{"op": "Sum", "inputs": [0, 1]}], "concat": [2]}]})
    sk.save(d / "sk.json")
    kw = dict(setting="tiny", batch_size=8, device="cpu", loader_workers=0, evaluate_test=False)
    finetune(d / "sk.json", str(d / "ntu"), backbones[1:], d / "sk_full", epochs=2, **kw)
    finetune(d / "sk.json", str(d / "ntu"), backbones[1:], d / "sk_cut", epochs=1, **kw)
    cfg = yaml.safe_load((d / "sk_cut" / "config.yaml").read_text())
    cfg["epochs"] = 2
    (d / "sk_cut" / "config.yaml").write_text(yaml.safe_dump(cfg))
    res = CliRunner().invoke(cli, ["finetune", "--resume", str(d / "sk_cut")])
    assert res.exit_code == 0, res.output
    a = torch.load(d / "sk_full" / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(d / "sk_cut" / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert not any(k.startswith("backbones.video") for k in a)  # only the modality the genotype reads
    assert "test: " in res.output and (d / "sk_cut" / "metrics_test.json").is_file()


def test_finetune_from_the_stores_record(chain, tmp_path):
    """`--store`: backbones, checkpoints, taps, setting and reduction come from the store; a checkpoint
    whose bytes differ from the recorded sha256 is refused in one line before a run directory."""
    d, store, g, backbones = chain
    r = CliRunner().invoke(cli, ["finetune", "--store", str(d / "s.zarr"), "--genotype", str(d / "g.json"),
                                 "--source", str(d / "ntu"), "--out", str(tmp_path / "ft"), "--epochs", "1",
                                 "--batch-size", "8", "--loader-workers", "0", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    cfg = FinetuneConfig(**{k: v for k, v in __import__("yaml").safe_load((tmp_path / "ft" / "config.yaml").read_text()).items()})
    by_mod = {b["modality"]: b for b in cfg.backbones}
    assert by_mod["video"]["setting"] == "tiny" and by_mod["video"]["checkpoint"] == str(d / "rgb.pt")
    assert by_mod["skeleton"]["checkpoint_sha256"] == store.node_attrs("skeleton_1")["checkpoint_sha256"]
    assert (tmp_path / "ft" / "metrics_test.json").is_file()
    other = tmp_path / "other.pt"
    torch.manual_seed(5)
    save_checkpoint(get_backbone("hcn").build("tiny", 4, "skeleton"), other)
    r = CliRunner().invoke(cli, ["finetune", "--store", str(d / "s.zarr"), "--genotype", str(d / "g.json"),
                                 "--source", str(d / "ntu"), "--out", str(tmp_path / "bad"), "--epochs", "1",
                                 "--checkpoint", f"skeleton={other}", "--device", "cpu"])
    assert r.exit_code == 2 and "sha256" in r.output and str(other) in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "bad").exists()
    # raw data of another data set than the store's (other sample ids): refused before a run directory
    from extract.synth import generate

    generate("ntu-like", tmp_path / "other_ntu", samples=24, classes=4, seed=7)
    r = CliRunner().invoke(cli, ["finetune", "--store", str(d / "s.zarr"), "--genotype", str(d / "g.json"),
                                 "--source", str(tmp_path / "other_ntu"), "--out", str(tmp_path / "foreign"),
                                 "--epochs", "1", "--device", "cpu"])
    assert r.exit_code == 2 and "samples are not in --store" in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "foreign").exists()


def test_store_record_overrides_merge_field_by_field(chain):
    """Given --input fields replace the recorded ones one by one; another --setting drops the recorded
    input (it was the old setting's); the reduction and source options come from the store."""
    from pipeline.finetune import _from_store

    d, store, g, backbones = chain
    settings: dict = {}
    bbs, opts = _from_store(store, [{"modality": "video", "input": {"frames": "4"}}], settings, None, None)
    video = next(b for b in bbs if b["modality"] == "video")
    assert video["input"]["frames"] == "4" and video["input"]["size"] == 32 and video["setting"] == "tiny"
    assert settings == {"t_max": 32, "grid": 4} and opts == store.attrs["extraction"]["source_options"]
    bbs, _ = _from_store(store, [], {}, None, "full")
    assert all(b["setting"] == "full" and b["input"] == {} for b in bbs)


def test_finetune_with_modality_dropout_and_its_robustness(chain):
    """--modality-dropout through the joint model (masks travel with the raw batch to the fusion
    network); --robustness on a finetune run reads the fine-tuned backbones' taps."""
    d, store, g, backbones = chain
    run = d / "ft_drop"
    finetune(d / "g.json", str(d / "ntu"), backbones, run, setting="tiny", epochs=1, batch_size=4, device="cpu",
             loader_workers=0, modality_dropout=0.3)
    r = CliRunner().invoke(cli, ["evaluate", str(run), "--robustness", "--noise-levels", "1"])
    assert r.exit_code == 0, r.output
    table = json.loads((run / "robustness_test.json").read_text())
    assert set(table["missing"]) == {"video", "skeleton"} and set(table["noise"]["video"]) == {"1"}
    assert set(table["noise_std"]) == set(g.used_nodes()) and all(v > 0 for v in table["noise_std"].values())
    assert table["full"]["accuracy"] == json.loads((run / "metrics_test.json").read_text())["accuracy"]


def test_finetune_reads_a_prepared_copy_of_the_stores_data(chain, tmp_path):
    """`--source` a `bmnas data prepare`d copy of the raw data the store was extracted from: the
    same run, value for value, as from the raw files."""
    d, store, g, backbones = chain
    r = CliRunner().invoke(cli, ["data", "prepare", str(d / "ntu"), str(tmp_path / "ready"), "--quiet"])
    assert r.exit_code == 0, r.output
    tests = {}
    for name, source in (("raw", d / "ntu"), ("prepared", tmp_path / "ready")):
        r = CliRunner().invoke(cli, ["finetune", "--store", str(d / "s.zarr"), "--genotype", str(d / "g.json"),
                                     "--source", str(source), "--out", str(tmp_path / name), "--epochs", "1",
                                     "--batch-size", "8", "--loader-workers", "0", "--device", "cpu"])
        assert r.exit_code == 0, r.output
        tests[name] = json.loads((tmp_path / name / "metrics_test.json").read_text())
    for key in ("accuracy", "loss"):
        assert tests["raw"][key] == tests["prepared"][key], (key, tests)
    r = CliRunner().invoke(cli, ["data", "prepare", str(d / "ntu"), str(tmp_path / "four"), "--source-opt", "frames=4",
                                 "--quiet"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["finetune", "--store", str(d / "s.zarr"), "--genotype", str(d / "g.json"),
                                 "--source", str(tmp_path / "four"), "--out", str(tmp_path / "four_ft"), "--epochs", "1",
                                 "--device", "cpu"])
    assert r.exit_code == 2 and "was prepared with frames 4, the store was extracted with frames 8" in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "four_ft").exists()
