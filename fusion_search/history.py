"""Architecture-weight history (α, β, γ after each epoch) and its heatmaps over epochs.

`arch_history.jsonl` holds one line per epoch with the softmaxed weights; the plots show, per Cell,
one heatmap per parameter kind with epochs on the y axis, so one sees when and how decisively the
search settled on each choice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from fusion_search.genotype import cell_name, inner_name


def _heatmap(ax, data: np.ndarray, xlabels: Sequence[str], title: str) -> None:
    im = ax.imshow(data, aspect="auto", cmap="viridis", interpolation="nearest", vmin=0.0, vmax=max(1e-9, data.max()))
    ax.set_title(title, fontsize=8)
    ax.set_xticks(range(len(xlabels)))
    ax.set_xticklabels(xlabels, rotation=90, fontsize=6)
    ax.set_ylabel("epoch", fontsize=7)
    ax.set_yticks(range(data.shape[0]))
    ax.set_yticklabels([str(i + 1) for i in range(data.shape[0])], fontsize=6)
    ax.figure.colorbar(im, ax=ax, fraction=0.04)


def plot_history(history: list[dict], nodes: Sequence[str], primitives: Sequence[str], out_dir: Path) -> list[Path]:
    """Write alpha.png, beta.png, gamma.png (one column per Cell, one row per argument set)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not history:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    n_cells = len(history[0]["alpha"])
    n_args = len(history[0]["alpha"][0])
    arg_names = ["x", "y"] if n_args == 2 else ["x = y"]
    written = []

    def figure(name: str, rows: int, build) -> None:
        fig, axes = plt.subplots(rows, n_cells, figsize=(4.2 * n_cells, 2.6 * rows + 0.6), squeeze=False)
        for r in range(rows):
            for k in range(n_cells):
                build(axes[r][k], r, k)
        fig.tight_layout()
        path = out_dir / name
        fig.savefig(path, dpi=80)
        plt.close(fig)
        written.append(path)

    def alpha(ax, a, k):
        data = np.array([h["alpha"][k][a] for h in history])[..., 0]  # Identity weight per edge
        preds = list(nodes) + [cell_name(j) for j in range(k)]
        _heatmap(ax, data, preds, f"{cell_name(k)} α Identity ({arg_names[a]})")

    def beta(ax, a, k):
        cols, labels = [], []
        for m in range(len(history[0]["beta"][k])):
            cols.append(np.array([h["beta"][k][m][a] for h in history]))
            labels += [f"s{m + 1}<{inner_name(i)}" for i in range(2 + m)]
        _heatmap(ax, np.concatenate(cols, axis=1), labels, f"{cell_name(k)} β ({arg_names[a]})")

    def gamma(ax, _, k):
        data = np.array([h["gamma"][k] for h in history])  # (E, M, ops)
        labels = [f"s{m + 1}:{p}" for m in range(data.shape[1]) for p in primitives]
        _heatmap(ax, data.reshape(data.shape[0], -1), labels, f"{cell_name(k)} γ")

    figure("alpha.png", n_args, alpha)
    figure("beta.png", n_args, beta)
    figure("gamma.png", 1, gamma)
    return written


def plot_metrics(metrics: list[dict], key: str, out_dir: Path) -> Path | None:
    """Loss and the task's primary metric over epochs (hypernet on val, derived genotype's score)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not metrics:
        return None
    ep = [m["epoch"] for m in metrics]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    a.plot(ep, [m["train_loss"] for m in metrics], label="train loss")
    a.plot(ep, [m["val"]["loss"] for m in metrics], label="val loss (hypernet)")
    a.set_xlabel("epoch")
    a.legend(fontsize=7)
    b.plot(ep, [m["val"].get(key, np.nan) for m in metrics], label=f"val {key} (hypernet)")
    b.plot(ep, [np.nan if m.get("genotype_score") is None else m["genotype_score"] for m in metrics], label=f"val {key} (derived genotype)")
    b.set_xlabel("epoch")
    b.legend(fontsize=7)
    fig.tight_layout()
    path = out_dir / "metrics.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
