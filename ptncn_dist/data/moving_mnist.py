"""Moving MNIST (Srivastava et al. 2015) from its standard file, `data.source = "moving_mnist"`.

The file is `mnist_test_seq.npy` in the directory `data.path`, read as it is distributed: uint8
of shape (T, N, H, W), frames first, (20, 10000, 64, 64) for the published file (any N >= 3, and
any T, H = W, are accepted, so a small file in the same layout works too). It is memory-mapped
(`np.load(mmap_mode="r", allow_pickle=False)`), scaled to [0, 1] (value / 255) per batch, and each
frame flattened to D = H * W; `data.frame` must equal H (64 by default, as the published file).

Split, by sequence index in file order: the last `HOLDOUT_FRACTION` (10%, rounded, at least 1) of
the N sequences is test, the 10% before it valid, the rest train. For the published file:
sequences 0..7999 train, 8000..8999 valid, 9000..9999 test.

Batches as arrays.ArrayStream: training a pure function of (seed, position) through a seeded
permutation per epoch; evaluation in file order; x (T, B, H*W) float32, mask all 1.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from .arrays import HOLDOUT_FRACTION, ArrayStream, load_npy

FILE = "mnist_test_seq.npy"
LAYOUT = "uint8 (T, N, H, W), frames first, e.g. (20, 10000, 64, 64)"
_CACHE: dict = {}


def split_rows(n: int) -> dict:
    """Sequence indices of each split, in file order: the last HOLDOUT_FRACTION (at least 1) test,
    the same count before it valid, the rest train (10,000 -> 8,000 / 1,000 / 1,000)."""
    k = max(1, int(round(n * HOLDOUT_FRACTION)))
    cut = n - 2 * k
    return {"train": np.arange(0, cut), "valid": np.arange(cut, n - k), "test": np.arange(n - k, n)}


class MovingMnist:
    """The memory-mapped file and its split: `parts[split]` are sequence indices (axis 1)."""

    kind = "frames"

    def __init__(self, path: Path):
        x = load_npy(path)
        if x.ndim != 4 or x.dtype != np.uint8:
            raise DataError(f"{path}: shape {tuple(x.shape)} {x.dtype}; Moving MNIST's {FILE} is {LAYOUT}")
        steps, n, h, w = (int(s) for s in x.shape)
        if h != w or min(steps, h) < 1:
            raise DataError(f"{path}: frames of {h}x{w} pixels (shape {tuple(x.shape)}); Moving MNIST's {FILE} "
                            f"is {LAYOUT}, square frames")
        if n < 3:
            raise DataError(f"{path}: {n} sequence(s) cannot be split into train, valid and test (at least 3)")
        self.path, self.x, self.side, self.steps = path, x, h, steps
        self.dim = h * w
        self.parts = split_rows(n)

    def read(self, rows) -> tuple:
        """(x (T, b, H*W) float32 in [0, 1], mask (T, b)) of sequences `rows`."""
        rows = np.asarray(rows, np.int64)
        order = np.argsort(rows, kind="stable")
        block = np.empty((self.steps, len(rows)) + self.x.shape[2:], np.uint8)
        block[:, order] = self.x[:, rows[order]]
        x = block.reshape(self.steps, len(rows), self.dim).astype(np.float32) / np.float32(255.0)
        return x, np.ones((self.steps, len(rows)), np.float32)

    def length(self, rows=None) -> int:
        return self.steps

    def note(self) -> str:
        counts = ", ".join(f"{s} {len(r):,} (sequences {r[0]}..{r[-1]})" for s, r in self.parts.items())
        return (f"Moving MNIST from {self.path}: {self.steps} frames of {self.side}x{self.side}; {counts}")


def open_moving_mnist(directory) -> MovingMnist:
    """The file in `directory`, opened once while it is unchanged."""
    path = Path(directory) / FILE
    if not path.is_file():
        raise DataError(f"{directory}: no {FILE} (Moving MNIST as distributed: {LAYOUT})")
    st = os.stat(path)
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = MovingMnist(path)
    return _CACHE[key]


def streams(mm: MovingMnist, frame: int, batch: int, eval_batch: int, seed: int, split: str,
            max_len: int = 0) -> tuple:
    """(train stream, held-out stream of `split`)."""
    if frame != mm.side:
        raise ConfigError(f"data.frame = {frame}, but the frames of {mm.path} are {mm.side}x{mm.side}; "
                          f"set data.frame = {mm.side}")
    train = ArrayStream(mm, mm.parts["train"], mm.dim, batch, seed, shuffle=True, max_len=max_len,
                        name=f"Moving MNIST train ({len(mm.parts['train']):,} sequences)", images=True)
    held = mm.parts[split]
    test = ArrayStream(mm, held, mm.dim, eval_batch, seed, shuffle=False, max_len=max_len,
                       name=f"Moving MNIST {split} ({len(held):,} sequences)", images=True)
    return train, test
