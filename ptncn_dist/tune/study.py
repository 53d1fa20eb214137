"""`ptncn tune`: a hyper-parameter study as Ray Tune trials, stopped early by ASHA on test loss.

Each trial is one training run (the ordinary `train()`), with its own CPUs and BLAS pinned to
them; it reports every evaluation (test loss, loss by position, steps, wall seconds) to Tune.
Tune's own experiment directory goes under `--storage` (default runs/tune); the study's results,
small and readable, go to `--out`: `trials.csv` (one row per trial), `curves.jsonl` (every
reported evaluation) and `curves.png`, which `experiments/results/tuning/` keeps. Each trial
hands Tune its run directory as a checkpoint (ptncn_dist/tune/trial.py), so the same command run
after an interruption continues the study: finished trials kept, unfinished ones from their
last checkpoints; `--fresh` starts it anew. Needs the `tune` extra (`pip install "ptncn_dist[tune]"`).
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import shutil
import sys
import time

from ..engines import ray_session
from ..engines.placement import shutdown_ray
from ..errors import ConfigError, PtncnError
from ..training.stop import handlers_kept
from .space import Dist, SearchSpace, read_space, trial_config
from .trial import metric_for, overrides_of, remove_work_dirs, run_trial


def _tune_value(tune, d: Dist):
    if d.kind == "grid":
        return tune.grid_search(d.args)
    if d.kind == "choice":
        return tune.choice(d.args)
    return getattr(tune, d.kind)(*d.args)


def work_prefix(path: str) -> str:
    """Where the trials of the study in `path` keep their run directories in the temp dir."""
    return f"ptncn-tune-{hashlib.sha256(os.path.abspath(path).encode()).hexdigest()[:10]}-"


def param_space(tune, base_path: str | None, space: SearchSpace, prefix: str = "ptncn-tune-") -> dict:
    """Tune's param_space: the base config path, one grid over the variants, the sampled keys,
    and the prefix of the trials' temporary directories."""
    variants = space.variants or []
    ps = {"config": os.path.abspath(base_path) if base_path else None, "work_prefix": prefix,
          "sampled": {k: _tune_value(tune, d) for k, d in space.sampled.items()}}
    fixed = dict(space.fixed)
    if variants:
        ps["overrides"] = tune.grid_search([{**fixed, **v.overrides, "_variant": v.name} for v in variants])
    else:
        ps["overrides"] = {**fixed, "_variant": "sampled"}
    return ps


class Interrupted(PtncnError):
    """The study stopped (Ctrl-C) with trials unfinished; the same command continues it."""


MARKER = "ptncn_study.json"


def fingerprint(base_path: str | None, space_path: str) -> dict:
    """What a study was started from: the space file's and the base config's sha256."""
    def digest(path):
        if not path:
            return None
        with open(path, "rb") as fh:
            return hashlib.sha256(fh.read()).hexdigest()
    return {"space": os.path.abspath(space_path), "space_sha256": digest(space_path),
            "config": os.path.abspath(base_path) if base_path else None, "config_sha256": digest(base_path)}


def _restorable(tune, path: str, mark: dict, fresh: bool) -> bool:
    """Whether to continue the study in `path`: it exists and was started from the same space
    and config. --fresh removes it; another space or config is a ConfigError (never a silent
    restart, nor a continuation of something else)."""
    if fresh:
        shutil.rmtree(path, ignore_errors=True)
        return False
    if not tune.Tuner.can_restore(path):
        return False
    try:
        with open(os.path.join(path, MARKER), encoding="utf-8") as fh:
            old = json.load(fh)
    except (OSError, ValueError):
        old = {}
    changed = [k for k in ("space_sha256", "config_sha256") if old.get(k) != mark[k]]
    if changed:
        what = " and ".join({"space_sha256": "space file", "config_sha256": "base config"}[k] for k in changed)
        raise ConfigError(f"{path} holds a study started from another {what}: --fresh starts it anew there, "
                          f"--name keeps both")
    return True


