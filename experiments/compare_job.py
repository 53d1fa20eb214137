"""One comparison trial, run by compare_runner.py as a Ray task in a fresh worker process (or
by hand: `python experiments/compare_job.py SPEC.json RESULT.json`): build one model, train it
through one or more data phases, and evaluate it on every named held-out stream before training
and after each phase. Its own process keeps its wall time and peak memory apart from the rest.
Tuning trials (stage 'tune') score on the validation stream, never the test split.

While it trains, the trainer evaluates the held-out stream `curve_points` times per phase; each
point records the training seconds so far (the training loop only), for time to quality.

It also reports the peak memory of learning one extra training sequence (tracemalloc), taken
after everything that is timed. SPEC holds: method, kind ('model' or 'reference'), seed,
overrides (config `section.key=value` strings for model, optim, baseline and train), datasets
(name -> data overrides), phases ([{name, data, steps}]), evals (dataset names), eval_batches,
nocorr (also evaluate P-TNCN with its state correction switched off, beta = 0).
"""
from __future__ import annotations

import json
import os
import resource
import sys
import time
import tracemalloc
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from ptncn_dist import metrics
from ptncn_dist.diagnostics import references  # noqa: E402
from ptncn_dist.config import load  # noqa: E402
from ptncn_dist.data import open_streams  # noqa: E402
from ptncn_dist.engines.factory import build_engine  # noqa: E402
from ptncn_dist.diagnostics.evaluation import evaluate, evaluation_batches  # noqa: E402
from ptncn_dist.trainer import Trainer  # noqa: E402

PHASE_SEED_STRIDE = 10_007
REFERENCE_BATCHES = 50


def config_for(spec: dict, dataset: str, steps: int = 1, seed_offset: int = 0, minutes: float = 0.0):
    """The validated Config of `spec` on `dataset`, training `steps` steps (or until `minutes` of
    training time, when given) with the data seed moved by `seed_offset` (later phases see fresh
    training batches), evaluating the held-out stream `curve_points` times along the way."""
    points = int(spec.get("curve_points", 0))
    overrides = list(spec["overrides"]) + list(spec["datasets"][dataset]) + [
        f"train.steps={int(steps)}", f"train.seed={int(spec['seed']) + seed_offset}",
        f"train.eval_batches={int(spec.get('eval_batches', 1))}"]
    if minutes:
        overrides += [f"train.max_minutes={minutes}", "train.eval_every=0",
                      f"train.eval_every_minutes={minutes / points if points else 0}"]
    else:
        overrides.append(f"train.eval_every={max(1, int(steps) // points) if points else 0}")
    return load(None, overrides)


def split_of(spec: dict) -> str:
    return "valid" if spec.get("stage") == "tune" else "test"


class Curve:
    """The held-out loss at each evaluation of a phase, with training seconds (the trainer's own
    count, which leaves evaluations out, after those of earlier phases) and wall seconds."""

    def __init__(self, t0: float):
        self.t0, self.train_s, self.points = t0, 0.0, []
        self.base, self.first, self.last = 0.0, None, None

    def __call__(self, rec: dict) -> None:
        step = int(rec.get("step", 0))
        held_out = {k: v for k, v in rec.items() if k.startswith("test_")}
        if held_out:
            self.first = self.first or held_out
            self.last = held_out
        self.train_s = self.base + rec.get("train_s", 0.0)  # the step-0 record has none
        loss = rec.get("test_bce", rec.get("test_nll"))
        if loss is not None:
            self.points.append({"step": step, "train_s": round(self.train_s, 3),
                                "wall_s": round(time.perf_counter() - self.t0, 3), "loss": loss,
                                **{k: rec[k] for k in ("test_se", "test_bpc", "test_ppl") if k in rec}})

    def offset(self, train_s: float) -> "Curve":
        """Continue the training clock of an earlier phase."""
        self.train_s += train_s
        self.base = self.train_s
        return self


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


def run_model(spec: dict) -> dict:
    """Train one model through the phases, evaluating after each (and before the first)."""
    seed, nb, split = int(spec["seed"]), int(spec["eval_batches"]), split_of(spec)
    first = spec["phases"][0]
    base = config_for(spec, first["data"], first["steps"], minutes=first.get("minutes", 0.0))
    tp = base.model.t_prime
    streams = {name: open_streams(config_for(spec, name).data, seed, split) for name in spec["evals"]}
    curve = Curve(time.perf_counter())
    trainer = Trainer(base, None, log=lambda *a: None, on_record=curve)
    own = first["data"]  # the trainer's own evaluations score this stream: not evaluated twice
    trainer.streams = streams.get(own) or open_streams(base.data, base.train.seed, split)
    engine = trainer.engine
    is_ptncn = base.model.type == "ptncn"
    others = {name: s for name, s in streams.items() if name != own}
    out = {"params": count_params(engine), "initial": eval_all(engine, others, nb, tp),
           "data": {name: s.description for name, s in streams.items()}, "phases": []}
    out["rss_before_train_mib"] = rss_mib()
    for k, phase in enumerate(spec["phases"]):
        if k > 0:
            cfg = config_for(spec, phase["data"], phase["steps"], PHASE_SEED_STRIDE * k, phase.get("minutes", 0.0))
            curve = Curve(time.perf_counter()).offset(curve.train_s)
            trainer = Trainer(cfg, None, engine=engine, log=lambda *a: None, on_record=curve)
            trainer.streams = open_streams(cfg.data, cfg.train.seed, split)
        result = trainer.run()
        evals = eval_all(engine, others if k == 0 else streams, nb, tp)
        if k == 0 and own in streams:
            out["initial"][own], evals[own] = curve.first, curve.last
        rec = {"name": phase["name"], "train_data": phase["data"], "steps": result.steps,
               "train_s": result.train_s,
               "train_stream": trainer.streams.description,
               "items_seen": items_seen(trainer), "curve": curve.points,
               "evals": {name: evals[name] for name in streams}}
        if spec.get("nocorr") and is_ptncn:
            x_dim, kind = trainer.streams.train.dim, trainer.streams.train.kind
            copy = uncorrected_engine(trainer.cfg, engine, x_dim, kind)
            rec["evals_nocorr"] = eval_all(copy, streams, nb, tp)
            copy.close()
        out["phases"].append(rec)
    if split == "test":  # the tables read it from test runs only
        out["seq_memory_mib"] = sequence_memory_mib(engine, trainer.streams.train, tp)
    engine.close()
    return out


