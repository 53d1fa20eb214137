"""`ptncn bench`: speed measured side by side in one run, printed as ratios.

    ptncn bench ptb        the single-process engine at the authors' PTB settings, against the
                           GEMM roof measured on the same shapes in the same run; with
                           --optims nag,adam several optimizers side by side; --profile: where
                           a step's time goes
    ptncn bench engines    local (1 and all threads) vs ray exact / pipelined / compiled, for
                           several widths and layer counts; per-step overhead on tiny layers;
                           bytes per step
    ptncn bench overhead   per-step overhead of 1, 2, 4, 8 tiny layers for every engine, with the
                           per-layer cost fitted from them
    ptncn bench loop       `ptncn train`'s loop beside the engine alone, same config and batches
    ptncn bench scaling    the scaling study: sweep, cost model, projection, BPTT comparison
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import time

import numpy as np

from ..config import load
from ..engines.factory import build_engine
from .harness import ENGINES, engine_rate, local_ray, pin_blas, ray_cpus


def _time(fn, reps: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


# -- PTB at the authors' settings ----------------------------------------------------------------
def ptb_gemm_shapes(V: int, d1: int, d2: int, B: int) -> list[tuple[int, int, int]]:
    """(m, k, n) of every matrix product in one P-TNCN step at those sizes, 2 layers, one-hot
    input (x @ M1 is a gather; its update a scatter-add, not counted)."""
    return [(B, d1, d1), (B, d2, d1),                 # layer 1: yprev @ V1, yprev_up @ U1
            (B, d1, d2), (B, d2, d2),                 # layer 2: in @ M2, yprev @ V2
            (B, d1, V), (B, d2, d1),                  # predictions z1 @ W1, z2 @ W2
            (B, V, d1), (B, d1, d2),                  # corrections e0 @ E1, e1 @ E2
            (d1, B, V), (V, B, d1), (d1, B, d1), (d2, B, d1),   # dW1, dE1, dV1, dU1
            (d2, B, d1), (d1, B, d2), (d1, B, d2), (d2, B, d2)]  # dW2, dE2, dM2, dV2


def _sync(xp) -> None:
    """Wait for the GPU's queued work (CuPy); nothing on NumPy."""
    if xp is not np:
        xp.cuda.Device().synchronize()


def gemm_roof(shapes, dtype=np.float32, reps: int = 30, xp=np) -> tuple[float, float]:
    """Seconds for one pass over `shapes` with `xp`'s matmul (into preallocated outputs), and
    the GFLOP they hold."""
    rng = np.random.default_rng(0)
    ops = []
    for m, k, n in shapes:
        a, b = rng.random((m, k), dtype=dtype), rng.random((k, n), dtype=dtype)
        ops.append((xp.asarray(a), xp.asarray(b), xp.empty((m, n), dtype)))
    sec = _time(lambda: ([xp.matmul(a, b, out=c) for a, b, c in ops], _sync(xp)), reps)
    return sec, sum(2.0 * m * k * n for m, k, n in shapes) / 1e9


PTB_OPTIMS = {"nag": ['optim.name="nag"', "optim.lr=0.075", "optim.momentum=0.95"],
              "momentum": ['optim.name="momentum"', "optim.lr=0.075", "optim.momentum=0.95"],
              "sgd": ['optim.name="sgd"', "optim.lr=0.075"],
              "adam": ['optim.name="adam"', "optim.lr=0.001"]}


PTB_V, PTB_B, PTB_T = 49, 50, 50  # symbols, batch, steps per segment


def _ptb_batch() -> tuple:
    """One fixed batch of random symbols (T, B) and its all-ones mask."""
    x = np.random.default_rng(0).integers(0, PTB_V, (PTB_T, PTB_B)).astype(np.int32)
    return x, np.ones((PTB_T, PTB_B), np.float32)


def _ptb_engine(optim: str, device: str, x, mask):
    """The single-process engine at the authors' PTB settings with `optim`, warmed up 10 steps."""
    base = ["model.hidden=[1000, 1000]", 'model.output="softmax"', 'data.source="ptb_char"',
            f'model.device="{device}"']
    engine = build_engine(load(None, base + PTB_OPTIMS[optim]), PTB_V, "tokens")
    engine.run_segment(x, mask, 0, 10, learn=True, t_prime=1)
    return engine


def _ptb_rates(step_s: list, roof_s: list, gflop: float, B: int) -> dict:
    best, best_roof = min(step_s), min(roof_s)
    med, med_roof = float(np.median(step_s)), float(np.median(roof_s))
    return {"steps_per_s": 1 / best, "tokens_per_s": B / best, "gemm_roof_steps_per_s": 1 / best_roof,
            "share_of_roof": best_roof / best, "median_steps_per_s": 1 / med,
            "median_share_of_roof": med_roof / med, "gflop_per_step": gflop,
            "achieved_gflops": gflop / best, "gemm_gflops": gflop / best_roof}


