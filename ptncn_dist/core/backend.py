"""The array module ("xp": numpy or cupy) and the dtype policy.

Every piece of math in the package is written against an `xp` handed to it, so the same code runs
on NumPy (CPU) and CuPy (GPU). Moving arrays between the two happens only here.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import ConfigError

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


def _numpy_cblas():
    """axpy, axpby, scal and gemm from the OpenBLAS that NumPy itself links (same thread pool as
    its GEMMs; a second BLAS with its own pool would fight it for the cores). None where not
    found."""
    import ctypes
    import glob
    import os
    root = os.path.dirname(os.path.dirname(np.__file__))
    for path in glob.glob(os.path.join(root, "numpy.libs", "*openblas*")):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix, suffix, int_t in (("scipy_cblas_", "64_", ctypes.c_int64), ("cblas_", "", ctypes.c_int)):
            try:
                fns = {n: getattr(lib, f"{prefix}{n}{suffix}")
                       for n in ("saxpy", "daxpy", "sscal", "dscal", "sgemm", "dgemm")}
            except AttributeError:
                continue
            for n in ("saxpby", "daxpby"):
                if hasattr(lib, f"{prefix}{n}{suffix}"):
                    fns[n] = getattr(lib, f"{prefix}{n}{suffix}")
            ptr, enum = ctypes.c_void_p, ctypes.c_int
            for n, fn in fns.items():
                real = ctypes.c_float if n[0] == "s" else ctypes.c_double
                fn.restype = None
                if "axpby" in n:
                    fn.argtypes = [int_t, real, ptr, int_t, real, ptr, int_t]
                elif "axpy" in n:
                    fn.argtypes = [int_t, real, ptr, int_t, ptr, int_t]
                elif "scal" in n:
                    fn.argtypes = [int_t, real, ptr, int_t]
                else:
                    fn.argtypes = [enum, enum, enum, int_t, int_t, int_t, real, ptr, int_t, ptr, int_t,
                                   real, ptr, int_t]
            for name in ("scipy_openblas_get_num_threads64_", "openblas_get_num_threads"):
                if hasattr(lib, name):
                    fns["threads"] = getattr(lib, name)
                    fns["threads"].restype, fns["threads"].argtypes = ctypes.c_int, []
                    break
            return fns
    return None


_CBLAS = _numpy_cblas()


def blas_threads() -> int:
    """Threads NumPy's OpenBLAS uses now (0 where it cannot be asked)."""
    fn = _CBLAS.get("threads") if _CBLAS else None
    return int(fn()) if fn is not None else 0


def _blas_ok(*arrays) -> bool:
    """NumPy arrays of one float dtype, each contiguous in the same (C or F) order."""
    if _CBLAS is None or not all(isinstance(a, np.ndarray) for a in arrays):
        return False
    first = arrays[0]
    if first.dtype not in (np.float32, np.float64):
        return False
    c = all(a.flags.c_contiguous for a in arrays)
    f = all(a.flags.f_contiguous for a in arrays)
    return (c or f) and all(a.dtype == first.dtype and a.shape == first.shape for a in arrays)


def axpy(a: float, x, y) -> None:
    """y += a * x in place, in one pass and without a temporary where NumPy's BLAS allows."""
    if _blas_ok(x, y):
        fn = _CBLAS["saxpy" if y.dtype == np.float32 else "daxpy"]
        fn(y.size, a, x.ctypes.data, 1, y.ctypes.data, 1)
    else:
        y += a * x


def scal(a: float, y) -> None:
    """y *= a, in place."""
    if _blas_ok(y):
        _CBLAS["sscal" if y.dtype == np.float32 else "dscal"](y.size, a, y.ctypes.data, 1)
    else:
        y *= a


def axpby(a: float, x, b: float, y) -> None:
    """y = a * x + b * y in place, in one pass (OpenBLAS's axpby; elsewhere two in-place ops)."""
    fn = _CBLAS.get("saxpby" if y.dtype == np.float32 else "daxpby") if _blas_ok(x, y) else None
    if fn is not None:
        fn(y.size, a, x.ctypes.data, 1, b, y.ctypes.data, 1)
    else:
        y *= b
        y += a * x


def gemm_tn(alpha: float, a, b, beta: float, c) -> None:
    """c = alpha * a.T @ b + beta * c in place, a (K, m), b (K, n), c (m, n) row-major.

    One pass over c: a low-rank update lands in a weight or an optimizer slot without the
    weight-sized product ever being formed on its own.
    """
    if _CBLAS is not None and isinstance(c, np.ndarray) and c.flags.c_contiguous \
            and c.dtype in (np.float32, np.float64):
        a = np.ascontiguousarray(a, dtype=c.dtype)
        b = np.ascontiguousarray(b, dtype=c.dtype)
        m, n, k = c.shape[0], c.shape[1], a.shape[0]
        if a.shape != (k, m) or b.shape != (k, n):
            raise ValueError(f"gemm_tn: a {a.shape} and b {b.shape} do not give c {c.shape}")
        if c.size == 0:
            return
        _CBLAS["sgemm" if c.dtype == np.float32 else "dgemm"](
            101, 112, 111, m, n, k, alpha, a.ctypes.data, m, b.ctypes.data, n, beta, c.ctypes.data, n)
        return
    if beta == 0.0:
        c[...] = alpha * (a.T @ b)
        return
    if beta != 1.0:
        c *= beta
    c += alpha * (a.T @ b)


def gram(a):
    """a @ a.T, the (B, B) Gram matrix of a batch of rows."""
    return a @ a.T


def outer_norm(xp, a, b, gram_b=None) -> float:
    """Frobenius norm of a.T @ b from the two small Gram matrices: sum((a a.T) * (b b.T)).
    `gram_b`, when given, is b's Gram matrix (shared by several products with the same b)."""
    gb = gram(b) if gram_b is None else gram_b
    s = float((gram(a) * gb).sum())
    return math.sqrt(max(s, 0.0))
