"""TensorBoard event files in the run directory (with the optional `tensorboard` extra,
tensorboardX): train and test losses, loss by position, the references, and the frame strip
as an image at each evaluation. Without tensorboardX it is off, with one log line."""
from __future__ import annotations

import numbers

import numpy as np

from .references import headline


def strip_image(rows, side: int, gap: int = 1) -> np.ndarray:
    """One (H, W) image in [0, 1] of frame rows: `rows` is a list of (T, n_seq, side*side)
    arrays (true, predicted, blur blend, ...); sequence s gives one row per array, and a white
    gap of `gap` pixels separates frames."""
    T, n = rows[0].shape[:2]
    cell = side + gap
    img = np.ones((n * len(rows) * cell - gap, T * cell - gap), np.float32)
    for s in range(n):
        for r, arr in enumerate(rows):
            top = (s * len(rows) + r) * cell
            for t in range(T):
                img[top:top + side, t * cell:t * cell + side] = np.clip(arr[t, s].reshape(side, side), 0, 1)
    return img


def scalars(rec: dict) -> dict:
    """TensorBoard tags and values of one metrics record: its numbers, and each loss by position
    as `<key>/t<position>` (video) or `<key>/<bucket>` (text)."""
    out = {}
    for key, value in rec.items():
        if key in ("step", "final", "reference") or key.endswith("count_by_t"):
            continue
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            out[key] = float(value)
        elif key.endswith("_by_t") and isinstance(value, list):
            out.update({f"{key}/t{t:02d}": float(v) for t, v in enumerate(value, start=1) if v is not None})
        elif key.endswith("_by_t") and isinstance(value, dict):
            out.update({f"{key}/{b}": float(v) for b, v in value.items() if v is not None})
    return out


class Board:
    """Writes TensorBoard events into `run_dir` (None: off). `reference` (overall reference
    losses) is written beside every evaluation as `reference/<name>`, flat lines to read the
    test curves against."""

    def __init__(self, run_dir: str | None, log=print):
        self.writer, self.reference = None, {}
        if not run_dir:
            return
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            log("tensorboard: off (pip install 'ptncn_dist[tensorboard]' to get event files)")
            return
        self.writer = SummaryWriter(logdir=run_dir)

    @property
    def active(self) -> bool:
        return self.writer is not None

    def set_reference(self, reference: dict) -> None:
        self.reference = {k: v for k, v in headline(reference).items() if v is not None}

    def record(self, rec: dict) -> None:
        """The scalars of one metrics.jsonl record (references too when it holds test losses)."""
        if self.writer is None:
            return
        step = int(rec["step"])
        values = scalars(rec)
        for tag, v in values.items():
            self.writer.add_scalar(tag, v, step)
        if any(k.startswith("test_") for k in values):
            for name, v in self.reference.items():
                self.writer.add_scalar(f"reference/{name}", float(v), step)
            self.writer.flush()

    def frames(self, step: int, rows, side: int) -> None:
        """The frame strip (true, predicted, blur blend rows) as image `frames`; none when the
        frames are not `side` x `side` images (a user's arrays of D values per step)."""
        rows = [r for r in rows if r is not None]
        if self.writer is not None and rows and rows[0].shape[-1] == side * side:
            self.writer.add_image("frames", strip_image(rows, side), step, dataformats="HW")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
