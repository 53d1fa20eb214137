"""One comparison trial as a Ray Tune trial (`trainable`): build one model, train it through one
or more data phases, and evaluate it on every named held-out stream before training and after each
phase. Tuning trials (stage 'tune') score on the validation stream, never the test split.

Each phase is an ordinary run directory (`ptncn_dist.trainer.Trainer`) under the trial's working
directory, with `state.json` beside them (the phases done, the untrained evaluations). Whenever a
phase writes a checkpoint the whole working directory is handed to Tune as the trial's checkpoint,
so a trial that Tune restores (`Tuner.restore`, possibly on another node) continues the phase it
was in from that checkpoint, with the training seconds it had spent (checkpoints keep them) and
the curve it had drawn (each run's metrics.jsonl). While a phase trains, each held-out evaluation
is reported to Tune with its training seconds, for time to quality.

It also reports the peak memory of learning one extra training sequence (tracemalloc), taken
after everything that is timed. A job holds: method, kind ('model' or 'reference'), seed,
overrides (config `section.key=value` strings), datasets (name -> data overrides), phases
([{name, data, steps, minutes?}]), evals (dataset names), eval_batches, nocorr (also evaluate
P-TNCN with its state correction switched off, beta = 0), threads, checkpoint_every,
checkpoint_minutes.
"""
from __future__ import annotations

import json
import os
import re
import resource
import shutil
import time
import tracemalloc
from dataclasses import replace
from pathlib import Path

import numpy as np

from ptncn_dist.core.backend import limit_blas_threads
from ptncn_dist.data import open_streams
from ptncn_dist.diagnostics.evaluation import evaluate
from ptncn_dist.engines.factory import build_engine
from ptncn_dist.trainer import Trainer
from ptncn_dist.tune.trial import fresh_work_dir

from .jobs import PHASE_SEED_STRIDE, config_for, split_of
from .references import run_reference

STATE = "state.json"


class Curve:
    """The held-out loss at each evaluation of a phase, with training seconds (the trainer's own
    count, which leaves evaluations out, after those of earlier phases)."""

    def __init__(self, base: float = 0.0, report=None):
        self.base, self.train_s, self.points = base, base, []
        self.first, self.last, self.report = None, None, report

    def __call__(self, rec: dict) -> None:
        held_out = {k: v for k, v in rec.items() if k.startswith("test_")}
        if held_out:
            self.first = self.first or held_out
            self.last = held_out
        self.train_s = self.base + rec.get("train_s", 0.0)  # the step-0 record has none
        loss = rec.get("test_bce", rec.get("test_nll"))
        if loss is not None:
            point = {"step": int(rec.get("step", 0)), "train_s": round(self.train_s, 3), "loss": loss,
                     **{k: rec[k] for k in ("test_se", "test_bpc", "test_ppl") if k in rec}}
            self.points.append(point)
            if self.report is not None:
                self.report(point)

    def replay(self, metrics_path: Path, upto: int) -> None:
        """Draw again the points of an earlier attempt of this phase, up to its checkpoint."""
        if not metrics_path.is_file():
            return
        report, self.report = self.report, None
        for line in metrics_path.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line) if line.strip() else {}
            if rec and rec.get("step", 0) <= upto and not rec.get("final"):
                self(rec)
        self.report = report


def rss_mib() -> float:
    """This process's peak resident set size so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def count_params(engine) -> int:
    """Trained parameters: the baseline's own count, or every P-TNCN weight (M, V, U, W, E)."""
    model = getattr(engine, "model", None)
    if model is not None:
        return int(model.num_params())
    return int(sum(np.asarray(v).size for v in engine.weights().values()))


def uncorrected_engine(cfg, engine, x_dim: int, kind: str):
    """A copy of a P-TNCN engine with beta = 0: its state is then never corrected (y = z)."""
    frozen = replace(cfg, model=replace(cfg.model, beta=0.0))
    copy = build_engine(frozen, x_dim, kind)
    copy.set_params([st["params"] for st in engine.layer_states()])
    return copy


def sequence_memory_mib(engine, stream, t_prime: int) -> float:
    """Peak memory (MiB, tracemalloc) allocated while learning one more training sequence, beyond
    what already exists: the learning algorithm's working memory (BPTT's stored activations,
    RTRL's sensitivities, UORO's tilde vectors, P-TNCN's per-step signals). Measured after all
    timed work, so that tracing slows nothing that is reported as time."""
    b = stream.batch(0)
    tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        engine.run_segment(b.x, b.mask, 0, b.x.shape[0], learn=True, t_prime=t_prime)
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def items_seen(trainer) -> tuple[int, int | None]:
    """(real frames or tokens trained on, size of the training split in tokens; None for video)."""
    stream = trainer.streams.train
    if stream.kind == "frames":
        return trainer.step * stream.batch_size, None
    seen = sum(float(stream.batch(p).mask.sum()) for p in range(trainer.position))
    if trainer.t:
        seen += float(stream.batch(trainer.position).mask[:trainer.t].sum())
    return int(seen), int(sum(len(s) for s in stream.sentences))


