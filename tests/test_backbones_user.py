"""A user's own backbones: a torch module on a modality of their own (.npy series in a manifest) through
pretrain -> extract -> finetune, a plugin registered under the `bmnas.backbones` entry-point group of an
installed distribution, and `bmnas backbones` / `bmnas backbones show SPEC`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from extract.checkpoints import sha256_file
from pipeline.cli import cli
from stores import open_store, verify_store

SERIES_NET = """
import torch.nn as nn

class SeriesNet(nn.Module):
    '''Two conv layers over (channels, time) sensor windows, then a pooled linear layer.'''
    def __init__(self, channels=3):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv1d(channels, 12, 5, padding=2), nn.ReLU())
        self.conv2 = nn.Sequential(nn.Conv1d(12, 6, 5, padding=2, stride=2), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool1d(1)

    def forward(self, x):
        return self.pool(self.conv2(self.conv1(x))).flatten(1)

def build():
    return SeriesNet()
"""


def _ok(args: list[str]) -> str:
    res = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.output


def _series_manifest(root: Path, n: int = 48) -> Path:
    """A small sensor dataset: 3-channel windows of 64 steps; class 1 has a 4 Hz burst on channel 0."""
    rng = np.random.default_rng(0)
    (root / "x").mkdir(parents=True)
    t = np.arange(64) / 32.0
    lines = ["id,split,label,array_accel"]
    for i in range(n):
        label = i % 2
        x = rng.normal(scale=0.5, size=(3, 64)).astype(np.float32)
        if label:
            x[0] += np.sin(2 * np.pi * 4 * t).astype(np.float32) * 2
        np.save(root / "x" / f"{i}.npy", x)
        split = "test" if i >= n - 12 else ("val" if i >= n - 20 else "train")
        lines.append(f"s{i},{split},{label},x/{i}.npy")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root / "manifest.csv"


def test_own_modality_pretrain_extract_finetune(tmp_path, monkeypatch):
    """A torch module on `array_accel`: pretrain puts a head on its deepest tap, extract reads the pretrained
    weights (sha256 recorded), channels come from the probe, and finetune takes everything from the store."""
    (tmp_path / "sensornet.py").write_text(SERIES_NET)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    manifest = _series_manifest(tmp_path / "data")
    _ok(["pretrain", str(manifest), "--modality", "array_accel", "--backbone", "sensornet:build",
         "--taps", "conv1,conv2", "--epochs", "6", "--batch-size", "8", "--device", "cpu", "--out", str(tmp_path / "pre")])
    shown = _ok(["backbones", "show", "sensornet:build", "--modality", "array_accel", "--taps", "conv1,conv2",
                 "--data", str(manifest)])
    assert "array_accel_1" in shown and "C=12" in shown and "C=6" in shown and "(3, 64)" in shown
    best = tmp_path / "pre" / "best.pt"
    state = torch.load(best, weights_only=True)
    assert "conv1.0.weight" in state and state["bmnas_head.weight"].shape == (2, 6)  # head on conv2 (6 channels)
    summary = json.loads((tmp_path / "pre" / "summary.json").read_text())
    assert summary["val_accuracy"] >= 0.75  # the burst is learnable from the deepest tap
    store = tmp_path / "s.zarr"
    _ok(["extract", str(manifest), "--out", str(store), "--backbone", "array_accel=sensornet:build",
         "--taps", "array_accel=conv1,conv2", "--checkpoint", f"array_accel={best}", "--rows-per-chunk", "16",
         "--workers", "1", "--device", "cpu"])
    assert verify_store(store) == []
    opened = open_store(store)
    assert opened.node_shapes == {"array_accel_1": (12, 32), "array_accel_2": (6, 32)}  # T capped at --t-max 32
    attrs = opened.node_attrs("array_accel_2")
    assert attrs["kind"] == "series" and attrs["checkpoint_sha256"] == sha256_file(best)
    # the cached conv2 tap is the pretrained module's own conv2 output (max-pooled over time to 32)
    import sensornet

    net = sensornet.build()
    net.load_state_dict({k: v for k, v in state.items() if not k.startswith("bmnas_head")})
    x = torch.from_numpy(np.load(tmp_path / "data" / "x" / "0.npy"))[None]
    want = torch.nn.functional.adaptive_max_pool1d(net.eval().conv2(net.conv1(x)), 32)[0]
    np.testing.assert_allclose(opened.array("array_accel_2")[0].astype(np.float32), want.detach().numpy(),
                               rtol=2e-3, atol=2e-3)
    g = tmp_path / "g.json"
    _ok(["genotype", "baseline", "random", "--store", str(store), "-o", str(g), "--channels", "8", "--length", "4",
         "--cells", "1"])
    _ok(["finetune", "--store", str(store), "--genotype", str(g), "--source", str(manifest), "--out",
         str(tmp_path / "ft"), "--epochs", "1", "--batch-size", "8", "--loader-workers", "0", "--device", "cpu"])
    assert json.loads((tmp_path / "ft" / "metrics_test.json").read_text())["num_samples"] == 12


PLUGIN = """
from extract.backbones import BackboneSpec, InputSpec, Setting
import torch.nn as nn

class Tiny(nn.Module):
    def __init__(self, num_classes=2, in_dim=8):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(in_dim, 5), nn.ReLU())
        self.head = nn.Linear(5, num_classes)

    def forward(self, x):
        return self.head(self.body(x))

