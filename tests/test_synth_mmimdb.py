"""Synthetic ``mmimdb-like``: the real MM-IMDB reader reads it, and its genres are a function of
image bits (visible in the poster) and text bits (visible in the features) that needs both."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from extract.sources.registry import open_source
from extract.synth.mmimdb_like import N_BITS, PANEL_COLOURS, genres_of, generate_mmimdb_like


def test_mmimdb_like_genres_need_both_modalities(tmp_path: Path) -> None:
    meta = generate_mmimdb_like(tmp_path, samples=240, seed=0)
    assert json.loads((tmp_path / "bmnas_synth.json").read_text())["ceilings"] == meta["ceilings"]
    ceilings = meta["ceilings"]
    assert ceilings["both"] == 1.0 and max(ceilings["image_only"], ceilings["text_only"]) < 0.8
    src = open_source(tmp_path)
    assert src.name == "mmimdb" and src.num_classes == 23
    samples = src.samples()
    y = src.label_array(samples)
    # image bits from the panels of the decoded poster
    image_bits = []
    for s in samples:
        img = src.load(s.id, "image").astype(np.float32)
        h, w = img.shape[0] // 3, img.shape[1] // 2
        panels = [img[r * h + 4 : (r + 1) * h - 4, c * w + 4 : (c + 1) * w - 4].mean((0, 1)) for r in range(3) for c in range(2)]
        image_bits.append([np.abs(p - PANEL_COLOURS[k]).max() < 45 for k, p in enumerate(panels)])
    image_bits = np.array(image_bits, np.uint8)
    # text bits by least squares from features, fitted on half the movies, read on the other half
    x = np.stack([src.load(s.id, "text") for s in samples])
    half = len(samples) // 2
    w_text, *_ = np.linalg.lstsq(np.c_[x[:half], np.ones(half)], y[:half, N_BITS : 2 * N_BITS], rcond=None)
    text_bits = (np.c_[x[half:], np.ones(len(x) - half)] @ w_text > 0.5).astype(np.uint8)
    assert (image_bits == y[:, :N_BITS]).mean() > 0.97
    assert (text_bits == y[half:, N_BITS : 2 * N_BITS]).mean() > 0.95
    rebuilt = genres_of(image_bits[half:], text_bits)
    assert (rebuilt == y[half:]).all(1).mean() > 0.8  # whole label vectors from both modalities
