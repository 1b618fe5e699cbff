"""Synthetic ``mmimdb-like``: the real MM-IMDB reader reads its HDF5 and the manifest reader its raw
posters and plots, and its genres are a function of image bits (visible in the poster) and text bits
(visible in the features, and in words in the plots) that needs both."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from extract.sources.registry import open_source
from extract.synth.mmimdb_like import N_BITS, PANEL_COLOURS, genres_of, generate_mmimdb_like
from extract.synth.plots import NAMES, NEUTRAL, THEMES


def test_mmimdb_like_genres_need_both_modalities(tmp_path: Path) -> None:
    meta = generate_mmimdb_like(tmp_path, samples=240, seed=0)
    assert json.loads((tmp_path / "bmnas_synth.json").read_text())["ceilings"] == meta["ceilings"]
    ceilings = meta["ceilings"]
    assert ceilings["both"] == 1.0 and max(ceilings["image_only"], ceilings["text_only"]) < 0.8
    src = open_source(tmp_path / "multimodal_imdb.hdf5")
    assert src.name == "mmimdb" and src.num_classes == 23
    samples = src.samples()
    y = src.label_array(samples)
    # image bits from the panels of the decoded poster
    image_bits = _panel_bits([src.load(s.id, "image") for s in samples])
    # text bits by least squares from features, fitted on half the movies, read on the other half
    x = np.stack([src.load(s.id, "text") for s in samples])
    half = len(samples) // 2
    w_text, *_ = np.linalg.lstsq(np.c_[x[:half], np.ones(half)], y[:half, N_BITS : 2 * N_BITS], rcond=None)
    text_bits = (np.c_[x[half:], np.ones(len(x) - half)] @ w_text > 0.5).astype(np.uint8)
    assert (image_bits == y[:, :N_BITS]).mean() > 0.97
    assert (text_bits == y[half:, N_BITS : 2 * N_BITS]).mean() > 0.95
    rebuilt = genres_of(image_bits[half:], text_bits)
    assert (rebuilt == y[half:]).all(1).mean() > 0.8  # whole label vectors from both modalities


def _panel_bits(posters: list[np.ndarray]) -> np.ndarray:
    """The image bits read off decoded posters: which of the six panels shows its colour."""
    bits = []
    for img in posters:
        img = img.astype(np.float32)
        h, w = img.shape[0] // 3, img.shape[1] // 2
        panels = [img[r * h + 4 : (r + 1) * h - 4, c * w + 4 : (c + 1) * w - 4].mean((0, 1)) for r in range(3) for c in range(2)]
        bits.append([np.abs(p - PANEL_COLOURS[k]).max() < 45 for k, p in enumerate(panels)])
    return np.array(bits, np.uint8)


def test_mmimdb_like_raw_posters_and_plots_carry_the_factors(tmp_path: Path) -> None:
    generate_mmimdb_like(tmp_path, samples=240, seed=3)
    raw = open_source(tmp_path)  # the folder opens as its manifest: the raw files a user has
    paper = open_source(tmp_path / "multimodal_imdb.hdf5")
    assert raw.name == "manifest" and raw.task == "multilabel" and raw.modalities == ("image", "text")
    assert raw.class_names == paper.class_names and raw.problems() == []
    assert raw.metadata["ceilings"] == paper_ceilings(tmp_path)
    samples = raw.samples()
    assert [(s.id, s.split, s.label) for s in samples] == [(s.id, s.split, s.label) for s in paper.samples()]
    y = raw.label_array(samples)
    assert (tmp_path / "posters" / f"{samples[0].id}.jpg").read_bytes()[:3] == b"\xff\xd8\xff"  # real JPEG
    assert (_panel_bits([raw.load(s.id, "image") for s in samples]) == y[:, :N_BITS]).mean() > 0.97
    for s, row in zip(samples, y):
        text = raw.load(s.id, "text")
        assert isinstance(text, str) and text.endswith("\n")
        said = [any(v.format(name=n) in text for v in variants for n in NAMES) for variants in THEMES]
        assert said == [bool(b) for b in row[N_BITS : 2 * N_BITS]], text  # a sentence per set text bit
        assert any(v.format(name=n) in text for v in NEUTRAL for n in NAMES)
    none = [s for s, row in zip(samples, y) if not row.any()]  # movies of no genre stay, as []
    assert all(s.label == () for s in none)


def paper_ceilings(root: Path) -> dict:
    return json.loads((root / "bmnas_synth.json").read_text())["ceilings"]