def study(base_path: str | None, space_path: str, out_dir: str, storage: str, name: str,
          num_cpus: int | None = None, node_ip: str = ray_session.LOOPBACK, address: str = "",
          fresh: bool = False, log=print) -> list[dict]:
    """Run the study on a private local Ray (on `node_ip`), or on the cluster at `address`;
    returns one summary row per trial (also written to `out_dir`). A study left unfinished under
    STORAGE/NAME by an interrupted command is continued: finished trials are kept, unfinished
    ones go on from their last checkpoints. An interruption raises Interrupted."""
    try:
        from ray import tune
        from ray.tune.schedulers import ASHAScheduler
    except ImportError as exc:
        raise PtncnError(f"ptncn tune needs Ray Tune: pip install \"ptncn_dist[tune]\" ({exc})") from None
    space = read_space(space_path)
    base = trial_config(base_path, space.fixed)
    metric = metric_for(base)
    for v in space.variants:
        trial_config(base_path, {**space.fixed, **v.overrides})
    max_t = int(space.fixed.get("train.steps", base.train.steps))
    for v in space.variants:
        max_t = max(max_t, int(v.overrides.get("train.steps", 0)))
    os.makedirs(out_dir, exist_ok=True)
    path, mark = os.path.join(os.path.abspath(storage), name), fingerprint(base_path, space_path)
    restore = _restorable(tune, path, mark, fresh)  # before Ray starts: a refusal costs nothing
    if address:
        ray_session.join(address, node_ip, "tune --node-ip", "tune --address")
    else:
        ray_session.start_private(node_ip, num_cpus or os.cpu_count(), "tune --node-ip")
    try:
        cpus = space.cpus_per_trial
        space.fixed.setdefault("engine.blas_threads", max(1, int(cpus)))
        scheduler = ASHAScheduler(time_attr="step", max_t=max_t, grace_period=space.grace_period,
                                  reduction_factor=space.reduction_factor)
        trainable = tune.with_resources(run_trial, {"cpu": cpus})
        if restore:
            log(f"continuing the unfinished study {path}")
            tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, restart_errored=True)
        else:
            tuner = tune.Tuner(
                trainable,
                param_space=param_space(tune, base_path, space, work_prefix(path)),
                tune_config=tune.TuneConfig(metric=metric, mode="min", scheduler=scheduler,
                                            num_samples=space.num_samples,
                                            max_concurrent_trials=space.max_concurrent,
                                            time_budget_s=space.time_budget_s or None),
                run_config=tune.RunConfig(name=name, storage_path=os.path.abspath(storage), verbose=1))
        t0 = time.monotonic()
        _write_marker(path, mark)
        try:
            with handlers_kept():
                grid = tuner.fit()
        finally:
            # A trial that ASHA stops, or that an interruption ends, is killed before its own
            # cleanup: its run directory goes here (an unfinished one lives on as its checkpoint).
            remove_work_dirs(work_prefix(path))
        unfinished = sum(1 for res in grid if res.error is None and not (res.metrics or {}).get("done"))
        budget_over = space.time_budget_s and time.monotonic() - t0 >= space.time_budget_s
        if unfinished and not budget_over:
            raise Interrupted(f"{unfinished} of {len(grid)} trial(s) stopped before their end; run the same "
                              f"command again to continue them (--fresh starts the study anew)")
        rows = write_results(grid, metric, out_dir)
    finally:
        shutdown_ray()
    return rows


