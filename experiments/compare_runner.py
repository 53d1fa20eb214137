"""Runs compare.py's trials on Ray: each trial is a Ray task with `num_cpus` = its BLAS threads
(and `num_gpus` when asked) in a fresh worker process (`max_calls=1`), so its wall time and peak
resident memory are its own. At most `parallel` trials run at once.

Every finished trial is written at once, atomically, to TRIALS/<key>.json (key: a hash of the
trial's whole config, compare_jobs.job_key, or for a trial cached before keys held only the
datasets a trial uses, its legacy key); a trial whose file holds a result (`finished`: it ran
to the end or diverged) is not run again unless named in `only`. A local Ray is started on a
loopback address (127.0.0.1 by default, ptncn_dist.engines.ray_session) with the dashboard off
and stopped at the end; `address` ('auto', HOST:PORT) joins a running cluster.
Called in a process whose Ray session is already up (a notebook, a test module), it runs its
trials there and leaves that session running.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import compare_job
from ptncn_dist.engines import ray_session
from ptncn_dist.errors import ConfigError

NODE_IP = ray_session.LOOPBACK  # every listener of the private Ray on loopback (ray_session)
START_ATTEMPTS = 2


@dataclass
class RayOptions:
    """Where trials run: a private local Ray (num_cpus, node_ip) or the cluster at `address`."""

    address: str = ""
    num_cpus: int | None = None
    node_ip: str = NODE_IP
    threads: int = 1
    parallel: int | None = None


@dataclass
class RunSummary:
    """What one call of `run` did: trials asked for, found done, run, the failed ones (no
    result) and the diverged ones (a result: see `finished`)."""

    total: int = 0
    cached: int = 0
    ran: list = field(default_factory=list)
    failed: list = field(default_factory=list)
    diverged: list = field(default_factory=list)


DIVERGED = ("DivergenceError:", "StepDiverged:")  # in training; in an evaluation


def finished(res: dict | None) -> bool:
    """Whether a trial has a result to report: it ran to the end, or it diverged (non-finite
    values in training or in an evaluation: an outcome of its setting and seed, which a rerun
    repeats, so it is not rerun)."""
    status = (res or {}).get("status") or ""
    return status == "ok" or status.startswith(DIVERGED)


def diverged(res: dict | None) -> bool:
    """A result that is a divergence, not a finished run."""
    return finished(res) and res.get("status") != "ok"


def trial_path(trials: Path, key: str) -> Path:
    return trials / f"{key}.json"


def read_trial(path: Path) -> tuple[dict, dict]:
    """(job, result) of one trial file; OSError, ValueError, KeyError or TypeError if unreadable."""
    rec = json.loads(path.read_text(encoding="utf-8"))
    return rec["job"], rec["result"]


def load_trial(trials: Path, job: dict) -> dict | None:
    """A trial's cached result (under its key, else its legacy key: compare_jobs.finish), or None."""
    for key in (job["key"], job.get("legacy_key")):
        if key and trial_path(trials, key).is_file():
            try:
                return read_trial(trial_path(trials, key))[1]
            except (OSError, ValueError, KeyError, TypeError):
                return None
    return None


def save_trial(trials: Path, job: dict, result: dict) -> None:
    """Write {job, result} to TRIALS/<key>.json atomically (a rename), so a cut-off command
    never leaves half a file behind."""
    trials.mkdir(parents=True, exist_ok=True)
    path = trial_path(trials, job["key"])
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"job": job, "result": result}, indent=1, default=str), encoding="utf-8")
    os.replace(tmp, path)


def to_run(jobs: list, trials: Path, only: set | None) -> list:
    """The jobs this command must run: those named in `only`, else those not `finished`."""
    if only is not None:
        return [j for j in jobs if j["id"] in only]
    return [j for j in jobs if not finished(load_trial(trials, j))]


