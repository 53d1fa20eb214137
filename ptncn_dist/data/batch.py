"""The unit every data stream hands to the trainer."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Batch:
    """One batch of sequences, time-major.

    x: frames (T, B, D) float32 in [0, 1], or tokens (T, B) int32 ids in [0, V).
    mask: (T, B) float32, 1 for a real step and 0 for padding (padded token ids are 0).
    position: the stream position this batch came from, so a run can resume exactly.
    """

    x: np.ndarray
    mask: np.ndarray
    position: int


def check_position(name: str, position, num_batches: int | None) -> int:
    """`position` as a stream position: an integer >= 0, below `num_batches` for a finite
    (evaluation) stream; ValueError / IndexError naming the stream otherwise."""
    if isinstance(position, bool) or int(position) != position or position < 0:
        raise ValueError(f"{name}: position must be an integer >= 0, got {position!r}")
    if num_batches is not None and position >= num_batches:
        raise IndexError(f"{name}: position {position} >= num_batches {num_batches}")
    return int(position)
