"""The training loop: data stream -> engine -> metrics, checkpoints, evaluation and plots.

A run directory is claimed for the life of a run and written only once every check has passed
(rundir.py); checkpoints are written and restored by train_checkpoints.py.

A step is one MODEL.md time step of a batch of sequences. The data position (sequence batch,
step within it) is part of every checkpoint, and the stream is a pure function of (seed,
position), so a resumed run continues at exactly the step where it stopped.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field

from . import checkpoint, metrics
from .diagnostics import references, tboard
from .checkpoint import rundir
from .config import Config
from .config_checks import check_memory
from .data import open_streams
from .core.finite import StepDiverged
from .engines.factory import build_engine
from .diagnostics.evaluation import nonfinite_where, reference_losses, run_evaluation
from .errors import CheckpointError, DivergenceError, RunStopped
from .training.recovery import Recovery
from .training.stop import StopRequest
from .training.checkpoints import CheckpointsMixin


STRIP_SEQS = 3


@dataclass
class RunResult:
    run_dir: str | None
    steps: int
    initial_test: dict
    final_test: dict
    steps_per_s: float
    data: str
    history: list = field(default_factory=list)
    recoveries: int = 0
    recovery_log: list = field(default_factory=list)
    train_s: float = 0.0
    start_step: int = 0
    """The step this session started at: 0, or where a resumed run continued (then
    `initial_test` is the loss of the resumed weights, not of untrained ones)."""


class Trainer(CheckpointsMixin):
    """Runs one training run; `run()` returns a RunResult. Owns the engine and the run dir.

    Callbacks: each of `callbacks` is called as `callback(trainer)` at the end of every training
    segment, once that segment's metrics record is written and its checkpoint saved (when one is
    due), with `trainer.step` the step the run has reached. Segments end at every multiple of
    train.log_every and of train.checkpoint_every, at a sequence's end and at train.steps, so a
    callback sees each of those steps exactly, in the trainer's own thread, between two engine
    calls: a test (or `ptncn chaos`) can fire a fault at an exact step, independent of timing.
    After a recovery the run replays steps, so a callback can see a step again. An exception a
    callback raises stops the run."""

    def __init__(self, cfg: Config, run_dir: str | None = None, *, resume: bool | None = None,
                 engine=None, log=print, on_record=None, callbacks=()):
        """`resume`: True continues the run in `run_dir` (its config hash must match, and a
        checkpoint must exist); None continues it when `run_dir` holds this run with a
        checkpoint and starts it otherwise; False needs a directory that holds no run yet.
        Nothing but the directory's lock is written until every check has passed.
        `on_record(rec)` sees every metrics record; `callbacks` see every segment's end (above)."""
        self.cfg, self.run_dir, self.log = cfg, run_dir, log
        self.on_record = on_record
        self.callbacks = list(callbacks)
        self.streams = open_streams(cfg.data, cfg.train.seed)
        check_memory(cfg, self.streams.train.dim, self.streams.train.kind)  # before any weight exists
        self.kind = self.streams.train.kind
        checkpoint.signing_key()  # a PTNCN_CHECKPOINT_KEY too short to use stops here, before anything
        self.claim = rundir.Claim.open(cfg, run_dir) if run_dir else None
        self.engine = None
        try:
            self._open(cfg, run_dir, resume, engine)
        except BaseException:
            if self.engine is not None and engine is None:
                self.engine.close()
            if self.claim is not None:
                self.claim.release()
            raise

    def _open(self, cfg: Config, run_dir, resume, engine) -> None:
        held = self.claim is not None and self.claim.holds_run
        if held and resume is False:
            raise CheckpointError(f"{run_dir} already holds a run; continue it (ptncn train --resume {run_dir}) "
                                  f"or choose another --run-dir")
        if resume and not held:
            raise CheckpointError(f"{run_dir or 'no run directory'}: no config.toml there (not a run directory)")
        self.run_id = self.claim.run_id if self.claim else rundir.new_run_id(None)
        self.ckpt_root = checkpoint.root_for(cfg.train.checkpoint_dir, run_dir, self.run_id)
        if self.claim is not None:
            self.claim.claim_namespace(self.ckpt_root)
        if resume is None:
            resume = held and bool(checkpoint.list_candidates(self.ckpt_root))
            if resume:
                self.log(f"{run_dir} holds this run: continuing from its last good checkpoint")
        self.engine = engine or build_engine(cfg, self.streams.train.dim, self.kind)
        self.step, self.position, self.t = 0, 0, 0
        self.train_s = 0.0  # seconds spent in training segments (not evaluations), kept in checkpoints
        self.config_hash = cfg.hash()
        self._last_ckpt_time, self._saved_step = time.monotonic(), None
        self.fitted, self.reference, self.strip = None, {}, None
        self.writer = None
        self.recovery = Recovery(self.engine, restore=lambda: self.restore_latest(required=True),
                                 step=lambda: self.step, max_failures=cfg.train.max_failures,
                                 has_checkpoints=bool(self.ckpt_root), log=self.log,
                                 record=lambda rec: self.writer.write(rec) if self.writer else None)
        if resume:
            self.restore_latest(required=True)
        if self.claim is not None:  # every check passed: now the run directory is written
            for change in self.claim.changed_keys(cfg):
                self.log(f"this session runs with {change} (config.toml keeps the run's)")
            self.claim.commit(cfg)
        self.writer = metrics.MetricsWriter(os.path.join(run_dir, "metrics.jsonl")) if run_dir else None
        self.board = tboard.Board(run_dir if cfg.train.tensorboard else None, self.log)

    def release(self) -> None:
        """Give the run directory back (the end of `run()`, or `close()`)."""
        if self.claim is not None:
            self.claim.release()

    @property
    def checkpoint_step(self) -> int | None:
        """The step of the checkpoint this run wrote last (None before its first)."""
        return self._saved_step

    @property
    def recoveries(self) -> int:
        return self.recovery.count

    @property
    def recovery_log(self) -> list[dict]:
        return self.recovery.records

    # -- the loop ------------------------------------------------------------------------------
    def _done(self) -> bool:
        """The run has trained its steps, or its training time has reached train.max_minutes."""
        tc = self.cfg.train
        return self.step >= tc.steps or (tc.max_minutes > 0 and self.train_s >= 60 * tc.max_minutes)

    def _segment_end(self, T: int) -> int:
        """Where the current segment stops: the sequence end, or the next log / checkpoint /
        final step, whichever comes first."""
        if self.engine.whole_sequences:
            return T
        tc = self.cfg.train
        stops = [tc.steps, (self.step // tc.log_every + 1) * tc.log_every]
        if tc.checkpoint_every:
            stops.append((self.step // tc.checkpoint_every + 1) * tc.checkpoint_every)
        return min(T, self.t + min(stops) - self.step)

    def _train_segment(self) -> dict:
        b = self.streams.train.batch(self.position)
        T = b.x.shape[0]
        end = self._segment_end(T)
        self.recovery.in_flight = end - self.t
        try:
            sums, _ = self.engine.run_segment(b.x, b.mask, self.t, end, learn=True,
                                              t_prime=self.cfg.model.t_prime)
        except StepDiverged as exc:
            self._diverged(self.step + exc.t - self.t, exc.sighting)
        self.step += end - self.t
        self.t = end
        if self.t >= T:
            self.position, self.t = self.position + 1, 0
        return sums

    def _diverged(self, step: int, sighting=None) -> None:
        """Stop on a NaN or Inf, naming the step, the layer where it first appeared (what it
        was) and every layer that holds non-finite values now."""
        raise DivergenceError(f"non-finite values at step {step} in {nonfinite_where(self.engine, sighting)}; "
                              f"the last good checkpoint is {self._last_good()}")

    def _eval(self) -> dict:
        """Test losses; for video also the frame strip, kept for frames.png and TensorBoard."""
        tc = self.cfg.train
        want = self.kind == "frames" and (self.board.active or (tc.plots and self.run_dir))
        ev = run_evaluation(self.engine, self.streams.test, tc.eval_batches, self.cfg.model.t_prime,
                            strip_seqs=STRIP_SEQS if want else 0, step=self.step)
        if ev.strip is not None:
            self.strip = [*ev.strip] + ([self._blend(ev.strip[0])] if self.fitted else [])
            self.board.frames(self.step, self.strip, self.cfg.data.frame)
        return ev.losses

    def _blend(self, x):
        return references.frame_predictions(self.fitted.frames, x)["blur_blend"]

    def _references(self) -> None:
        """Fit and score the reference forecasts when a run dir or a record callback will see them."""
        tc = self.cfg.train
        if not tc.references or not (self.run_dir or self.on_record):
            return
        self.fitted, self.reference = reference_losses(self.streams, tc.eval_batches, self.cfg.model.t_prime)
        self.board.set_reference(self.reference)
        shown = references.headline(self.reference)
        if references.report_metric(self.cfg, self.kind) == "se":  # BCE means nothing off [0, 1]
            shown = {k: v for k, v in shown.items() if not k.endswith("_bce")}
        self.log("references: " + ", ".join(f"{k} {v:.4g}" for k, v in shown.items() if v is not None))

    def _record(self, rec: dict) -> None:
        """One metrics.jsonl line, with the engine's per-layer figures when every worker answers
        (a lost one is recovered by the next guarded call, not here)."""
        try:
            stats = self.engine.stats()
        except self.engine.failure_types():
            stats = {}
        rec.update({k: v for k, v in stats.items() if k not in rec})
        rec["recoveries"] = self.recoveries
        if self.writer:
            self.writer.write(rec)
        self.board.record(rec)
        if self.on_record is not None:
            self.on_record(rec)

    def run(self) -> RunResult:
        """Train to train.steps (or train.max_minutes), evaluate, write the summary; the run
        directory is given back at the end, whether the run finished or failed. A SIGINT or
        SIGTERM (from the main thread's point of view) stops it at the end of the segment it is
        in, with a checkpoint written there: RunStopped says how to continue."""
        try:
            with StopRequest(self.log) as self.stop:
                return self._run()
        finally:
            self.release()

    def _stopped(self) -> None:
        """End a run that a signal asked to stop: write its checkpoint (unless this step has one)
        and raise RunStopped saying how to continue it."""
        if self.writer:
            self.writer.close()
        self.board.close()
        at = f"stopped by {self.stop.signal} at step {self.step:,} of {self.cfg.train.steps:,}"
        if not self.ckpt_root:
            raise RunStopped(f"{at}; no run directory, so nothing was saved")
        if self._saved_step != self.step:
            self.recovery.guarded(self.save_checkpoint)
        raise RunStopped(f"{at} ({self.train_s:.1f} s of training); its checkpoint is {self._last_good()}; "
                         f"continue with: ptncn train --resume {self.run_dir}")

    def _run(self) -> RunResult:
        tc = self.cfg.train
        self.log(f"data: {self.streams.description}")
        self.log(f"engine: {self.engine.name}; model: {self.cfg.model.type} {self.cfg.model.hidden}")
        self._references()
        if self.ckpt_root and not checkpoint.list_checkpoints(self.ckpt_root):
            self.save_checkpoint()  # before the first evaluation
        initial = self.recovery.guarded(self._eval) if self.t == 0 else {}
        if initial and self.step == 0:
            self._record({"step": 0, **initial, **({"reference": self.reference} if self.reference else {})})
        clock = time.process_time if tc.clock == "process" else time.perf_counter  # what train_s counts
        history, window, t_window = [], {}, time.perf_counter()
        t_start, steps_at_start = time.perf_counter(), self.step
        last_logged = self.step
        next_eval = (self.step // tc.eval_every + 1) * tc.eval_every if tc.eval_every else None
        every_s = 60 * tc.eval_every_minutes
        next_eval_s = (self.train_s // every_s + 1) * every_s if every_s else None
        bar = _progress(tc, self.step)
        evaluated = False
        try:
            while not self._done() and not self.stop.signal:
                before, t_seg = self.step, clock()
                metrics.add_sums(window, self.recovery.guarded(self._train_segment))
                self.train_s += clock() - t_seg
                done = self._done()
                if self.step < before:
                    window = {}
                if bar is not None:
                    bar.update(self.step - before)
                rec = None
                if self.step // tc.log_every > before // tc.log_every or done:
                    now = time.perf_counter()
                    rate = (self.step - last_logged) / max(now - t_window, 1e-9)
                    last_logged = self.step
                    rec = {"step": self.step, "train_loss": metrics.main_loss(metrics.summarize(window)),
                           **metrics.summarize(window, prefix="train_"), "steps_per_s": rate,
                           "train_s": round(self.train_s, 3)}
                    window, t_window = {}, now
                due = ((next_eval is not None and self.step >= next_eval)
                       or (next_eval_s is not None and self.train_s >= next_eval_s))
                if due and self.t == 0 and not done:
                    # the first sequence boundary at or after an evaluation point (not a log point)
                    t_eval = time.perf_counter()
                    if not evaluated:  # a checkpoint before the run's first evaluation of trained weights
                        self.recovery.guarded(self.save_checkpoint)
                        evaluated = True
                    rec = rec or {"step": self.step, "train_s": round(self.train_s, 3)}
                    rec.update(self.recovery.guarded(self._eval))
                    if next_eval is not None:
                        next_eval = (self.step // tc.eval_every + 1) * tc.eval_every
                    if next_eval_s is not None:
                        next_eval_s = (self.train_s // every_s + 1) * every_s
                    t_window += time.perf_counter() - t_eval
                if rec is not None:
                    history.append(rec)
                    self._record(rec)
                    if bar is not None and "train_loss" in rec:
                        bar.set_postfix(loss=f"{rec['train_loss']:.4g}" if rec["train_loss"] is not None else "-",
                                        steps_s=f"{rate:.1f}")
                if self.step >= before and self._checkpoint_due(before) and self._saved_step != self.step:
                    self.recovery.guarded(self.save_checkpoint)
                for callback in self.callbacks:
                    callback(self)
        finally:
            if bar is not None:
                bar.close()
        if self.stop.signal:
            self._stopped()
        elapsed = time.perf_counter() - t_start
        if self._saved_step != self.step:
            self.recovery.guarded(self.save_checkpoint)
        final = self.recovery.guarded(self._eval)
        self._record({"step": self.step, "final": True, "train_s": round(self.train_s, 3), **final})
        rate = (self.step - steps_at_start) / max(elapsed, 1e-9)
        result = RunResult(self.run_dir, self.step, initial, final, rate, self.streams.description,
                           history, self.recoveries, self.recovery_log, self.train_s, steps_at_start)
        self._finish(result)
        return result

    def _finish(self, result: RunResult) -> None:
        if self.run_dir:
            summary = {"steps": result.steps, "start_step": result.start_step, "initial_test": result.initial_test,
                       "final_test": result.final_test, "reference": self.reference,
                       "steps_per_s": result.steps_per_s, "train_s": result.train_s,
                       "data": result.data, "engine": self.engine.name, "recoveries": result.recoveries,
                       "recovery_log": self.recovery_log,
                       "config_hash": self.config_hash}
            with open(os.path.join(self.run_dir, "summary.json"), "w", encoding="utf-8") as fh:
                json.dump(summary, fh, indent=2)
            if self.cfg.engine.trace_steps and self.engine.traces:
                n = self.engine.write_trace(os.path.join(self.run_dir, "trace.json"))
                self.log(f"trace of the first {self.cfg.engine.trace_steps} steps ({n} events): "
                         f"{os.path.join(self.run_dir, 'trace.json')} (chrome://tracing or ui.perfetto.dev)")
            if self.cfg.train.plots:
                from .diagnostics.plots import plot_run
                plot_run(self.run_dir, self.strip, self.cfg.data.frame)
        if self.writer:
            self.writer.close()
        self.board.close()
        tc = self.cfg.train
        if result.steps < tc.steps and tc.max_minutes > 0:
            self.log(f"stopped by train.max_minutes={tc.max_minutes:g} after {result.train_s:.1f} s of "
                     f"training, at step {result.steps} of {tc.steps}")
        metric = references.report_metric(self.cfg, self.kind)
        key = f"test_{metric}"
        if result.initial_test or result.final_test:
            start = f"at step {result.start_step} (resumed)" if result.start_step else "untrained"
            before = f"{start} {result.initial_test[key]:.4f} -> " if key in result.initial_test else ""
            self.log(f"{key}: {before}trained {result.final_test.get(key, float('nan')):.4f}; "
                     f"{result.steps_per_s:.1f} steps/s")
        line = references.comparison(result.final_test, self.reference, metric)
        if line:
            self.log(line)

    def close(self) -> None:
        self.release()
        self.board.close()
        self.engine.close()


def _progress(tc, start: int):
    if not tc.progress:
        return None
    from tqdm import tqdm
    return tqdm(total=tc.steps, initial=start, unit="step", dynamic_ncols=True, mininterval=0.5)


def train(cfg: Config, run_dir: str | None = None, *, resume: bool | None = None, log=print,
          on_record=None, callbacks=()) -> RunResult:
    """Train a model as `cfg` says; the one-call entry point (`ptncn train` calls this).
    `resume` as Trainer's (None: continue the run in `run_dir` if it holds this one).
    `on_record(rec)` sees every metrics.jsonl record as it is written (a Tune trial reports them);
    `callbacks` are called at the end of every training segment (see Trainer). Ctrl-C or SIGTERM
    (in the main thread) ends the run at a checkpoint and raises RunStopped (see Trainer.run)."""
    trainer = Trainer(cfg, run_dir, resume=resume, log=log, on_record=on_record, callbacks=callbacks)
    try:
        return trainer.run()
    finally:
        trainer.close()