def _write_marker(path: str, mark: dict) -> None:
    os.makedirs(path, exist_ok=True)
    tmp = os.path.join(path, f".{MARKER}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(mark, fh, indent=1)
    os.replace(tmp, os.path.join(path, MARKER))


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def write_results(grid, metric: str, out_dir: str) -> list[dict]:
    """trials.csv, curves.jsonl and curves.png from a Tune ResultGrid."""
    rows, curves = [], []
    for i, res in enumerate(grid):
        params = res.config or {}
        name = params.get("overrides", {}).get("_variant", "trial")
        settings = overrides_of(params)
        df = res.metrics_dataframe
        reports = [] if df is None else df.to_dict("records")
        evals = [r for r in reports if metric in r and r.get(metric) is not None]
        best = min(evals, key=lambda r: r[metric]) if evals else {}
        last = evals[-1] if evals else {}
        rows.append({"trial": i, "variant": name, "status": "error" if res.error else "ok",
                     "diverged": int(any(r.get("diverged") for r in evals)),
                     f"best_{metric}": _clean(best.get(metric)), "best_step": best.get("step"),
                     f"last_{metric}": _clean(last.get(metric)), "last_step": last.get("step"),
                     "wall_s": _clean(last.get("wall_s")), "node_ip": last.get("node_ip"),
                     "steps_per_s": _clean(last["step"] / last["wall_s"]) if last.get("wall_s") else None,
                     "resumed_at": max([r.get("resumed_at") or 0 for r in evals] or [0]),
                     "settings": json.dumps(settings, sort_keys=True)})
        for r in evals:
            keep = {k: _clean(v) if not isinstance(v, (list, dict)) else v for k, v in r.items()
                    if k in ("step", "wall_s", "diverged", "node_ip", "resumed_at") or k.startswith("test_")
                    or k.startswith("reference")}
            curves.append({"trial": i, "variant": name, **keep})
    rows.sort(key=lambda r: (r[f"best_{metric}"] is None, r[f"best_{metric}"] or 0.0))
    with open(os.path.join(out_dir, "trials.csv"), "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["trial"])
        w.writeheader()
        w.writerows(rows)
    with open(os.path.join(out_dir, "curves.jsonl"), "w", encoding="utf-8") as fh:
        for c in curves:
            fh.write(json.dumps(c, default=str) + "\n")
    _plot_curves(curves, rows, metric, os.path.join(out_dir, "curves.png"))
    return rows


def replot(out_dir: str, metric: str) -> None:
    """curves.png again from a study's trials.csv and curves.jsonl."""
    with open(os.path.join(out_dir, "trials.csv"), newline="", encoding="utf-8") as fh:
        rows = [{**r, "trial": int(r["trial"]), f"best_{metric}": float(r[f"best_{metric}"]) if r[f"best_{metric}"] else None}
                for r in csv.DictReader(fh)]
    with open(os.path.join(out_dir, "curves.jsonl"), encoding="utf-8") as fh:
        curves = [json.loads(line) for line in fh]
    _plot_curves(curves, rows, metric, os.path.join(out_dir, "curves.png"))


def _plot_curves(curves, rows, metric, path, top: int = 8) -> None:
    """Test loss against steps and against wall seconds for the best `top` trials (the untrained
    evaluation at step 0 left out, so the curves' ends stay readable)."""
    if not curves:
        return
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    best = [r["trial"] for r in rows if r[f"best_{metric}"] is not None][:top]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for t in best:
        pts = [c for c in curves if c["trial"] == t and c.get(metric) is not None
               and not c.get("diverged") and c["step"] > 0]
        if not pts:
            continue
        label = f"{t}: {pts[0]['variant']}"
        axes[0].plot([p["step"] for p in pts], [p[metric] for p in pts], marker=".", label=label)
        axes[1].plot([p["wall_s"] for p in pts], [p[metric] for p in pts], marker=".", label=label)
    axes[0].set_xlabel("training steps")
    axes[1].set_xlabel("wall seconds (trials share the machine)")
    for ax in axes:
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="ptncn tune", description="a hyper-parameter study as Ray Tune trials (ASHA)")
    p.add_argument("--config", help="base run config (TOML); default: the offline default run")
    p.add_argument("--space", required=True, help="search space file (see ptncn_dist/tune/space.py)")
    p.add_argument("--name", default=None, help="study name (default: the space file's stem)")
    p.add_argument("--out", default=None, help="results directory (default experiments/results/tuning/NAME)")
    p.add_argument("--storage", default="runs/tune", help="Tune's experiment directory root")
    p.add_argument("--fresh", action="store_true",
                   help="start the study anew, removing an unfinished one of the same name under --storage "
                        "(by default an interrupted study is continued)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs a private local Ray may use (default: all)")
    p.add_argument("--address", default="", help="join a running Ray cluster ('auto', HOST:PORT) instead of a private local Ray")
    p.add_argument("--node-ip", default=ray_session.LOOPBACK,
                   help="this machine's Ray node address (default 127.0.0.1: Ray keeps every listener on loopback)")
    args = p.parse_args(argv)
    name = args.name or os.path.splitext(os.path.basename(args.space))[0]
    out = args.out or os.path.join("experiments", "results", "tuning", name)
    try:
        rows = study(args.config, args.space, out, args.storage, name, args.num_cpus, node_ip=args.node_ip,
                     address=args.address, fresh=args.fresh)
    except Interrupted as exc:
        print(f"interrupted: {exc}", file=sys.stderr)
        return 130
    if not rows:
        raise ConfigError("the study ran no trial")
    key = next(k for k in rows[0] if k.startswith("best_"))
    for r in rows[:10]:
        print(f"{r['variant']:>24}  {key} {r[key]}  at step {r['best_step']}  {r['settings']}")
    print(f"wrote {out}/trials.csv, curves.jsonl, curves.png")
    return 0
