"""Held-out evaluation: test losses (overall and by position) with weights frozen, the frame
strip for plots, and the reference forecasts scored on the same batches."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import metrics, references


def evaluation_batches(stream, n_batches: int) -> list:
    """The test batches an evaluation reads: the first `n_batches` of `stream` (fewer if it ends)."""
    n = n_batches if stream.num_batches is None else min(n_batches, stream.num_batches)
    return [stream.batch(pos) for pos in range(n)]


@dataclass
class Evaluation:
    """Test losses (overall and by position) and, if asked, the first sequences' true and
    predicted frames (x, xhat), each (T, n_seq, D)."""

    losses: dict
    strip: tuple | None = None


def run_evaluation(engine, stream, n_batches: int, t_prime: int, strip_seqs: int = 0) -> Evaluation:
    """Test losses over `evaluation_batches(stream, n_batches)`, weights frozen (the state correction
    still runs: P-TNCN's inference is part of its forecast), with the loss by position."""
    sums: dict = {}
    length, strip = 0, None
    for pos, b in enumerate(evaluation_batches(stream, n_batches)):
        keep = bool(strip_seqs) and pos == 0 and b.x.ndim == 3
        part, xhats = engine.run_segment(b.x, b.mask, 0, b.x.shape[0], learn=False, t_prime=t_prime,
                                         keep_xhat=keep, by_t=True)
        metrics.add_sums(sums, part)
        length = max(length, b.x.shape[0])
        if keep and xhats:
            strip = b.x[:, :strip_seqs], np.stack(xhats)[:, :strip_seqs]
    losses = {**metrics.summarize(sums, prefix="test_"), **metrics.by_position(sums, length, prefix="test_")}
    return Evaluation(losses, strip)


def evaluate(engine, stream, n_batches: int, t_prime: int) -> dict:
    """Test losses (and loss by position) over the first `n_batches` batches of `stream`."""
    return run_evaluation(engine, stream, n_batches, t_prime).losses


def reference_losses(streams, n_batches: int, t_prime: int):
    """(fitted references, their losses on the test batches `evaluate` reads)."""
    fitted = references.fit(streams.train)
    return fitted, references.score(fitted, evaluation_batches(streams.test, n_batches), t_prime)
