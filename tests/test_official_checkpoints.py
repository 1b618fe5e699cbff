"""`--setting full` is the paper's architecture: its pretrained files load as they are, and the forward
computes what the official code computes (tests/data/official_keys/README.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image

from _official_files import OFFICIAL, key_list, official_state, write_official
from extract.backbones import get_backbone
from extract.backbones.taps import TapReader
from extract.checkpoints import check_keys, load_checkpoint, read_state_dict
from extract.errors import BackboneError
from pipeline.cli import cli
from stores import open_store


def _model(name: str) -> torch.nn.Module:
    backbone, modality, classes, _ = OFFICIAL[name]
    return get_backbone(backbone).build("full", classes, modality).eval()


@pytest.mark.parametrize("name", list(OFFICIAL))
def test_full_setting_has_exactly_the_official_keys(name):
    own = {k: tuple(v.shape) for k, v in _model(name).state_dict().items()}
    assert own == key_list(name)
    assert list(own) == list(key_list(name))  # module order too


@pytest.mark.parametrize("name", list(OFFICIAL))
def test_official_file_loads_every_key(name, tmp_path):
    backbone, _, _, _ = OFFICIAL[name]
    spec = get_backbone(backbone)
    wrapped = name.startswith("ego")  # Real-time-GesRec's own format
    path = write_official(name, tmp_path, wrapped=wrapped)
    model = _model(name)
    check_keys(model, read_state_dict(path), str(path))  # strict: head included
    load_checkpoint(model, path, head=spec.head)
    want = official_state(name)
    got = model.state_dict()
    assert set(got) == set(want)
    for key, value in want.items():
        assert torch.equal(got[key], value), key


def test_file_without_batchnorm_counters_loads_and_a_missing_stat_does_not(tmp_path):
    """Files saved before PyTorch 0.4.1 have no num_batches_tracked; any other absent key is refused."""
    state = official_state("ntu_rgb", counters=False)
    assert len(state) == 320 - 53 and not any(k.endswith("num_batches_tracked") for k in state)
    torch.save(state, tmp_path / "old.checkpoint")
    model = _model("ntu_rgb")
    load_checkpoint(model, tmp_path / "old.checkpoint")
    assert torch.equal(model.cnn.bn1.running_var, state["cnn.bn1.running_var"])
    del state["cnn.layer1.0.bn1.running_var"]
    torch.save(state, tmp_path / "broken.checkpoint")
    with pytest.raises(BackboneError, match=r"1 missing \[cnn.layer1.0.bn1.running_var\]"):
        load_checkpoint(_model("ntu_rgb"), tmp_path / "broken.checkpoint")


def test_inflated_resnet_forward():
    """2D stem per frame (= a Conv3d of temporal size 1 on the same weights), time never strided,
    the pooled vector = AvgPool3d((8, 7, 7)) over layer4 at the full input."""
    model = _model("ntu_rgb")
    model.load_state_dict(official_state("ntu_rgb"))
    cnn = model.cnn
    x = torch.randn(1, 3, 8, 224, 224)
    with torch.no_grad():
        bn = cnn.bn1
        ref = F.conv3d(x, cnn.conv1.weight[:, :, None], stride=(1, 2, 2), padding=(0, 3, 3))
        ref = F.batch_norm(ref, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
        ref = F.max_pool3d(F.relu(ref), (1, 3, 3), (1, 2, 2), (0, 1, 1))
        torch.testing.assert_close(cnn.stem(x), ref, rtol=1e-4, atol=1e-4)
        seen = {}
        hooks = [cnn.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, o))
                 for n in ("layer1", "layer2", "layer3", "layer4")]
        hooks.append(model.avgpool.register_forward_hook(lambda m, i, o: seen.__setitem__("pool", o)))
        model(x)
    for h in hooks:
        h.remove()
    assert [tuple(seen[f"layer{i}"].shape) for i in (1, 2, 3, 4)] == [
        (1, 256, 8, 56, 56), (1, 512, 8, 28, 28), (1, 1024, 8, 14, 14), (1, 2048, 8, 7, 7)]
    torch.testing.assert_close(seen["pool"], F.avg_pool3d(seen["layer4"], (8, 7, 7)))
    assert model.cnn.layer1[0].downsample is not None  # 64 -> 256: projected shortcut


def test_resnext_first_conv_per_modality():
    rgb, depth = _model("ego_rgb").conv1, _model("ego_depth").conv1
    assert (rgb.kernel_size, rgb.padding, rgb.stride) == ((3, 7, 7), (1, 3, 3), (1, 2, 2))
    assert (depth.kernel_size, depth.padding, depth.stride) == ((7, 7, 7), (3, 3, 3), (1, 2, 2))


def test_hcn_forward():
    """No ReLU after conv3/conv4, conv5 has one; motion = frame differences resized to T; out7 is
    the max over bodies of the flattened conv6 map."""
    spec = get_backbone("hcn")
    model = _model("ntu_skeleton")
    model.load_state_dict(official_state("ntu_skeleton"))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    x = torch.randn(3, 3, 32, 25, 2)
    x[1] = torch.arange(32.0).view(1, 32, 1, 1) * torch.randn(3, 1, 25, 2)  # linear in time
    seen = {}
    for n in ("conv3", "conv4", "conv3m", "conv4m", "conv5", "conv6"):
        model.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, o))
    model.conv1m.register_forward_pre_hook(lambda m, i: seen.__setitem__("motion", i[0]))
    reader = TapReader(model, spec.tap_specs("full", ["out7", "fc7"]))
    with torch.no_grad():
        out = reader.run(x)
    for n in ("conv3", "conv4", "conv3m", "conv4m"):
        assert (seen[n] < 0).any(), n  # a negative pre-activation survives: no ReLU
    assert (seen["conv5"] >= 0).all() and (seen["conv6"] >= 0).all()
    assert tuple(seen["conv6"].shape) == (6, 256, 2, 2)  # 3 samples x 2 bodies
    assert tuple(seen["conv5"].shape) == (6, 128, 4, 4)
    body_max = seen["conv6"].reshape(3, 2, -1).amax(dim=1)
    torch.testing.assert_close(out["out7"][:, :, 0], body_max)
    assert out["fc7"].shape == (3, 512, 1)
    # sample 1 moves at a constant speed: its motion is the same in every frame, the first included
    motion = seen["motion"].reshape(3, 2, 3, 32, 25)[1]
    torch.testing.assert_close(motion, motion[:, :, :1].expand_as(motion))
    torch.testing.assert_close(motion[:, :, 0], (x[1, :, 1] - x[1, :, 0]).permute(2, 0, 1))


def test_tiny_is_the_same_classes_with_the_documented_departures():
    hcn_full, hcn_tiny = get_backbone("hcn").build("full", 60), get_backbone("hcn").build("tiny", 60)
    assert type(hcn_full) is type(hcn_tiny)
    assert isinstance(hcn_full.point_bn, torch.nn.Identity)  # full: no input BatchNorm
    assert isinstance(hcn_tiny.point_bn, torch.nn.BatchNorm2d) and isinstance(hcn_tiny.motion_bn, torch.nn.BatchNorm2d)
    for name in ("inflated_resnet50", "resnext101_3d", "vgg19", "maxout_mlp"):
        spec = get_backbone(name)
        assert type(spec.build("full", 3)) is type(spec.build("tiny", 3))


# --- through the CLI: official files -> store with the default nodes ---------------------------------

def _ok(*args) -> str:
    res = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.output


def _verified(store: Path) -> object:
    _ok("store", "verify", store)
    return open_store(store)


@pytest.mark.slow
def test_cli_extract_ntu_with_the_official_rgb_and_skeleton_files(tmp_path):
    raw = tmp_path / "ntu"
    _ok("data", "synth", "ntu-like", raw, "-n", 2, "-k", 2)
    rgb = write_official("ntu_rgb", tmp_path / "ckpt")
    skel = write_official("ntu_skeleton", tmp_path / "ckpt")
    store = tmp_path / "s.zarr"
    _ok("extract", raw, "--out", store, "--setting", "full", "--backbone", "video=inflated_resnet50",
        "--checkpoint", f"video={rgb}", "--backbone", "skeleton=hcn", "--checkpoint", f"skeleton={skel}",
        "--no-dask", "--batch-size", 2, "--quiet")
    opened = _verified(store)
    assert opened.nodes == [f"video_{i}" for i in range(1, 5)] + [f"skeleton_{i}" for i in range(1, 5)]
    assert [opened.node_attrs(f"video_{i}")["layer"] for i in range(1, 5)] == ["layer2", "layer3", "layer4", "pool"]
    assert [opened.node_attrs(f"skeleton_{i}")["layer"] for i in range(1, 5)] == ["conv5", "conv6", "out7", "fc7"]
    assert opened.node_shapes["video_4"] == (2048, 1) and opened.node_shapes["video_1"][0] == 512
    assert opened.node_shapes["skeleton_4"] == (512, 1) and opened.node_shapes["skeleton_3"] == (1024, 1)
    assert opened.node_attrs("skeleton_4")["checkpoint_sha256"] != opened.node_attrs("video_4")["checkpoint_sha256"]
    # --dtype auto: the official file's pooled activations exceed float16's range, so those nodes are
    # float32 (a float16 cast would hold Inf); the verified store above holds nothing non-finite
    dtypes = {n: str(opened.array(n).dtype) for n in opened.nodes}
    assert {n: opened.node_attrs(n)["probe_peak"] < 65504 / 8 for n in opened.nodes} == {
        n: d == "float16" for n, d in dtypes.items()}


@pytest.mark.slow
def test_official_rgb_file_beyond_float16_never_writes_inf(tmp_path):
    """A file whose last block reaches past float16 (as some real files do): the default keeps those
    nodes in float32 and verifies; --dtype float16 is refused in one line naming node and fix."""
    raw = tmp_path / "ntu"
    _ok("data", "synth", "ntu-like", raw, "-n", 2, "-k", 2)
    loud = {"cnn.layer4.2.bn3.weight": 1e6, "cnn.layer4.2.bn3.bias": 1e6}
    rgb = write_official("ntu_rgb", tmp_path / "ckpt", gains=loud)
    args = ["extract", str(raw), "--setting", "full", "--backbone", "video=inflated_resnet50",
            "--checkpoint", f"video={rgb}", "--no-dask", "--batch-size", "2", "--quiet"]
    r = CliRunner().invoke(cli, args + ["--out", str(tmp_path / "f16.zarr"), "--dtype", "float16"])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    assert "node video_3 (tap layer4 of inflated_resnet50)" in r.output and "--dtype float32" in r.output
    opened = _verified(Path(_ok(*args, "--out", tmp_path / "auto.zarr").split(":")[0]))
    assert [str(opened.array(f"video_{i}").dtype) for i in range(1, 5)] == ["float16", "float16", "float32", "float32"]
    assert np.abs(np.asarray(opened.array("video_4")[:], dtype=np.float32)).max() > 65504


@pytest.mark.slow
def test_cli_extract_images_with_torchvision_vgg19(tmp_path):
    raw = tmp_path / "mm"
    _ok("data", "synth", "mmimdb-like", raw, "--samples", 4)
    vgg = write_official("tv_vgg19", tmp_path / "ckpt")
    store = tmp_path / "mm.zarr"
    _ok("extract", raw, "--out", store, "--setting", "full", "--backbone", "image=vgg19",
        "--checkpoint", f"image={vgg}", "--no-dask", "--batch-size", 2, "--quiet")
    opened = _verified(store)
    assert opened.nodes == [f"image_{i}" for i in range(1, 5)]
    assert [opened.node_attrs(f"image_{i}")["module"] for i in range(1, 5)] == [
        "features.20", "features.26", "features.33", "features.36"]
    assert all(opened.node_shapes[f"image_{i}"] == (512, 16) for i in range(1, 5))


def _ego_tree(root: Path, frames: int = 12) -> Path:
    """Two gestures of subject 3 (train) in EgoGesture's layout: JPEG frame folders and a GroupG.csv."""
    scene = root / "images" / "Subject03" / "Scene1"
    rng = np.random.default_rng(0)
    for folder, shape in ((scene / "Color" / "rgb1", (48, 64, 3)), (scene / "Depth" / "depth1", (48, 64))):
        folder.mkdir(parents=True)
        for i in range(1, frames + 1):
            Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(folder / f"{i:06d}.jpg")
    labels = root / "labels" / "Subject03" / "Scene1"
    labels.mkdir(parents=True)
    (labels / "Group1.csv").write_text("5,1,6\n12,7,12\n")
    return root


@pytest.mark.slow
def test_cli_extract_egogesture_rgb_with_the_official_resnext(tmp_path):
    raw = _ego_tree(tmp_path / "ego")
    ckpt = write_official("ego_rgb", tmp_path / "ckpt", wrapped=True)
    store = tmp_path / "ego.zarr"
    _ok("extract", raw, "--out", store, "--setting", "full", "--source-opt", "frames=32",
        "--backbone", "video=resnext101_3d", "--checkpoint", f"video={ckpt}",
        "--no-dask", "--batch-size", 1, "--quiet")
    opened = _verified(store)
    assert opened.nodes == [f"video_{i}" for i in range(1, 5)]
    assert [opened.node_shapes[f"video_{i}"] for i in range(1, 5)] == [(512, 8), (1024, 4), (2048, 2), (2048, 1)]
