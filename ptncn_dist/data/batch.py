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
