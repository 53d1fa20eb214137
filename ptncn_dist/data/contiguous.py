"""Contiguous text streams: the usual language-model layout, beside the sentence batches.

The split's sentences, in file order, are joined into one token sequence (a separator token
between sentences) and cut into `batch_size` equal columns; position p is the window of
`window` tokens at p * window of every column. A learner that carries its recurrent state from
one window to the next (the LSTM's `run_stream`) then reads each column as one long sequence.
Windows wrap around at the end of the columns; `starts_pass(p)` says when a pass begins, where
a carried state should start from zero again.
"""
from __future__ import annotations

import numpy as np

from .batch import Batch


class ContiguousStream:
    """Windows (window, batch_size) of `batch_size` contiguous columns of the joined split."""

    kind = "tokens"

    def __init__(self, sentences: list, vocab: list, batch_size: int, window: int, separator: int, name: str = ""):
        if batch_size < 1 or window < 1:
            raise ValueError(f"batch size and window must be >= 1, got {batch_size} and {window}")
        pieces = []
        for s in sentences:
            pieces += [np.asarray(s, dtype=np.int32), np.array([separator], dtype=np.int32)]
        joined = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int32)
        per_column = len(joined) // batch_size
        if per_column < window:
            raise ValueError(f"{name or 'text'}: {len(joined):,} tokens cannot fill {batch_size} columns "
                             f"of one {window}-token window")
        self.columns = joined[:per_column * batch_size].reshape(batch_size, per_column).T.copy()  # (L, B)
        self.vocab, self.dim, self.batch_size, self.window = vocab, len(vocab), batch_size, window
        self.windows_per_pass = per_column // window
        self.name = name

    def starts_pass(self, position: int) -> bool:
        return position % self.windows_per_pass == 0

    def batch(self, position: int) -> Batch:
        start = (position % self.windows_per_pass) * self.window
        x = self.columns[start:start + self.window]
        return Batch(x=x, mask=np.ones(x.shape, dtype=np.float32), position=int(position))
