"""Checkpoints: strict key check with a useful error, round trips, sha256, centre inflation."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from extract.backbones import get_backbone
from extract.checkpoints import (
    inflate_checkpoint, load_checkpoint, read_state_dict, save_checkpoint, sha256_file,
)
from extract.errors import BackboneError


def test_save_load_round_trip_same_outputs(tmp_path):
    spec = get_backbone("hcn")
    a, b = spec.build("tiny", 4).eval(), spec.build("tiny", 4).eval()
    sha = save_checkpoint(a, tmp_path / "hcn.pt")
    assert sha == sha256_file(tmp_path / "hcn.pt") and len(sha) == 64
    x = torch.randn(2, 3, 32, 25, 2)
    assert not torch.equal(a(x), b(x))
    assert load_checkpoint(b, tmp_path / "hcn.pt") == sha
    assert torch.equal(a(x), b(x))


def test_wrapped_and_dataparallel_checkpoints_load(tmp_path):
    model = get_backbone("maxout_mlp").build("tiny", 3)
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": 3},
               tmp_path / "wrapped.pth")
    load_checkpoint(get_backbone("maxout_mlp").build("tiny", 3), tmp_path / "wrapped.pth")


def test_other_architecture_lists_missing_unexpected_misshaped(tmp_path):
    save_checkpoint(get_backbone("vgg19").build("tiny", 3), tmp_path / "vgg.pt")
    with pytest.raises(BackboneError) as err:
        load_checkpoint(get_backbone("hcn").build("tiny", 3), tmp_path / "vgg.pt")
    msg = str(err.value)
    assert "does not fit the architecture" in msg and "missing [" in msg and "unexpected [" in msg
    assert "vgg.pt" in msg
    # same architecture, other width: mis-shaped keys, named with both shapes
    save_checkpoint(get_backbone("maxout_mlp").build("full", 3), tmp_path / "wide.pt")
    with pytest.raises(BackboneError, match=r"19 mis-shaped \[head.weight \(3, 512\) != \(3, 16\), hidden1.0.lin.bias \(1024,\) != \(32,\)"):
        load_checkpoint(get_backbone("maxout_mlp").build("tiny", 3), tmp_path / "wide.pt")


def test_head_may_differ_when_named(tmp_path):
    spec = get_backbone("hcn")
    save_checkpoint(spec.build("tiny", 60), tmp_path / "sixty.pt")
    with pytest.raises(BackboneError, match="fc8"):
        load_checkpoint(spec.build("tiny", 8), tmp_path / "sixty.pt")
    load_checkpoint(spec.build("tiny", 8), tmp_path / "sixty.pt", head=spec.head)


def test_bad_files(tmp_path):
    with pytest.raises(BackboneError, match="does not exist"):
        read_state_dict(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(BackboneError, match="not a readable torch checkpoint"):
        read_state_dict(tmp_path / "junk.pt")
    torch.save({"lr": 0.1}, tmp_path / "cfg.pt")
    with pytest.raises(BackboneError, match="does not hold a state_dict"):
        read_state_dict(tmp_path / "cfg.pt")


def _fake_2d_resnet(model3d, num_classes: int = 1000) -> dict[str, torch.Tensor]:
    """A 2D ResNet state_dict with torchvision's names, shaped like the 3D model's kernels."""
    sd = {}
    for k, v in model3d.state_dict().items():
        if v.dim() == 5:
            sd[k] = torch.randn(v.shape[0], v.shape[1], v.shape[3], v.shape[4])
        elif k.startswith("fc."):
            sd[k] = torch.randn((num_classes,) + tuple(v.shape[1:]))
        else:
            sd[k] = torch.randn_like(v.float()).to(v.dtype) if v.is_floating_point() else v.clone()
    return sd


def test_centre_inflation(tmp_path):
    spec = get_backbone("inflated_resnet50")
    model = spec.build("tiny", 5).eval()
    sd2 = _fake_2d_resnet(model)
    torch.save(sd2, tmp_path / "resnet50.pth")
    sha = inflate_checkpoint(model, tmp_path / "resnet50.pth", head=spec.head)
    assert sha == sha256_file(tmp_path / "resnet50.pth")
    w = model.layer1[0].conv1.weight  # (O, I, 3, 1, 1): centre slot holds the 2D kernel
    assert torch.equal(w[:, :, 1], sd2["layer1.0.conv1.weight"])
    assert not w[:, :, 0].any() and not w[:, :, 2].any()
    assert torch.equal(model.bn1.running_mean, sd2["bn1.running_mean"])
    # a static clip gives each frame exactly the 2D stem's output
    frame = torch.randn(1, 3, 32, 32)
    clip = frame[:, :, None].repeat(1, 1, 4, 1, 1)
    out3 = model.conv1(clip)
    out2 = F.conv2d(frame, sd2["conv1.weight"], stride=2, padding=3)
    for t in range(4):
        torch.testing.assert_close(out3[:, :, t], out2, rtol=1e-4, atol=1e-4)
    # a 2D checkpoint of another network is refused with the key report
    torch.save(get_backbone("vgg19").build("tiny", 3).state_dict(), tmp_path / "vgg.pth")
    with pytest.raises(BackboneError, match="missing"):
        inflate_checkpoint(spec.build("tiny", 5), tmp_path / "vgg.pth")


@pytest.mark.skipif(importlib.util.find_spec("safetensors") is None, reason="safetensors extra not installed")
def test_safetensors_round_trip(tmp_path):
    spec = get_backbone("vgg19")
    a, b = spec.build("tiny", 3).eval(), spec.build("tiny", 3).eval()
    save_checkpoint(a, tmp_path / "vgg.safetensors")
    load_checkpoint(b, tmp_path / "vgg.safetensors")
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(a(x), b(x))
