"""The messages layers exchange: one schema (step, iteration, layer, kind, dtype, shape,
payload), msgpack.

A message is always a (B, d) array of activations or errors, one of KINDS, sent by layer `layer`
at clock `step`. `iteration` k tells apart the rounds of a step with K > 1 state-correction
iterations (the k-th iterate s^k goes up as "z", its prediction down as "pred"; 0 otherwise).
Weights and gradients have no kind, so no message can carry one: this is the locality of the
learning rule made into a wire format.
"""
from __future__ import annotations

from dataclasses import dataclass

import msgpack
import numpy as np

from ..core.backend import to_numpy

VERSION = 2
KINDS = ("z", "pred", "eps", "y")
_DTYPES = {"<f4", "<f8"}


class MessageError(ValueError):
    """A message that does not decode to a valid (step, iteration, layer, kind, array)."""


@dataclass(frozen=True)
class Message:
    step: int
    layer: int
    kind: str
    array: np.ndarray
    iteration: int = 0

    def encode(self) -> bytes:
        """msgpack bytes; the array buffer is packed from a memoryview (no intermediate copy)."""
        if self.kind not in KINDS:
            raise MessageError(f"message kind must be one of {KINDS}, not {self.kind!r}")
        arr = np.ascontiguousarray(to_numpy(self.array))
        if arr.ndim != 2 or arr.dtype.str not in _DTYPES:
            raise MessageError(f"a message carries a 2-D float array, not {arr.dtype} {arr.shape}")
        payload = memoryview(arr.reshape(-1)).cast("B") if arr.size else b""
        return msgpack.packb([VERSION, self.step, self.iteration, self.layer, self.kind, arr.dtype.str,
                              list(arr.shape), payload], use_bin_type=True)

    @staticmethod
    def decode(data: bytes) -> "Message":
        try:
            version, step, iteration, layer, kind, dtype, shape, payload = msgpack.unpackb(data, raw=False)
        except Exception as exc:
            raise MessageError(f"undecodable message: {exc}") from None
        if version != VERSION or kind not in KINDS or dtype not in _DTYPES or len(shape) != 2:
            raise MessageError(f"bad message header: version {version}, kind {kind!r}, dtype {dtype!r}, shape {shape}")
        arr = np.frombuffer(payload, dtype=np.dtype(dtype))
        if arr.size != shape[0] * shape[1]:
            raise MessageError(f"message payload holds {arr.size} values, shape {shape} needs {shape[0] * shape[1]}")
        return Message(int(step), int(layer), kind, arr.reshape(shape), int(iteration))
