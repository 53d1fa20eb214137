"""msgpack encoding of plain data with NumPy arrays inside: what checkpoints use.

Arrays travel as {"__nd__": dtype, "shape": [...], "data": bytes}; only plain numeric dtypes are
accepted on the way back, and nothing in a file can make the reader run code (no pickle).
"""
from __future__ import annotations

import msgpack
import numpy as np

from ..core.backend import to_numpy
from ..errors import CheckpointError

_ALLOWED = {np.dtype(t).str for t in (np.float16, np.float32, np.float64, np.int8, np.int16,
                                      np.int32, np.int64, np.uint8, np.uint16, np.uint32,
                                      np.uint64, np.bool_)}


def _default(obj):
    if hasattr(obj, "__cuda_array_interface__"):
        obj = to_numpy(obj)
    if isinstance(obj, np.ndarray):
        arr = np.ascontiguousarray(obj)
        if arr.dtype.str not in _ALLOWED:
            raise TypeError(f"arrays of dtype {arr.dtype} are not encoded")
        data = memoryview(arr.reshape(-1)).cast("B") if arr.size else b""
        return {"__nd__": arr.dtype.str, "shape": list(arr.shape), "data": data}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"cannot encode {type(obj).__name__}")


def _hook(obj):
    if "__nd__" in obj:
        dtype = obj["__nd__"]
        if dtype not in _ALLOWED:
            raise CheckpointError(f"array of dtype {dtype!r} is not allowed")
        shape = tuple(int(s) for s in obj["shape"])
        arr = np.frombuffer(obj["data"], dtype=np.dtype(dtype))
        if arr.size != int(np.prod(shape, dtype=np.int64)):
            raise CheckpointError(f"array data holds {arr.size} values, its shape {shape} needs "
                                  f"{int(np.prod(shape))}")
        return arr.reshape(shape).copy()
    return obj


def packb(obj) -> bytes:
    return msgpack.packb(obj, default=_default, use_bin_type=True)


def unpackb(data: bytes):
    """Decode bytes from `packb`; any malformed input raises CheckpointError."""
    try:
        return msgpack.unpackb(data, object_hook=_hook, raw=False, strict_map_key=False)
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"not a valid msgpack record: {type(exc).__name__}: {exc}") from None