def bench_ptb(steps: int = 200, threads: int | None = None, rounds: int = 5,
              optims: tuple = ("nag",), device: str = "cpu") -> dict:
    """Steps/s at the authors' PTB settings for each optimizer in `optims`, and the GEMM roof,
    timed in alternating rounds (`steps` steps of each optimizer, its order rotating from round
    to round, then one roof pass), so that all see the same machine. The figures are the best
    round of each (the least disturbed, as timeit reports) and the median; `ratios` gives each
    optimizer's time per step over the first one's, best against best and the median of the
    per-round ratios. device="gpu": the layers and the roof on CuPy (timed to a synchronize)."""
    from ..core.backend import get_xp
    xp = get_xp(device)
    V, d, B, T = PTB_V, 1000, PTB_B, PTB_T
    x, mask = _ptb_batch()
    shapes = ptb_gemm_shapes(V, d, d, B)
    step_s, roof_s = {o: [] for o in optims}, []
    with pin_blas(threads):
        engines = {o: _ptb_engine(o, device, x, mask) for o in optims}
        for r in range(rounds):
            for o in optims[r % len(optims):] + optims[:r % len(optims)]:
                done, t0 = 0, time.perf_counter()
                while done < steps:
                    engines[o].run_segment(x, mask, 0, T, learn=True, t_prime=1)
                    done += T
                _sync(xp)
                step_s[o].append((time.perf_counter() - t0) / done)
            sec, gflop = gemm_roof(shapes, reps=max(10, steps // 5), xp=xp)
            roof_s.append(sec)
    first = optims[0]
    ratios = {o: {"best": min(step_s[o]) / min(step_s[first]),
                  "median_per_round": float(np.median(np.array(step_s[o]) / np.array(step_s[first])))}
              for o in optims[1:]}
    return {"by_optim": {o: _ptb_rates(step_s[o], roof_s, gflop, B) for o in optims}, "ratios": ratios}


def profile_ptb(optim: str = "nag", steps: int = 200, threads: int | None = None, top: int = 15) -> None:
    """cProfile of `steps` training steps at the authors' PTB settings (engine built and warmed up
    outside the profile), by internal time: which calls separate a step from its GEMM roof."""
    import cProfile
    import pstats
    T = PTB_T
    x, mask = _ptb_batch()
    with pin_blas(threads):
        engine = _ptb_engine(optim, "cpu", x, mask)
        prof = cProfile.Profile()
        done, t0 = 0, time.perf_counter()
        prof.enable()
        while done < steps:
            engine.run_segment(x, mask, 0, T, learn=True, t_prime=1)
            done += T
        prof.disable()
        wall = time.perf_counter() - t0
    print(f"cProfile of {done} steps at the authors' PTB settings, {optim}: {1e3 * wall / done:.2f} ms per "
          f"step under the profiler; ms per step of each call below = tottime x {1e3 / done:g}")
    pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(top)


def print_ptb(res: dict, steps: int, rounds: int) -> None:
    from ..core.adam_kernel import kernel_name
    optims = list(res["by_optim"])
    print(f"P-TNCN, 2 x 1000 tanh, batch 50, 49 symbols, softmax (the authors' PTB settings); "
          f"{', '.join(optims)}")
    print(f"best and median of {rounds} alternating rounds of {steps} steps each, beside a GEMM roof pass")
    for o, rates in res["by_optim"].items():
        print(f"{o}" + (f" (adam kernel: {kernel_name()})" if o == "adam" else ""))
        for k, v in rates.items():
            print(f"  {k:24s} {v:10.3f}")
    for o, r in res["ratios"].items():
        print(f"time per step {o} / {optims[0]}: {r['best']:.3f} (best vs best), "
              f"{r['median_per_round']:.3f} (median of per-round ratios)")


# -- engines side by side -------------------------------------------------------------------------
class PingPong:
    """Two of these bounce a message by ordinary actor calls: the round trip is the least an
    exact step can cost with actor calls, since it has two neighbour hops in sequence."""

    def __init__(self):
        self.peer, self.fut = None, None

    def connect(self, peer) -> None:
        self.peer = peer

    async def deliver(self, i: int) -> None:
        if self.fut is not None and not self.fut.done():
            self.fut.set_result(i)

    async def run(self, n: int, starts: bool) -> float:
        import asyncio
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        for i in range(n):
            self.fut = loop.create_future()
            if starts:
                self.peer.deliver.remote(i)
            await self.fut
            if not starts:
                self.peer.deliver.remote(i)
        return (time.perf_counter() - t0) / n


def actor_call_round_trip_ms(n: int = 300) -> float:
    """Median of three runs of `n` round trips between two single-CPU actors (Ray running)."""
    import ray
    cls = ray.remote(PingPong)
    a, b = (cls.options(num_cpus=1, max_concurrency=4).remote() for _ in range(2))
    try:
        ray.get([a.connect.remote(b), b.connect.remote(a)])
        runs = [ray.get([a.run.remote(n, True), b.run.remote(n, False)])[0] for _ in range(3)]
        return 1e3 * float(np.median(runs))
    finally:
        ray.kill(a)
        ray.kill(b)


def bench_engines(configs, steps: int, engines=tuple(ENGINES), out_csv: str | None = None) -> list[dict]:
    rows = []
    with local_ray(ray_cpus([len(h) for h, _, _ in configs])):
        rtt = actor_call_round_trip_ms()
        print(f"ray actor call round trip {rtt:.3f} ms (an exact step has two neighbour hops in sequence)",
              flush=True)
        for hidden, batch, x_dim in configs:
            base = None
            for name in engines:
                sets, threads = ENGINES[name]
                rate, stats = engine_rate(hidden, batch, x_dim, steps, sets, threads)
                base = base or rate
                sent = sum(v for k, v in stats.items() if k.endswith("_sent_bytes_per_step"))
                row = {"hidden": "x".join(map(str, hidden)), "layers": len(hidden), "batch": batch, "x_dim": x_dim,
                       "engine": name, "steps_per_s": round(rate, 2), "ms_per_step": round(1000 / rate, 3),
                       "vs_local_1thread": round(rate / base, 3), "bytes_sent_per_step": int(sent)}
                rows.append(row)
                print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    if out_csv:
        os.makedirs(os.path.dirname(os.path.abspath(out_csv)), exist_ok=True)
        with open(out_csv, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return rows


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "scaling":
        from .scaling import main as scaling_main
        return scaling_main(argv[1:])
    if argv and argv[0] == "overhead":
        from .overhead import main as overhead_main
        return overhead_main(argv[1:])
    if argv and argv[0] == "loop":
        from .loop import main as loop_main
        return loop_main(argv[1:])
    p = argparse.ArgumentParser(prog="ptncn bench", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    a = sub.add_parser("ptb", help="single-process engine at the authors' PTB settings vs the GEMM roof")
    a.add_argument("--steps", type=int, default=200, help="steps per round")
    a.add_argument("--rounds", type=int, default=5)
    a.add_argument("--threads", type=int, default=None, help="BLAS threads (default: all)")
    a.add_argument("--device", default="cpu", choices=("cpu", "gpu"),
                   help="gpu: the layers and the GEMM roof on CuPy (model.device)")
    a.add_argument("--optims", default="nag", help="comma-separated optimizers run side by side, "
                   f"ratios against the first (of {', '.join(PTB_OPTIMS)}), e.g. nag,adam")
    a.add_argument("--profile", action="store_true",
                   help="instead: cProfile --steps steps of the first optimizer (where a step's time goes)")
    e = sub.add_parser("engines", help="engines side by side")
    e.add_argument("--steps", type=int, default=200)
    e.add_argument("--quick", action="store_true", help="two configurations only")
    e.add_argument("--engines", default=",".join(ENGINES), help="comma-separated subset of " + ", ".join(ENGINES))
    e.add_argument("--csv", help="also write the rows to this CSV file")
    # handled before parsing (each has its own parser); listed here so that --help shows them
    sub.add_parser("overhead", add_help=False,
                   help="per-step overhead: 1, 2, 4, 8 tiny layers, every engine, the per-layer cost fitted "
                        "(options: ptncn bench overhead --help)")
    sub.add_parser("loop", add_help=False,
                   help="the training loop beside the engine alone on the same config (options: ptncn bench loop --help)")
    sub.add_parser("scaling", add_help=False,
                   help="the layer-parallel scaling study: sweep, sequence length, cost model "
                        "(options: ptncn bench scaling --help)")
    args = p.parse_args(argv)
    if args.what == "ptb":
        optims = tuple(args.optims.split(","))
        unknown = [o for o in optims if o not in PTB_OPTIMS]
        if unknown:
            p.error(f"--optims: unknown {unknown}; choose from {list(PTB_OPTIMS)}")
        if args.profile:
            profile_ptb(optims[0], args.steps, args.threads)
            return 0
        print_ptb(bench_ptb(args.steps, args.threads, args.rounds, optims, args.device), args.steps, args.rounds)
        return 0
    configs = [((8,), 4, 16), ((8, 8), 4, 16), ((8, 8, 8), 4, 16), ((1024, 1024), 64, 1024)]
    if not args.quick:
        configs += [((512, 512), 64, 1024), ((512, 512, 512), 64, 1024), ((256,) * 4, 32, 256)]
    bench_engines(configs, args.steps, tuple(args.engines.split(",")), args.csv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
