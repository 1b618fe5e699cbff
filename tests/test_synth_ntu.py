"""Synthetic ``ntu-like`` data: real NTU-format files, deterministic, with metadata, and labels
that need both modalities (checked with hand-computed features and simple classifiers)."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from extract.errors import DataError
from extract.sources.ntu import NTUSource
from extract.synth.ntu_like import factor_sizes, generate_ntu_like
from synth_probe import probe


def test_files_names_metadata_and_splits(tmp_path: Path) -> None:
    meta = generate_ntu_like(tmp_path / "a", samples=40, classes=8, seed=1)
    videos = sorted((tmp_path / "a" / "nturgb+d_rgb").iterdir())
    skeletons = sorted((tmp_path / "a" / "nturgb+d_skeletons").iterdir())
    assert len(videos) == len(skeletons) == 40
    assert all(re.fullmatch(r"S\d{3}C00[1-3]P0[0-4]\dR00[12]A00[1-8]_rgb\.avi", p.name) for p in videos)
    on_disk = json.loads((tmp_path / "a" / "bmnas_synth.json").read_text())
    assert on_disk["ceilings"] == {"chance": 0.125, "video_only": 0.25, "skeleton_only": 0.25,
                                   "both_without_phase": 0.5, "both": 1.0}
    assert meta["num_classes"] == 8 and len(on_disk["class_names"]) == 8
    src = NTUSource(tmp_path / "a", frames=8, size=32)
    assert src.num_classes == 8 and src.class_names == on_disk["class_names"] and not src.problems()
    assert {s.split for s in src.samples()} == {"train", "val", "test"}
    with open(tmp_path / "a" / "factors.csv") as fh:
        rows = {r["id"]: r for r in csv.DictReader(fh)}
    for s in src.samples():  # label = (visual * n_motion + motion) * 2 + phase
        r = rows[s.id]
        assert s.label == (int(r["visual"]) * 2 + int(r["motion"])) * 2 + int(r["phase"])
    assert src.load(src.samples()[0].id, "video").shape == (8, 32, 32, 3)
    assert src.load(src.samples()[0].id, "skeleton").shape == (3, 32, 25, 2)


def test_same_seed_same_data(tmp_path: Path) -> None:
    generate_ntu_like(tmp_path / "a", samples=6, classes=4, seed=3)
    generate_ntu_like(tmp_path / "b", samples=6, classes=4, seed=3)
    assert (tmp_path / "a" / "factors.csv").read_text() == (tmp_path / "b" / "factors.csv").read_text()
    names = sorted(p.name for p in (tmp_path / "a" / "nturgb+d_skeletons").iterdir())
    for name in names:
        assert (tmp_path / "a/nturgb+d_skeletons" / name).read_text() == (tmp_path / "b/nturgb+d_skeletons" / name).read_text()


def test_factor_sizes() -> None:
    assert factor_sizes(8) == (2, 2)
    assert factor_sizes(60) == (5, 6)
    assert factor_sizes(2) == (1, 1)
    for bad in (7, 0, 1000):
        with pytest.raises(DataError, match="classes"):
            factor_sizes(bad)


def test_labels_need_both_modalities(tmp_path: Path) -> None:
    """Per-modality classifiers stay near their ceiling (1/4), late fusion of time-pooled
    features near 1/2, and only features that relate the two modalities' motion reach ~1."""
    generate_ntu_like(tmp_path / "d", samples=160, classes=8, seed=0)
    acc = probe(str(tmp_path / "d"))
    assert acc["video_only"] < 0.25 + 0.12
    assert acc["skeleton_only"] < 0.25 + 0.12
    assert acc["both_late"] < 0.5 + 0.12
    assert acc["both"] > 0.85
