"""`ptncn bench overhead`: what a step costs besides its arithmetic, per layer, for every engine.

Layer parallelism pays only where a layer's compute outweighs what a step costs around it, so
this measures that cost directly: the time per training step of 1, 2, 4 and 8 tiny layers
(hidden 8, batch 4, input 16: the arithmetic is a few microseconds) for the single-process
engine and for Ray over each transport, side by side in one run, and fits per engine

    ms per step = fixed + per_layer * layers

by least squares over the layer counts. The single process runs with one BLAS thread; the Ray
engines with one BLAS thread per actor and fractional CPUs, so 8 actors fit on a small machine
(on 2 cores, 8 actors contend for the cores: the Ray figures are then an upper bound).
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from .harness import ENGINES, engine_rate, local_ray

LAYERS = (1, 2, 4, 8)
TINY = {"width": 8, "batch": 4, "x_dim": 16}
ENGINE_NAMES = ("local_1thread", "ray_exact", "ray_exact_tcp", "ray_compiled")


def fit(layers, ms) -> tuple[float, float, float]:
    """(fixed ms, ms per layer, largest relative residual) of ms = fixed + per_layer * layers."""
    a = np.stack([np.ones(len(layers)), np.asarray(layers, float)], axis=1)
    (fixed, per), *_ = np.linalg.lstsq(a, np.asarray(ms, float), rcond=None)
    pred = fixed + per * np.asarray(layers, float)
    return float(fixed), float(per), float(np.max(np.abs(pred - ms) / np.asarray(ms, float)))


PARTS = ("compute", "comm", "wait")


def breakdown(stats: dict, layers: int) -> dict | None:
    """A Ray step's time per layer, averaged over the layers: compute (the layer math and the
    schedule), comm (encoding and handing messages to the transport) and wait (for neighbours'
    messages), in ms per step, from the actors' phase clocks; None for an engine without them."""
    keys = [[f"layer{l}_{k}_ms_per_step" for l in range(1, layers + 1)] for k in PARTS]
    if not all(k in stats for row in keys for k in row):
        return None
    return {part: sum(stats[k] for k in row) / layers for part, row in zip(PARTS, keys)}


def _sets(name: str, cpus_per_layer: float) -> tuple[list, int | None]:
    sets, threads = ENGINES[name]
    sets = [s for s in sets if not s.startswith("engine.cpus_per_layer")]
    if name.startswith("ray"):
        sets.append(f"engine.cpus_per_layer={cpus_per_layer}")
    return sets, threads


def bench_overhead(steps: int, engines=ENGINE_NAMES, layers=LAYERS, cpus_per_layer: float = 0.25) -> dict:
    """{engine: {"ms": [ms per step for each layer count], "fixed", "per_layer", "worst_residual"}}."""
    out = {}
    need_ray = any(e.startswith("ray") for e in engines)
    width, batch, x_dim = TINY["width"], TINY["batch"], TINY["x_dim"]

    def run_all():
        for name in engines:
            sets, threads = _sets(name, cpus_per_layer)
            ms, parts = [], []
            for n in layers:
                rate, stats = engine_rate((width,) * n, batch, x_dim, steps, sets, threads)
                ms.append(1e3 / rate)
                parts.append(breakdown(stats, n))
                print(f"{name:16s} layers={n}  {ms[-1]:.4f} ms/step", flush=True)
            fixed, per, worst = fit(layers, ms)
            out[name] = {"ms": ms, "fixed": fixed, "per_layer": per, "worst_residual": worst, "parts": parts}

    if need_ray:
        with local_ray(max(2, int(np.ceil(max(layers) * cpus_per_layer)))):
            run_all()
    else:
        run_all()
    return out


