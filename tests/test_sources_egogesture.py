"""EgoGesture: a tiny tree in the documented layout (JPEG frame folders per subject/scene/group,
GroupG.csv annotations), cross-subject split, and the bad-input cases."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from extract.errors import DataError
from extract.sources.egogesture import EgoGestureSource
from extract.sources.registry import detect_kind


def _frames(folder: Path, count: int, depth: bool = False) -> None:
    folder.mkdir(parents=True)
    for i in range(1, count + 1):
        value = 10 * i
        arr = np.full((24, 32) if depth else (24, 32, 3), value, np.uint8)
        Image.fromarray(arr).save(folder / f"{i:06d}.jpg", quality=95)


def _tree(root: Path) -> Path:
    """Subjects 3 and 4 (train), 1 (val), 2 (test); subject 2 has one bad row and one out-of-range
    row; subject 4's group has no depth frames; subject 51 is in no split."""
    for subject, rows in [(3, ["5,1,8", "12,9,20"]), (1, ["1,2,6"]), (2, ["83,1,4", "x,1,2", "7,15,30"]),
                          (4, ["2,1,3"]), (51, ["3,1,2"])]:
        base = root / "images" / f"Subject{subject:02d}" / "Scene1"
        _frames(base / "Color" / "rgb1", 20)
        if subject != 4:
            _frames(base / "Depth" / "depth1", 20, depth=True)
        labels = root / "labels" / f"Subject{subject:02d}" / "Scene1"
        labels.mkdir(parents=True)
        (labels / "Group1.csv").write_text("\n".join(rows) + "\n")
    return root


def test_layout_splits_and_loading(tmp_path: Path) -> None:
    root = _tree(tmp_path / "ego")
    assert detect_kind(root) == "egogesture"
    src = EgoGestureSource(root, frames=4, size=16)
    got = [(s.id, s.split, s.label) for s in src.samples()]
    assert got == [
        ("Subject01/Scene1/Group1/1", "val", 0),
        ("Subject02/Scene1/Group1/1", "test", 82),
        ("Subject03/Scene1/Group1/1", "train", 4),
        ("Subject03/Scene1/Group1/2", "train", 11),
    ]
    problems = "\n".join(src.problems())
    assert "Group1.csv:2: expected 'label,start,end'" in problems
    assert "Group1.csv:3: frames 15..30 outside the 20 frames" in problems
    assert "Subject04" in problems and "no depth frames" in problems
    src = pickle.loads(pickle.dumps(src))
    video = src.load("Subject03/Scene1/Group1/2", "video")
    depth = src.load("Subject03/Scene1/Group1/2", "depth")
    assert video.shape == (4, 16, 16, 3) and depth.shape == (4, 16, 16, 1)
    # frames 9..20 sampled at 4 segment centres: 10, 13, 16, 19 -> grey levels 100, 130, 160, 190
    assert np.allclose(depth[:, 8, 8, 0], [100, 130, 160, 190], atol=4)
    assert src.path_of("Subject03/Scene1/Group1/2", "depth").endswith("Depth/depth1")


def test_rgb_only_keeps_groups_without_depth_and_missing_layout(tmp_path: Path) -> None:
    root = _tree(tmp_path / "ego")
    src = EgoGestureSource(root, modalities=("video",))
    assert ("Subject04/Scene1/Group1/1", "train", 1) in [(s.id, s.split, s.label) for s in src.samples()]
    assert any("subject 51 is in no cross-subject split" in p for p in src.problems())
    with pytest.raises(DataError, match="images or images_320-240"):
        EgoGestureSource(tmp_path)
    with pytest.raises(DataError, match="modalities"):
        EgoGestureSource(root, modalities=("audio",))
