"""The array module ("xp": numpy or cupy) and the dtype policy.

Every piece of math in the package is written against an `xp` handed to it, so the same code runs
on NumPy (CPU) and CuPy (GPU). Moving arrays between the two happens only here.
"""
from __future__ import annotations

import numpy as np

from .errors import ConfigError

DTYPES = {"float32": np.float32, "float64": np.float64}


def get_xp(device: str = "cpu"):
    """numpy for "cpu"; cupy for "gpu" (a clear error when CuPy or a GPU is missing)."""
    if device == "cpu":
        return np
    if device == "gpu":
        try:
            import cupy
        except ImportError as exc:
            raise ConfigError("device = 'gpu' needs CuPy: pip install 'ptncn_dist[gpu]'") from exc
        if not cupy.is_available():
            raise ConfigError("device = 'gpu' but CuPy sees no CUDA GPU on this machine")
        return cupy
    raise ConfigError(f"device must be 'cpu' or 'gpu', not {device!r}")


def get_dtype(name: str):
    try:
        return DTYPES[name]
    except KeyError:
        raise ConfigError(f"dtype must be one of {sorted(DTYPES)}, not {name!r}") from None


def xp_of(array):
    """The array module an array belongs to."""
    mod = type(array).__module__
    if mod.startswith("cupy"):
        import cupy
        return cupy
    return np


def to_numpy(array) -> np.ndarray:
    """A host (NumPy) copy or view of a NumPy or CuPy array."""
    if isinstance(array, np.ndarray):
        return array
    if hasattr(array, "get"):
        return array.get()
    return np.asarray(array)


def to_xp(xp, array, dtype=None):
    """`array` on the device of `xp` (no copy when it is already there with that dtype)."""
    out = xp.asarray(array)
    if dtype is not None and out.dtype != dtype and out.dtype.kind == "f":
        out = out.astype(dtype)
    return out


def limit_blas_threads(n: int | None) -> None:
    """Pin NumPy's BLAS to n threads in this process (None leaves it as it is)."""
    if n is None:
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(limits=int(n), user_api="blas")