def frame_references(train_stream, test_stream, n_train: int, n_test: int, t_prime: int) -> dict:
    """Two forecasts of frame t that ignore motion: the mean training frame, and frame t-1."""
    mean = np.mean([train_stream.batch(p).x.mean(axis=(0, 1)) for p in range(n_train)], axis=0)
    sums = {"mean_frame": {}, "copy_last": {}}
    for pos in range(n_test):
        b = test_stream.batch(pos)
        for t in range(max(t_prime, 1), b.x.shape[0]):
            metrics.add_sums(sums["mean_frame"], metrics.frame_loss_sums(
                np.broadcast_to(mean, b.x[t].shape), b.x[t], b.mask[t], np))
            metrics.add_sums(sums["copy_last"], metrics.frame_loss_sums(b.x[t - 1], b.x[t], b.mask[t], np))
    return {k: metrics.summarize(v, prefix="test_") for k, v in sums.items()}


def unigram_reference(train_stream, test_stream, n_test: int, t_prime: int) -> dict:
    """A context-free forecast of token t: the training split's token frequencies (add-one)."""
    counts = np.ones(train_stream.dim)
    for sentence in train_stream.sentences:
        np.add.at(counts, sentence, 1.0)
    probs = counts / counts.sum()
    sums: dict = {}
    n = n_test if test_stream.num_batches is None else min(n_test, test_stream.num_batches)
    for pos in range(n):
        b = test_stream.batch(pos)
        for t in range(t_prime, b.x.shape[0]):
            metrics.add_sums(sums, metrics.token_loss_sums(
                np.broadcast_to(probs, (b.x.shape[1], probs.size)), b.x[t], b.mask[t], np))
    return {"unigram": metrics.summarize(sums, prefix="test_"),
            "bigram": bigram_reference(train_stream, test_stream, n_test, t_prime)}


def bigram_reference(train_stream, test_stream, n_test: int, t_prime: int) -> dict:
    """An add-one bigram over the training split (context reset at each sentence start)."""
    model = references.count_ngrams(train_stream.sentences, 2, train_stream.dim, train_stream.max_len)
    r = references.score_text({"bigram": model}, evaluation_batches(test_stream, n_test), t_prime)
    return {"test_bpc": r["bigram_bpc"], "test_ppl": r["bigram_ppl"], "test_nll": r["bigram_bpc"] * np.log(2.0),
            **{f"test_{k}_by_t": r[f"bigram_{k}_by_t"] for k in ("bpc", "ppl") if f"bigram_{k}_by_t" in r}}


def run_reference(spec: dict) -> dict:
    """Reference forecasts fitted on the first phase's training data, scored on every eval set."""
    seed, nb = int(spec["seed"]), int(spec["eval_batches"])
    train_cfg = config_for(spec, spec["phases"][0]["data"])
    train = open_streams(train_cfg.data, seed).train
    tp = train_cfg.model.t_prime
    per_eval = {}
    for name in spec["evals"]:
        test = open_streams(config_for(spec, name).data, seed).test
        if train.kind == "frames":
            per_eval[name] = frame_references(train, test, REFERENCE_BATCHES, nb, tp)
        else:
            per_eval[name] = unigram_reference(train, test, nb, tp)
    names = next(iter(per_eval.values())).keys()
    return {"references": {ref: {ds: per_eval[ds][ref] for ds in per_eval} for ref in names}}


def pin_blas(threads: int) -> None:
    """BLAS threads of this process (set before NumPy's first large call; threadpoolctl if loaded)."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(threads)
    except ImportError:
        pass


def run_spec(spec: dict) -> dict:
    """One trial, with its status, start and end (epoch seconds), wall seconds, the host and the
    peak resident set of this process (a fresh one per trial: the trial's own peak)."""
    start, t0 = time.time(), time.perf_counter()
    pin_blas(int(spec.get("threads", 1)))
    try:
        out = run_reference(spec) if spec.get("kind") == "reference" else run_model(spec)
        out["status"] = "ok"
    except Exception as exc:
        out = {"status": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]}
    out.update(start=start, end=time.time(), wall_s=time.perf_counter() - t0, peak_rss_mib=rss_mib(),
               host=os.uname().nodename, node_ip=node_ip(), pid=os.getpid())
    return out


def node_ip() -> str | None:
    """The Ray node address this trial ran on (None outside Ray)."""
    try:
        import ray
        return ray.util.get_node_ip_address() if ray.is_initialized() else None
    except ImportError:
        return None


def main(argv: list[str]) -> int:
    spec_path, result_path = argv
    out = run_spec(json.loads(Path(spec_path).read_text()))
    Path(result_path).write_text(json.dumps(out, indent=1))
    return 0 if out["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
