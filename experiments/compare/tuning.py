"""The equal tuning budget: every method gets the same number of tuning trials, drawn from its own
search space (its learning rate and its own knobs), trained for a fraction of a test run's steps
at a seed no test run uses, and scored on a validation stream (never the test split). The best
trial's setting is what the seeded test runs use and what the tables show.

P-TNCN's space starts from experiments/results/tuning/results.md: the authors' Nesterov 0.075 /
0.95, Adam 3e-4 (best on Bouncing MNIST there), Nesterov 0.15 and a weaker correction (beta
0.03). The baselines' spaces span the pilot sweep's Adam rates and clip norms; the ESN's, its
spectral radius and ridge penalty (on text, where its readout is a softmax regression trained by
optimizer steps, its learning rate instead of the ridge). The Elman learners' initial weight spread is a knob too: at
the widths matched to 2 x 1000 P-TNCN units (H ~ 2,400) the default 0.1 makes BPTT and UORO
diverge on PTB characters within a sentence.
"""
from __future__ import annotations

import math
import random
from pathlib import Path

from .jobs import TUNE_SEED, Plan, Setting, model_job, tuning_datasets
from .runner import read_trial

PTNCN_OPTIMS = (('optim.name="nag"', "optim.lr=0.075", "optim.momentum=0.95"),
                ('optim.name="adam"', "optim.lr=0.0003"),
                ('optim.name="nag"', "optim.lr=0.15", "optim.momentum=0.95"),
                ('optim.name="adam"', "optim.lr=0.001"))
BETAS = (("model.beta=0.1",), ("model.beta=0.03",))


def adam(*rates) -> tuple:
    return tuple(('optim.name="adam"', f"optim.lr={lr}") for lr in rates)


def levels(key: str, *values) -> tuple:
    return tuple((f"{key}={v}",) for v in values)


ELMAN_KNOBS = (levels("baseline.weight_sd", 0.1, 0.03), levels("baseline.clip_norm", 5.0, 1.0))
SPACES = {  # per method: factors, each a tuple of levels (override tuples); the first level is the default
    "ptncn": (PTNCN_OPTIMS, BETAS),
    "ptncn_sign": (PTNCN_OPTIMS, BETAS),
    "bptt": (adam(0.01, 0.003, 0.001),) + ELMAN_KNOBS,
    "tbptt": (adam(0.001, 0.003, 0.01),) + ELMAN_KNOBS,
    "rtrl": (adam(0.01, 0.003, 0.001),) + ELMAN_KNOBS,
    "uoro": (adam(0.001, 0.003, 0.01),) + ELMAN_KNOBS,
    "esn": (levels("baseline.esn_spectral_radius", 0.9, 0.5, 1.2), levels("baseline.esn_ridge", 0.0001, 0.01, 1.0)),
    "lstm": (adam(0.002, 0.001, 0.005), levels("baseline.clip_norm", 5.0, 1.0)),
    # on text the ESN's readout is a softmax regression taking optimizer steps: its rate is a knob
    "esn_text": (adam(0.003, 0.01, 0.001), levels("baseline.esn_spectral_radius", 0.9, 0.5, 1.2)),
}


def candidates(method: str, n: int, text: bool = False) -> list[tuple]:
    """`n` settings of `method`: the first all default levels, the rest a Latin hypercube over the
    factors' levels (each level of a factor used about equally often, paired by a fixed shuffle)."""
    space = f"{method}_text" if text and f"{method}_text" in SPACES else method
    rng = random.Random(f"compare-tune-{space}")
    columns = []
    for lv in SPACES[space]:
        col = [lv[i % len(lv)] for i in range(1, n)]
        rng.shuffle(col)
        columns.append([lv[0]] + col)
    return [sum((col[i] for col in columns), ()) for i in range(n)]


def tune_jobs(plan: Plan, st: Setting) -> list:
    """The tuning trials: per method and training dataset, scale.tune_trials settings, one
    validation-scored run each at seed TUNE_SEED + trial. At a `shared_video` scale zero-shot
    and continual take Bouncing MNIST's (`--settings-from` its results)."""
    s, jobs = plan.scale, []
    text = plan.experiment == "ptb"
    for name in tuning_datasets(plan, st):
        full, minutes = s.text_budget(name) if text else s.video_budget(plan.experiment == "continual")
        phases = [{"name": name, "data": name, "steps": max(1, int(full * s.tune_fraction)),
                   **({"minutes": round(minutes * s.tune_fraction, 6)} if minutes else {})}]
        for m in plan.methods:
            for i, setting in enumerate(candidates(m.key, s.tune_trials, text)):
                jobs.append(model_job(plan, m, TUNE_SEED + i, st.datasets, phases, [name], st.x_dims[name],
                                      text=text, word=name == "word", settings=setting, stage="tune"))
    return jobs


def score(job: dict, res: dict) -> float:
    """The validation loss a tuning trial ends with (BCE per frame, or NLL per token); inf if none."""
    if res.get("status") != "ok" or not res.get("phases"):
        return math.inf
    m = next(iter(res["phases"][-1]["evals"].values()), {})
    v = m.get("test_bce", m.get("test_nll"))
    return float(v) if v is not None and math.isfinite(v) else math.inf


def choose(done: list) -> dict:
    """{(method, dataset): best settings} over finished tuning trials; methods whose trials all
    failed keep their defaults (no entry)."""
    best: dict = {}
    for job, res in done:
        if job.get("stage") != "tune":
            continue
        k = (job["method"], job["phases"][0]["data"])
        sc = score(job, res)
        if math.isfinite(sc) and (k not in best or sc < best[k][0]):
            best[k] = (sc, tuple(job["settings"]))
    return {k: v[1] for k, v in best.items()}


def tuning_rows(done: list) -> list[dict]:
    """One row per tuning trial: method, dataset, settings, validation loss, whether chosen."""
    chosen = choose(done)
    rows = []
    for job, res in done:
        if job.get("stage") != "tune":
            continue
        k = (job["method"], job["phases"][0]["data"])
        rows.append({"id": job["id"], "method": job["method"], "label": job.get("label", job["method"]),
                     "dataset": k[1], "settings": job["settings"], "valid_loss": score(job, res),
                     "status": res.get("status", "?"), "chosen": chosen.get(k) == tuple(job["settings"])})
    return rows


def chosen_from(source: Path, experiment: str, pairs: list) -> tuple[dict, list]:
    """The settings chosen by the tuning trials cached in SOURCE/trials (another command's run
    of `experiment`, e.g. the medium scale), for every (method, dataset) in `pairs`, and those
    trials as [(job, result)]. SystemExit naming what is missing or damaged; nothing falls back
    to a default."""
    trials = Path(source) / "trials"
    if not trials.is_dir():
        raise SystemExit(f"--settings-from: {trials} is not a directory of finished trials")
    done = []
    for path in sorted(trials.glob("*.json")):
        try:
            job, res = read_trial(path)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise SystemExit(f"--settings-from: {path} is not a readable trial ({type(e).__name__}: {e})")
        if job.get("stage") == "tune" and job.get("id", "").startswith(f"tune-{experiment}-"):
            done.append((job, res))
    chosen = choose(done)
    missing = [f"{m} on {d}" for m, d in pairs if (m, d) not in chosen]
    if missing:
        raise SystemExit(f"--settings-from: {trials} holds no finished {experiment} tuning trial of "
                         + ", ".join(missing))
    used = sorted(((j, r) for j, r in done if (j["method"], j["phases"][0]["data"]) in pairs), key=lambda p: p[0]["id"])
    return {k: chosen[k] for k in pairs}, used