class TrialRunner:
    """Runs trials on one Ray session, started on first need (a command with nothing to run
    never starts Ray) and stopped by `close`."""

    def __init__(self, opts: RayOptions, log=print):
        self.opts, self.log, self.joined, self.owned = opts, log, False, False
        self.parallel = opts.parallel

    def _start(self) -> None:
        import ray
        from ray import cloudpickle
        cloudpickle.register_pickle_by_value(compare_job)
        self.owned = not ray.is_initialized()
        if not self.owned:
            self.log("using this process's running Ray session")
        elif self.opts.address:
            ray_session.join(self.opts.address)
        else:
            try:
                ray_session.check_node_ip(self.opts.node_ip, "--node-ip")
            except ConfigError as exc:  # one line, as compare.py reports its other argument errors
                raise SystemExit(str(exc)) from None
            for attempt in range(START_ATTEMPTS):
                try:
                    ray_session.start_private(self.opts.node_ip, self.opts.num_cpus or os.cpu_count(), "--node-ip")
                    break
                except Exception as exc:  # a raylet slow to register on a loaded machine: once more
                    ray.shutdown()
                    if attempt + 1 == START_ATTEMPTS:
                        raise
                    self.log(f"local Ray did not start ({str(exc).splitlines()[0][:120]}); trying again")
        self.joined = True
        if not self.parallel:
            self.parallel = max(1, int(ray.cluster_resources().get("CPU", 1) // self.opts.threads))

    def close(self) -> None:
        if self.joined and self.owned:
            from ptncn_dist.engines.placement import shutdown_ray
            shutdown_ray()
        self.joined = False

    def __enter__(self) -> "TrialRunner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def run(self, jobs: list, trials: Path, only: set | None = None, stage: str = "") -> RunSummary:
        """Run the jobs that need it (see `to_run`), `parallel` at a time, saving each result as
        it ends; afterwards every job that ran has its result in TRIALS."""
        todo = to_run(jobs, trials, only)
        summary = RunSummary(total=len(jobs), cached=len(jobs) - len(todo) if only is None else 0)
        if only is None:
            self.log(f"{stage}{summary.cached} of {len(jobs)} trials already done")
        if not todo:
            return summary
        import ray
        if not self.joined:
            self._start()
        pending, running, t0 = list(todo), {}, time.perf_counter()
        while pending or running:
            while pending and len(running) < self.parallel:
                job = pending.pop(0)
                running[_task(job).remote(job)] = job
            ready, _ = ray.wait(list(running), num_returns=1)
            job = running.pop(ready[0])
            try:
                res = ray.get(ready[0])
            except Exception as exc:  # the worker died (killed, out of memory): report it, go on
                res = {"status": f"{type(exc).__name__}: {str(exc).splitlines()[0][:250]}"}
            save_trial(trials, job, res)
            summary.ran.append(job["id"])
            if not finished(res):
                summary.failed.append(job["id"])
            elif diverged(res):
                summary.diverged.append(job["id"])
            self.log(f"{stage}[{len(summary.ran)}/{len(todo)}] {job['id']}: {res.get('status')} "
                     f"({res.get('wall_s') or 0:.1f} s, {res.get('peak_rss_mib') or 0:.0f} MiB; "
                     f"{time.perf_counter() - t0:.0f} s so far)")
        return summary


def _task(job: dict):
    """The trial as a Ray task: a fresh worker process (max_calls=1), its CPUs and GPUs, no retry."""
    import ray
    return ray.remote(max_calls=1, max_retries=0)(compare_job.run_spec).options(
        num_cpus=max(1, int(job.get("threads", 1))), num_gpus=float(job.get("gpus") or 0.0), name=job["id"])


def collect(jobs: list, trials: Path) -> list:
    """[(job, result)] for every job, from the cache (a job never run: status 'not run')."""
    return [(job, load_trial(trials, job) or {"status": "not run"}) for job in jobs]


def rerun_command(argv: list, ids: list) -> str:
    """The command line that reruns `ids` alone (without --only or --report-only of ARGV)."""
    import shlex
    keep, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--only":
            skip = True
            continue
        if not a.startswith("--only=") and a != "--report-only":
            keep.append(a)
    return " ".join(["python", "experiments/compare.py"] + [shlex.quote(a) for a in keep]
                    + ["--only", shlex.quote(",".join(ids))])