def eval_all(engine, streams: dict, n_batches: int, t_prime: int) -> dict:
    """Test metrics (weights frozen) on every test stream in `streams`."""
    return {name: evaluate(engine, s.test, n_batches, t_prime) for name, s in streams.items()}


def _quiet(*_a, **_k) -> None:
    pass


def _write_state(work: Path, state: dict) -> None:
    tmp = work / f".{STATE}.tmp"
    tmp.write_text(json.dumps(state, default=float), encoding="utf-8")
    os.replace(tmp, work / STATE)


def run_model(spec: dict, work: Path, checkpointed=None, report=None) -> dict:
    """Train one model through the phases in run directories under `work`, evaluating after
    each (and before the first); continues whatever `work` holds of an earlier attempt.
    `checkpointed(trainer)` is called after every checkpoint a phase writes (state.json then
    describes `work`); `report(point)` sees every held-out evaluation."""
    nb, split = int(spec["eval_batches"]), split_of(spec)
    seed = int(spec["seed"])
    state_file = work / STATE
    state = json.loads(state_file.read_text(encoding="utf-8")) if state_file.is_file() else {"phases": []}
    streams = {name: open_streams(config_for(spec, name).data, seed, split) for name in spec["evals"]}
    own = spec["phases"][0]["data"]  # the trainer's own evaluations score this stream: not evaluated twice
    others = {name: s for name, s in streams.items() if name != own}
    engine, trainer, done_s = None, None, sum(p["train_s"] for p in state["phases"])
    for k, phase in enumerate(spec["phases"]):
        if k < len(state["phases"]):
            continue
        cfg = phase_config(spec, k)
        run_dir = work / f"phase-{k}"
        if k > 0 and engine is None:  # a restored trial: the weights the last phase ended with
            engine = finished_phase(spec, work, k - 1).engine
        curve = Curve(done_s, report)
        trainer = Trainer(cfg, str(run_dir), engine=engine, log=_quiet, on_record=curve,
                          callbacks=[_on_checkpoint(work, state, k, curve, checkpointed)] if checkpointed else ())
        curve.replay(run_dir / "metrics.jsonl", trainer.step)
        if trainer.step > 0:  # continued from a checkpoint of an earlier attempt
            state.setdefault("resumed", []).append({"phase": k, "step": trainer.step, "train_s": round(trainer.train_s, 3)})
        trainer.streams = streams[phase["data"]] if phase["data"] in streams else open_streams(cfg.data, cfg.train.seed, split)
        engine = trainer.engine
        if k == 0 and "initial" not in state:
            state.update(params=count_params(engine), initial=eval_all(engine, others, nb, cfg.model.t_prime),
                         data={name: s.description for name, s in streams.items()}, rss_before_train_mib=rss_mib())
            _write_state(work, state)
        try:
            result = trainer.run()
        except Exception as exc:  # how far it trained: the trial's record keeps it (run_spec)
            exc.trial_stopped = {"phase": k, "step": trainer.step, "train_s": round(done_s + trainer.train_s, 3)}
            raise
        tp = cfg.model.t_prime
        evals = eval_all(engine, others if k == 0 else streams, nb, tp)
        if k == 0 and own in streams:
            state["initial"][own] = curve.first
            evals[own] = curve.last
        rec = {"name": phase["name"], "train_data": phase["data"], "steps": result.steps,
               "train_s": result.train_s, "train_stream": trainer.streams.description,
               "items_seen": items_seen(trainer), "curve": curve.points,
               "evals": {name: evals[name] for name in streams}}
        if spec.get("nocorr") and cfg.model.type == "ptncn":
            copy = uncorrected_engine(trainer.cfg, engine, trainer.streams.train.dim, trainer.streams.train.kind)
            rec["evals_nocorr"] = eval_all(copy, streams, nb, tp)
            copy.close()
        state["phases"].append(rec)
        done_s += result.train_s
        _write_state(work, state)
    out = {k: state[k] for k in ("params", "initial", "data", "rss_before_train_mib", "phases", "resumed") if k in state}
    if engine is None:  # every phase was done before this attempt: the last phase's weights
        trainer = finished_phase(spec, work, len(spec["phases"]) - 1)
        engine = trainer.engine
    if split == "test":  # the tables read it from test runs only
        out["seq_memory_mib"] = sequence_memory_mib(engine, trainer.streams.train, trainer.cfg.model.t_prime)
    engine.close()
    return out


