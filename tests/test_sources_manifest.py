"""Manifest sources on real files: CSV and JSONL, multiclass and multilabel, every modality kind,
and the bad-input cases (unknown columns, out-of-range labels, missing cells and files)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from extract.errors import DataError
from extract.sources.manifest import ManifestSource
from extract.sources.skeleton_file import write_skeleton
from extract.sources.registry import detect_kind, open_source
from extract.sources.video import write_video


@pytest.fixture
def files(tmp_path: Path) -> Path:
    """Three samples' worth of real files in a ``data/`` folder beside the manifest."""
    from PIL import Image

    d = tmp_path / "data"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        write_video(d / f"v{i}.mp4", rng.integers(0, 255, (4, 32, 32, 3), dtype=np.uint8))
        Image.fromarray(rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)).save(d / f"i{i}.png")
        np.save(d / f"a{i}.npy", rng.normal(size=(5, 7)))
        write_skeleton(d / f"s{i}.skeleton", [rng.normal(size=(1, 25, 3)).astype(np.float32)] * 3)
        (d / f"t{i}.txt").write_text(f"caption {i}")
    return tmp_path


def test_csv_multiclass_all_kinds(files: Path) -> None:
    lines = ["id,split,label,video,image,array_audio,skeleton,text"]
    for i, split in enumerate(["train", "val", "test"]):
        lines.append(f"s{i},{split},{i},data/v{i}.mp4,data/i{i}.png,data/a{i}.npy,data/s{i}.skeleton,data/t{i}.txt")
    (files / "m.csv").write_text("\n".join(lines) + "\n")
    src = ManifestSource(files / "m.csv", frames=2, size=16)
    assert src.task == "multiclass" and src.num_classes == 3
    assert src.modalities == ("video", "image", "array_audio", "skeleton", "text")
    assert [(s.id, s.split, s.label) for s in src.samples()] == [("s0", "train", 0), ("s1", "val", 1), ("s2", "test", 2)]
    src = pickle.loads(pickle.dumps(src))
    assert src.load("s1", "video").shape == (2, 16, 16, 3)
    assert src.load("s1", "image").shape == (12, 10, 3)
    assert src.load("s1", "array_audio").dtype == np.float32
    assert src.load("s1", "skeleton").shape == (3, 32, 25, 2)
    assert src.load("s1", "text") == "caption 1"
    assert src.path_of("s2", "image") == str(files / "data" / "i2.png")
    assert src.check() == []


