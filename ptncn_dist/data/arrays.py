"""A user's own sequences as NumPy arrays (`data.source = "arrays"`), memory-mapped.

Files in the directory `data.path`, one per split:

- `train.npy` or `train.npz` (required); `valid.npy|.npz` and `test.npy|.npz` (optional).
- Shape `(N, T, D)` of real values (floating point, integer or bool): the "frames" kind, D values
  per step, for `model.output = "identity"` (squared error) or `"sigmoid"` (binary cross-entropy,
  values in [0, 1]). Shape `(N, T)` of integer token ids: the "tokens" kind, for
  `model.output = "softmax"`; the vocabulary size is `data.vocab_size`, or when that is 0 the
  largest id in any split plus one. Every split must be of the same kind and D.
- Sequences of unequal length: a mask of shape `(N, T)`, 1 for a real step and 0 for padding
  (bool, integer or float 0/1): `train_mask.npy` beside `train.npy` (likewise `valid_mask.npy`,
  `test_mask.npy`), or a member `mask` inside the `.npz`. Masked steps are neither learned nor
  scored, are not checked (NaN padding is fine under a mask) and reach the model as 0.
- A `.npz` holds the data as member `x` (or as its only other member, e.g. `arr_0` from
  `np.savez(path, array)`). Members saved uncompressed (`np.savez`) are memory-mapped in place like
  a `.npy`; a compressed member (`np.savez_compressed`) cannot be, and is read into memory whole:
  use `.npy` or `np.savez` for data larger than memory.

Every array is opened with `allow_pickle=False` (an object array is refused, never unpickled) and
memory-mapped, so only the batches being read are in memory; the one full pass made when a split
is opened (for NaN/Inf, the value range, the ids and the mask) reads `SCAN_BYTES` at a time.

Split rule when `valid` or `test` files are absent: the missing held-out splits are carved out of
the train file by a fixed permutation of its N sequences (seed `SPLIT_SEED`): test is the last
`HOLDOUT_FRACTION` (10%, rounded, at least 1) of the permutation, valid the 10% before it, train
the rest; each held-out split is read in file order. With only `test` absent, test is the last
10% of the permutation; with only `valid` absent, valid is.

Training batches are a pure function of (seed, position): position p is batch p % batches of
epoch p // batches, whose order is a permutation seeded by (seed, epoch) (as ptb.SentenceStream);
evaluation streams are finite and in file order. A short batch is padded with fully masked
columns. Batches are time-major: x (T, B, D) float32 or (T, B) int32, mask (T, B) float32, with
T cut to the longest unmasked sequence of the batch (and to `data.max_len` when > 0).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError
from .batch import Batch, check_position
from .npy import SPLITS, _shape, load_npy, load_npz  # noqa: F401 (load_npy, load_npz: re-exported for data/)

SPLIT_SEED = 8_675_309
HOLDOUT_FRACTION = 0.1
SCAN_BYTES = 64 << 20
CACHE = 4
_CACHE: dict = {}


# -- one split file, checked -----------------------------------------------------------------------
@dataclass
class ArrayFile:
    """One split file, checked: x (N, T, D) or (N, T), a mask (N, T) or None, and what the scan
    found: the value range over unmasked steps (lo, hi) and each sequence's length (the last
    unmasked step + 1; None when there is no mask: every sequence is T long)."""

    path: Path
    x: np.ndarray
    mask: np.ndarray | None
    kind: str
    lo: float
    hi: float
    lengths: np.ndarray | None = None
    mask_path: Path | None = None

    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    @property
    def steps(self) -> int:
        return int(self.x.shape[1])

    @property
    def width(self) -> int:
        return int(self.x.shape[2]) if self.kind == "frames" else 1

    def read(self, rows: np.ndarray) -> tuple:
        """(x (T, b, D) float32 or (T, b) int32, mask (T, b) float32) of `rows`, time-major,
        masked entries 0."""
        rows = np.asarray(rows, np.int64)
        order = np.argsort(rows, kind="stable")
        block = np.empty((len(rows),) + self.x.shape[1:], self.x.dtype)
        block[order] = self.x[rows[order]]
        if self.mask is None:
            mask = np.ones(block.shape[:2], np.float32)
        else:
            m = np.empty((len(rows), self.steps), self.mask.dtype)
            m[order] = self.mask[rows[order]]
            mask = (m != 0).astype(np.float32)
        if self.kind == "frames":
            x = block.astype(np.float32)
            if self.mask is not None:
                x[mask == 0] = 0.0
            x = x.transpose(1, 0, 2)
        else:
            x = np.where(mask != 0, block, 0).astype(np.int32).T
        return np.ascontiguousarray(x), np.ascontiguousarray(mask.T)

    def length(self, rows=None) -> int:
        """The longest sequence among `rows` (all when None)."""
        if self.lengths is None:
            return self.steps if rows is None or len(rows) else 0
        sel = self.lengths if rows is None else self.lengths[np.asarray(rows, np.int64)]
        return int(sel.max()) if len(sel) else 0


def _kind(path, x) -> str:
    dt = x.dtype
    if x.ndim == 3:
        if dt.kind not in "fiub":
            raise DataError(f"{path}: dtype {dt} cannot hold frames: (N, T, D) arrays must be real numbers "
                            f"(floating point, integer or bool)")
        return "frames"
    if x.ndim == 2:
        if dt.kind not in "iu":
            hint = " (for real values give (N, T, D), D = 1 for one series)" if dt.kind in "fb" else ""
            raise DataError(f"{path}: dtype {dt} with shape {_shape(x.shape)}: token ids (N, T) must be "
                            f"integers{hint}")
        return "tokens"
    raise DataError(f"{path}: shape {_shape(x.shape)} has rank {x.ndim}; expected (N, T, D) real values "
                    f"(frames) or (N, T) integer token ids")


def read_chunk(x, start: int, stop: int) -> np.ndarray:
    """Sequences start..stop-1 of a (memory-mapped) array, in memory."""
    return np.asarray(x[start:stop])


def _scan(path, x, mask, mask_path, kind: str, vocab_size: int) -> tuple:
    """(lo, hi, lengths) over unmasked entries, in chunks of about SCAN_BYTES; DataError at the
    first non-finite value, bad id or bad mask value, naming sequence and step."""
    n, steps = x.shape[:2]
    row_bytes = max(1, int(np.prod(x.shape[1:], dtype=np.int64)) * max(x.dtype.itemsize, 4))
    chunk = max(1, SCAN_BYTES // row_bytes)
    lo, hi = np.inf, -np.inf
    lengths = np.zeros(n, np.int64) if mask is not None else None
    for i in range(0, n, chunk):
        a = read_chunk(x, i, i + chunk)
        m = None
        if mask is not None:
            raw = read_chunk(mask, i, i + chunk)
            bad = ~((raw == 0) | (raw == 1))
            if bad.any():
                s, t = np.argwhere(bad)[0]
                raise DataError(f"{mask_path}: value {raw[s, t].item()!r} at sequence {i + s}, step {t}; a mask holds "
                                f"0 (padding) or 1 (a real step)")
            m = raw != 0
            any_step = m.any(axis=1)
            lengths[i:i + len(m)] = np.where(any_step, steps - np.argmax(m[:, ::-1], axis=1), 0)
        if kind == "frames":
            a32 = a.astype(np.float32)
            finite = np.isfinite(a32)
            if m is not None:
                finite |= ~m[..., None]
            if not finite.all():
                s, t, d = np.argwhere(~finite)[0]
                value = float(a[s, t, d])
                what = "" if not math.isfinite(value) else " (beyond float32's range)"
                raise DataError(f"{path}: {value!r}{what} at sequence {i + s}, step {t}, dim {d}: the data must "
                                f"be finite (mark padding 0 in a mask instead)")
            vals = a32 if m is None else a32[m]
        else:
            vals = a if m is None else a[m]
            if vals.size:
                low, high = int(vals.min()), int(vals.max())
                if low < 0 or (vocab_size and high >= vocab_size):
                    bad = (a < 0) | (a >= vocab_size if vocab_size else False)
                    if m is not None:
                        bad &= m
                    s, t = np.argwhere(bad)[0]
                    limit = (f"the vocabulary 0..{vocab_size - 1} (data.vocab_size = {vocab_size})" if vocab_size
                             else "0 or more")
                    raise DataError(f"{path}: token id {int(a[s, t])} at sequence {i + s}, step {t} is outside "
                                    f"{limit}")
        if vals.size:
            lo, hi = min(lo, float(vals.min())), max(hi, float(vals.max()))
    if not np.isfinite(lo):
        where = f" by {mask_path}" if mask_path else ""
        raise DataError(f"{path}: every step is masked out{where}: nothing to train or score on")
    return lo, hi, lengths


def open_file(directory: Path, split: str, vocab_size: int = 0) -> ArrayFile | None:
    """The checked file of `split` in `directory` (None when it has none)."""
    npy, npz = directory / f"{split}.npy", directory / f"{split}.npz"
    if npy.exists() and npz.exists():
        raise DataError(f"{directory}: both {npy.name} and {npz.name}; keep one")
    if not npy.exists() and not npz.exists():
        return None
    mask_npy = directory / f"{split}_mask.npy"
    if npz.exists():
        if mask_npy.exists():
            raise DataError(f"{mask_npy}: a mask beside {npz.name} must be its member 'mask' instead")
        path, (x, mask) = npz, load_npz(npz)
        mask_path = Path(f"{npz} (member 'mask')") if mask is not None else None
    else:
        path, x = npy, load_npy(npy)
        mask, mask_path = (load_npy(mask_npy), mask_npy) if mask_npy.exists() else (None, None)
    kind = _kind(path, x)
    if 0 in x.shape:
        raise DataError(f"{path}: shape {_shape(x.shape)} holds no data (an axis of length 0)")
    if mask is not None:
        if mask.shape != x.shape[:2]:
            raise DataError(f"{mask_path}: shape {_shape(mask.shape)} does not match the data's (N, T) = "
                            f"{_shape(x.shape[:2])}")
        if mask.dtype.kind not in "biuf":
            raise DataError(f"{mask_path}: dtype {mask.dtype}; a mask is bool, integer or float 0/1")
    lo, hi, lengths = _scan(path, x, mask, mask_path, kind, vocab_size)
    return ArrayFile(path, x, mask, kind, lo, hi, lengths, mask_path)


# -- the three splits ------------------------------------------------------------------------------
def holdout(n: int, need: tuple) -> dict:
    """Row indices carved from n train sequences: {"train": ..., and each split of `need`}; test is
    the last HOLDOUT_FRACTION of a permutation seeded SPLIT_SEED, valid the slice before it."""
    k = max(1, int(round(n * HOLDOUT_FRACTION)))
    perm = np.random.default_rng(SPLIT_SEED).permutation(n)
    out, end = {}, n
    for split in ("test", "valid"):
        if split in need:
            out[split] = np.sort(perm[end - k:end])
            end -= k
    out["train"] = np.sort(perm[:end])
    return out


@dataclass
class ArraySet:
    """The three splits: each a (file, row indices) pair; `note` says where each came from."""

    kind: str
    dim: int
    parts: dict
    note: str
    files: list = field(default_factory=list)

    def longest(self, split: str) -> int:
        f, rows = self.parts[split]
        return f.length(rows)


def _state(directory: Path) -> tuple:
    return tuple(sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in os.scandir(directory)
                        if e.is_file()))


def open_arrays(directory, vocab_size: int = 0) -> ArraySet:
    """The checked splits of `directory` (reused while its files are unchanged)."""
    directory = Path(directory)
    key = (str(directory.resolve()), int(vocab_size), _state(directory))
    if key not in _CACHE:
        if len(_CACHE) >= CACHE:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = _open_arrays(directory, int(vocab_size))
    return _CACHE[key]


def _open_arrays(directory: Path, vocab_size: int) -> ArraySet:
    files = {s: open_file(directory, s, vocab_size) for s in SPLITS}
    train = files["train"]
    if train is None:
        raise DataError(f"{directory}: no train.npy or train.npz (data.source = \"arrays\" reads "
                        f"train.npy|.npz, and valid and test ones when present)")
    for split in ("valid", "test"):
        f = files[split]
        if f is None:
            continue
        if f.kind != train.kind:
            what = {"frames": "real frames (N, T, D)", "tokens": "token ids (N, T)"}
            raise DataError(f"{f.path}: holds {what[f.kind]} but {train.path.name} holds {what[train.kind]}; "
                            f"every split must be of one kind")
        if f.kind == "frames" and f.width != train.width:
            raise DataError(f"{f.path}: frames have D = {f.width} values, but {train.path.name} has "
                            f"D = {train.width}; every split must have the same D")
    missing = tuple(s for s in ("valid", "test") if files[s] is None)
    if missing and train.n < len(missing) + 1:
        raise DataError(f"{train.path}: {train.n} sequence(s) cannot be split into train and "
                        f"{' and '.join(missing)} (no {' or '.join(f'{s}.npy|.npz' for s in missing)}); "
                        f"give more sequences or the held-out files")
    rows = holdout(train.n, missing) if missing else {"train": np.arange(train.n)}
    parts = {"train": (train, rows["train"])}
    notes = []
    for split in ("valid", "test"):
        if files[split] is not None:
            parts[split] = (files[split], np.arange(files[split].n))
        else:
            parts[split] = (train, rows[split])
            notes.append(f"{split} = {len(rows[split]):,} of {train.path.name}'s sequences")
    for split, (f, r) in parts.items():
        if f.length(r) == 0:
            raise DataError(f"{f.path}: every {split} sequence is masked out: nothing to train or score on")
    if train.kind == "tokens":
        dim = vocab_size or int(max(parts[s][0].hi for s in SPLITS)) + 1
    else:
        dim = train.width
    counts = ", ".join(f"{s} {len(parts[s][1]):,}" for s in SPLITS)
    carved = (f"; held out by a fixed permutation (seed {SPLIT_SEED}): {'; '.join(notes)}" if notes else "")
    shape = (f"(N, {train.steps}, {dim}) frames" if train.kind == "frames"
             else f"(N, {train.steps}) token ids over {dim:,} symbols")
    note = f"arrays from {directory}: {shape}; sequences {counts}{carved}"
    return ArraySet(train.kind, dim, parts, note, [f for f in files.values() if f is not None])


# -- streams ---------------------------------------------------------------------------------------
class ArrayStream:
    """Batches of whole sequences from a source with `.read(rows)`, `.kind`, `.length(rows)`.

    shuffle=True (training): infinite; position p is batch p % batches_per_epoch of epoch
    p // batches_per_epoch, whose order is a permutation of `rows` seeded by (seed, epoch).
    shuffle=False (evaluation): `rows` in file order, `num_batches` batches. A short batch is
    padded with fully masked columns so every batch has `batch_size` columns.
    """

    def __init__(self, source, rows, dim: int, batch_size: int, seed: int = 0, shuffle: bool = True,
                 max_len: int = 0, name: str = "", images: bool = False):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch size must be an integer >= 1, got {batch_size!r}")
        self.source = source
        self.rows = np.asarray(rows, np.int64)
        self.kind = source.kind
        self.dim = int(dim)
        self.batch_size = batch_size
        self.seed = int(seed)
        self.shuffle = shuffle
        self.max_len = int(max_len)
        self.name = name
        self.images = images
        self.batches_per_epoch = -(-len(self.rows) // batch_size)
        self.num_batches = None if shuffle else self.batches_per_epoch
        self._order = (None, None)

    def order(self, epoch: int) -> np.ndarray:
        """Positions into `rows` in the order of `epoch` (file order when not shuffling)."""
        if not self.shuffle:
            return np.arange(len(self.rows))
        if self._order[0] != epoch:
            self._order = (epoch, np.random.default_rng([self.seed, epoch]).permutation(len(self.rows)))
        return self._order[1]

    def chosen(self, position: int) -> np.ndarray:
        """The source rows of the batch at `position`."""
        epoch, index = divmod(int(position), self.batches_per_epoch)
        return self.rows[self.order(epoch)[index * self.batch_size:(index + 1) * self.batch_size]]

    def batch(self, position: int) -> Batch:
        """The batch at `position`: a pure function of (data, seed, position)."""
        position = check_position(self.name, position, self.num_batches)
        rows = self.chosen(position)
        x, mask = self.source.read(rows)
        steps = max(1, self.source.length(rows))
        if self.max_len > 0:
            steps = min(steps, self.max_len)
        x, mask = x[:steps], mask[:steps]
        pad = self.batch_size - len(rows)
        if pad:
            x = np.concatenate([x, np.zeros((steps, pad) + x.shape[2:], x.dtype)], axis=1)
            mask = np.concatenate([mask, np.zeros((steps, pad), np.float32)], axis=1)
        return Batch(x=np.ascontiguousarray(x), mask=np.ascontiguousarray(mask), position=int(position))

    @property
    def sentences(self) -> list:
        """Token streams only: each sequence's ids up to its last unmasked step (masked ids 0), for
        the n-gram references."""
        if self.kind != "tokens":
            raise AttributeError("sentences: a frames stream has none")
        out = []
        step = max(1, SCAN_BYTES // max(1, self.source.steps * 8))
        for i in range(0, len(self.rows), step):
            rows = self.rows[i:i + step]
            x, _ = self.source.read(rows)
            for col, r in enumerate(rows):
                out.append(x[:self.source.length([r]), col])
        return out


def streams(aset: ArraySet, batch: int, eval_batch: int, seed: int, split: str, max_len: int = 0) -> tuple:
    """(train stream, held-out stream of `split`)."""
    f, rows = aset.parts["train"]
    train = ArrayStream(f, rows, aset.dim, batch, seed, shuffle=True, max_len=max_len,
                        name=f"{len(rows):,} sequences of {f.path}")
    g, held = aset.parts[split]
    test = ArrayStream(g, held, aset.dim, eval_batch, seed, shuffle=False, max_len=max_len,
                       name=f"{len(held):,} sequences of {g.path}")
    return train, test

