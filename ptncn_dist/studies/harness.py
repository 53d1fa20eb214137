"""What the studies share: BLAS pinning, the table of engines they compare, the training rate of
one engine, and the one place that starts a private local Ray for them."""
from __future__ import annotations

import contextlib
import math
import os
import time

import numpy as np

from ..config import load
from ..engines.factory import build_engine

NODE_IP = "127.0.0.1"  # the node address Ray keeps every listener of on loopback (ray_session)

# name -> (config overrides, BLAS threads of the driver process: None = all)
ENGINES = {
    "local_1thread": (["engine.blas_threads=0"], 1),
    "local_all_threads": (["engine.blas_threads=0"], None),
    "ray_exact": (['engine.name="ray"', 'engine.transport="calls"', "engine.cpus_per_layer=1",
                   "engine.blas_threads=1"], None),
    "ray_pipelined": (['engine.name="ray"', 'engine.mode="pipelined"', 'engine.transport="calls"',
                       "engine.cpus_per_layer=1", "engine.blas_threads=1"], None),
    "ray_compiled": (['engine.name="ray"', "engine.compiled=true", "engine.cpus_per_layer=1",
                      "engine.blas_threads=1"], None),
    "ray_exact_tcp": (['engine.name="ray"', 'engine.transport="tcp"', "engine.cpus_per_layer=1",
                       "engine.blas_threads=1"], None),
    "ray_pipelined_tcp": (['engine.name="ray"', 'engine.mode="pipelined"', 'engine.transport="tcp"',
                           "engine.cpus_per_layer=1", "engine.blas_threads=1"], None),
}


def pin_blas(n: int | None):
    """A context in which NumPy's BLAS uses n threads (None: leave it as it is)."""
    from threadpoolctl import threadpool_limits
    return threadpool_limits(limits=n, user_api="blas") if n else contextlib.nullcontext()


WARMUP = 10  # steps an engine runs before it is timed


def engine_rate(hidden, batch, x_dim, steps, sets, threads=None) -> tuple[float, dict]:
    """Training steps per second of one engine on random binary frames (after 10 warm-up steps),
    and the engine's own per-layer figures over the timed steps alone (`timed_stats`): the
    warm-up's first calls (kernels loaded, sockets connected) would otherwise count in them."""
    cfg = load(None, [f"model.hidden={list(hidden)}", 'model.output="sigmoid"', f"data.batch={batch}", *sets])
    rng = np.random.default_rng(0)
    T = 50
    x = (rng.random((T, batch, x_dim)) > 0.8).astype(np.float32)
    mask = np.ones((T, batch), np.float32)
    with pin_blas(threads):
        engine = build_engine(cfg, x_dim, "frames")
        try:
            engine.run_segment(x, mask, 0, WARMUP, learn=True, t_prime=1)
            before = engine.stats()
            done, t0 = 0, time.perf_counter()
            while done < steps:
                n = min(T, steps - done)
                engine.run_segment(x, mask, 0, n, learn=True, t_prime=1)
                done += n
            rate = done / (time.perf_counter() - t0)
            return rate, timed_stats(before, engine.stats(), WARMUP, done)
        finally:
            engine.close()


def timed_stats(before: dict, after: dict, warm: int, timed: int) -> dict:
    """An engine's stats over its `timed` steps alone, from those after `warm` steps (`before`)
    and after all of them: per-step figures (keys ending in `_per_step`) are recomputed from the
    totals; other keys are taken from `after`."""
    out = dict(after)
    for k, v in after.items():
        if k.endswith("_per_step") and k in before:
            out[k] = (v * (warm + timed) - before[k] * warm) / timed
    return out


def ray_cpus(layer_counts, cpus_per_layer: float = 1.0, least: int = 2) -> int:
    """Logical CPUs a private Ray needs so that every layer actor of the largest model gets its
    share: never fewer than this machine's cores or `least`."""
    need = max([math.ceil(n * cpus_per_layer) for n in layer_counts] or [0])
    return max(need, os.cpu_count() or 1, least)


@contextlib.contextmanager
def local_ray(num_cpus: int):
    """A private Ray on NODE_IP (127.0.0.1: every listener on loopback) with `num_cpus` logical
    CPUs, no dashboard and the layer-message system config; shut down when the block ends, even
    on an error."""
    import ray

    from ..engines.placement import SYSTEM_CONFIG, shutdown_ray
    from ..engines.ray_session import start_private
    start_private(NODE_IP, num_cpus, "studies NODE_IP", _system_config=SYSTEM_CONFIG)
    try:
        yield ray
    finally:
        shutdown_ray()
