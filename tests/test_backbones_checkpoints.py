"""Checkpoints: strict key check with a useful error, round trips, sha256, centre inflation."""

from __future__ import annotations

import importlib.util

import pytest
import torch

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
    with pytest.raises(BackboneError, match=r"13 mis-shaped \[hid2val.weight \(3, 128\) != \(3, 32\), op1.lin.bias \(320,\) != \(80,\)"):
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


def _fake_2d_resnet(model3d, num_classes: int = 1000, counters: bool = True) -> dict[str, torch.Tensor]:
    """A 2D ResNet state_dict with torchvision's names (no `cnn.`, head `fc`), shaped like the 3D trunk."""
    sd = {}
    for k, v in model3d.cnn.state_dict().items():
        if k.endswith("num_batches_tracked") and not counters:
            continue
        if v.dim() == 5:
            sd[k] = torch.randn(v.shape[0], v.shape[1], v.shape[3], v.shape[4]) / (v[0].numel() ** 0.5)
        elif k.endswith("running_var"):
            sd[k] = torch.rand_like(v) + 0.5
        else:
            sd[k] = torch.randn_like(v.float()).to(v.dtype) if v.is_floating_point() else v.clone()
    sd["fc.weight"], sd["fc.bias"] = torch.randn(num_classes, 256), torch.randn(num_classes)
    return sd


def test_centre_inflation(tmp_path):
    spec = get_backbone("inflated_resnet50")
    model = spec.build("tiny", 5).eval()
    head = model.classifier.weight.clone()
    sd2 = _fake_2d_resnet(model)
    torch.save(sd2, tmp_path / "resnet50.pth")
    sha = inflate_checkpoint(model, tmp_path / "resnet50.pth", head=spec.head)
    assert sha == sha256_file(tmp_path / "resnet50.pth")
    cnn = model.cnn
    assert torch.equal(cnn.conv1.weight, sd2["conv1.weight"])  # the 2D stem copies as it is
    assert torch.equal(cnn.bn1.running_mean, sd2["bn1.running_mean"])
    w = cnn.layer1[0].conv2.weight  # (O, I, 3, 3, 3): centre slot holds the 2D kernel, zeros elsewhere
    assert torch.equal(w[:, :, 1], sd2["layer1.0.conv2.weight"])
    assert not w[:, :, 0].any() and not w[:, :, 2].any()
    assert torch.equal(cnn.layer2[0].downsample[0].weight[:, :, 0], sd2["layer2.0.downsample.0.weight"])
    assert torch.equal(model.classifier.weight, head)  # ImageNet's fc is dropped, the head stays
    # a static clip gives each frame the 2D network's activations: a one-frame clip, where the 3x3x3
    # kernels see only their centre slot, is the 2D network
    frame = torch.randn(1, 3, 1, 32, 32)
    with torch.no_grad():
        out2 = cnn(frame)
        out3 = cnn(frame.repeat(1, 1, 4, 1, 1))
    for t in range(4):
        torch.testing.assert_close(out3[:, :, t], out2[:, :, 0], rtol=1e-4, atol=1e-4)
    # a 2D checkpoint of another network is refused with the key report
    torch.save(get_backbone("vgg19").build("tiny", 3).state_dict(), tmp_path / "vgg.pth")
    with pytest.raises(BackboneError, match="missing"):
        inflate_checkpoint(spec.build("tiny", 5), tmp_path / "vgg.pth")


def test_inflation_from_a_file_without_batchnorm_counters(tmp_path):
    """torchvision's ImageNet resnet50 file predates PyTorch 0.4.1: no num_batches_tracked."""
    spec = get_backbone("inflated_resnet50")
    sd2 = _fake_2d_resnet(spec.build("tiny", 5), counters=False)
    assert not any(k.endswith("num_batches_tracked") for k in sd2)
    torch.save(sd2, tmp_path / "old.pth")
    model = spec.build("tiny", 5)
    inflate_checkpoint(model, tmp_path / "old.pth", head=spec.head)
    assert torch.equal(model.cnn.bn1.running_var, sd2["bn1.running_var"])


@pytest.mark.skipif(importlib.util.find_spec("safetensors") is None, reason="safetensors extra not installed")
def test_safetensors_round_trip(tmp_path):
    spec = get_backbone("vgg19")
    a, b = spec.build("tiny", 3).eval(), spec.build("tiny", 3).eval()
    save_checkpoint(a, tmp_path / "vgg.safetensors")
    load_checkpoint(b, tmp_path / "vgg.safetensors")
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(a(x), b(x))