SPEC = BackboneSpec(name="tinyplug", modalities=("text",), factory=Tiny, taps=(("body", "body", "text"),),
                    head="head", settings={"full": Setting({}, InputSpec(dim=8), (5,))},
                    description="a plugin's backbone")
"""


def test_entry_point_plugin_is_listed_and_resolves(tmp_path):
    """An installed distribution (a dist-info with entry_points.txt on the path) declares a backbone
    under `bmnas.backbones`; `bmnas backbones` lists it and `show` probes it, in a fresh process."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "bmnas_tinyplug.py").write_text(PLUGIN)
    dist = site / "bmnas_tinyplug-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: bmnas-tinyplug\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[bmnas.backbones]\ntinyplug = bmnas_tinyplug:SPEC\n")
    env = {**os.environ, "PYTHONPATH": str(site)}
    bmnas = [sys.executable, "-m", "pipeline.cli"]
    listing = subprocess.run(bmnas + ["backbones"], env=env, capture_output=True, text=True, check=True).stdout
    assert any(line.startswith("tinyplug") and "body*[text C=5]" in line for line in listing.splitlines()), listing
    shown = subprocess.run(bmnas + ["backbones", "show", "tinyplug"], env=env, capture_output=True, text=True,
                           check=True).stdout
    assert "text_1" in shown and "C=5" in shown and "T=1" in shown, shown


def test_backbones_listing_and_show(tmp_path, monkeypatch):
    listing = _ok(["backbones"])
    assert "hcn" in listing and "hf:DIR" in listing
    shown = _ok(["backbones", "show", "hcn", "--setting", "tiny"])
    assert "skeleton_1" in shown and "prepared input (3, 32, 25, 2)" in shown
    (tmp_path / "imgnet.py").write_text(
        "import torch.nn as nn\n"
        "def build():\n    return nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 8, 3))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    shown = _ok(["backbones", "show", "imgnet:build", "--modality", "image", "--taps", "1,2", "--input", "size=32"])
    assert "C=16" in shown and "C=8" in shown and "T=16" in shown
    r = CliRunner().invoke(cli, ["backbones", "show", "imgnet:build", "--taps", "1"])
    assert r.exit_code == 2 and "--modality" in r.output


def test_module_wrapper_keeps_the_modules_own_state_dict(tmp_path, monkeypatch):
    """Children named like the wrapper's own attributes, a non-persistent buffer on the root: a file
    saved from the bare module loads into the backbone unchanged, and taps reach the real children."""
    (tmp_path / "oddnet.py").write_text(
        "import torch, torch.nn as nn\n"
        "class Odd(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.net = nn.Conv1d(3, 4, 3)\n"
        "        self.kind = nn.Conv1d(4, 2, 3)\n"
        "        self.register_buffer('pe', torch.ones(1), persistent=False)\n"
        "    def forward(self, x):\n"
        "        return self.kind(self.net(x)) * self.pe\n"
        "def build():\n    return Odd()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import oddnet

    from extract.backbones import resolve_backbone
    from extract.checkpoints import load_checkpoint, save_checkpoint

    spec = resolve_backbone("oddnet:build", "array_x", ["net", "kind"])
    bare = oddnet.build()
    save_checkpoint(bare, tmp_path / "odd.pt")
    model = spec.build("full", 2, "array_x", example=torch.zeros(3, 16))
    load_checkpoint(model, tmp_path / "odd.pt", head=spec.head)
    assert set(model.state_dict()) == set(bare.state_dict()) | {"bmnas_head.weight", "bmnas_head.bias"}
    assert torch.equal(model.get_submodule("net").weight, bare.net.weight)
    x = torch.randn(2, 3, 16)
    assert model(x).shape == (2, 2)
    assert torch.equal(model.get_submodule("kind")(bare.net(x)), bare(x))
