"""``ntu-like``: NTU RGB+D-format videos and skeletons whose label needs both modalities.

Label = (visual factor v, motion factor m, cross-modal factor x):
- v: colour of a disk that oscillates horizontally in the video, its brightness pulsing between dark
  and full with the same frequency (invisible in the skeleton). The pulse is what survives the
  cache's parameter-free reduction (max over H, W keeps how strongly a colour is present, not where),
  so a fusion network that compares cached video and skeleton features over time can see the phase
  (the pulse runs from dark to full: a weak pulse leaves too little of it in the tiny backbones' taps
  to learn from 600 samples).
  The pulse leads the disk's position by a quarter period: it follows the limb's *velocity*, because
  the skeleton taps of the tiny HCN keep joint motion rather than joint position (its motion stream:
  on the demo cache skeleton_1 explains the limb's velocity far better than its position). A pulse
  in phase with the limb's position would put cached video and skeleton features a quarter period
  apart, their products over time would average out, and fused networks would stay at the ceiling
  of both modalities without the cross-modal term (1/2).
  The disk (radius 17-24 % of the frame) and the limb's swing (0.35-0.5 m) are large enough that the
  wave survives every seed's tiny backbones (with a smaller disk and swing, some seeds' taps keep too
  little of it and their fused networks fall far short);
- m: which limb, along which axis, oscillates in the skeleton (invisible in the video);
- x: whether the disk's oscillation and the limb's oscillation are in phase or in anti-phase.
  Both share a random frequency and each has a uniformly random phase on its own, so x cannot
  be seen in either modality alone, and time-pooled features lose it.
Hence the exact accuracy ceilings: video alone 1/(2·nM), skeleton alone 1/(2·nV), both without
the cross-modal term 1/2, both with it 1. Distractors: a grey square moving independently, a
textured noisy background, joint jitter, body sway, small motion of other limbs, and in 30% of
samples a second body moving a random limb.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from extract.sources.ntu import MFAS_SUBJECTS, SYNTH_META, ntu_name
from extract.sources.skeleton_file import write_skeleton
from extract.sources.video import write_video

# A standing person in NTU joint order (0-based), metres, camera at the origin looking along +z.
BASE_POSE = np.array([
    [0.00, 0.00], [0.00, 0.30], [0.00, 0.60], [0.00, 0.75], [-0.18, 0.55], [-0.25, 0.30],
    [-0.28, 0.08], [-0.29, 0.00], [0.18, 0.55], [0.25, 0.30], [0.28, 0.08], [0.29, 0.00],
    [-0.10, -0.05], [-0.11, -0.45], [-0.12, -0.85], [-0.12, -0.90], [0.10, -0.05], [0.11, -0.45],
    [0.12, -0.85], [0.12, -0.90], [0.00, 0.50], [-0.30, -0.08], [-0.26, -0.02], [0.30, -0.08],
    [0.26, -0.02],
], dtype=np.float32)
LIMBS = {  # joint -> weight of the limb's displacement (distal joints move most)
    "left-arm": {5: 0.5, 6: 0.9, 7: 1.0, 21: 1.0, 22: 1.0},
    "right-arm": {9: 0.5, 10: 0.9, 11: 1.0, 23: 1.0, 24: 1.0},
    "left-leg": {13: 0.5, 14: 0.9, 15: 1.0},
    "right-leg": {17: 0.5, 18: 0.9, 19: 1.0},
}
AXES = ("x", "y", "z")
COLOURS = [  # well-separated hues that survive yuv420p chroma subsampling at 32 px
    ("red", (230, 40, 40)), ("green", (40, 200, 60)), ("blue", (50, 80, 240)), ("yellow", (230, 220, 40)),
    ("magenta", (220, 50, 220)), ("cyan", (40, 210, 220)), ("orange", (245, 140, 20)), ("purple", (130, 50, 200)),
]
SUBJECT_WEIGHT = {"train": 0.6, "val": 0.15, "test": 0.25}


def factor_sizes(classes: int) -> tuple[int, int]:
    """Split ``classes = 2 · nV · nM`` into the most balanced (nV, nM) with nV <= nM."""
    from extract.errors import DataError

    if classes < 2 or classes % 2 or classes // 2 > len(COLOURS) * len(LIMBS) * len(AXES):
        raise DataError(
            f"--classes {classes}: ntu-like needs an even number of classes between 2 and "
            f"{2 * len(COLOURS) * len(LIMBS) * len(AXES)} (class = colour x limb motion x phase)"
        )
    half = classes // 2
    n_v = max(d for d in range(1, int(half**0.5) + 1) if half % d == 0)
    n_v, n_m = (n_v, half // n_v)
    if n_v > len(COLOURS) or n_m > len(LIMBS) * len(AXES):
        n_v, n_m = n_m, n_v
    if n_v > len(COLOURS) or n_m > len(LIMBS) * len(AXES):
        raise DataError(f"--classes {classes}: cannot split {half} into <= {len(COLOURS)} colours x <= 12 motions")
    return n_v, n_m


def motion_patterns(n_m: int) -> list[tuple[str, str]]:
    """The first ``n_m`` (limb, axis) motion patterns: all limbs along x, then along y, then z."""
    return [(limb, axis) for axis in AXES for limb in LIMBS][:n_m]


def class_name(v: int, m: int, x: int, n_m: int) -> str:
    limb, axis = motion_patterns(n_m)[m]
    return f"{COLOURS[v][0]}/{limb}-{axis}/{'in' if x == 0 else 'anti'}-phase"


def label_of(v: int, m: int, x: int, n_m: int) -> int:
    return (v * n_m + m) * 2 + x


def generate_ntu_like(
    out: str | Path,
    samples: int = 1000,
    classes: int = 8,
    seed: int = 0,
    size: int = 32,
    frames: int = 32,
) -> dict[str, Any]:
    """Write ``samples`` NTU-named ``_rgb.avi`` + ``.skeleton`` pairs to ``out``; return the metadata.

    Layout: ``out/nturgb+d_rgb/SsssCcccPpppRrrrAaaa_rgb.avi``, ``out/nturgb+d_skeletons/….skeleton``,
    ``out/bmnas_synth.json`` (factors, ceilings) and ``out/factors.csv`` (per-sample factors).
    Subjects are drawn from the ``mfas`` lists (60% train, 15% val, 25% test of samples).
    """
    from extract.errors import DataError

    if samples < 1:
        raise DataError(f"--samples {samples}: need at least 1 sample")
    if size % 2 or size < 16:
        raise DataError(f"size {size}: video size must be even and >= 16 (H.264 yuv420p)")
    n_v, n_m = factor_sizes(classes)
    t0 = time.perf_counter()
    out = Path(out)
    rgb_dir, skel_dir = out / "nturgb+d_rgb", out / "nturgb+d_skeletons"
    rgb_dir.mkdir(parents=True, exist_ok=True)
    skel_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(samples) % classes)
    names = _names(rng, labels)
    rows = [_write_sample(out, name, int(label), np.random.default_rng([seed, i]), n_m, size, frames)
            for i, (name, label) in enumerate(zip(names, labels))]
    with open(out / "factors.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    meta = _metadata(samples, classes, seed, size, frames, n_v, n_m)
    meta["generation_seconds"] = round(time.perf_counter() - t0, 2)
    (out / SYNTH_META).write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def _write_sample(out: Path, name: str, label: int, sample_rng: np.random.Generator, n_m: int, size: int,
                  frames: int) -> dict[str, Any]:
    """One clip and its skeleton file from the label's factors (colour, limb, phase); its factors row."""
    x, rest = label % 2, label // 2
    v, m = rest // n_m, rest % n_m
    freq = sample_rng.uniform(0.75, 1.75)  # cycles per clip
    phase = sample_rng.uniform(0, 2 * np.pi)
    t = np.arange(frames) / frames
    angle = 2 * np.pi * freq * t + phase
    skeleton_wave = np.sin(angle + np.pi * x)
    video = render_video(sample_rng, v, np.sin(angle), size, pulse=np.cos(angle))
    write_video(out / "nturgb+d_rgb" / f"{name}_rgb.avi", video)
    write_skeleton(out / "nturgb+d_skeletons" / f"{name}.skeleton", render_skeleton(sample_rng, m, n_m, skeleton_wave),
                   sample_rng)
    return {"id": name, "label": label, "visual": v, "motion": m, "phase": x,
            "freq": round(float(freq), 4), "phase_offset": round(float(phase), 4)}


