"""Losses (BCE, SE, NLL -> bits per character and perplexity) and the metrics.jsonl writer.

Step functions return *sums* and a row count so that averages over many steps, batches and
workers are exact; `summarize` turns the sums into the reported numbers.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

import numpy as np

_EPS = 1e-7


def frame_loss_sums(xhat, x, mask, xp) -> dict:
    """Per-frame binary cross-entropy and squared error, summed over unmasked rows.

    xhat, x: (B, D); mask: (B,) or (B, 1). BCE clips xhat to [eps, 1 - eps] (as the authors do).
    """
    m = mask.reshape(-1)
    p = xp.clip(xhat, _EPS, 1.0 - _EPS)
    log_q = xp.log1p(-p)
    log_p = xp.log(p, out=p)
    log_p -= log_q
    bce = -(xp.einsum("ij,ij->i", x, log_p) + log_q.sum(axis=1))
    diff = xhat - x
    se = xp.einsum("ij,ij->i", diff, diff)
    return {"bce": float(bce @ m), "se": float(se @ m), "count": float(m.sum())}


def token_loss_sums(probs, ids, mask, xp) -> dict:
    """Negative log-likelihood (nats) of the true tokens `ids` (B,) under `probs` (B, V)."""
    m = mask.reshape(-1)
    rows = xp.arange(ids.shape[0])
    p = xp.clip(probs[rows, ids], 1e-12, 1.0)
    return {"nll": float((-xp.log(p) * m).sum()), "count": float(m.sum())}


BY_T = "by_t"
BUCKETS = ((1, 1), (2, 2), (3, 4), (5, 8), (9, 16), (17, 32), (33, None))


def step_loss_sums(xp, xhat, x, m) -> dict:
    """Loss sums of one step from layer 1's forecast: BCE/SE for frames (x rows), NLL for
    tokens (x ids, -1 where there is none)."""
    if x.dtype.kind in "iu":
        return token_loss_sums(xhat, xp.where(x >= 0, x, 0), m, xp)
    return frame_loss_sums(xhat, x, m, xp)


def add_sums(total: dict, part: dict) -> dict:
    """Add loss sums into `total`; nested dicts (the per-position sums) are added key by key."""
    for k, v in part.items():
        if isinstance(v, dict):
            add_sums(total.setdefault(k, {}), v)
        else:
            total[k] = total.get(k, 0.0) + v
    return total


def accumulate(total: dict, part: dict, t: int, *, by_t: bool = False) -> dict:
    """Add step t's loss sums into `total`; with `by_t`, also into total["by_t"][t] (the loss by
    position in the sequence). Every engine and the references accumulate through this."""
    add_sums(total, part)
    if by_t:
        add_sums(total.setdefault(BY_T, {}).setdefault(t, {}), part)
    return total


def bucket_label(t: int) -> str:
    """The position bucket of a text position t >= 1: 1, 2, 3-4, 5-8, 9-16, 17-32, 33+."""
    for lo, hi in BUCKETS:
        if hi is None:
            return f"{lo}+"
        if lo <= t <= hi:
            return str(lo) if lo == hi else f"{lo}-{hi}"
    raise ValueError(f"position {t} has no bucket (positions start at 1)")


def by_position(sums: dict, length: int, prefix: str = "") -> dict:
    """Loss by position from `sums["by_t"]` (position t: the forecast of x[t] from the steps
    before it; position 0 is left out). Frames: lists over positions 1..length-1 of bce, se and
    count, None where not scored. Tokens: dicts of bpc, ppl and count over position buckets
    (`BUCKETS`), buckets without tokens left out."""
    per = {t: v for t, v in (sums.get(BY_T) or {}).items() if t >= 1 and v.get("count", 0.0) > 0}
    if not per:
        return {}
    if any("bce" in v for v in per.values()):
        rows = [summarize(per[t]) if t in per else {} for t in range(1, max(length, max(per) + 1))]
        out = {prefix + f"{k}_by_t": [r.get(k) for r in rows] for k in ("bce", "se")}
        out[prefix + "count_by_t"] = [per[t]["count"] if t in per else None for t in range(1, len(rows) + 1)]
        return out
    buckets: dict = {}
    for t in sorted(per):
        add_sums(buckets.setdefault(bucket_label(t), {}), per[t])
    order = [bucket_label(lo) for lo, _ in BUCKETS]
    rows = {b: summarize(buckets[b]) for b in order if b in buckets}
    out = {prefix + f"{k}_by_t": {b: r[k] for b, r in rows.items()} for k in ("bpc", "ppl")}
    out[prefix + "count_by_t"] = {b: buckets[b]["count"] for b in rows}
    return out


def summarize(sums: dict, prefix: str = "") -> dict:
    """Averages per counted row: bce, se per frame; nll, bpc, ppl per token."""
    n = sums.get("count", 0.0)
    if n <= 0:
        return {}
    out = {}
    if "bce" in sums:
        out[prefix + "bce"] = sums["bce"] / n
        out[prefix + "se"] = sums["se"] / n
    if "nll" in sums:
        nll = sums["nll"] / n
        out[prefix + "nll"] = nll
        out[prefix + "bpc"] = nll / math.log(2.0)
        out[prefix + "ppl"] = math.exp(min(nll, 700.0))
    return out


def main_loss(summary: dict, prefix: str = "") -> float | None:
    """The headline loss: BCE per frame for video, NLL per token for text."""
    for key in ("bce", "nll"):
        if prefix + key in summary:
            return summary[prefix + key]
    return None


@dataclass
class MetricsWriter:
    """Appends one JSON object per line to RUN_DIR/metrics.jsonl (flushed each write)."""

    path: str
    _fh: object = field(default=None, repr=False)

    def write(self, record: dict) -> None:
        if self._fh is None:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            self._fh = open(self.path, "a", encoding="utf-8")
        self._fh.write(json.dumps(_plain(record)) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def read_metrics(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _plain(obj):
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj
