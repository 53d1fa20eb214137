"""The scaling study's cost model: the GEMMs and FLOPs of a layer step, a model of a layer-parallel
step (compute per layer, a cost per exchange round, bytes over a rate) calibrated on the sweep
and validated against it, and its projection to GPU nodes."""
from __future__ import annotations

import os
import time

import numpy as np

from .harness import pin_blas


# -- the arithmetic of a step ----------------------------------------------------------------------
def layer_gemms(d_in: int, d: int, d_up: int, B: int) -> list[tuple[int, int, int]]:
    """(m, k, n) of each matrix product one layer computes in a step (dense input)."""
    g = [(B, d_in, d), (B, d, d), (B, d, d_in), (B, d_in, d),      # in@M, y@V, z@W, e@E
         (d, B, d_in), (d_in, B, d), (d, B, d), (d_in, B, d)]      # dW, dE, dV, dM
    if d_up:
        g += [(B, d_up, d), (d_up, B, d)]                            # y_up@U, dU
    return g


def flops(gemms) -> float:
    return sum(2.0 * m * k * n for m, k, n in gemms)


def gemm_seconds(gemms, reps: int = 5) -> float:
    """Single-threaded time of one pass over `gemms` (float32, preallocated outputs)."""
    rng = np.random.default_rng(0)
    ops = [(rng.random((m, k), dtype=np.float32), rng.random((k, n), dtype=np.float32),
            np.empty((m, n), np.float32)) for m, k, n in gemms]
    with pin_blas(1):
        for a, b, c in ops:
            np.matmul(a, b, out=c)
        t0 = time.perf_counter()
        for _ in range(reps):
            for a, b, c in ops:
                np.matmul(a, b, out=c)
    return (time.perf_counter() - t0) / reps


def model_layers(x_dim: int, hidden, B: int):
    dims = [x_dim, *hidden]
    return [layer_gemms(dims[l - 1], dims[l], dims[l + 1] if l + 1 < len(dims) else 0, B)
            for l in range(1, len(dims))]


# -- 3. the cost model ----------------------------------------------------------------------------
RAY_MODELLED = ("ray_exact_tcp", "ray_pipelined_tcp")


def _compute_s(m: dict, r: dict) -> float:
    """The compute part of a step: the slowest layer, or all layers shared over the cores when
    there are more layer workers than cores (as on this machine)."""
    per_layer = r["max_layer_gflop"] / m["gflops_per_worker"] + m["compute_overhead_s"]
    total = r["gflop_per_step"] / m["gflops_per_worker"] + r["layers"] * m["compute_overhead_s"]
    return max(per_layer, total / max(1, min(r["layers"], m["cores"])))


def fit_cost_model(rows: list[dict]) -> dict:
    """Calibrate on the sweep. Compute: a layer's step time = its GFLOP / R + c (R, c fitted to
    the per-layer compute times the runs with TCP links report); with more layers than cores the
    layers share them. Messages: each step adds rounds * alpha + (bytes a layer sends) / beta
    (alpha, beta fitted to what is left of the measured step times)."""
    ray_rows = [r for r in rows if r["engine"] in RAY_MODELLED and r["placement"] == "pack"]
    X = np.array([[r["max_layer_gflop"], 1.0] for r in ray_rows])
    y = np.array([r["max_layer_compute_ms"] / 1e3 for r in ray_rows])
    inv_r, c = np.linalg.lstsq(X, y, rcond=None)[0]
    m = {"gflops_per_worker": 1.0 / max(inv_r, 1e-12), "compute_overhead_s": float(max(c, 0.0)),
         "cores": os.cpu_count() or 1}
    rounds = np.array([2.0 if "exact" in r["engine"] else 1.0 for r in ray_rows])
    resid = np.array([1.0 / r["steps_per_s"] - _compute_s(m, r) for r in ray_rows])
    A = np.stack([rounds, np.array([r["max_layer_bytes"] for r in ray_rows], dtype=float)], axis=1)
    alpha, inv_beta = np.linalg.lstsq(A, resid, rcond=None)[0]
    m.update(alpha_s_per_round=float(max(alpha, 0.0)), beta_bytes_per_s=float(1.0 / max(inv_beta, 1e-15)))
    return m


def predict(m: dict, r: dict) -> float:
    rounds = 2 if "exact" in r["engine"] else 1
    return 1.0 / (_compute_s(m, r) + rounds * m["alpha_s_per_round"] + r["max_layer_bytes"] / m["beta_bytes_per_s"])


def validate(m: dict, rows: list[dict]) -> list[dict]:
    out = []
    for r in rows:
        if r["engine"] not in RAY_MODELLED:
            continue
        p = predict(m, r)
        out.append({"hidden": r["hidden"], "batch": r["batch"], "engine": r["engine"], "placement": r["placement"],
                    "measured_steps_per_s": r["steps_per_s"], "predicted_steps_per_s": round(p, 3),
                    "error_pct": round(100 * (p - r["steps_per_s"]) / r["steps_per_s"], 1)})
    return out


PROJECTION = {"width": 4096, "batch": 256, "gpu_tflops": 30.0, "software_overhead_s_per_round": None,
              "network_latency_s": {"10 Gbit/s": 50e-6, "100 Gbit/s": 10e-6}}


def project(m: dict, layers=(8, 16, 64)) -> list[dict]:
    """Steps/s of L layers of width 4096, batch 256, one GPU per layer (exact schedule, 2 rounds),
    against the same L layers on one GPU. Assumptions in PROJECTION and results.md."""
    d, B = PROJECTION["width"], PROJECTION["batch"]
    per_layer = flops(layer_gemms(d, d, d, B)) / 1e12
    compute = per_layer / PROJECTION["gpu_tflops"]
    msg = 5 * B * d * 4
    out = []
    for net, lat in PROJECTION["network_latency_s"].items():
        bw = (10e9 if net.startswith("10 ") else 100e9) / 8
        step = compute + 2 * (m["alpha_s_per_round"] + lat) + msg / bw
        for L in layers:
            single = 1.0 / (L * compute)
            out.append({"network": net, "layers": L, "layer_parallel_steps_per_s": round(1.0 / step, 1),
                        "one_gpu_steps_per_s": round(single, 1), "speedup": round(single and (1.0 / step) / single, 2),
                        "compute_ms_per_layer": round(compute * 1e3, 3), "message_ms": round((msg / bw) * 1e3, 3)})
    return out


