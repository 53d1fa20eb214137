"""Runs the comparison's trials as Ray Tune trials: one Tune experiment per stage (tuning, test),
each (method, dataset, seed) a trial with its own CPUs (and GPUs when asked), its BLAS pinned to
them, at most `parallel` at once (`max_concurrent_trials`).

A trial reports its curve to Tune as it trains and saves its run directory as a Tune checkpoint
(experiments.compare.trial). An interrupted command, run again, finds the stage's experiment under
`storage` and continues it with `Tuner.restore`: finished trials stay finished, an unfinished one
resumes from its last checkpoint with the training seconds it had spent. A finished trial's
result is written atomically to TRIALS/<key>.json (key: a hash of the trial's whole config,
experiments.compare.jobs.job_key); one whose file holds a result is never run again unless named
in `only`. Tune's experiment state is pickled by Ray: keep `storage` where only its owner writes.

A local Ray is started on a loopback address (127.0.0.1 by default, ptncn_dist.engines.ray_session)
with the dashboard off and stopped at the end; `address` ('auto', HOST:PORT) joins a running
cluster. Called in a process whose Ray session is already up, it runs there and leaves it running.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from ptncn_dist.engines import ray_session
from ptncn_dist.errors import ConfigError
from ptncn_dist.training.stop import handlers_kept

NODE_IP = ray_session.LOOPBACK  # every listener of the private Ray on loopback (ray_session)
START_ATTEMPTS = 2
# Tune checkpoints kept per trial: more than one, since Tune deletes an older one as it persists a
# newer one, and its experiment state may still name the older until its next snapshot.
KEEP_CHECKPOINTS = 3


@dataclass
class RayOptions:
    """Where trials run: a private local Ray (num_cpus, node_ip) or the cluster at `address`;
    Tune's experiments go under `storage`."""

    address: str = ""
    num_cpus: int | None = None
    node_ip: str = NODE_IP
    threads: int = 1
    parallel: int | None = None
    storage: str = "runs/compare"


@dataclass
class RunSummary:
    """What one call of `run` did: trials asked for, found done, run, the failed ones (no
    result) and the diverged ones (a result: see `finished`)."""

    total: int = 0
    cached: int = 0
    ran: list = field(default_factory=list)
    failed: list = field(default_factory=list)
    diverged: list = field(default_factory=list)
    unfinished: list = field(default_factory=list)
    restored: bool = False


class Interrupted(Exception):
    """A stage's Tune experiment stopped with trials unfinished (Ctrl-C, a stop signal): nothing
    of them is saved, and the same command continues them."""


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
    """A trial's saved result, or None (none, or unreadable: then it runs again)."""
    path = trial_path(trials, job["key"])
    if not path.is_file():
        return None
    try:
        return read_trial(path)[1]
    except (OSError, ValueError, KeyError, TypeError):
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


def experiment_name(stage: str, jobs: list) -> str:
    """The Tune experiment of a stage's trials: the same trials give the same name (so a rerun
    after an interruption restores it, whichever of them had finished), other trials a new one."""
    digest = hashlib.sha256(",".join(sorted(j["key"] for j in jobs)).encode()).hexdigest()[:10]
    return f"{stage or 'trials'}-{digest}"


