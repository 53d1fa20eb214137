"""Held-out evaluation: test losses (overall and by position) with weights frozen, the frame
strip for plots, and the reference forecasts scored on the same batches."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import metrics
from . import references
from ..core.finite import StepDiverged
from ..errors import DivergenceError


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


def nonfinite_where(engine, sighting=None) -> str:
    """Where a NaN or Inf is: the layer where it first appeared (what it was) and every layer that
    holds non-finite values now; the trainer's and the evaluation's divergence lines share it."""
    layers = engine.nonfinite_layers()
    now = "; ".join(f"layer {l}: {', '.join(names[:6])}{' ...' if len(names) > 6 else ''}"
                    for l, names in sorted(layers.items()))
    if sighting is not None:
        where = f"layer {sighting.layer} (first seen: {sighting.what})"
    elif layers:
        where = f"layer {min(layers)} ({', '.join(layers[min(layers)][:6])})"
    else:
        where = "layer 1's forecast (every layer's state is finite)"
    return where + (f"; non-finite now in {now}" if now and sighting is not None else "")


def diverged(engine, exc: StepDiverged, batch: int, step: int | None = None) -> DivergenceError:
    """The one-line DivergenceError for a NaN or Inf in an evaluation (as the trainer words one in
    training)."""
    after = f" after step {step}" if step is not None else ""
    return DivergenceError(f"non-finite values in the evaluation{after} (test batch {batch}, sequence step "
                           f"{exc.t}) in {nonfinite_where(engine, exc.sighting)}: the evaluated weights and "
                           f"settings give NaN or Inf")


def run_evaluation(engine, stream, n_batches: int, t_prime: int, strip_seqs: int = 0,
                   step: int | None = None) -> Evaluation:
    """Test losses over `evaluation_batches(stream, n_batches)`, weights frozen (the state correction
    still runs: P-TNCN's inference is part of its forecast), with the loss by position. A NaN or
    Inf raises a one-line DivergenceError (`diverged`; `step`, if given, is the training step)."""
    sums: dict = {}
    length, strip = 0, None
    for pos, b in enumerate(evaluation_batches(stream, n_batches)):
        keep = bool(strip_seqs) and pos == 0 and b.x.ndim == 3
        try:
            part, xhats = engine.run_segment(b.x, b.mask, 0, b.x.shape[0], learn=False, t_prime=t_prime,
                                             keep_xhat=keep, by_t=True)
        except StepDiverged as exc:
            raise diverged(engine, exc, pos, step) from None
        metrics.add_sums(sums, part)
        length = max(length, b.x.shape[0])
        if keep and xhats:
            strip = b.x[:, :strip_seqs], np.stack(xhats)[:, :strip_seqs]
    losses = {**metrics.summarize(sums, prefix="test_"), **metrics.by_position(sums, length, prefix="test_")}
    return Evaluation(losses, strip)


def evaluate(engine, stream, n_batches: int, t_prime: int, step: int | None = None) -> dict:
    """Test losses (and loss by position) over the first `n_batches` batches of `stream`."""
    return run_evaluation(engine, stream, n_batches, t_prime, step=step).losses


def reference_losses(streams, n_batches: int, t_prime: int):
    """(fitted references, their losses on the test batches `evaluate` reads)."""
    fitted = references.fit(streams.train)
    return fitted, references.score(fitted, evaluation_batches(streams.test, n_batches), t_prime)
