"""Hand-computed per-modality features of ``ntu-like`` data, read through the real NTU source,
and simple classifiers on them: evidence that the labels need both modalities.

Kept apart from the test so the same probe can be run on a 1,000-sample set to measure ceilings.
"""

from __future__ import annotations

import numpy as np

from extract.sources.ntu import NTUSource
from extract.sources.video import uniform_indices


def _unit(trace: np.ndarray) -> np.ndarray:
    trace = trace - trace.mean()
    return trace / (np.linalg.norm(trace) + 1e-6)


def video_features(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean colour of saturated pixels (the disk) and the disk's brightness-pulse trace over time
    (total saturation per frame: the background is static and the grey square unsaturated)."""
    f = frames.astype(np.float32)
    sat = f.max(-1) - f.min(-1)  # (T, H, W)
    mask = sat > 100  # the disk when it is bright (the background's saturation stays below ~90)
    colour = np.array([f[mask][:, c].mean() if mask.any() else 0.0 for c in range(3)]) / 255
    trace = sat.reshape(len(sat), -1).sum(1)
    return colour, _unit(trace)


def skeleton_features(skel: np.ndarray, video_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Motion energy per (limb, axis) of the first body and the most moving distal joint's velocity
    trace (the video's pulse follows the limb's velocity), sampled at the video frames' times."""
    body = skel[:, :, :, 0]  # (3, T, J)
    distal = [7, 11, 15, 19]  # hands and feet
    energy = np.array([[body[a, :, j].std() for j in distal] for a in range(3)]).ravel()
    a, j = divmod(int(energy.argmax()), len(distal))
    trace = np.gradient(body[a, :, distal[j]])[uniform_indices(skel.shape[1], video_frames)]
    return energy, _unit(trace)


def softmax_regression_accuracy(x: np.ndarray, y: np.ndarray, folds: int = 4, steps: int = 300) -> float:
    """Cross-validated accuracy of L2-regularised multinomial logistic regression (numpy, full-batch
    gradient descent on standardised features): a simple, fast per-feature-set classifier."""
    k = int(y.max()) + 1
    order = np.random.default_rng(0).permutation(len(y))
    correct = 0
    for fold in range(folds):
        test = order[fold::folds]
        train = np.setdiff1d(order, test)
        mu, sd = x[train].mean(0), x[train].std(0) + 1e-6
        xt = np.hstack([(x[train] - mu) / sd, np.ones((len(train), 1))])
        w = np.zeros((xt.shape[1], k))
        onehot = np.eye(k)[y[train]]
        for _ in range(steps):
            z = xt @ w
            p = np.exp(z - z.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            w -= 0.5 * (xt.T @ (p - onehot) / len(train) + 1e-3 * w)
        xv = np.hstack([(x[test] - mu) / sd, np.ones((len(test), 1))])
        correct += int(((xv @ w).argmax(1) == y[test]).sum())
    return correct / len(y)


def probe(root: str, size: int = 32, frames: int = 8) -> dict[str, float]:
    """Accuracy of the same simple classifier on video / skeleton / pooled-both / both features."""
    src = NTUSource(root, frames=frames, size=size)
    vid, ske, cross, labels = [], [], [], []
    for s in src.samples():
        colour, vtrace = video_features(src.load(s.id, "video"))
        energy, strace = skeleton_features(src.load(s.id, "skeleton"), frames)
        vid.append(np.concatenate([colour, vtrace]))
        ske.append(np.concatenate([energy, strace]))
        cross.append([float(vtrace @ strace)])
        labels.append(s.label)
    vid, ske, cross, y = np.array(vid), np.array(ske), np.array(cross), np.array(labels)
    sets = {
        "video_only": vid,
        "skeleton_only": ske,
        "both_late": np.hstack([vid[:, :3], ske[:, :12]]),  # time-pooled features of both
        "both": np.hstack([vid[:, :3], ske[:, :12], cross]),  # plus one cross-modal term
    }
    return {k: softmax_regression_accuracy(x, y) for k, x in sets.items()}