def print_overhead(res: dict, layers=LAYERS) -> None:
    print(f"tiny layers (hidden {TINY['width']}, batch {TINY['batch']}, input {TINY['x_dim']}): ms per training step")
    print(f"{'engine':16s}" + "".join(f"{f'L={n}':>10s}" for n in layers) + f"{'fixed':>10s}{'per layer':>11s}{'fit err':>9s}")
    base = res.get("local_1thread")
    for name, r in res.items():
        cells = "".join(f"{v:10.4f}" for v in r["ms"])
        print(f"{name:16s}{cells}{r['fixed']:10.4f}{r['per_layer']:11.4f}{100 * r['worst_residual']:8.1f}%")
    rows = [(name, n, p) for name, r in res.items() for n, p in zip(layers, r.get("parts", [])) if p]
    if rows:
        print("where a Ray step's time goes, ms per step and layer (mean over the layers; the phase clocks "
              "of the actors)")
        print(f"{'engine':16s}{'layers':>7s}" + "".join(f"{k:>10s}" for k in PARTS))
        for name, n, p in rows:
            print(f"{name:16s}{n:7d}" + "".join(f"{p[k]:10.4f}" for k in PARTS))
    if base:
        for name, r in res.items():
            if name != "local_1thread":
                ratios = ", ".join(f"L={n}: {a / b:.2f}x" for n, a, b in zip(layers, r["ms"], base["ms"]))
                print(f"{name} / local_1thread: {ratios}")


def profile_local(layers: int = 2, steps: int = 1000, top: int = 20) -> None:
    """cProfile of the single-process engine's training steps on `layers` tiny layers (engine
    built and warmed up first, outside the profile): where a step's time goes."""
    import cProfile
    import pstats

    from ..config import load
    from ..engines.factory import build_engine
    from .harness import pin_blas

    width, batch, x_dim = TINY["width"], TINY["batch"], TINY["x_dim"]
    cfg = load(None, [f"model.hidden={[width] * layers}", 'model.output="sigmoid"', f"data.batch={batch}"])
    x = (np.random.default_rng(0).random((50, batch, x_dim)) > 0.8).astype(np.float32)
    mask = np.ones((50, batch), np.float32)
    with pin_blas(1):
        engine = build_engine(cfg, x_dim, "frames")
        engine.run_segment(x, mask, 0, 10, learn=True, t_prime=1)
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(max(1, steps // 50)):
            engine.run_segment(x, mask, 0, 50, learn=True, t_prime=1)
        prof.disable()
        engine.close()
    print(f"cProfile of {max(1, steps // 50) * 50} steps of {layers} tiny layers, single process (by internal time):")
    pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(top)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="ptncn bench overhead", description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=1000, help="timed steps per configuration")
    p.add_argument("--engines", default=",".join(ENGINE_NAMES),
                   help="comma-separated subset of " + ", ".join(ENGINES))
    p.add_argument("--layers", default=",".join(map(str, LAYERS)), help="layer counts (default 1,2,4,8)")
    p.add_argument("--cpus-per-layer", type=float, default=0.25, help="logical CPUs of each Ray layer actor")
    p.add_argument("--profile", action="store_true",
                   help="instead: cProfile the single-process engine on 2 tiny layers (where a step's time goes)")
    args = p.parse_args(argv)
    if args.profile:
        profile_local(steps=args.steps)
        return 0
    engines = tuple(args.engines.split(","))
    unknown = [e for e in engines if e not in ENGINES]
    if unknown:
        p.error(f"--engines: unknown {unknown}; choose from {list(ENGINES)}")
    try:
        layers = tuple(int(n) for n in args.layers.split(","))
    except ValueError:
        p.error(f"--layers takes comma-separated integers, not {args.layers!r}")
    if len(layers) < 2 or min(layers) < 1:
        p.error("--layers needs at least two layer counts >= 1 (to fit the per-layer cost)")
    print_overhead(bench_overhead(args.steps, engines, layers, args.cpus_per_layer), layers)
    if any(e.endswith("_tcp") for e in engines):
        from .link_floor import curve_round_trip_us
        rtt = curve_round_trip_us()
        print(f"the links' floor: a zmq CURVE round trip between two processes, no Python work between "
              f"messages: {rtt:.1f} us (median of 3 x 5,000); an exact step waits for two one-way trips")
    return 0


if __name__ == "__main__":
    sys.exit(main())
