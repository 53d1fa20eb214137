"""The Adam update of one block of rows, element-wise and in place:

    m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;  p <- p - step * m / (sqrt(v) + eps)

where `step` is the bias-corrected learning rate and `g` a scratch block holding the gradient
(overwritten). With Numba (a dependency; the main job trains with Adam) a CPU block is one
fused pass: each element of p, m and v is read and written once, and the square root and the
division overlap the memory traffic. Otherwise, and on CuPy, seven in-place passes (BLAS axpby /
axpy and ufuncs with `out=`) that cost cache traffic only when the block fits the cache.
Both give the same numbers up to float rounding. `PTNCN_NUMBA=0` turns the fused pass off.
"""
from __future__ import annotations

import os

import numpy as np

from .backend import axpby, axpy

USE_NUMBA = os.environ.get("PTNCN_NUMBA", "1") != "0"
_KERNEL = []


def _fused():
    """The compiled kernel, or None where Numba is missing or turned off (compiled on first use)."""
    if not USE_NUMBA:
        return None
    if not _KERNEL:
        try:
            import numba
        except ImportError:
            _KERNEL.append(None)
        else:
            # error_model="numpy": a division by zero gives inf instead of raising, which lets
            # LLVM vectorize the loop; no fastmath, so every operation rounds as IEEE says.
            try:
                _KERNEL.append(numba.njit(nogil=True, cache=True, error_model="numpy")(_kernel))
            except RuntimeError:  # no writable cache directory: compile in each process
                _KERNEL.append(numba.njit(nogil=True, error_model="numpy")(_kernel))
    return _KERNEL[0]


def _kernel(p, m, v, g, b1, c1, b2, c2, eps, step):  # pragma: no cover - compiled by Numba
    for i in range(p.size):
        gi = g[i]
        mi = b1 * m[i] + c1 * gi
        vi = b2 * v[i] + c2 * (gi * gi)
        m[i] = mi
        v[i] = vi
        p[i] -= step * (mi / (np.sqrt(vi) + eps))


def _outer_kernel(p, m, v, x, y, scale, b1, c1, b2, c2, eps, step):  # pragma: no cover - Numba
    # g = scale * x.T @ y, each element formed and used at once: the whole update in one loop
    rows, cols = p.shape
    for i in range(rows):
        for j in range(cols):
            acc = 0.0  # the sum and the update in float64 (the scalars come as Python floats)
            for k in range(x.shape[0]):
                acc += x[k, i] * y[k, j]
            gi = scale * acc
            mi = b1 * m[i, j] + c1 * gi
            vi = b2 * v[i, j] + c2 * (gi * gi)
            m[i, j] = mi
            v[i, j] = vi
            p[i, j] -= step * (mi / (np.sqrt(vi) + eps))


_OUTER = []
TINY = 1 << 14  # elements: below this an update's call overheads outweigh its arithmetic


def _outer():
    """The compiled one-loop kernel, or None without Numba (compiled on first use)."""
    if not _OUTER:
        if _fused() is None:
            return None
        import numba
        try:
            _OUTER.append(numba.njit(nogil=True, cache=True, error_model="numpy")(_outer_kernel))
        except RuntimeError:
            _OUTER.append(numba.njit(nogil=True, error_model="numpy")(_outer_kernel))
    return _OUTER[0]


def _like(a, p) -> bool:
    return type(a) is np.ndarray and a.dtype == p.dtype and a.shape == p.shape and a.flags.c_contiguous


def adam_outer_tiny(p, m, v, x, y, scale: float, b1: float, b2: float, eps: float, step: float) -> bool:
    """The Adam update of a tiny weight `p` (at most TINY elements) with the gradient
    scale * x.T @ y in one compiled loop: no GEMM call, no scratch, one dispatch. False (nothing
    done) where it does not apply: no Numba, other array types, layouts or sizes. The scalars
    stay Python floats (float64 in the loop), which spares six conversions per call."""
    if p.size > TINY or not USE_NUMBA or type(p) is not np.ndarray or p.ndim != 2 or p.dtype not in _FLOATS:
        return False
    if not (p.flags.c_contiguous and _like(m, p) and _like(v, p)) or x.dtype != p.dtype or y.dtype != p.dtype:
        return False
    kernel = _OUTER[0] if _OUTER else _outer()
    if kernel is None or type(x) is not np.ndarray or type(y) is not np.ndarray:
        return False
    kernel(p, m, v, x, y, scale, b1, 1.0 - b1, b2, 1.0 - b2, eps, step)
    return True


def kernel_name() -> str:
    """The Adam kernel a CPU block gets: numba (the fused pass) or numpy (the passes)."""
    return "numba" if _fused() is not None else "numpy"


_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _flat_ok(*arrays) -> bool:
    """Whether the fused kernel takes these: NumPy arrays, row-major, of one float dtype and shape
    (a plain loop: this runs for every block of every update, so its cost shows at tiny sizes)."""
    first = arrays[0]
    if type(first) is not np.ndarray or first.dtype not in _FLOATS:
        return False
    dtype, shape = first.dtype, first.shape
    for a in arrays:
        if type(a) is not np.ndarray or a.dtype != dtype or a.shape != shape or not a.flags.c_contiguous:
            return False
    return True


def adam_block(p, m, v, g, b1: float, b2: float, eps: float, step: float, xp) -> None:
    """One Adam update of the block (p, m, v) with the gradient block `g` (overwritten)."""
    kernel = _fused() if xp is np else None
    if kernel is not None and _flat_ok(p, m, v, g):
        f = p.dtype.type
        kernel(p.reshape(-1), m.reshape(-1), v.reshape(-1), g.reshape(-1),
               f(b1), f(1.0 - b1), f(b2), f(1.0 - b2), f(eps), f(step))
        return
    axpby(1.0 - b1, g, b1, m)
    g *= g
    axpby(1.0 - b2, g, b2, v)
    xp.sqrt(v, out=g)
    g += eps
    xp.divide(m, g, out=g)
    axpy(-step, g, p)
