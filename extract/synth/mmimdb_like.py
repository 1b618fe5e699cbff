"""``mmimdb-like``: movies whose 23 genres need both modalities, in two forms.

Each movie has 6 image bits (coloured panels in a 3x2 grid of the poster) and 6 text bits. Genres
0-5 copy the image bits, 6-11 the text bits, 12-22 are XOR/AND of an image bit and a text bit. The
metadata states the weighted-F1 ceilings of oracles that see only one modality's bits.

Written twice, for the two ways data reaches a user:
- the raw files a real user has: ``posters/<id>.jpg`` and ``plots/<id>.txt`` (UTF-8; each set text
  bit is a sentence about its theme, in words a sentence encoder reads, among neutral sentences),
  listed in ``manifest.jsonl`` with ``classes.txt`` (the folder opens as a manifest source);
- ``multimodal_imdb.hdf5`` in the paper's layout: the same posters, and the text bits as directions
  in a 300-d feature vector (under noise and distractor directions) standing in for word2vec.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from extract.sources.mmimdb import CAFFE_BGR_MEAN, GENRES, split_names
from extract.sources.ntu import SYNTH_META
from extract.synth.plots import write_plot

N_BITS = 6
BIT_P = 0.35
TEXT_DIM = 300
PANEL_COLOURS = np.array([[220, 40, 40], [40, 190, 60], [50, 80, 230], [230, 210, 40], [210, 50, 210], [40, 200, 210]], np.float32)
# genres 12..22: (op, image bit, text bit)
CROSS = [("xor", 0, 1), ("and", 1, 2), ("xor", 2, 3), ("and", 3, 4), ("xor", 4, 5), ("and", 5, 0),
         ("xor", 1, 4), ("and", 2, 5), ("xor", 3, 0), ("and", 4, 1), ("xor", 5, 2)]


def genres_of(image_bits: np.ndarray, text_bits: np.ndarray) -> np.ndarray:
    """The (N, 23) uint8 multi-hot genres generated from (N, 6) image and text bits."""
    cross = [(image_bits[:, i] ^ text_bits[:, t]) if op == "xor" else (image_bits[:, i] & text_bits[:, t])
             for op, i, t in CROSS]
    return np.column_stack([image_bits, text_bits] + cross).astype(np.uint8)


def generate_mmimdb_like(
    out: str | Path, samples: int = 1000, seed: int = 0, height: int = 64, width: int = 40
) -> dict[str, Any]:
    """Write the raw posters and plots with ``out/manifest.jsonl``, ``out/multimodal_imdb.hdf5`` (images
    float32 Caffe BGR mean-subtracted, as the original) and ``out/bmnas_synth.json``; return the metadata."""
    import h5py

    from extract.errors import DataError

    if samples < 1:
        raise DataError(f"--samples {samples}: need at least 1 sample")
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    image_bits = (rng.random((samples, N_BITS)) < BIT_P).astype(np.uint8)
    text_bits = (rng.random((samples, N_BITS)) < BIT_P).astype(np.uint8)
    genres = genres_of(image_bits, text_bits)
    features = _text_features(rng, text_bits)
    ids = [f"{i:07d}" for i in range(samples)]
    for folder in ("posters", "plots"):
        (out / folder).mkdir(exist_ok=True)
    text_rng = np.random.default_rng([seed, 1])  # own stream: the HDF5 does not depend on the plots
    with h5py.File(out / "multimodal_imdb.hdf5", "w") as f:
        images = f.create_dataset("images", (samples, 3, height, width), np.float32,
                                  chunks=(1, 3, height, width), compression="gzip", compression_opts=1)
        for i in range(samples):
            rgb = render_poster(rng, image_bits[i], height, width)
            images[i] = np.moveaxis(rgb[..., ::-1] - CAFFE_BGR_MEAN, -1, 0)
            write_poster(out / "posters" / f"{ids[i]}.jpg", rgb)
            write_plot(out / "plots" / f"{ids[i]}.txt", text_rng, text_bits[i])
        f["features"] = features.astype(np.float32)
        f["genres"] = genres
        f["imdb_ids"] = np.array([i.encode() for i in ids])
    write_manifest(out, ids, genres)
    meta = _metadata(samples, seed, (3, height, width), image_bits, text_bits, genres)
    meta["generation_seconds"] = round(time.perf_counter() - t0, 2)
    (out / SYNTH_META).write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def _text_features(rng: np.random.Generator, text_bits: np.ndarray) -> np.ndarray:
    """The HDF5's text features: each set theme a unit direction (plus 4 random distractors), scaled
    and with noise."""
    samples = len(text_bits)
    directions = rng.normal(0, 1, (N_BITS + 4, TEXT_DIM)).astype(np.float32)
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    distract = (rng.random((samples, 4)) < 0.5).astype(np.float32)
    features = (np.hstack([text_bits.astype(np.float32), distract]) * rng.uniform(0.6, 1.0, (samples, N_BITS + 4))) @ directions
    features += rng.normal(0, 0.25 / np.sqrt(TEXT_DIM) * 4, features.shape)
    return features


def _metadata(samples: int, seed: int, image_shape: tuple[int, int, int], image_bits: np.ndarray,
              text_bits: np.ndarray, genres: np.ndarray) -> dict[str, Any]:
    """bmnas_synth.json: the format, the factors and the one-modality ceilings."""
    return {
        "kind": "mmimdb-like",
        "format": "raw posters/<id>.jpg + plots/<id>.txt listed in manifest.jsonl; and MM-IMDB "
                  "multimodal_imdb.hdf5 (images float32 Caffe BGR - mean, features, genres, imdb_ids)",
        "samples": samples,
        "num_classes": len(GENRES),
        "class_names": GENRES,
        "seed": seed,
        "image": {"shape": list(image_shape)},
        "text": {"dim": TEXT_DIM},
        "factors": {
            "image_bits": f"{N_BITS} coloured panels (3x2 grid), each present with p={BIT_P}",
            "text_bits": f"{N_BITS} plot themes, each a sentence in plots/<id>.txt when set (among neutral "
                         f"sentences); in the HDF5, unit directions in the text features (+4 distractors, noise)",
            "genres": "0-5 = image bits, 6-11 = text bits, 12-22 = XOR/AND of an image bit and a text bit",
            "cross": [list(c) for c in CROSS],
        },
        "ceilings": weighted_f1_ceilings(image_bits, text_bits, genres),
    }


def write_poster(path: Path, rgb: np.ndarray) -> None:
    """The poster as a JPEG file, as a scraped poster would be (quality 90)."""
    from PIL import Image

    Image.fromarray(rgb.round().astype(np.uint8)).save(path, quality=90)


def write_manifest(out: Path, ids: list[str], genres: np.ndarray) -> None:
    """``manifest.jsonl`` (genre names; ``[]`` for a movie of no genre) and ``classes.txt`` in the
    HDF5's splits, so the raw files and the paper's file give the same train/val/test rows."""
    lines = [json.dumps({"id": sid, "split": split, "labels": [GENRES[g] for g in np.flatnonzero(row)],
                         "image": f"posters/{sid}.jpg", "text": f"plots/{sid}.txt"})
             for sid, split, row in zip(ids, split_names(len(ids)), genres)]
    (out / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    (out / "classes.txt").write_text("\n".join(GENRES) + "\n")


def render_poster(rng: np.random.Generator, bits: np.ndarray, height: int, width: int) -> np.ndarray:
    """Float RGB (H, W, 3): textured background, one coloured panel per set bit, a grey distractor bar."""
    img = rng.uniform(40, 120, 3).astype(np.float32) + rng.normal(0, 12, (height, width, 3)).astype(np.float32)
    ph, pw = height // 3, width // 2
    for k in np.flatnonzero(bits):
        r, c = divmod(int(k), 2)
        m = 3
        img[r * ph + m : (r + 1) * ph - m, c * pw + m : (c + 1) * pw - m] = PANEL_COLOURS[k] * rng.uniform(0.85, 1.05)
    y = int(rng.integers(0, height - 4))
    img[y : y + 3, :] = rng.uniform(150, 230)
    return np.clip(img, 0, 255)


def weighted_f1_ceilings(image_bits: np.ndarray, text_bits: np.ndarray, genres: np.ndarray) -> dict[str, float]:
    """Weighted F1 of oracles that know the generating bits of one modality (or both): per genre,
    predict positive for the groups of known bits whose positive rate passes the F1-best cut."""
    known = {"image_only": (image_bits, None), "text_only": (None, text_bits), "both": (image_bits, text_bits)}
    sources = [("i", k, None) for k in range(N_BITS)] + [("t", None, k) for k in range(N_BITS)] + \
              [("c", i, t) for _, i, t in CROSS]
    out = {}
    for name, (ib, tb) in known.items():
        f1s, support = [], genres.sum(0)
        for g, (_, i, t) in enumerate(sources):
            cols = []
            if ib is not None and i is not None:
                cols.append(ib[:, i])
            if tb is not None and t is not None:
                cols.append(tb[:, t])
            group = np.zeros(len(genres), np.int64) if not cols else np.column_stack(cols) @ (1 << np.arange(len(cols)))
            f1s.append(_best_group_f1(group, genres[:, g]))
        out[name] = round(float(np.sum(np.array(f1s) * support) / max(support.sum(), 1)), 4)
    out["prior_all_positive"] = round(float(np.sum([2 * p / (1 + p) for p in genres.mean(0)] * genres.sum(0)) / max(genres.sum(), 1)), 4)
    return out


def _best_group_f1(group: np.ndarray, y: np.ndarray) -> float:
    rates = {gv: y[group == gv].mean() for gv in np.unique(group)}
    best = 0.0
    for cut in sorted(set(rates.values())):
        pred = np.isin(group, [gv for gv, r in rates.items() if r >= cut])
        tp = int((pred & (y == 1)).sum())
        denom = int(pred.sum() + y.sum())
        best = max(best, 2 * tp / denom if denom else 0.0)
    return best
