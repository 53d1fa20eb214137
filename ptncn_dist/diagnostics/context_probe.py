"""How much of the past does a trained model use? A context-length probe.

Loss by position says whether a forecast improves as a sequence goes on; it cannot say which
frames a model relies on. The probe asks directly: for each target position t, run the frozen
model from a zero state on the k frames x[t-k..t-1] only (a segment of k + 1 steps whose last
step forecasts x[t]) and score that forecast. If the loss with k = 2 equals the loss with the whole
past, nothing older than two frames reaches the forecast. Every k is scored on the same targets
(positions >= max k), next to the loss with the whole past on those targets.

Works on any engine (it only calls `run_segment`) and for video and text alike.
"""
from __future__ import annotations

from .. import metrics
from ..core.finite import StepDiverged
from .evaluation import diverged


def _score_segment(engine, x, mask, start: int, t: int) -> dict:
    """Loss sums of the forecast of x[t] after a zero state and the frames x[start..t-1]."""
    seg_x, seg_m = x[start:t + 1], mask[start:t + 1]
    sums, _ = engine.run_segment(seg_x, seg_m, 0, seg_x.shape[0], learn=False, t_prime=t - start)
    return sums


def probe(engine, stream, contexts, n_batches: int = 1) -> dict:
    """{"positions": [first, last], "by_context": {k: summary}, "full": summary} where each
    summary is `metrics.summarize` of the forecasts of positions >= max(contexts)."""
    ks = sorted({int(k) for k in contexts})
    if not ks or ks[0] < 1:
        raise ValueError(f"context lengths must be >= 1, not {contexts!r}")
    n = n_batches if stream.num_batches is None else min(n_batches, stream.num_batches)
    by_k = {k: {} for k in ks}
    full: dict = {}
    first = ks[-1]
    last = None
    for pos in range(n):
        b = stream.batch(pos)
        T = b.x.shape[0]
        if T <= first:
            continue
        last = T - 1
        try:
            whole, _ = engine.run_segment(b.x, b.mask, 0, T, learn=False, t_prime=first)
            metrics.add_sums(full, whole)
            for t in range(first, T):
                for k in ks:
                    metrics.add_sums(by_k[k], _score_segment(engine, b.x, b.mask, t - k, t))
        except StepDiverged as exc:  # one line, as the evaluation says it
            raise diverged(engine, exc, pos) from None
    if last is None:
        raise ValueError(f"no test sequence is longer than the longest context ({first})")
    return {"positions": [first, last],
            "by_context": {k: metrics.summarize(s) for k, s in by_k.items()},
            "full": metrics.summarize(full)}