def test_jsonl_multilabel_with_class_names(files: Path) -> None:
    (files / "classes.txt").write_text("drama\ncomedy\nhorror\nwar\n")
    rows = [
        {"id": "a", "split": "train", "labels": ["drama", "war"], "image": "data/i0.png", "text": "data/a0.npy"},
        {"id": "b", "split": "test", "labels": [1], "image": "data/i1.png", "text": "data/a1.npy"},
    ]
    (files / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    src = open_source(files / "m.jsonl")
    assert src.task == "multilabel" and src.num_classes == 4 and src.class_names[3] == "war"
    assert src.label_array().tolist() == [[1, 0, 0, 1], [0, 1, 0, 0]]
    assert src.load("a", "text").shape == (5, 7)


def test_csv_multilabel_semicolons_and_name_labels(files: Path) -> None:
    (files / "m.csv").write_text("id,split,labels,image\nx,train,0;2,data/i0.png\ny,val,1,data/i1.png\n")
    src = ManifestSource(files / "m.csv", num_classes=5)
    assert src.label_array().tolist() == [[1, 0, 1, 0, 0], [0, 1, 0, 0, 0]]
    (files / "n.csv").write_text("id,split,label,image\nx,train,cat,data/i0.png\ny,val,dog,data/i1.png\n")
    src = ManifestSource(files / "n.csv")
    assert src.class_names == ["cat", "dog"] and src.label_array().tolist() == [0, 1]


def test_bad_manifests_name_file_line_and_fix(files: Path) -> None:
    m = files / "m.csv"
    m.write_text("id,split,label,video,audio\n")
    with pytest.raises(DataError, match=r"m\.csv: unknown column\(s\) audio; allowed"):
        ManifestSource(m)
    m.write_text("id,split,label,labels,image\nx,train,1,1,data/i0.png\n")
    with pytest.raises(DataError, match="exactly one of 'label'"):
        ManifestSource(m)
    rows = [
        "id,split,label,video,image",
        "ok,train,1,data/v0.mp4,data/i0.png",  # line 2
        "big,train,9,data/v1.mp4,data/i1.png",  # line 3: out of range
        "half,val,0,data/v2.mp4,",  # line 4: image missing
        "gone,test,0,data/nope.mp4,data/i2.png",  # line 5: file missing
        "ok,test,0,data/v1.mp4,data/i1.png",  # line 6: duplicate id
        "odd,dev,0,data/v1.mp4,data/i1.png",  # line 7: bad split
    ]
    m.write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match="5 problem") as err:
        ManifestSource(m, num_classes=3)
    text = str(err.value)
    for fragment in ["m.csv:3: label(s) 9 out of range", "m.csv:4: sample 'half' has no image but has video",
                     "m.csv:5: video file", "m.csv:6: duplicate id", "m.csv:7: split 'dev'"]:
        assert fragment in text
    lenient = ManifestSource(m, num_classes=3, strict=False)
    assert [s.id for s in lenient.samples()] == ["ok"] and len(lenient.problems()) == 5
    (files / "bad.jsonl").write_text('{"id": "a"}\n{oops\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: invalid JSON"):
        ManifestSource(files / "bad.jsonl")


def test_detect_kind(files: Path) -> None:
    (files / "manifest.csv").write_text("id,split,label,image\nx,train,0,data/i0.png\n")
    assert detect_kind(files / "manifest.csv") == "manifest"
    assert detect_kind(files) == "manifest"
    assert open_source(files).samples()[0].id == "x"
    with pytest.raises(DataError, match="cannot tell"):
        detect_kind(files / "data")


def _array_manifest(files: Path, labels: list[str], extra: dict[int, str] | None = None) -> Path:
    """A CSV of array samples with these labels; ``extra`` appends text to the given rows."""
    lines = ["id,split,label,array"]
    for i, label in enumerate(labels):
        lines.append(f"s{i},train,{label},data/a{i % 3}.npy" + (extra or {}).get(i, ""))
    path = files / "m.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_mixed_index_and_name_labels_name_the_line(files: Path) -> None:
    path = _array_manifest(files, [str(i) for i in range(12)] + ["11x"])
    with pytest.raises(DataError, match=r"m.csv:14: label '11x' is a name, but line 2 has a class index"):
        ManifestSource(path)
    with pytest.raises(DataError, match="m.csv:14: label '11x'"):
        ManifestSource(path, strict=False)  # not a bad row: it would renumber every class


def test_row_with_more_fields_than_the_header_names_the_line(files: Path) -> None:
    path = _array_manifest(files, ["0", "1", "2"], extra={1: ",surplus"})
    with pytest.raises(DataError, match=r"m.csv:3: 1 more field\(s\) than the header's 4 columns"):
        ManifestSource(path)


def test_byte_order_mark_reads_and_non_utf8_is_one_error(files: Path) -> None:
    path = _array_manifest(files, ["0", "1", "2"])
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert [s.id for s in ManifestSource(path).samples()] == ["s0", "s1", "s2"]
    path.write_bytes(path.read_bytes()[3:].replace(b"s2,", b"s\xe92,"))
    with pytest.raises(DataError, match=r"m.csv:4: not UTF-8 text \(byte 0xe9\)"):
        ManifestSource(path)


def test_blank_or_non_utf8_text_sample_is_refused_naming_the_file(files: Path) -> None:
    """An empty plot is missing data, not a sentence: refused before an encoder makes it features."""
    (files / "blank.txt").write_text(" \n\t\n")
    (files / "latin1.txt").write_bytes("caf\xe9 noir".encode("latin-1"))
    (files / "bom.txt").write_bytes("\ufeffa plot".encode("utf-8"))
    (files / "m.csv").write_text("id,split,label,text\na,train,0,blank.txt\nb,train,1,latin1.txt\n"
                                 "c,test,0,bom.txt\n")
    src = ManifestSource(files / "m.csv")
    with pytest.raises(DataError, match=r"blank.txt: text file is empty or blank"):
        src.load("a", "text")
    with pytest.raises(DataError, match=r"latin1.txt: not UTF-8 text \(byte 0xe9 at offset 3\)"):
        src.load("b", "text")
    assert src.load("c", "text") == "a plot"