def phase_config(spec: dict, k: int):
    """The Config of phase k of job `spec` (later phases see fresh training batches)."""
    phase = spec["phases"][k]
    return config_for(spec, phase["data"], phase["steps"], PHASE_SEED_STRIDE * k, phase.get("minutes", 0.0))


def finished_phase(spec: dict, work: Path, k: int) -> Trainer:
    """Phase k's trainer restored from its last checkpoint under `work` (its directory given
    back at once): the weights it ended with, and its streams."""
    trainer = Trainer(phase_config(spec, k), str(work / f"phase-{k}"), resume=True, log=_quiet)
    trainer.release()
    return trainer


def _on_checkpoint(work: Path, state: dict, phase: int, curve: Curve, checkpointed):
    """A trainer callback that, after each new checkpoint of phase `phase`, writes state.json and
    calls `checkpointed`."""
    seen = {"step": None}

    def callback(trainer) -> None:
        step = trainer.checkpoint_step
        if step is None or step != trainer.step or step == seen["step"]:
            return
        seen["step"] = step
        _write_state(work, {**state, "phase": phase, "step": step, "train_s": curve.train_s})
        checkpointed(trainer)
    return callback


def run_spec(spec: dict, work: Path, checkpointed=None, report=None) -> dict:
    """One trial, with its status, start and end (epoch seconds), wall seconds, the host and the
    peak resident set of this process."""
    start, t0 = time.time(), time.perf_counter()
    limit_blas_threads(int(spec.get("threads", 1)))  # data and references too, not only the engine
    try:
        out = run_reference(spec) if spec.get("kind") == "reference" else run_model(spec, work, checkpointed, report)
        out["status"] = "ok"
    except Exception as exc:
        out = {"status": f"{type(exc).__name__}: {_outside(work, str(exc).splitlines()[0] if str(exc) else '')}"[:300]}
        if hasattr(exc, "trial_stopped"):
            out["stopped"] = exc.trial_stopped
    # a trial that stopped counts the phases it finished and the one it stopped in
    done_s = (out["stopped"]["train_s"] if "stopped" in out
              else sum(p.get("train_s", 0.0) for p in out.get("phases", [])))
    out.update(start=start, end=time.time(), wall_s=time.perf_counter() - t0, peak_rss_mib=rss_mib(),
               host=os.uname().nodename, node_ip=node_ip(), pid=os.getpid(), train_s_total=done_s)
    return out


def _outside(work: Path, message: str) -> str:
    """`message` without the clauses that name a path in the trial's working directory, which is
    deleted when the trial ends (a diverged run's "the last good checkpoint is ...")."""
    return re.sub(r";[^;]*" + re.escape(str(work)) + r"[^;]*", "", message)


def node_ip() -> str | None:
    """The Ray node address this trial ran on (None outside Ray)."""
    try:
        import ray
        return ray.util.get_node_ip_address() if ray.is_initialized() else None
    except ImportError:
        return None


def work_prefix(job_id: str, trial_id: str) -> str:
    """The name a trial's temporary working directory starts with (in the system's temp dir)."""
    return f"ptncn-{job_id[:60]}-{trial_id}-"


def trainable(config: dict) -> None:
    """The Tune trial: continue from Tune's checkpoint when there is one, report each held-out
    evaluation and each checkpoint, and end with the whole result (JSON) as the last report."""
    from ray import tune
    from ray.tune import Checkpoint
    job = config["job"]
    if os.path.isdir(config.get("cwd") or ""):  # Tune starts a trial in its own directory: data paths are the command's
        os.chdir(config["cwd"])
    work = fresh_work_dir(work_prefix(job["id"], tune.get_context().get_trial_id()))
    try:
        restored = tune.get_checkpoint()
        if restored is not None:
            with restored.as_directory() as d:
                shutil.copytree(d, work, dirs_exist_ok=True)

        def checkpointed(trainer) -> None:
            tune.report({"step": trainer.step, "train_s": round(trainer.train_s, 3), "done": 0},
                        checkpoint=Checkpoint.from_directory(str(work)))

        def report(point: dict) -> None:
            tune.report({**point, "done": 0})

        out = run_spec(job, work, checkpointed, report)
        # Gone before the last report: once Tune has it, the runner may end Ray (and this
        # process) before a `finally` here would run.
        shutil.rmtree(work, ignore_errors=True)
        tune.report({"done": 1, "status": out["status"], "result": json.dumps(out, default=float)})
    finally:
        shutil.rmtree(work, ignore_errors=True)


def result_of(res) -> dict | None:
    """A trial's result from Tune's record of it: its own, its error when it failed (a worker
    that died), or None when it was stopped before its end (the experiment interrupted)."""
    metrics = res.metrics or {}
    if metrics.get("result") and not res.error:
        return json.loads(metrics["result"])
    err = res.error
    if err is None:
        return None
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return {"status": f"{type(err).__name__}: {first}"[:300]}
