"""One optimizer update of a 2000 x 1000 float32 weight (the stacked V, U of a layer at the
authors' PTB settings) by a rank-50 gradient, the project's way beside the ways tried and not
kept, in ms (best of 3 alternating rounds of 100 updates). It backs the "What is left" section of
docs/performance.md:

    python -m experiments.tools.update_passes [--threads 2]

Nesterov (nag):
  project       axpy, GEMM into the velocity, axpy (ptncn_dist/core/optim.py)
  fused_blocks  a GEMM into a cache-sized scratch per row block, then one fused Numba pass
                (velocity and weight read and written once)
  gemm_alone    the GEMM alone into a weight-sized output: the roof of this update
Adam:
  project       a GEMM per row block into a scratch, then the fused Numba pass (adam_kernel)
  whole_gemm    one GEMM over the whole weight into a weight-sized scratch, then the pass
  whole_prange  the same with the pass split over the threads by Numba's prange
  whole_2py     the same with the pass split between two Python threads (Numba releases the GIL)
"""
from __future__ import annotations

import argparse
import threading
import time

import numpy as np
from numba import prange

from ptncn_dist.core import optim
from ptncn_dist.core.adam_kernel import _fused
from ptncn_dist.core.backend import gemm_tn
from ptncn_dist.studies.harness import pin_blas

R, C, B = 2000, 1000, 50


def _nag_pass(p, v, g, a, c1, c2):  # pragma: no cover - compiled by Numba
    for i in range(p.size):
        vo = v[i]
        vn = vo + a * g[i]
        v[i] = vn
        p[i] += c1 * vo + c2 * vn


def _adam_prange(p, m, v, g, b1, c1, b2, c2, eps, step):  # pragma: no cover - compiled by Numba
    for i in prange(p.size):
        gi = g[i]
        mi = b1 * m[i] + c1 * gi
        vi = b2 * v[i] + c2 * (gi * gi)
        m[i] = mi
        v[i] = vi
        p[i] -= step * (mi / (np.sqrt(vi) + eps))


def variants() -> dict:
    import numba
    rng = np.random.default_rng(0)
    p = rng.standard_normal((R, C)).astype(np.float32)
    x = (0.1 * rng.standard_normal((B, R))).astype(np.float32)
    y = (0.1 * rng.standard_normal((B, C))).astype(np.float32)
    f = np.float32
    nag_cfg, adam_cfg = optim.OptimConfig("nag", 0.01), optim.OptimConfig("adam", 1e-3)
    nag_slots, adam_slots = optim.init_slots(nag_cfg, p, np), optim.init_slots(adam_cfg, p, np)
    nag_pass = numba.njit(nogil=True, error_model="numpy")(_nag_pass)
    prange_pass = numba.njit(nogil=True, parallel=True, error_model="numpy")(_adam_prange)
    serial_pass = _fused()
    v = np.zeros_like(p)
    m2, v2, g = np.zeros_like(p), np.zeros_like(p), np.empty_like(p)
    blk = 256
    scratch = np.empty((blk, C), np.float32)
    flat = [a.reshape(-1) for a in (p, m2, v2, g)]
    scalars = (f(0.9), f(0.1), f(0.999), f(0.001), f(1e-8), f(1e-3))
    half = p.size // 2

    def fused_blocks():
        for i in range(0, R, blk):
            out = scratch[: min(R, i + blk) - i]
            gemm_tn(0.1, x[:, i:i + blk], y, 0.0, out)
            nag_pass(p[i:i + blk].reshape(-1), v[i:i + blk].reshape(-1), out.reshape(-1), f(0.1), f(0.01), f(-0.02))

    def whole(pass_fn):
        def run():
            gemm_tn(0.02, x, y, 0.0, g)
            pass_fn(*flat, *scalars)
        return run

    def two_python(*arrays_and_scalars):
        P, M, V, G = arrays_and_scalars[:4]
        other = threading.Thread(target=serial_pass, args=(P[half:], M[half:], V[half:], G[half:], *scalars))
        other.start()
        serial_pass(P[:half], M[:half], V[:half], G[:half], *scalars)
        other.join()

    return {"nag project": lambda: optim.apply_outer(nag_cfg, p, x, y, 0.02, nag_slots, np),
            "nag fused_blocks": fused_blocks,
            "nag gemm_alone": lambda: gemm_tn(0.02, x, y, 0.0, g),
            "adam project": lambda: optim.apply_outer(adam_cfg, p, x, y, 0.02, adam_slots, np),
            "adam whole_gemm": whole(serial_pass),
            "adam whole_prange": whole(prange_pass),
            "adam whole_2py": whole(two_python)}


def _ms(fn, n: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e3


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2, help="BLAS threads (default 2)")
    ap.add_argument("--updates", type=int, default=100, help="updates per round")
    args = ap.parse_args(argv)
    with pin_blas(args.threads):
        fns = variants()
        best = {k: float("inf") for k in fns}
        for _ in range(3):
            for k, fn in fns.items():
                best[k] = min(best[k], _ms(fn, args.updates))
    print(f"one update of a {R} x {C} float32 weight, rank {B}, {args.threads} BLAS thread(s): ms, best of 3 rounds")
    for k, ms in best.items():
        print(f"  {k:20s} {ms:8.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
