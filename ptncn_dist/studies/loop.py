"""`ptncn bench loop`: the real training loop beside the engine alone, on the same config and batches.

A long run is only as fast as its training loop: this times `ptncn train`'s code path (the
Trainer, with its default logging: metrics records, the engine's per-layer figures, the loss
windows) against the engine alone on the same data stream, in alternating rounds, so both see
the same machine. The loop's rate is its steps over its training seconds (`train_s`: evaluations
are left out, as `train.max_minutes` counts them), and evaluations, checkpoints, TensorBoard,
plots and references are off, so the ratio is what the loop itself costs.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from ..config import load

QUIET = ["train.eval_every=0", "train.checkpoint_every=0", "train.checkpoint_minutes=0", "train.tensorboard=false",
         "train.references=false", "train.plots=false", "train.progress=false"]


def _engine_alone(trainer, steps: int) -> float:
    """Steps/s of the trainer's engine driven directly over the trainer's own stream."""
    done, pos, t0 = 0, 0, time.perf_counter()
    while done < steps:
        b = trainer.streams.train.batch(pos)
        pos += 1
        n = min(b.x.shape[0], steps - done)
        trainer.engine.run_segment(b.x, b.mask, 0, n, learn=True, t_prime=trainer.cfg.model.t_prime)
        done += n
    return done / (time.perf_counter() - t0)


def bench_loop(config: str | None, overrides: list, steps: int, rounds: int) -> dict:
    """{"engine": [steps/s per round], "loop": [...], "ratio_best", "ratio_median"}."""
    from ..trainer import Trainer
    rates = {"engine": [], "loop": []}
    for r in range(rounds):
        for what in (("engine", "loop") if r % 2 == 0 else ("loop", "engine")):
            cfg = load(config, [*overrides, *QUIET, f"train.steps={steps}"])
            trainer = Trainer(cfg, None, log=lambda *a: None)
            try:
                b = trainer.streams.train.batch(10_000)  # warm up on a batch no timed pass uses
                trainer.engine.run_segment(b.x, b.mask, 0, min(10, b.x.shape[0]), learn=True, t_prime=1)
                if what == "engine":
                    rates["engine"].append(_engine_alone(trainer, steps))
                else:
                    res = trainer.run()
                    rates["loop"].append(res.steps / max(res.train_s, 1e-9))
            finally:
                trainer.close()
    e, lp = np.array(rates["engine"]), np.array(rates["loop"])
    return {**rates, "ratio_best": float(lp.max() / e.max()), "ratio_median": float(np.median(lp / e))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="ptncn bench loop", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="a TOML config (default: the main job's)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--steps", type=int, default=1000, help="timed steps per pass")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (engine, loop)")
    args = p.parse_args(argv)
    if args.steps < 1 or args.rounds < 1:
        p.error("--steps and --rounds must be >= 1")
    res = bench_loop(args.config, args.overrides, args.steps, args.rounds)
    print(f"{args.config or 'the main job'}: {args.steps} steps per pass, {args.rounds} alternating rounds")
    print("engine alone   steps/s " + " ".join(f"{v:.1f}" for v in res["engine"]))
    print("training loop  steps/s " + " ".join(f"{v:.1f}" for v in res["loop"]))
    print(f"loop / engine: {res['ratio_best']:.3f} (best vs best), {res['ratio_median']:.3f} (median of per-round ratios)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
