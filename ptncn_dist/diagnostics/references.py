"""Reference forecasts that ignore (most of) time, scored exactly as the model is: a sequence
model that uses time must beat them.

Video (fitted on training frames, scored on the test batches `evaluate` reads):
- mean frame: the pixel-wise mean of the first `MEAN_BATCHES` training batches;
- copy previous: frame t forecast by frame t-1;
- blur blend: w * box5(frame t-1) + (1 - w) * mean frame. box5 is a 5x5 box blur with zero
  padding (the same size out; border pixels average in zeros). w minimises the BCE on the
  first `FIT_BATCHES` training batch over the grid 0, 0.01, ..., 1.
The frame before a sequence's first is taken to be the mean frame (only scored when t_prime = 0).
The blur blend needs square images: a stream that says it holds none (`images = False`, a user's
arrays of D values per step) or frames that are not square get the mean frame and copy previous
only (`frame_predictions` then gives None for the blend). Each is scored in BCE and SE; which of
them a run reports is `report_metric`'s choice (SE under model.output "identity" or "tanh").

Text: add-one smoothed unigram, bigram and trigram models counted on the training split,
sentences cut to data.max_len as the model sees them, the context reset at each sentence start
(positions before it are a start symbol outside the vocabulary).

Every score goes through metrics.frame_loss_sums / token_loss_sums and metrics.accumulate over
steps t >= t_prime and unmasked rows, so it is comparable number for number with the model's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .. import metrics

MEAN_BATCHES = 8
FIT_BATCHES = 1
FRAME_NAMES = ("mean_frame", "copy_previous", "blur_blend")
TEXT_ORDERS = {"unigram": 1, "bigram": 2, "trigram": 3}


# -- video -----------------------------------------------------------------------------------------
def mean_frame(xs, masks) -> np.ndarray:
    """Pixel-wise mean over every unmasked frame of (T, B, D) batches `xs` with (T, B) `masks`."""
    total = sum(np.einsum("tbd,tb->d", np.asarray(x, np.float64), np.asarray(m, np.float64))
                for x, m in zip(xs, masks))
    count = sum(float(np.sum(m)) for m in masks)
    if count <= 0:
        raise ValueError("mean_frame needs at least one unmasked training frame")
    return total / count


def box5(frames, side: int) -> np.ndarray:
    """5x5 box blur of flattened square frames (..., side*side), zero padding, same shape out."""
    a = np.asarray(frames, np.float64).reshape(-1, side, side)
    c = np.pad(a, ((0, 0), (3, 2), (3, 2))).cumsum(axis=1).cumsum(axis=2)
    s = c[:, 5:, 5:] - c[:, :-5, 5:] - c[:, 5:, :-5] + c[:, :-5, :-5]
    return (s / 25.0).reshape(np.shape(frames))


def previous_frames(x, mean) -> np.ndarray:
    """Frame t-1 for every step t of (T, B, D) `x`; the mean frame before the first."""
    x = np.asarray(x, np.float64)
    prev = np.empty_like(x)
    prev[0] = mean
    prev[1:] = x[:-1]
    return prev


def blur_blend(prev, mean, w: float, side: int) -> np.ndarray:
    """w * box5(prev) + (1 - w) * mean, for frames `prev` (..., D)."""
    return w * box5(prev, side) + (1.0 - w) * np.asarray(mean, np.float64)


def _blend_bce(blurred, target, mean, w: float) -> float:
    p = w * blurred + (1.0 - w) * mean
    return metrics.frame_loss_sums(p, target, np.ones(len(target)), np)["bce"]


def fit_blend_weight(xs, mean, side: int) -> float:
    """The w in 0, 0.01, ..., 1 of least training BCE for the blur blend, over steps t >= 1 of
    (T, B, D) training batches `xs`. The BCE of a blend is convex in w, so a ternary search over
    the grid finds it in about 15 evaluations instead of 101."""
    blurred = np.concatenate([box5(np.asarray(x[:-1], np.float64), side).reshape(-1, x.shape[-1]) for x in xs])
    target = np.concatenate([np.asarray(x[1:], np.float64).reshape(-1, x.shape[-1]) for x in xs])
    if not len(target):
        raise ValueError("fit_blend_weight needs sequences of at least 2 frames")
    mean = np.asarray(mean, np.float64)
    seen: dict = {}

    def cost(i: int) -> float:
        if i not in seen:
            seen[i] = _blend_bce(blurred, target, mean, i / 100)
        return seen[i]

    lo, hi = 0, 100
    while hi - lo > 2:
        a, b = lo + (hi - lo) // 3, hi - (hi - lo) // 3
        if cost(a) <= cost(b):
            hi = b
        else:
            lo = a
    return min(range(lo, hi + 1), key=cost) / 100


@dataclass
class FrameFit:
    """What the video references learn from training frames (w and side None: no blur blend)."""

    mean: np.ndarray
    w: float | None
    side: int | None


def fit_frames(train_batches, images: bool = True) -> FrameFit:
    """The mean frame over `MEAN_BATCHES` training batches, and w over the first `FIT_BATCHES`
    (only for square `images`)."""
    xs = [b.x for b in train_batches]
    mean = mean_frame(xs, [b.mask for b in train_batches])
    side = int(round(math.sqrt(xs[0].shape[-1])))
    if not images or side * side != xs[0].shape[-1] or xs[0].shape[0] < 2:
        return FrameFit(mean, None, None)
    return FrameFit(mean, fit_blend_weight(xs[:FIT_BATCHES], mean, side), side)


def frame_predictions(fit: FrameFit, x) -> dict:
    """Each video reference's forecast of every frame of (T, B, D) `x`, as (T, B, D) arrays (the
    blur blend None when `fit` has none)."""
    prev = previous_frames(x, fit.mean)
    blend = None if fit.w is None else blur_blend(prev, fit.mean, fit.w, fit.side)
    return {"mean_frame": np.broadcast_to(fit.mean, prev.shape), "copy_previous": prev, "blur_blend": blend}


def score_frames(fit: FrameFit, test_batches, t_prime: int) -> dict:
    """BCE and SE per frame of each video reference on `test_batches`, overall and by position."""
    sums = {name: {} for name in FRAME_NAMES if name != "blur_blend" or fit.w is not None}
    length = 0
    for b in test_batches:
        length = max(length, b.x.shape[0])
        preds = {k: v for k, v in frame_predictions(fit, b.x).items() if v is not None}
        for t in range(t_prime, b.x.shape[0]):
            for name, p in preds.items():
                part = metrics.frame_loss_sums(np.array(p[t]), np.asarray(b.x[t], np.float64), b.mask[t], np)
                metrics.accumulate(sums[name], part, t, by_t=True)
    out = {"blur_blend_w": fit.w} if fit.w is not None else {}
    for name, s in sums.items():
        out.update(_named(name, s, length, ("bce", "se")))
    return out


# -- text ------------------------------------------------------------------------------------------
@dataclass
class NgramCounts:
    """Add-one n-gram counts: sorted keys of (context, token) and of contexts, with counts."""

    order: int
    vocab: int
    keys: np.ndarray
    counts: np.ndarray
    ctx_keys: np.ndarray
    ctx_counts: np.ndarray


def _keys(tokens, positions, order: int, vocab: int):
    """(context key, (context, token) key) of each token of flat, sentence-contiguous arrays;
    positions before a sentence start are the start symbol `vocab`."""
    tokens = np.asarray(tokens, np.int64)
    positions = np.asarray(positions, np.int64)
    if (vocab + 1) ** max(order - 1, 0) * vocab >= 2 ** 62:
        raise ValueError(f"an order-{order} model over {vocab} symbols is too large to key in int64")
    ctx = np.zeros_like(tokens)
    for k in range(1, order):
        prev = np.full_like(tokens, vocab)
        prev[k:] = tokens[:-k]
        prev[positions < k] = vocab
        ctx += prev * (vocab + 1) ** (k - 1)
    return ctx, ctx * vocab + tokens


def count_ngrams(sentences, order: int, vocab: int, max_len: int = 0) -> NgramCounts:
    """Counts of an order-`order` model over id arrays `sentences` (each cut to `max_len` > 0)."""
    cut = [np.asarray(s[:max_len] if max_len > 0 else s, np.int64) for s in sentences]
    cut = [s for s in cut if len(s)]
    if not cut:
        raise ValueError("count_ngrams needs at least one non-empty training sentence")
    tokens = np.concatenate(cut)
    positions = np.concatenate([np.arange(len(s)) for s in cut])
    ctx, full = _keys(tokens, positions, order, vocab)
    keys, counts = np.unique(full, return_counts=True)
    ctx_keys, ctx_counts = np.unique(ctx, return_counts=True)
    return NgramCounts(order, vocab, keys, counts, ctx_keys, ctx_counts)


def _lookup(keys, counts, query) -> np.ndarray:
    i = np.minimum(np.searchsorted(keys, query), len(keys) - 1)
    return np.where(keys[i] == query, counts[i], 0).astype(np.float64)


def ngram_nll(model: NgramCounts, x) -> np.ndarray:
    """-ln P(x[t] | context) under add-one smoothing, for each entry of a (T, B) id batch whose
    columns are sentences from t = 0: (c(context, token) + 1) / (c(context) + V)."""
    x = np.asarray(x, np.int64)
    T, B = x.shape
    ctx, full = _keys(x.T.reshape(-1), np.tile(np.arange(T), B), model.order, model.vocab)
    seen = _lookup(model.keys, model.counts, full)
    p = (seen + 1.0) / (_lookup(model.ctx_keys, model.ctx_counts, ctx) + model.vocab)
    return -np.log(p).reshape(B, T).T


def score_text(models: dict, test_batches, t_prime: int) -> dict:
    """NLL, bits per token and perplexity of each n-gram model on `test_batches`, overall and by
    position bucket."""
    out = {}
    for name, model in models.items():
        sums: dict = {}
        for b in test_batches:
            mask = np.asarray(b.mask, np.float64)
            nll = ngram_nll(model, np.where(mask > 0, b.x, 0))
            for t in range(t_prime, b.x.shape[0]):
                part = {"nll": float(nll[t] @ mask[t]), "count": float(mask[t].sum())}
                metrics.accumulate(sums, part, t, by_t=True)
        out.update(_named(name, sums, 0, ("bpc", "ppl")))
    return out


# -- both ------------------------------------------------------------------------------------------
def _named(name: str, sums: dict, length: int, keys) -> dict:
    """`name`_<key> and `name`_<key>_by_t for each reported key."""
    overall = metrics.summarize(sums)
    pos = metrics.by_position(sums, length)
    out = {f"{name}_{k}": overall.get(k) for k in keys}
    out.update({f"{name}_{k}_by_t": pos[f"{k}_by_t"] for k in keys if f"{k}_by_t" in pos})
    return out


@dataclass
class Fitted:
    """References fitted on a training stream: a FrameFit for video, n-gram counts for text."""

    kind: str
    frames: FrameFit | None = None
    ngrams: dict | None = None


def fit(train_stream) -> Fitted:
    """Fit the references on a training stream (BouncingStream, SentenceStream, ArrayStream: a
    token one offers `.sentences`, `.dim` and `.max_len`; a frames one `images`, default True)."""
    if train_stream.kind == "frames":
        batches = [train_stream.batch(p) for p in range(MEAN_BATCHES)]
        return Fitted("frames", frames=fit_frames(batches, getattr(train_stream, "images", True)))
    models = {name: count_ngrams(train_stream.sentences, order, train_stream.dim, train_stream.max_len)
              for name, order in TEXT_ORDERS.items()}
    return Fitted("tokens", ngrams=models)


def score(fitted: Fitted, test_batches, t_prime: int) -> dict:
    """Every reference's test loss on `test_batches` (overall and by position)."""
    if fitted.kind == "frames":
        return score_frames(fitted.frames, test_batches, t_prime)
    return score_text(fitted.ngrams, test_batches, t_prime)


