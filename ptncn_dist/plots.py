"""PNG plots of a run: loss curves, and true versus predicted frames."""
from __future__ import annotations

import os

import numpy as np

from .metrics import read_metrics


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_losses(metrics_path: str, out_path: str) -> None:
    """Train loss per logged step and test losses per evaluation, on one figure."""
    plt = _pyplot()
    recs = read_metrics(metrics_path)
    train = [(r["step"], r["train_loss"]) for r in recs if r.get("train_loss") is not None]
    test_key = next((k for k in ("test_bce", "test_nll") if any(k in r for r in recs)), None)
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train", lw=1)
    if test_key:
        test = [(r["step"], r[test_key]) for r in recs if test_key in r]
        ax.plot(*zip(*test), "o-", label=test_key.replace("_", " "))
    ax.set_xlabel("step")
    ax.set_ylabel("BCE per frame" if test_key == "test_bce" else "loss (nats per token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)


def plot_frames(x: np.ndarray, xhat: np.ndarray, frame: int, out_path: str) -> None:
    """Rows of true and predicted frames: x, xhat of shape (T, n_seq, frame*frame)."""
    plt = _pyplot()
    T, n = x.shape[:2]
    fig, axes = plt.subplots(2 * n, T, figsize=(T * 0.8, 2 * n * 0.85), squeeze=False)
    for s in range(n):
        for t in range(T):
            for row, arr, label in ((2 * s, x, "true"), (2 * s + 1, xhat, "predicted")):
                ax = axes[row][t]
                ax.imshow(arr[t, s].reshape(frame, frame), cmap="gray", vmin=0, vmax=1)
                ax.set_xticks([])
                ax.set_yticks([])
                if t == 0:
                    ax.set_ylabel(label, fontsize=7)
    fig.tight_layout(pad=0.1)
    fig.savefig(out_path, dpi=90)
    plt.close(fig)


def plot_run(run_dir: str, strip=None, frame: int = 64) -> list[str]:
    """Write loss_curves.png (and frames.png for video) into the run directory."""
    written = []
    mpath = os.path.join(run_dir, "metrics.jsonl")
    if os.path.exists(mpath):
        out = os.path.join(run_dir, "loss_curves.png")
        plot_losses(mpath, out)
        written.append(out)
    if strip is not None:
        out = os.path.join(run_dir, "frames.png")
        plot_frames(strip[0], strip[1], frame, out)
        written.append(out)
    return written