class TrialRunner:
    """Runs trials on one Ray session, started on first need (a command with nothing to run
    never starts Ray) and stopped by `close`."""

    def __init__(self, opts: RayOptions, log=print):
        self.opts, self.log, self.joined, self.owned = opts, log, False, False
        self.parallel = opts.parallel

    def _start(self) -> None:
        import ray
        self.owned = not ray.is_initialized()
        if not self.owned:
            self.log("using this process's running Ray session")
        elif self.opts.address:
            ray_session.join(self.opts.address)
        else:
            try:
                ray_session.check_node_ip(self.opts.node_ip, "--node-ip")
            except ConfigError as exc:  # one line, as the CLI reports its other argument errors
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
        """Run the jobs that need it (see `to_run`) as one Tune experiment, restoring it when an
        earlier command left it unfinished; afterwards every job that ran has its result in
        TRIALS."""
        todo = to_run(jobs, trials, only)
        summary = RunSummary(total=len(jobs), cached=len(jobs) - len(todo) if only is None else 0)
        label = f"{stage}: " if stage else ""
        if only is None:
            self.log(f"{label}{summary.cached} of {len(jobs)} trials already done")
        if not todo:
            return summary
        if not self.joined:
            self._start()
        # Checkpoints come every few minutes of a long trial, every few steps of a test's: Tune's
        # warning about frequent state snapshots, and its per-experiment banner, say nothing here.
        os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        from ray import tune
        from . import trial
        SaveAsTheyEnd = __getattr__("SaveAsTheyEnd")
        storage = Path(self.opts.storage).resolve()
        name = experiment_name(stage, todo if only is not None else jobs)
        path = storage / name
        trainable = tune.with_resources(trial.trainable, lambda cfg: {
            "cpu": max(1, int(cfg["job"].get("threads", 1))), "gpu": float(cfg["job"].get("gpus") or 0.0)})
        if only is not None:  # an explicit rerun starts these trials afresh
            import shutil
            shutil.rmtree(path, ignore_errors=True)
        t0 = time.perf_counter()
        if only is None and tune.Tuner.can_restore(str(path)):
            self.log(f"{label}continuing the unfinished Tune experiment {path}")
            tuner = tune.Tuner.restore(str(path), trainable, resume_unfinished=True, resume_errored=True)
            summary.restored = True
        else:
            tuner = tune.Tuner(
                trainable,
                param_space={"job": tune.grid_search(todo), "cwd": os.getcwd()},
                tune_config=tune.TuneConfig(max_concurrent_trials=self.parallel, reuse_actors=False,
                                            trial_name_creator=_trial_name, trial_dirname_creator=_trial_dirname),
                run_config=tune.RunConfig(name=name, storage_path=str(storage), verbose=0,
                                          checkpoint_config=tune.CheckpointConfig(num_to_keep=KEEP_CHECKPOINTS),
                                          failure_config=tune.FailureConfig(max_failures=0),
                                          callbacks=[SaveAsTheyEnd(str(trials), label)]))
        with handlers_kept():  # Tune leaves its SIGINT handler behind otherwise
            grid = tuner.fit()
        by_key = {j["key"]: j for j in todo}
        for res in grid:
            job = by_key.get(((res.config or {}).get("job") or {}).get("key"))
            if job is None:
                continue
            out = trial.result_of(res)
            if out is None:  # stopped before its end: the next command continues it
                summary.unfinished.append(job["id"])
                continue
            save_trial(trials, job, out)
            summary.ran.append(job["id"])
            if not finished(out):
                summary.failed.append(job["id"])
            elif diverged(out):
                summary.diverged.append(job["id"])
            if not finished(out):  # a finished one was logged as it ended (SaveAsTheyEnd)
                self.log(f"{label}{job['id']}: {out.get('status')}")
        self.log(f"{label}{len(summary.ran)} trial(s) in {time.perf_counter() - t0:.0f} s")
        if summary.unfinished:
            raise Interrupted(f"{label}{len(summary.unfinished)} trial(s) stopped before their end "
                              f"({', '.join(summary.unfinished[:4])}{', ...' if len(summary.unfinished) > 4 else ''}); "
                              f"run the same command again to continue them from their last checkpoints")
        return summary


def _saved_result(trial) -> dict | None:
    """The result a finished Tune trial reported last (None: it has none)."""
    last = getattr(trial, "last_result", None) or {}
    return json.loads(last["result"]) if last.get("result") else None


def _make_callback():
    from ray import tune

    class SaveAsTheyEnd(tune.Callback):
        """Writes each trial's result to TRIALS the moment Tune sees it end (Tune keeps this
        callback in its experiment state, so a restored experiment does the same)."""

        def __init__(self, trials: str, label: str = ""):
            self.trials, self.label = trials, label

        def on_trial_complete(self, iteration, trials, trial, **info):
            out = _saved_result(trial)
            if out is not None:
                save_trial(Path(self.trials), trial.config["job"], out)
                print(f"{self.label}{trial.config['job']['id']}: {out.get('status')} "
                      f"({out.get('train_s_total') or 0:.1f} s training, {out.get('wall_s') or 0:.1f} s)", flush=True)

    return SaveAsTheyEnd


def __getattr__(name: str):
    if name == "SaveAsTheyEnd":  # defined on first use: Ray Tune is an extra
        globals()[name] = cls = _make_callback()
        cls.__module__, cls.__qualname__ = __name__, name
        return cls
    raise AttributeError(name)


def _trial_name(t) -> str:
    return t.config["job"]["id"]


def _trial_dirname(t) -> str:
    return f"{t.config['job']['id'][:80]}-{t.trial_id}"


def collect(jobs: list, trials: Path) -> list:
    """[(job, result)] for every job, from the saved results (a job never run: status 'not run')."""
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
    return " ".join(["python", "-m", "experiments.compare"] + [shlex.quote(a) for a in keep]
                    + ["--only", shlex.quote(",".join(ids))])