def _names(rng: np.random.Generator, labels: np.ndarray) -> list[str]:
    """Unique NTU names: subject from the mfas lists (weighted per split), action = label + 1."""
    splits = list(SUBJECT_WEIGHT)
    used: set[str] = set()
    names = []
    for label in labels:
        while True:
            split = splits[rng.choice(len(splits), p=list(SUBJECT_WEIGHT.values()))]
            subject = int(rng.choice(MFAS_SUBJECTS[split]))
            name = ntu_name(int(rng.integers(1, 18)), int(rng.integers(1, 4)), subject,
                            int(rng.integers(1, 3)), int(label) + 1)
            if name not in used:
                used.add(name)
                names.append(name)
                break
    return names


def render_video(rng: np.random.Generator, v: int, wave: np.ndarray, size: int,
                 pulse: np.ndarray | None = None) -> np.ndarray:
    """Frames ``(T, size, size, 3)``: a disk of colour ``v`` moving by ``wave`` and pulsing in
    brightness by ``pulse`` (default: ``wave``) between dark and full, on a noisy textured
    background, plus an independently moving grey square."""
    frames = len(wave)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    coarse = rng.uniform(50, 140, (4, 4, 3)).astype(np.float32)
    background = np.kron(coarse, np.ones((size // 4, size // 4, 1), np.float32))
    background = background + rng.normal(0, 10, background.shape)
    colour = np.asarray(COLOURS[v][1], np.float32) * rng.uniform(0.8, 1.05)
    radius = size * rng.uniform(0.17, 0.24)
    cx0, cy = size * rng.uniform(0.4, 0.6), size * rng.uniform(0.3, 0.7)
    amp = size * rng.uniform(0.15, 0.25)
    sq = size * rng.uniform(0.1, 0.16)
    sq_start = rng.uniform(0.1, 0.9, 2) * size
    sq_vel = rng.normal(0, size * 0.02, 2)
    sq_grey = rng.uniform(150, 230)
    pos = np.clip(sq_start + sq_vel * np.arange(frames)[:, None], 0, size - sq)  # (T, 2) x, y
    in_square = ((xx >= pos[:, 0, None, None]) & (xx < pos[:, 0, None, None] + sq)
                 & (yy >= pos[:, 1, None, None]) & (yy < pos[:, 1, None, None] + sq))[..., None]
    out = np.where(in_square, np.float32(sq_grey), background[None])
    d = np.sqrt((xx - (cx0 + amp * wave)[:, None, None]) ** 2 + (yy - cy) ** 2)
    alpha = np.clip(radius + 0.5 - d, 0, 1)[..., None]
    gain = (0.5 + 0.5 * (wave if pulse is None else pulse))[:, None, None, None].astype(np.float32)
    out = out * (1 - alpha) + colour * gain * alpha + rng.normal(0, 6, out.shape)
    return np.clip(out, 0, 255).astype(np.uint8)


def render_skeleton(rng: np.random.Generator, m: int, n_m: int, wave: np.ndarray) -> list[np.ndarray]:
    """Per-frame ``(bodies, 25, 3)`` xyz: the actor moves limb/axis ``m`` by ``wave``; distractors
    are jitter, sway, weak motion of the other limbs and sometimes a second body."""
    limb, axis = motion_patterns(n_m)[m]
    actor = _body(rng, {(limb, AXES.index(axis)): (rng.uniform(0.35, 0.5), wave)}, len(wave), x0=rng.uniform(-0.6, 0.0))
    bodies = [actor]
    if rng.random() < 0.3:
        other_limb = list(LIMBS)[rng.integers(len(LIMBS))]
        other_wave = np.sin(2 * np.pi * rng.uniform(0.5, 2.0) * np.arange(len(wave)) / len(wave) + rng.uniform(0, 6.3))
        bodies.append(_body(rng, {(other_limb, int(rng.integers(3))): (rng.uniform(0.2, 0.4), other_wave)},
                            len(wave), x0=rng.uniform(0.4, 1.0)))
    return [np.stack([b[f] for b in bodies]) for f in range(len(wave))]


def _body(rng: np.random.Generator, moves: dict, frames: int, x0: float) -> np.ndarray:
    """One body ``(T, 25, 3)``: base pose, random scale/rotation/position, the given limb moves,
    weak random motion of every limb, sway and joint jitter."""
    t = np.arange(frames) / frames
    pose = np.concatenate([BASE_POSE, np.zeros((25, 1), np.float32)], 1) * rng.uniform(0.9, 1.1)
    seq = np.repeat(pose[None], frames, 0)
    for limb, joints in LIMBS.items():  # weak distractor motion on every limb
        w = 0.04 * np.sin(2 * np.pi * rng.uniform(0.5, 3) * t + rng.uniform(0, 6.3))
        ax = rng.integers(3)
        for j, weight in joints.items():
            seq[:, j, ax] += weight * w
    for (limb, ax), (amp, wave) in moves.items():
        for j, weight in LIMBS[limb].items():
            seq[:, j, ax] += weight * amp * wave
    yaw = rng.uniform(-0.5, 0.5)
    rot = np.array([[np.cos(yaw), 0, np.sin(yaw)], [0, 1, 0], [-np.sin(yaw), 0, np.cos(yaw)]], np.float32)
    seq = seq @ rot.T
    sway = 0.03 * np.sin(2 * np.pi * rng.uniform(0.2, 1.0) * t + rng.uniform(0, 6.3))
    seq[:, :, 0] += sway[:, None]
    seq += np.array([x0, rng.uniform(-0.2, 0.2), rng.uniform(2.5, 3.5)], np.float32)
    seq += rng.normal(0, 0.01, seq.shape)
    return seq.astype(np.float32)


def _metadata(samples: int, classes: int, seed: int, size: int, frames: int, n_v: int, n_m: int) -> dict[str, Any]:
    return {
        "kind": "ntu-like",
        "format": "NTU RGB+D 60 file layout (SsssCcccPpppRrrrAaaa_rgb.avi, .skeleton)",
        "samples": samples,
        "num_classes": classes,
        "seed": seed,
        "video": {"size": [size, size], "frames": frames, "fps": 30, "codec": "h264", "container": "avi"},
        "skeleton": {"frames": frames, "joints": 25, "max_bodies": 2},
        "class_names": [class_name(c // 2 // n_m, c // 2 % n_m, c % 2, n_m) for c in range(classes)],
        "label": "label = (visual * n_motion + motion) * 2 + phase; NTU action = label + 1",
        "factors": {
            "visual": {"modality": "video", "what": "colour of the oscillating disk",
                       "values": [c[0] for c in COLOURS[:n_v]]},
            "motion": {"modality": "skeleton", "what": "limb and axis that oscillate (first body)",
                       "values": [f"{limb}-{axis}" for limb, axis in motion_patterns(n_m)]},
            "phase": {"modality": "video+skeleton",
                      "what": "disk brightness pulse vs limb velocity (shared random frequency, random phase)",
                      "values": ["in-phase", "anti-phase"]},
        },
        "ceilings": {
            "chance": 1 / classes,
            "video_only": 1 / (2 * n_m),
            "skeleton_only": 1 / (2 * n_v),
            "both_without_phase": 0.5,
            "both": 1.0,
        },
        "splits": {"preset": "mfas", "sample_share_by_subject_list": SUBJECT_WEIGHT},
        "distractors": ["grey square moving independently", "textured background + pixel noise",
                        "joint jitter, body sway, weak motion of every limb",
                        "second body moving a random limb in 30% of samples"],
    }
