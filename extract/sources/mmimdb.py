"""MM-IMDB: ``multimodal_imdb.hdf5`` (Arevalo et al.) read lazily with h5py.

Datasets used: ``images`` (N, 3, 256, 160) posters — float Caffe/VGG style (BGR, channel mean
subtracted) or uint8 RGB —, ``features`` (N, 300) text word2vec features, ``genres`` (N, 23) multi-hot
(or (N, 27), with the 4 rare genres dropped; the 27 names must then be given), ``imdb_ids`` (N,).
Only ids and genres are read when listing; posters and features are read one row at a time.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from extract.errors import DataError
from extract.sources.base import ListedSource, Sample
from extract.sources.video import resize_crop

GENRES = [
    "Drama", "Comedy", "Romance", "Thriller", "Crime", "Action", "Adventure", "Horror", "Documentary",
    "Mystery", "Sci-Fi", "Fantasy", "Family", "Biography", "War", "History", "Music", "Animation",
    "Musical", "Western", "Sport", "Short", "Film-Noir",
]
DROPPED_GENRES = ("News", "Adult", "Talk-Show", "Reality-TV")
SPLIT_SIZES = (15552, 2608, 7799)  # train / dev / test, in file order
CAFFE_BGR_MEAN = np.array([103.939, 116.779, 123.68], np.float32)
REQUIRED = ("images", "features", "genres", "imdb_ids")


class MMIMDBSource(ListedSource):
    """MM-IMDB posters (``image``) and text features (``text``), 23 genres, multilabel.

    Splits come from ``split_json`` (``{"train": [ids], "dev": [ids], "test": [ids]}``, as
    ``split.json`` of the original release; ``val`` is accepted for ``dev``); otherwise from the
    index ranges 15,552 / 2,608 / 7,799 — scaled to the file's length if it is not 25,959 rows.
    """

    name = "mmimdb"
    task = "multilabel"
    modalities = ("image", "text")

    def __init__(
        self,
        path: str | Path,
        split_json: str | Path | None = None,
        image_size: int | tuple[int, int] | None = None,
        genre_names: list[str] | None = None,
    ) -> None:
        super().__init__()
        self.path = Path(path)
        self.location = str(self.path)
        self.image_size = image_size
        self._handle: Any = None
        self._pid: int | None = None
        if not self.path.is_file():
            raise DataError(f"{self.path}: MM-IMDB file not found; pass the path of multimodal_imdb.hdf5")
        f = self._file()
        missing = [k for k in REQUIRED if k not in f]
        if missing:
            raise DataError(f"{self.path}: missing dataset(s) {', '.join(missing)}; "
                            f"an MM-IMDB file holds {', '.join(REQUIRED)}")
        n = len(f["imdb_ids"])
        for key in REQUIRED:
            if len(f[key]) != n:
                raise DataError(f"{self.path}: '{key}' has {len(f[key])} rows but imdb_ids has {n}; the file is inconsistent")
        ids = [v.decode() if isinstance(v, bytes) else str(v) for v in f["imdb_ids"][:]]
        genres = np.asarray(f["genres"][:])
        self._keep = self._genre_columns(genres.shape[1], genre_names)
        self.class_names = [(genre_names or GENRES)[i] for i in self._keep]
        self.num_classes = len(self._keep)
        genres = genres[:, self._keep]
        splits = self._splits(ids, split_json)
        self._row = {sid: i for i, sid in enumerate(ids)}
        for i, (sid, split) in enumerate(zip(ids, splits)):
            if split is None:
                self._problems.append(f"{self.path}: imdb id {sid} (row {i}) is in no split of {split_json}; skipped")
                continue
            self._samples.append(Sample(sid, split, tuple(int(g) for g in np.flatnonzero(genres[i]))))
        self.close()  # listed; workers reopen lazily

    def _genre_columns(self, width: int, names: list[str] | None) -> list[int]:
        if names is not None and len(names) != width:
            raise DataError(f"genre_names has {len(names)} names but {self.path} has {width} genre columns")
        if width == len(GENRES) and names is None:
            return list(range(width))
        if names is None:
            raise DataError(
                f"{self.path}: 'genres' has {width} columns, not 23; pass genre_names (the {width} names in column "
                f"order) so {', '.join(DROPPED_GENRES)} can be dropped"
            )
        return [i for i, name in enumerate(names) if name not in DROPPED_GENRES]

    def _splits(self, ids: list[str], split_json: str | Path | None) -> list[str | None]:
        if split_json is None:
            return split_names(len(ids))
        path = Path(split_json)
        try:
            table = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"{path}: cannot read the split JSON ({exc}); write {{\"train\": [...], \"dev\": [...], \"test\": [...]}}") from None
        where = {}
        for key, ids_in in table.items():
            split = {"dev": "val"}.get(key, key)
            if split not in ("train", "val", "test"):
                raise DataError(f"{path}: unknown split {key!r}; use train, dev (or val) and test")
            where.update({str(i): split for i in ids_in})
        return [where.get(i) for i in ids]

    def _file(self):
        """The h5py file, opened once per process (sources are pickled to workers without it)."""
        import h5py

        if self._handle is None or self._pid != os.getpid():
            try:
                self._handle = h5py.File(self.path, "r")
            except OSError as exc:
                raise DataError(f"{self.path}: cannot open as HDF5 ({exc}); the file is corrupt or not MM-IMDB") from exc
            self._pid = os.getpid()
        return self._handle

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
        self._handle = self._pid = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_handle"] = state["_pid"] = None
        return state

    def path_of(self, sample_id: str, modality: str) -> str:
        key = {"image": "images", "text": "features"}.get(modality)
        if key is None or sample_id not in self._row:
            raise DataError(f"{self.path}: no {modality} for imdb id {sample_id!r}")
        return f"{self.path}::{key}[{self._row[sample_id]}]"

    def load(self, sample_id: str, modality: str) -> np.ndarray:
        self.path_of(sample_id, modality)  # validates id and modality
        row = self._row[sample_id]
        if modality == "text":
            return np.asarray(self._file()["features"][row], dtype=np.float32)
        image = poster_rgb(np.asarray(self._file()["images"][row]))
        return resize_crop(image[None], self.image_size)[0] if self.image_size else image


def split_names(n: int) -> list[str]:
    """The split of each of ``n`` rows in file order: 15,552 / 2,608 / 7,799, scaled to ``n``."""
    sizes = np.array(SPLIT_SIZES)
    if n != sizes.sum():
        sizes = np.round(sizes / sizes.sum() * n).astype(int)
        sizes[0] = n - sizes[1:].sum()
    return ["train"] * sizes[0] + ["val"] * sizes[1] + ["test"] * sizes[2]


def poster_rgb(image: np.ndarray) -> np.ndarray:
    """One stored poster as uint8 RGB ``(H, W, 3)``: float arrays are Caffe BGR minus the mean
    (as in the original file), uint8 arrays are RGB; channels may come first or last."""
    if image.ndim != 3 or 3 not in (image.shape[0], image.shape[-1]):
        raise DataError(f"poster has shape {image.shape}; expected (3, H, W) or (H, W, 3)")
    chw = image.shape[0] == 3 and image.shape[-1] != 3
    hwc = np.moveaxis(image, 0, -1) if chw else image
    if image.dtype == np.uint8:
        return np.ascontiguousarray(hwc)
    rgb = (hwc.astype(np.float32) + CAFFE_BGR_MEAN)[..., ::-1]
    return np.clip(rgb.round(), 0, 255).astype(np.uint8)
