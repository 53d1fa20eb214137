"""A comparison trial against the same config under `ptncn train`: steps per second of training
(the trainer's own train_s, evaluations left out), side by side on the same machine, alternating
rounds. A trial runs as the runner runs it (a Ray Tune trial with its CPUs and BLAS threads); the
`ptncn train` run gets the trial's exact Config as a TOML file and the same BLAS threads.

    python -m experiments.compare.trial_speed --scale epoch --experiment ptb --method ptncn --steps 3000

Prints one JSON line per run and the ratio of the medians (trial / train); the target is >= 0.9.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from ptncn_dist.config import to_toml

from . import cli, runner
from .jobs import config_for


def trial_rate(job: dict, out: Path, opts: runner.RayOptions) -> float:
    """Steps/s of training of one Tune trial of `job` (its result's steps / train_s)."""
    trials = out / "trials"
    with runner.TrialRunner(opts, log=lambda *_: None) as tr:
        tr.run([job], trials, only={job["id"]}, stage="speed")
    res = runner.load_trial(trials, job)
    if not res or res.get("status") != "ok":
        raise SystemExit(f"the trial did not finish: {res and res.get('status')}")
    ph = res["phases"][0]
    return ph["steps"] / ph["train_s"]


def train_rate(job: dict, out: Path) -> float:
    """Steps/s of training of `ptncn train` on the trial's Config, in a fresh process."""
    ph = job["phases"][0]
    cfg = config_for(job, ph["data"], ph["steps"], minutes=ph.get("minutes", 0.0))
    path = out / "trial.toml"
    path.write_text(to_toml(cfg), encoding="utf-8")
    run_dir = Path(tempfile.mkdtemp(prefix="ptncn-speed-", dir=out))
    threads = str(max(1, int(job.get("threads", 1))))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    subprocess.run([sys.executable, "-m", "ptncn_dist.cli", "train", "--config", str(path), "--run-dir",
                    str(run_dir / "run")], check=True, env=env, stdout=subprocess.DEVNULL)
    summary = json.loads((run_dir / "run" / "summary.json").read_text(encoding="utf-8"))
    return summary["steps"] / summary["train_s"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--experiment", default="ptb", choices=("bouncing", "ptb"))
    p.add_argument("--scale", default="epoch")
    p.add_argument("--method", default="ptncn")
    p.add_argument("--dataset", default="char")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--data", default=cli.DEFAULT_DATA)
    p.add_argument("--num-cpus", type=int)
    args = p.parse_args(argv)
    cargs = cli.parse_args([args.experiment, "--scale", args.scale, "--methods", args.method, "--datasets",
                            args.dataset, "--data", args.data, "--steps", str(args.steps), "--tune-trials", "0"])
    plan = cli.make_plan(cargs)
    from .jobs import setting_for, test_jobs
    job = next(j for j in test_jobs(plan, setting_for(plan)) if j["kind"] == "model")
    job = {**job, "curve_points": 0, "checkpoint_minutes": 0.0, "checkpoint_every": 0}
    with tempfile.TemporaryDirectory(prefix="ptncn-trial-speed-") as tmp:
        out = Path(tmp)
        opts = runner.RayOptions(num_cpus=args.num_cpus or os.cpu_count(), threads=plan.threads, parallel=1,
                                 storage=str(out / "tune"))
        rates = {"trial": [], "train": []}
        for r in range(args.rounds):
            for kind in ("train", "trial") if r % 2 == 0 else ("trial", "train"):
                rate = trial_rate(job, out / f"{kind}{r}", opts) if kind == "trial" else train_rate(job, out)
                rates[kind].append(rate)
                print(json.dumps({"round": r, "run": kind, "id": job["id"], "threads": plan.threads,
                                  "steps": args.steps, "steps_per_s": round(rate, 2)}), flush=True)
    ratio = statistics.median(rates["trial"]) / statistics.median(rates["train"])
    print(f"trial / ptncn train, median steps/s: {ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
