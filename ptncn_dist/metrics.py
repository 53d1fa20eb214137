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


def add_sums(total: dict, part: dict) -> dict:
    for k, v in part.items():
        total[k] = total.get(k, 0.0) + v
    return total


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
