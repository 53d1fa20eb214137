"""Steps/s of each method at a scale's sizes, from very short runs (a few seconds each, one BLAS
thread, one run at a time): what scales.py's budgets are sized from.

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python -m experiments.compare.speed ptb --scale medium --steps 200
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from ptncn_dist.core.backend import limit_blas_threads

from .jobs import Plan, config_for, setting_for, test_jobs
from .methods import METHOD_KEYS, METHODS
from .scales import SCALES


def measure(job: dict, dataset: str, steps: int) -> dict:
    """Steps/s of the training loop over `steps` steps (evaluations off), and the wall seconds."""
    from ptncn_dist.trainer import Trainer
    spec = {**job, "curve_points": 0, "eval_batches": 1}
    cfg = config_for(spec, dataset, steps)
    t0 = time.perf_counter()
    trainer = Trainer(cfg, None, log=lambda *a: None)
    result = trainer.run()
    trainer.engine.close()
    return {"id": job["id"], "hidden": job["hidden_text"], "steps": result.steps,
            "steps_per_s": round(result.steps_per_s, 2), "wall_s": round(time.perf_counter() - t0, 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("experiment", choices=("bouncing", "ptb"))
    p.add_argument("--scale", default="medium", choices=tuple(SCALES))
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--methods", default=",".join(METHOD_KEYS))
    p.add_argument("--datasets", default="mnist,char,word", help="bouncing: mnist,notmnist; ptb: char,word")
    p.add_argument("--data", default="../shared/data")
    args = p.parse_args(argv)
    limit_blas_threads(1)
    plan = Plan(args.experiment, SCALES[args.scale], [0], [m for m in METHODS if m.key in args.methods.split(",")],
                args.data, tuple(args.datasets.split(",")))
    for job in test_jobs(plan, setting_for(plan)):
        if job["kind"] != "model":
            continue
        try:
            row = measure(job, job["phases"][0]["data"], args.steps)
        except Exception as exc:  # a diverged or failed run: say so, measure the rest
            row = {"id": job["id"], "error": f"{type(exc).__name__}: {str(exc)[:120]}"}
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
