"""PNG plots of a run: loss curves, and true versus predicted frames."""
from __future__ import annotations

import json
import os

import numpy as np

from ..metrics import read_metrics


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


def image_side(d: int, frame: int) -> int | None:
    """The side of square frames of `d` values: `frame` when it fits, else sqrt(d) when whole, else
    None (a user's arrays of D values per step, not images)."""
    if frame * frame == d:
        return frame
    side = int(round(d ** 0.5))
    return side if side * side == d else None


def plot_series(x: np.ndarray, xhat: np.ndarray, out_path: str) -> None:
    """True and predicted sequences of D values per step that are not images: x, xhat (T, n_seq, D);
    each sequence one row of two heat maps (value by dimension and step), on one colour scale."""
    plt = _pyplot()
    n = x.shape[1]
    lo, hi = float(np.nanmin([x.min(), xhat.min()])), float(np.nanmax([x.max(), xhat.max()]))
    fig, axes = plt.subplots(n, 2, figsize=(9, 1.6 * n + 0.6), squeeze=False)
    for s in range(n):
        for c, (arr, label) in enumerate(((x, "true"), (xhat, "predicted"))):
            ax = axes[s][c]
            ax.imshow(np.asarray(arr[:, s]).T, aspect="auto", cmap="viridis", vmin=lo, vmax=hi,
                      interpolation="nearest")
            ax.set_ylabel(f"seq {s}: dim", fontsize=7)
            if s == 0:
                ax.set_title(label, fontsize=8)
            if s == n - 1:
                ax.set_xlabel("step", fontsize=7)
    fig.tight_layout(pad=0.3)
    fig.savefig(out_path, dpi=90)
    plt.close(fig)


def plot_frames(x: np.ndarray, xhat: np.ndarray, frame: int, out_path: str, blend=None) -> None:
    """Rows of true and predicted frames (and the blur-blend reference's, if given): x, xhat,
    blend of shape (T, n_seq, frame*frame). Frames that are not square images are drawn by
    `plot_series`."""
    side = image_side(x.shape[-1], frame)
    if side is None:
        plot_series(x, xhat, out_path)
        return
    frame = side
    plt = _pyplot()
    rows = [(x, "true"), (xhat, "predicted")] + ([(blend, "blur blend")] if blend is not None else [])
    T, n = x.shape[:2]
    k = len(rows)
    fig, axes = plt.subplots(k * n, T, figsize=(T * 0.8, k * n * 0.85), squeeze=False)
    for s in range(n):
        for t in range(T):
            for r, (arr, label) in enumerate(rows):
                ax = axes[k * s + r][t]
                ax.imshow(arr[t, s].reshape(frame, frame), cmap="gray", vmin=0, vmax=1)
                ax.set_xticks([])
                ax.set_yticks([])
                if t == 0:
                    ax.set_ylabel(label, fontsize=7)
    fig.tight_layout(pad=0.1)
    fig.savefig(out_path, dpi=90)
    plt.close(fig)


def _values(v) -> list:
    return [x for x in (v.values() if isinstance(v, dict) else v) if x is not None]


def plot_loss_by_position(summary: dict, out_path: str) -> bool:
    """The model's test loss by position against the reference forecasts' by position; False when
    the summary holds no loss by position. The y range fits the model and the best reference, so
    their gap stays readable; references above it are named in the legend with their mean."""
    final = summary.get("final_test") or {}
    ref = summary.get("reference") or {}
    key = next((k for k in ("bce", "bpc") if f"test_{k}_by_t" in final), None)
    if key is None:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))

    def curve(values, **kw):
        if isinstance(values, dict):
            labels = list(values)
            ax.plot(range(len(labels)), [values[b] for b in labels], **kw)
            ax.set_xticks(range(len(labels)), labels)
        else:
            ax.plot(range(1, len(values) + 1), [np.nan if v is None else v for v in values], **kw)

    model = _values(final[f"test_{key}_by_t"])
    refs = {k[: -len(f"_{key}_by_t")]: ref[k] for k in ref if k.endswith(f"_{key}_by_t")}
    best = min(refs, key=lambda n: np.mean(_values(refs[n])), default=None)
    shown = model + (_values(refs[best]) if best else [])
    lo, hi = min(shown), max(shown)
    lo, hi = lo - 0.15 * (hi - lo) - 1e-9, hi + 0.25 * (hi - lo) + 1e-9
    curve(final[f"test_{key}_by_t"], marker="o", lw=2, color="k", label="model")
    for name in sorted(refs):
        mean = float(np.mean(_values(refs[name])))
        label = name.replace("_", " ") + ("" if mean <= hi else f" (mean {mean:.4g}, off scale)")
        curve(refs[name], ls="--", lw=1, label=label)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("position in the sequence" + (" (bucket)" if key == "bpc" else ""))
    ax.set_ylabel("test BCE per frame" if key == "bce" else "test bits per token")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return True


def plot_run(run_dir: str, strip=None, frame: int = 64) -> list[str]:
    """Write loss_curves.png, loss_by_position.png (from summary.json) and, for video,
    frames.png (`strip`: x, xhat and optionally the blur blend) into the run directory."""
    written = []
    mpath = os.path.join(run_dir, "metrics.jsonl")
    if os.path.exists(mpath):
        out = os.path.join(run_dir, "loss_curves.png")
        plot_losses(mpath, out)
        written.append(out)
    spath = os.path.join(run_dir, "summary.json")
    if os.path.exists(spath):
        with open(spath, encoding="utf-8") as fh:
            summary = json.load(fh)
        out = os.path.join(run_dir, "loss_by_position.png")
        if plot_loss_by_position(summary, out):
            written.append(out)
    if strip is not None:
        out = os.path.join(run_dir, "frames.png")
        plot_frames(strip[0], strip[1], frame, out, blend=strip[2] if len(strip) > 2 else None)
        written.append(out)
    return written
