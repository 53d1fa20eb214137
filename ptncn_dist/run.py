"""A trained run, for use from Python and by `ptncn eval`, `export` and `predict`.

    run = ptncn_dist.load_run("runs/example")
    xhat = run.forecast(x)          # x: (B, T, D) values or (B, T) token ids
    run.evaluate()                  # the losses `ptncn eval` reports, by position too

`load_run` restores the newest checkpoint that verifies, with the checks `ptncn eval` makes: a
damaged newer one stops it with one line unless `allow_older`. A run made by either engine loads
into the single-process engine: the arithmetic is the same, so are the forecasts.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import numpy as np

from . import checkpoint
from .checkpoint.rundir import read_run_id
from .checkpoint.storage import display
from .config import Config, load
from .data import Batch, Streams, open_streams
from .diagnostics.evaluation import run_evaluation
from .engines.factory import build_engine
from .errors import DataError, PtncnError
from .training.checkpoints import expect_for


def _finite_or_masked(x: np.ndarray, mask) -> np.ndarray:
    """`x` with its masked-out steps zeroed; DataError naming the first (sequence, step) that
    holds NaN or Inf and is not masked out (padding may be NaN, as in a user's own files)."""
    bad = ~np.isfinite(x).all(axis=2) if x.dtype.kind == "f" else np.zeros(x.shape[:2], bool)
    if mask is not None and np.shape(mask) == x.shape[:2]:
        off = np.asarray(mask) == 0
        if (bad & off).any():
            x = np.where(off[:, :, None], 0, x)
        bad &= ~off
    if bad.any():
        b, t = (int(i) for i in np.argwhere(bad)[0])
        more = int(bad.sum()) - 1
        raise DataError(f"the input holds NaN or Inf at sequence {b}, step {t}"
                        + (f" (and at {more:,} more step{'s' if more > 1 else ''})" if more else "")
                        + "; mask such steps out (0 in the mask) or remove them")
    return x


@dataclass
class Run:
    """A restored run: its config, the step and checkpoint it was restored from, its data streams
    and a single-process engine holding its weights (which nothing here changes)."""

    run_dir: str
    config: Config
    step: int
    checkpoint: str
    streams: Streams
    engine: object

    @property
    def kind(self) -> str:
        """"frames" (real values, (B, T, D)) or "tokens" (ids, (B, T))."""
        return self.streams.train.kind

    @property
    def dim(self) -> int:
        """D for frames, the vocabulary size for tokens."""
        return int(self.streams.train.dim)

    @property
    def vocab(self) -> list | None:
        """The symbols of a text run (id -> symbol), None otherwise."""
        return getattr(self.streams.train, "vocab", None)

    def weights(self) -> dict[str, np.ndarray]:
        """Every layer's weights by name (M1, V1, U1, W1, E1, M2, ...), as `ptncn export` writes them."""
        return self.engine.weights()

    def _batch(self, x, mask) -> Batch:
        """Check a user's batch-major (B, T, D) / (B, T) array and make it a time-major Batch."""
        x = np.asarray(x)
        if self.kind == "frames":
            if x.ndim != 3 or x.dtype.kind not in "fiub" or x.shape[2] != self.dim:
                raise DataError(f"this run forecasts (B, T, {self.dim}) real values; got an array of shape "
                                f"{x.shape} and dtype {x.dtype}")
            x = _finite_or_masked(x, mask)
            xt = np.ascontiguousarray(x.astype(np.float32).transpose(1, 0, 2))
        else:
            if x.ndim != 2 or x.dtype.kind not in "iu":
                raise DataError(f"this run forecasts (B, T) token ids; got an array of shape {x.shape} and dtype {x.dtype}")
            if x.size and (x.min() < 0 or x.max() >= self.dim):
                raise DataError(f"token ids must lie in 0..{self.dim - 1} (this run's vocabulary); got "
                                f"{int(x.min())}..{int(x.max())}")
            xt = np.ascontiguousarray(x.astype(np.int32).T)
        if 0 in x.shape[:2]:
            raise DataError(f"the input holds no sequence step (shape {x.shape})")
        if mask is None:
            m = np.ones(xt.shape[:2], np.float32)
        else:
            mask = np.asarray(mask)
            if mask.shape != x.shape[:2]:
                raise DataError(f"the mask's shape {mask.shape} is not the input's (B, T) = {x.shape[:2]}")
            m = np.ascontiguousarray((mask != 0).astype(np.float32).T)
        return Batch(xt, m, 0)

    def forecast(self, x, mask=None) -> np.ndarray:
        """One-step-ahead forecasts of a batch of sequences: `out[:, t]` is the forecast of
        `x[:, t]` from `x[:, :t]` (t = 0: from the zero state), made with the test-time state
        correction exactly as evaluation runs it. Frames give (B, T, D) values; token ids give
        (B, T, V) probabilities over the vocabulary. The weights do not change."""
        b = self._batch(x, mask)
        _, xhats = self.engine.run_segment(b.x, b.mask, 0, b.x.shape[0], learn=False,
                                           t_prime=self.config.model.t_prime, keep_xhat=True)
        return np.stack(xhats, axis=1)

    def evaluate(self, x=None, mask=None, batches: int | None = None) -> dict:
        """The losses `ptncn eval` reports (test_bce / test_se for frames, test_bpc / test_ppl for
        tokens, and each by position): over the run's own held-out data when `x` is None (the
        first `batches` batches, default train.eval_batches), else over the sequences `x`."""
        t_prime = self.config.model.t_prime
        if x is None:
            n = batches or self.config.train.eval_batches
            return run_evaluation(self.engine, self.streams.test, n, t_prime, step=self.step).losses
        return run_evaluation(self.engine, _OneBatch(self._batch(x, mask)), 1, t_prime, step=self.step).losses


class _OneBatch:
    """A finite stream of one batch: a user's sequences, evaluated as a test stream is."""

    num_batches = 1

    def __init__(self, batch: Batch):
        self._batch = batch

    def batch(self, position: int) -> Batch:
        return self._batch


def load_run(run_dir: str, *, allow_older: bool = False) -> Run:
    """The run in `run_dir`, restored from its newest checkpoint that verifies. A damaged newer
    one (unreadable, altered, without a readable manifest) stops here with one line naming it and
    the step an older one would give, unless `allow_older` (then a warning line on stderr)."""
    path = os.path.join(run_dir, "config.toml")
    if not os.path.exists(path):
        raise PtncnError(f"{run_dir}: no config.toml there (not a run directory)")
    cfg = load(path, ['train.progress=false', 'engine.name="local"'])
    checkpoint.signing_key()  # a PTNCN_CHECKPOINT_KEY too short to use stops here
    streams = open_streams(cfg.data, cfg.train.seed)
    engine = build_engine(cfg, streams.train.dim, streams.train.kind)
    try:
        run_id = read_run_id(run_dir)
        root = checkpoint.root_for(cfg.train.checkpoint_dir, run_dir, run_id)
        loaded = checkpoint.latest_valid(root, cfg.hash(), restore=engine.load_shards,
                                         expect=expect_for(cfg, engine, streams.train.dim, run_id),
                                         warn=lambda msg: None, passthrough=engine.failure_types())
        if loaded is None:
            raise PtncnError(f"{run_dir}: no checkpoint to load under {display(root)}")
        if loaded.skipped:
            older = f"step {loaded.manifest['step']} ({display(loaded.path)})"
            if not allow_older:
                raise PtncnError(f"damaged checkpoint: {loaded.skipped[0]}; the newest usable one is the older "
                                 f"{older}; pass --allow-older to use it")
            for msg in loaded.skipped:
                print(f"warning: damaged checkpoint skipped: {msg}; using the older {older} (--allow-older)",
                      file=sys.stderr, flush=True)
    except BaseException:
        engine.close()
        raise
    return Run(run_dir, cfg, int(loaded.manifest["step"]), loaded.path, streams, engine)


def encode_text(run: Run, text: str) -> np.ndarray:
    """A text run's ids of `text` (one sequence): words split on whitespace for a word-level run,
    characters otherwise; a symbol outside the vocabulary is `<unk>` where the run has one."""
    vocab = run.vocab
    if vocab is None:
        raise DataError(f"{run.run_dir} was not trained on text (data.source = {run.config.data.source!r})")
    index = {s: i for i, s in enumerate(vocab)}
    if word_level(run):
        symbols = text.split()
    else:
        symbols = list(" ".join(text.split("\n")).strip())
        if " " not in index and "_" in index:  # PTB's character files write a space as "_"
            symbols = ["_" if c == " " else c for c in symbols]
    unk = index.get("<unk>")
    ids = []
    for sym in symbols:
        if sym not in index and unk is None:
            raise DataError(f"symbol {sym!r} is not in this run's vocabulary of {len(vocab)} symbols")
        ids.append(index.get(sym, unk))
    if not ids:
        raise DataError("the input text holds no symbol")
    return np.array(ids, np.int64)


def word_level(run: Run) -> bool:
    d = run.config.data
    return d.source == "ptb_word" or (d.source == "text" and d.format == "word")


def next_symbols(run: Run, ids: np.ndarray) -> np.ndarray:
    """(len(ids), V) probabilities of the symbol after each prefix ids[:t+1]. The forecast of a
    step is made before its input is seen, so one placeholder step after the text gives the
    forecast after its last symbol without that placeholder reaching it."""
    seq = np.concatenate([ids, [0]])[None, :]
    return run.forecast(seq)[0, 1:]


def generate(run: Run, ids: np.ndarray, n: int, seed: int = 0, temperature: float = 1.0) -> np.ndarray:
    """`n` symbols sampled one at a time after `ids`, each from the forecast after the text so
    far (the whole text is run again for each symbol: n forecasts of growing length). The unknown
    symbol `<unk>` is never sampled."""
    rng = np.random.default_rng(seed)
    out = np.asarray(ids, np.int64)
    unk = run.vocab.index("<unk>") if "<unk>" in run.vocab else None
    for _ in range(n):
        p = next_symbols(run, out)[-1].astype(np.float64)
        if unk is not None:
            p[unk] = 0.0
        if temperature != 1.0:
            p = np.exp(np.log(np.clip(p, 1e-12, 1.0)) / temperature)
        p /= p.sum()
        out = np.append(out, rng.choice(len(p), p=p))
    return out[len(ids):]


def decode(run: Run, ids) -> str:
    sep = " " if word_level(run) else ""
    return sep.join(run.vocab[int(i)] for i in ids)


__all__ = ["Run", "load_run"]
