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
TERMS = ("compute", "per_layer", "per_link", "per_exact_link", "crowding", "spread")
TERM_TEXT = {  # what each term's coefficient multiplies (compute: a factor; the rest: seconds)
    "compute": "x the single-process time of the same model on one thread (the layers' own work)",
    "per_layer": "per layer and step (each actor's own overhead: its step call, messages, Python)",
    "per_link": "per link between neighbouring layers and step",
    "per_exact_link": "more per link in the exact schedule (its second exchange round)",
    "crowding": "x (links)^2 / cores per step (more actors than cores take turns)",
    "spread": "per step with one layer per node of a local multi-node cluster",
}


def features(r: dict, t1: float, cores: int) -> list[float]:
    """The terms of one configuration's step time: `t1` is its single-process one-thread step
    time (s), measured in the same sweep; links = layers - 1."""
    L = int(r["layers"])
    links = L - 1.0
    exact = 1.0 if "exact" in r["engine"] else 0.0
    spread = 1.0 if r.get("placement") == "spread" else 0.0
    return [t1, float(L), links, exact * links, links ** 2 / max(1, min(L, cores)), spread]


def _nnls(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative least squares for a handful of terms: the best unconstrained fit over every
    subset of terms whose coefficients all come out >= 0."""
    n = X.shape[1]
    best, best_res = np.zeros(n), float(np.sum(y ** 2))
    for mask in range(1, 1 << n):
        cols = [j for j in range(n) if mask >> j & 1]
        coef = np.linalg.lstsq(X[:, cols], y, rcond=None)[0]
        if np.all(coef >= 0):
            res = float(np.sum((X[:, cols] @ coef - y) ** 2))
            if res < best_res:
                best, best_res = np.zeros(n), res
                best[cols] = coef
    return best


def _modelled(rows: list[dict]) -> tuple[list[dict], dict]:
    """The ray rows with TCP links, and the one-thread single-process step time per model."""
    t1 = {str(r["hidden"]): 1.0 / float(r["steps_per_s"]) for r in rows if r["engine"] == "local_1thread"}
    return [r for r in rows if r["engine"] in RAY_MODELLED and str(r["hidden"]) in t1], t1


def _fit(rows: list[dict], t1: dict, cores: int) -> np.ndarray:
    X = np.array([features(r, t1[str(r["hidden"])], cores) for r in rows])
    t = np.array([1.0 / float(r["steps_per_s"]) for r in rows])
    return _nnls(X / t[:, None], np.ones_like(t))  # least squares in relative error


def fit_cost_model(rows: list[dict]) -> dict:
    """Calibrate on the sweep: the step time of a layer-parallel run is a sum of TERMS, each
    coefficient >= 0, fitted to the ray rows with TCP links by least squares in relative error.
    The compute term scales the single-process one-thread time measured in the same sweep; the
    per-layer overhead is its own term. Also the leave-one-model-out error of each row (the
    model refitted without every row of that hidden size)."""
    ray_rows, t1 = _modelled(rows)
    cores = os.cpu_count() or 1
    coef = _fit(ray_rows, t1, cores)
    m = {"terms": dict(zip(TERMS, map(float, coef))), "cores": cores}
    held_out = {}
    for hidden in sorted({str(r["hidden"]) for r in ray_rows}):
        rest = [r for r in ray_rows if str(r["hidden"]) != hidden]
        c = _fit(rest, t1, cores)
        for r in ray_rows:
            if str(r["hidden"]) == hidden:
                held_out[hidden, r["engine"], r["placement"]] = 1.0 / float(np.dot(c, features(r, t1[hidden], cores)))
    m["held_out"] = {"|".join(k): v for k, v in held_out.items()}
    m["t1_s"] = t1
    return m


def predict(m: dict, r: dict) -> float:
    """Predicted steps/s of a configuration the sweep measured on one thread."""
    x = features(r, m["t1_s"][str(r["hidden"])], m["cores"])
    return 1.0 / float(np.dot([m["terms"][k] for k in TERMS], x))


def validate(m: dict, rows: list[dict]) -> list[dict]:
    """Per modelled row: measured and predicted steps/s, the error, and the error when the row's
    model size was left out of the fit."""
    out = []
    for r in _modelled(rows)[0]:
        p = predict(m, r)
        held = m["held_out"].get("|".join((str(r["hidden"]), r["engine"], r["placement"])))
        meas = float(r["steps_per_s"])
        out.append({"hidden": r["hidden"], "batch": r["batch"], "engine": r["engine"], "placement": r["placement"],
                    "measured_steps_per_s": meas, "predicted_steps_per_s": round(p, 3),
                    "error_pct": round(100 * (p - meas) / meas, 1),
                    "held_out_error_pct": round(100 * (held - meas) / meas, 1) if held else None})
    return out


PROJECTION = {"width": 4096, "batch": 256, "gpu_tflops": 30.0,
              "network_latency_s": {"10 Gbit/s": 50e-6, "100 Gbit/s": 10e-6}}


def project(m: dict, layers=(8, 16, 64)) -> list[dict]:
    """Steps/s of L layers of width 4096, batch 256, one GPU per layer (exact schedule, 2 rounds),
    against the same L layers on one GPU. Each layer-parallel step pays the fitted per-layer and
    per-link software overheads (not the crowding term: every layer has its own node), the
    network latency per round and the messages at line rate. Assumptions in PROJECTION."""
    d, B = PROJECTION["width"], PROJECTION["batch"]
    per_layer = flops(layer_gemms(d, d, d, B)) / 1e12
    compute = per_layer / PROJECTION["gpu_tflops"]
    msg = 5 * B * d * 4
    c = m["terms"]
    software = c["per_layer"] + c["per_link"] + c["per_exact_link"]
    out = []
    for net, lat in PROJECTION["network_latency_s"].items():
        bw = (10e9 if net.startswith("10 ") else 100e9) / 8
        step = compute + software + 2 * lat + msg / bw
        for L in layers:
            single = 1.0 / (L * compute)
            out.append({"network": net, "layers": L, "layer_parallel_steps_per_s": round(1.0 / step, 1),
                        "one_gpu_steps_per_s": round(single, 1), "speedup": round(single and (1.0 / step) / single, 2),
                        "compute_ms_per_layer": round(compute * 1e3, 3), "software_ms": round(software * 1e3, 3),
                        "message_ms": round((msg / bw) * 1e3, 3)})
    return out
