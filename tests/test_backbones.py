"""Backbone registry: declared taps match what the hooks see, and reduction follows docs/design.md."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from extract.backbones import get_backbone, list_backbones, prepare_batch
from extract.backbones.taps import TapReader
from extract.errors import BackboneError
from extract.reduction import ReductionConfig, reduce_tap

RAW = {
    "video": lambda rng: rng.integers(0, 255, (10, 36, 40, 3), dtype=np.uint8),
    "depth": lambda rng: rng.integers(0, 255, (10, 36, 40, 1), dtype=np.uint8),
    "skeleton": lambda rng: rng.normal(size=(3, 40, 25, 1)).astype(np.float32),
    "image": lambda rng: rng.integers(0, 255, (40, 36, 3), dtype=np.uint8),
    "text": lambda rng: rng.normal(size=(300,)).astype(np.float32),
}
CORE = ["hcn", "inflated_resnet50", "maxout_mlp", "resnext101_3d", "vgg19"]


def _every(spec) -> list[str]:
    return [n for n, _, _ in spec.taps]


def _run(name: str, modality: str, setting: str, cfg=ReductionConfig(), batch: int = 2, names=None):
    spec = get_backbone(name)
    rng = np.random.default_rng(0)
    x = prepare_batch([RAW[modality](rng) for _ in range(batch)], modality, spec.setting(setting).input)
    model = spec.build(setting, num_classes=5, modality=modality).eval()
    reader = TapReader(model, spec.tap_specs(setting, names), cfg)
    with torch.inference_mode():
        return spec, reader.run(x)


def test_registry_lists_the_paper_backbones():
    assert set(CORE) <= set(list_backbones())
    for name in CORE:
        spec = get_backbone(name)
        assert set(spec.settings) >= {"full", "tiny"}
        assert spec.head and len(spec.taps) >= 3
        assert set(spec.default_taps) <= set(_every(spec))
        spec.build("tiny", 3).get_submodule(spec.head)  # the head exists


@pytest.mark.parametrize("name", CORE)
def test_tiny_taps_match_declaration_and_reduction_rules(name):
    spec = get_backbone(name)
    for modality in spec.modalities:
        spec, out = _run(name, modality, "tiny", ReductionConfig(t_max=4, grid=3), names=_every(spec))
        taps = spec.tap_specs("tiny", _every(spec))
        assert list(out) == _every(spec)  # shallow to deep, all taps
        for tap in taps:
            b, c, t = out[tap.name].shape
            assert (b, c) == (2, tap.channels)
            assert torch.isfinite(out[tap.name]).all()
            if tap.kind == "image":
                assert t == 9  # grid 3 -> 3x3
            elif tap.kind == "text":
                assert t == 1  # (D,) -> (D, 1)
            else:
                assert 1 <= t <= 4  # time capped at t_max


def test_default_taps_are_bm_nas_input_nodes():
    want = {"inflated_resnet50": ["layer2", "layer3", "layer4", "pool"],
            "resnext101_3d": ["layer2", "layer3", "layer4", "pool"],
            "hcn": ["conv5", "conv6", "out7", "fc7"],
            "vgg19": ["conv4_1", "conv4_4", "conv5_3", "pool5"],
            "maxout_mlp": ["op1", "op3"]}
    for name, taps in want.items():
        assert [t.name for t in get_backbone(name).tap_specs("full")] == taps
    full = {name: [t.channels for t in get_backbone(name).tap_specs("full")] for name in want}
    assert full == {"inflated_resnet50": [512, 1024, 2048, 2048], "resnext101_3d": [512, 1024, 2048, 2048],
                    "hcn": [128, 256, 1024, 512], "vgg19": [512] * 4, "maxout_mlp": [64, 128]}
    vgg = {t.name: t.module for t in get_backbone("vgg19").tap_specs("full")}
    assert vgg == {"conv4_1": "features.20", "conv4_4": "features.26", "conv5_3": "features.33",
                   "pool5": "features.36"}
    tiny = {t.name: t.module for t in get_backbone("vgg19").tap_specs("tiny")}
    # tiny's blocks have one conv each: conv4_1 and conv4_4 are that conv's ReLU
    assert tiny == {"conv4_1": "features.10", "conv4_4": "features.10", "conv5_3": "features.13",
                    "pool5": "features.14"}


def test_full_settings_declare_true_channels():
    """The paper-size declarations of every tap, checked on small inputs where the nets allow."""
    small = {"inflated_resnet50": (4, 32), "resnext101_3d": (8, 32), "vgg19": (None, 32)}
    for name in ["hcn", "inflated_resnet50", "maxout_mlp", "vgg19"]:
        spec = get_backbone(name)
        st = spec.setting("full")
        modality = spec.modalities[0]
        frames, size = small.get(name, (st.input.frames, st.input.size))
        inp = type(st.input)(frames=frames, size=size, channels=st.input.channels, dim=st.input.dim,
                             joints=st.input.joints, bodies=st.input.bodies)
        rng = np.random.default_rng(1)
        x = prepare_batch([RAW[modality](rng) for _ in range(2)], modality, inp)
        model = spec.build("full", 4, modality).eval()
        taps = spec.tap_specs("full", _every(spec))
        with torch.inference_mode():
            out = TapReader(model, taps).run(x)
        assert [o.shape[1] for o in out.values()] == [t.channels for t in taps]


def test_hcn_bodies_are_folded_by_max():
    spec, out = _run("hcn", "skeleton", "tiny", names=["joint", "out7"])
    assert out["joint"].shape[0] == 2 and out["out7"].shape == (2, 64, 1)  # N, not N * bodies


def test_tap_subset_and_errors():
    spec = get_backbone("inflated_resnet50")
    assert [t.name for t in spec.tap_specs("tiny", ["layer4", "layer2"])] == ["layer2", "layer4"]
    with pytest.raises(BackboneError, match="no tap 'layer9'.*layer1, layer2"):
        spec.tap_specs("tiny", ["layer9"])
    with pytest.raises(BackboneError, match="unknown backbone 'resnet9000'.*hcn"):
        get_backbone("resnet9000")
    with pytest.raises(BackboneError, match="no setting 'huge'"):
        spec.build("huge")
    with pytest.raises(BackboneError, match="reads video, not 'skeleton'"):
        spec.build("tiny", modality="skeleton")


def test_depth_uses_one_input_channel():
    model = get_backbone("resnext101_3d").build("tiny", 3, modality="depth")
    assert model.conv1.in_channels == 1


def test_reduction_rules_exact():
    cfg = ReductionConfig(t_max=4, grid=2)
    v = torch.arange(2 * 3 * 8 * 4 * 5, dtype=torch.float32).reshape(2, 3, 8, 4, 5)
    r = reduce_tap(v, "video", cfg)
    assert r.shape == (2, 3, 4)
    assert torch.equal(r, v.amax(dim=(3, 4)).reshape(2, 3, 4, 2).amax(-1))  # max over H,W then T pairs
    assert reduce_tap(v[:, :, :3], "video", cfg).shape == (2, 3, 3)  # native T kept when short
    img = torch.randn(2, 3, 6, 6)
    r = reduce_tap(img, "image", cfg)
    assert r.shape == (2, 3, 4)
    assert torch.equal(r[:, :, 0], img[:, :, :3, :3].amax(dim=(2, 3)))
    sk = torch.randn(2, 5, 16, 25)
    assert torch.equal(reduce_tap(sk, "skeleton", ReductionConfig(t_max=32)), sk.amax(-1))
    assert reduce_tap(torch.randn(2, 7), "skeleton", cfg).shape == (2, 7, 1)
    tok = torch.randn(2, 10, 6)
    assert torch.equal(reduce_tap(tok, "text", cfg), tok.transpose(1, 2))
    assert reduce_tap(torch.randn(2, 6), "text", cfg).shape == (2, 6, 1)
    with pytest.raises(BackboneError, match="video tap must be"):
        reduce_tap(torch.randn(2, 3, 4), "video", cfg)
    with pytest.raises(BackboneError, match="unknown tap kind"):
        reduce_tap(img, "audio", cfg)
