"""Paper-comparison experiments: P-TNCN against BPTT, truncated BPTT, RTRL, UORO, an echo state
network and an LSTM, at matched parameter counts, on the data the P-TNCN paper uses.

    python -m experiments.compare bouncing            # Bouncing MNIST and NotMNIST (medium scale)
    python -m experiments.compare ptb                 # Penn Treebank, chars and words
    python -m experiments.compare zeroshot            # trained on MNIST, tested on NotMNIST
    python -m experiments.compare continual           # MNIST -> NotMNIST -> MNIST
    python -m experiments.compare bouncing --scale long   # 10 minutes per run (experiments/run_long.sh)
    python -m experiments.compare ptb --scale full --dry-run   # list the cluster trials and the submit line

Run from the repository root with the data in ../shared/data (or pass --data). Each (method, seed,
dataset) is a Ray Tune trial with its own CPUs (runner.py), first a tuning stage (the same number
of validation-scored trials per method, tuning.py), then the seeded test runs at each method's
chosen setting. Finished trials are saved by config under OUT/trials/ and never rerun; an
interrupted command, run again, continues each unfinished trial from its last checkpoint (Tune's
experiments under --storage). Results go to experiments/results/<experiment>/<scale>/ (or
--out): results.md, results.csv, PNG plots, meta.json. Scales: scales.py (`medium` is the
default).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

EXPERIMENTS_DIR = Path(__file__).resolve().parents[1]
REPO = EXPERIMENTS_DIR.parent

from . import report as rep
from . import runner as runner
from .jobs import Plan, describe_jobs, setting_for, test_jobs, tuning_datasets
from .methods import METHOD_KEYS, METHODS
from .output import write_results
from .scales import DEFAULT_SCALE, SCALES, Scale
from .tuning import choose, chosen_from, tune_jobs

EXPERIMENTS = ("bouncing", "ptb", "zeroshot", "continual")
DEFAULT_DATA = "../shared/data"


@dataclass
class Outcome:
    """What one command did: where results went, and per stage the runner's summary."""

    out: Path
    summaries: dict = field(default_factory=dict)
    jobs: list = field(default_factory=list)

    @property
    def ran(self) -> list:
        return [j for s in self.summaries.values() for j in s.ran]

    @property
    def failed(self) -> list:
        return [j for s in self.summaries.values() for j in s.failed]


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiment", choices=EXPERIMENTS)
    p.add_argument("--scale", choices=tuple(SCALES), default=DEFAULT_SCALE)
    p.add_argument("--seeds", type=int, help="number of seeds (0..N-1) of every run; default: the scale's (3, smoke "
                   "1; long: 3 on Bouncing MNIST, 1 elsewhere)")
    p.add_argument("--tune-trials", type=int, help="tuning trials per method and dataset (default: the scale's)")
    p.add_argument("--settings-from", metavar="DIR",
                   help="run no tuning here: use the settings chosen by the tuning trials of a finished run "
                        "of the same experiment in DIR (e.g. experiments/results/ptb/medium)")
    p.add_argument("--out", help="output directory; default experiments/results/<experiment>/<scale>")
    p.add_argument("--data", default=DEFAULT_DATA, help=f"data root holding mnist/, notmnist/, ptb_word/ "
                                                        f"(default {DEFAULT_DATA}, relative to the current directory)")
    p.add_argument("--datasets", help="bouncing: a subset of mnist,notmnist (MNIST alone needs no data root); "
                                      "ptb: of char,word (default: all, or the scale's)")
    p.add_argument("--methods", help="comma-separated subset of " + ",".join(METHOD_KEYS)
                                     + " (default: all, or the scale's)")
    p.add_argument("--threads", type=int, help="CPUs and BLAS threads per trial (default: the scale's; "
                                               "1, full 4, epoch 2)")
    p.add_argument("--gpus", type=float, default=0.0, help="GPUs per trial (default 0)")
    p.add_argument("--parallel", type=int, help="trials at once (default: the Ray CPUs / --threads)")
    p.add_argument("--address", default="", help="join a running Ray cluster ('auto', HOST:PORT) instead of "
                                                 "starting a local one")
    p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: every core)")
    p.add_argument("--node-ip", default=runner.NODE_IP, help="the local Ray's node address (loopback)")
    p.add_argument("--storage", default="runs/compare",
                   help="where Ray Tune keeps each stage's experiment and the trials' checkpoints "
                        "(default runs/compare; an interrupted command continues from there)")
    p.add_argument("--only", help="comma-separated trial ids: (re)run just these, then rebuild the report")
    p.add_argument("--report-only", action="store_true",
                   help="rebuild results.md, results.csv and the plots from OUT/trials; run nothing")
    p.add_argument("--dry-run", action="store_true",
                   help="validate every trial's config, list the trials and the cluster command; run nothing")
    p.add_argument("--inject", action="append", default=[], help=argparse.SUPPRESS)  # tests: METHOD:KEY=VALUE
    p.add_argument("--steps", type=int, help=argparse.SUPPRESS)  # tests: every run's step budget
    args = p.parse_args(argv)
    scale = SCALES[args.scale]
    if scale.experiments and args.experiment not in scale.experiments:
        p.error(f"scale {args.scale} is for {', '.join(scale.experiments)} only")
    args.datasets = args.datasets or ",".join(scale.datasets or ("mnist", "notmnist", "char", "word"))
    args.methods = args.methods or ",".join(scale.methods or METHOD_KEYS)
    if args.threads is None:
        args.threads = scale.threads
    if args.parallel is None and not args.address:
        args.parallel = max(1, (args.num_cpus or os.cpu_count() or 1) // (args.threads or 1))
    unknown = set(args.methods.split(",")) - set(METHOD_KEYS)
    if unknown:
        p.error(f"unknown methods {sorted(unknown)}; choose from {list(METHOD_KEYS)}")
    for name, value in (("--parallel", args.parallel), ("--seeds", args.seeds), ("--threads", args.threads)):
        if value is not None and value < 1:
            p.error(f"{name} must be >= 1")
    if args.tune_trials is not None and args.tune_trials < 0:
        p.error("--tune-trials must be >= 0")
    return args


def make_plan(args) -> Plan:
    scale = SCALES[args.scale]
    if args.tune_trials is not None:
        scale = Scale(**{**asdict(scale), "tune_trials": args.tune_trials})
    if args.steps:
        scale = Scale(**{**asdict(scale), **{k: args.steps for k in ("video_steps", "continual_steps", "char_steps",
                                                                        "word_steps")}})
    if args.seeds:  # asked for: every run gets them, not only those on Bouncing MNIST (the long scale's default)
        scale = Scale(**{**asdict(scale), "seeds_other": 0})
    inject: dict = {}
    for item in args.inject:
        method, _, override = item.partition(":")
        inject.setdefault(method, []).append(override)
    return Plan(args.experiment, scale, list(range(args.seeds or scale.seeds)),
                [m for m in METHODS if m.key in args.methods.split(",")], args.data,
                tuple(n for n in args.datasets.split(",") if n), args.threads, args.gpus, inject)


def meta_for(args, argv: list, plan: Plan) -> dict:
    return {"experiment": plan.experiment,
            "command": " ".join(["python", "-m", "experiments.compare"] + [shlex.quote(a) for a in argv]),
            "argv": argv, "scale": asdict(plan.scale), "seeds": plan.seeds,
            "methods": [asdict(m) for m in plan.methods], "data_root": args.data,
            "blas_threads_per_job": plan.threads, "gpus_per_trial": plan.gpus,
            "trials_at_a_time": args.parallel or f"the cluster's CPUs / {plan.threads}",
            "ray_address": args.address or f"local, {args.node_ip}",
            "memory_measure": ("peak RSS of each trial's fresh Ray worker process, getrusage(RUSAGE_SELF) "
                               "ru_maxrss (KiB on Linux); seq_memory_mib: tracemalloc peak while learning one "
                               "extra training sequence"),
            "settings_from": args.settings_from,
            "software": rep.software_versions(), "machine": rep.machine_info(), "git": rep.git_state(REPO),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


RUN_FIELDS = ("command", "argv", "software", "machine", "git", "started", "total_wall_s", "trials_run_now",
              "trials_at_a_time", "ray_address")


def kept_run_meta(path: Path, meta: dict, rerun: list | None = None) -> dict:
    """The meta.json of a --report-only rebuild (or of a rerun that found every trial done), or of
    an --only rerun of some trials (`rerun`: their ids): what the last whole run recorded about
    itself (its command, versions, machine, commit, start, wall time, trials at a time) stays, so
    results.md still says how to reproduce the whole table; the rebuild's own are added under
    `report_rebuilt`, a rerun's appended to `reruns`. A missing or unreadable old file keeps this
    command's."""
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return meta
    own = {k: meta[k] for k in ("command", "git", "started")}
    kept = {**meta, **{k: old[k] for k in RUN_FIELDS if k in old}}
    if rerun is None:
        return {**kept, "report_rebuilt": own}
    return {**kept, "reruns": [*old.get("reruns", []), {**own, "trials": sorted(rerun),
                                                        "total_wall_s": meta.get("total_wall_s")}]}


def submit_line(argv: list, args, out: Path) -> str:
    """The `ray job submit` command that runs this experiment on a cluster."""
    keep = [a for a in argv if a != "--dry-run"]
    extra = [] if args.address else ["--address", "auto"]
    extra += [] if args.out else ["--out", str(out)]
    cmd = " ".join(["python", "-m", "experiments.compare"] + [shlex.quote(a) for a in keep + extra])
    return f"ray job submit --address http://HEAD_IP:8265 --working-dir . -- {cmd}"


@contextlib.contextmanager
def _stops_cleanly(log):
    """An interrupted stage ends the command with one line and no report: nothing unfinished
    is written, and the same command continues."""
    try:
        yield
    except runner.Interrupted as exc:
        log(f"interrupted: {exc}")
        raise SystemExit(130) from None


def main(argv=None, log=print) -> Outcome:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    plan = make_plan(args)
    out = Path(args.out).resolve() if args.out else EXPERIMENTS_DIR / "results" / args.experiment / plan.scale.name
    trials = out / "trials"
    # At a shared_video scale the Bouncing runs' trials (beside OUT: ../../bouncing/<its name>)
    # serve zero-shot whole and continual's tuning.
    shared = plan.scale.shared_video and args.experiment in ("zeroshot", "continual")
    bouncing = out.parent.parent / "bouncing" / out.name / "trials"
    tune_trials = bouncing if shared else trials
    test_trials = bouncing if shared and args.experiment == "zeroshot" else trials
    setting = setting_for(plan)
    tuning, source = tune_jobs(plan, setting), None
    if args.settings_from:
        pairs = [(m.key, d) for d in tuning_datasets(plan, setting) for m in plan.methods]
        setting.chosen, source_done = chosen_from(Path(args.settings_from), plan.experiment, pairs)
        tuning, source = [], (args.settings_from, source_done)
    outcome = Outcome(out)
    meta = meta_for(args, argv, plan)
    if args.dry_run:
        jobs = tuning + test_jobs(plan, setting)
        lines = describe_jobs(jobs)
        log(f"{args.experiment} ({plan.scale.name}): {len(tuning)} tuning + {len(jobs) - len(tuning)} test trials; "
            + (f"test runs use the settings chosen in {args.settings_from}" if source else
               "test runs use each method's setting chosen by tuning (listed here at its default)"))
        for line in lines:
            log(line)
        log("on a cluster (the data at --data on every node):")
        log(submit_line(argv, args, out))
        outcome.jobs = jobs
        return outcome
    only = set(args.only.split(",")) if args.only else None
    unknown = sorted((only or set()) - {j["id"] for j in tuning + test_jobs(plan, setting)})
    if unknown:
        raise SystemExit(f"--only names no trial of this command: {', '.join(unknown)} (see --dry-run)")
    t0 = time.perf_counter()
    storage = str(Path(args.storage) / args.experiment / plan.scale.name)
    opts = runner.RayOptions(args.address, args.num_cpus, args.node_ip, plan.threads, args.parallel, storage)
    with runner.TrialRunner(opts, log) as tr, _stops_cleanly(log):
        if not args.report_only:
            outcome.summaries["tune"] = tr.run(tuning, tune_trials, only, "tuning")
        if not source:
            setting.chosen = choose(runner.collect(tuning, tune_trials))
        tests = test_jobs(plan, setting)
        if not args.report_only:
            outcome.summaries["test"] = tr.run(tests, test_trials, only, "test")
    done = runner.collect(tuning, tune_trials) + runner.collect(tests, test_trials)
    outcome.jobs = tuning + tests
    meta["total_wall_s"] = round(time.perf_counter() - t0, 1)
    meta["trials_run_now"] = outcome.ran
    if args.report_only or only is not None or not outcome.ran:
        # A rebuild, a rerun of some trials, or a rerun that found every trial done: the record
        # of the run that made the results stays (a plain rerun is a rebuild, not a new run).
        meta = kept_run_meta(out / "meta.json", meta, sorted(only) if only is not None else None)
    failed = [job["id"] for job, res in done if not runner.finished(res)]
    rerun = runner.rerun_command(argv, failed) if failed else ""
    reused = frozenset([j["id"] for j in tuning if tune_trials != trials]
                       + [j["id"] for j in tests if test_trials != trials])
    write_results(args.experiment, plan.scale, plan.seeds, done, out, meta, rerun, source, reused)
    if meta["diverged"]:
        log(f"{len(meta['diverged'])} trial(s) diverged (a result of their setting, not rerun): "
            f"{', '.join(meta['diverged'])}")
    if failed:
        log(f"{len(failed)} trial(s) failed or not run: {', '.join(failed)}")
        log(f"rerun them alone: {rerun}")
    log(f"wrote {out}/results.md ({time.perf_counter() - t0:.1f} s)")
    return outcome