def report_metric(cfg, kind: str) -> str:
    """The loss a run reports and compares with the references: "se" (squared error per frame) for
    frames under model.output "identity" or "tanh", else "bce"; for tokens "ppl" (perplexity) at
    word level (ptb_word, or text with data.format "word"), else "bpc" (bits per character)."""
    if kind == "frames":
        output = cfg.model.output
        return "se" if output in ("identity", "tanh") else "bce"
    word = cfg.data.source == "ptb_word" or (cfg.data.source == "text" and cfg.data.format == "word")
    return "ppl" if word else "bpc"


def headline(ref: dict) -> dict:
    """The overall reference losses only (no by-position lists): what a log line shows."""
    return {k: v for k, v in ref.items() if not k.endswith("_by_t") and k != "blur_blend_w"}


def comparison(final: dict, ref: dict, metric: str) -> str | None:
    """'test_bce 372.1 vs best reference blur_blend_bce 404.3 (model better by 8.0%)', or None
    without a test loss or references."""
    model = final.get(f"test_{metric}")
    cands = {k: v for k, v in headline(ref).items() if k.endswith(f"_{metric}") and v is not None}
    if model is None or not cands:
        return None
    name = min(cands, key=cands.get)
    best = cands[name]
    gap = 100.0 * (best - model) / best
    return (f"test_{metric} {model:.4g} vs best reference {name} {best:.4g} "
            f"(model {'better' if gap >= 0 else 'worse'} by {abs(gap):.1f}%)")
