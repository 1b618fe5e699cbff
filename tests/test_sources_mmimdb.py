"""MM-IMDB: small HDF5 files in the exact layout of multimodal_imdb.hdf5 (Caffe-BGR float posters,
300-d features, 23 or 27 genre columns, byte-string imdb ids), lazy per-process h5py."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest

from extract.errors import DataError
from extract.sources.mmimdb import CAFFE_BGR_MEAN, DROPPED_GENRES, GENRES, MMIMDBSource


def _write(path: Path, n: int = 6, genre_cols: int = 23, drop: tuple[str, ...] = ()) -> np.ndarray:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (n, 16, 10, 3)).astype(np.float32)
    with h5py.File(path, "w") as f:
        f["images"] = np.moveaxis(rgb[..., ::-1] - CAFFE_BGR_MEAN, -1, 1)  # (N, 3, H, W) BGR - mean
        f["features"] = rng.normal(size=(n, 300)).astype(np.float32)
        genres = np.zeros((n, genre_cols), np.uint8)
        genres[np.arange(n), np.arange(n) % genre_cols] = 1
        f["genres"] = genres
        f["imdb_ids"] = np.array([f"tt{i:07d}".encode() for i in range(n)])
        for k in drop:
            del f[k]
    return rgb


def test_reads_layout_lazily_and_pickles(tmp_path: Path) -> None:
    rgb = _write(tmp_path / "multimodal_imdb.hdf5")
    src = MMIMDBSource(tmp_path / "multimodal_imdb.hdf5")
    assert src._handle is None  # nothing held open after listing
    assert src.task == "multilabel" and src.num_classes == 23 and src.class_names == GENRES
    samples = src.samples()
    assert [s.id for s in samples][:2] == ["tt0000000", "tt0000001"] and samples[3].label == (3,)
    assert [s.split for s in samples] == ["train"] * 3 + ["val"] * 1 + ["test"] * 2  # 15552/2608/7799 scaled
    image = src.load("tt0000002", "image")
    assert image.shape == (16, 10, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, rgb[2].astype(np.uint8))
    assert src.load("tt0000002", "text").shape == (300,)
    clone = pickle.loads(pickle.dumps(src))
    assert clone._handle is None and clone.load("tt0000004", "text").dtype == np.float32
    assert src.label_array().shape == (6, 23)
    assert "images[2]" in src.path_of("tt0000002", "image")


def test_split_json_with_dev_and_unlisted_ids(tmp_path: Path) -> None:
    _write(tmp_path / "m.hdf5")
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["tt0000000", "tt0000001"], "dev": ["tt0000002"], "test": ["tt0000003"]}))
    src = MMIMDBSource(tmp_path / "m.hdf5", split_json=split, image_size=8)
    assert [(s.id, s.split) for s in src.samples()] == [
        ("tt0000000", "train"), ("tt0000001", "train"), ("tt0000002", "val"), ("tt0000003", "test")]
    assert len(src.problems()) == 2 and "tt0000004" in src.problems()[0]
    assert src.load("tt0000000", "image").shape == (8, 8, 3)


def test_27_genre_columns_drop_the_four_rare_ones(tmp_path: Path) -> None:
    _write(tmp_path / "m.hdf5", n=27, genre_cols=27)
    names = GENRES[:10] + list(DROPPED_GENRES) + GENRES[10:]
    with pytest.raises(DataError, match="genre_names"):
        MMIMDBSource(tmp_path / "m.hdf5")
    src = MMIMDBSource(tmp_path / "m.hdf5", genre_names=names)
    assert src.num_classes == 23 and src.class_names == GENRES
    assert src.samples()[10].label == ()  # a "News" movie keeps no genre
    assert src.samples()[14].label == (10,)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        MMIMDBSource(tmp_path / "nope.hdf5")
    (tmp_path / "junk.hdf5").write_bytes(b"not hdf5")
    with pytest.raises(DataError, match="cannot open as HDF5"):
        MMIMDBSource(tmp_path / "junk.hdf5")
    _write(tmp_path / "m.hdf5", drop=("features",))
    with pytest.raises(DataError, match="missing dataset.*features"):
        MMIMDBSource(tmp_path / "m.hdf5")
    _write(tmp_path / "ok.hdf5")
    with pytest.raises(DataError, match="no audio"):
        MMIMDBSource(tmp_path / "ok.hdf5").load("tt0000000", "audio")
