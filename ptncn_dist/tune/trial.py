"""One `ptncn tune` trial: the ordinary trainer in a run directory of its own, every evaluation
reported to Tune, and the run directory handed to Tune as the trial's checkpoint with the first
evaluation after each of the trainer's own checkpoints. A restored trial (an interrupted study
run again) gets that directory back and the trainer continues from its last checkpoint."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from .space import trial_config

TEXT_SOURCES = ("ptb_char", "ptb_word", "text")
FAILED_LOSS = 1e9
# what a trial never writes (no terminal, and its run directory, which Tune copies at each
# checkpoint, stays small); applied by the trial itself, so the study's settings never show it
QUIET = {"train.progress": False, "train.plots": False, "train.tensorboard": False}


def metric_for(cfg) -> str:
    """The loss a study minimises: bits per token for text (and token arrays, whose output is
    softmax), squared error for arrays of real values under an identity or tanh output, else BCE."""
    output = cfg.model.output
    if cfg.data.source in TEXT_SOURCES or (cfg.data.source == "arrays" and output == "softmax"):
        return "test_bpc"
    if cfg.data.source == "arrays" and output in ("identity", "tanh"):
        return "test_se"
    return "test_bce"


def overrides_of(params: dict) -> dict:
    """A trial's config overrides: its variant's (less the variant's name) and its sampled ones."""
    over = dict(params.get("overrides", {}))
    over.pop("_variant", None)
    return {**over, **params.get("sampled", {})}


def remove_work_dirs(prefix: str) -> None:
    """Remove this user's plain directories in the temp dir whose names start with `prefix`."""
    for old in Path(tempfile.gettempdir()).glob(prefix + "*"):
        try:
            if not old.is_symlink() and old.is_dir() and old.stat().st_uid == os.getuid():
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass


def fresh_work_dir(prefix: str) -> Path:
    """A fresh temporary directory named `prefix`..., after removing those an earlier, stopped
    run of the same Tune trial left under that prefix (a killed trial never reaches its cleanup;
    its checkpoint lives on in Tune's storage); only this user's plain directories are touched."""
    remove_work_dirs(prefix)
    return Path(tempfile.mkdtemp(prefix=prefix))


WALL_FILE = "tune_trial.json"


def _read_wall(run_dir: Path) -> float:
    """The trial's wall seconds when its checkpoint was taken (0 if unknown)."""
    try:
        return float(json.loads((run_dir / WALL_FILE).read_text(encoding="utf-8"))["wall_s"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0


def run_trial(params: dict) -> None:
    """One Tune trial: train with the trial's overrides and report each evaluation.

    A run that diverges is reported once with a very large loss and `diverged = 1`, so the
    study keeps it as a result (a learning rate that blows up is a finding), not as an error."""
    import ray
    from ray import tune
    from ray.tune import Checkpoint
    from ..errors import DivergenceError
    from ..trainer import Trainer
    cfg = trial_config(params.get("config"), {**overrides_of(params), **QUIET})
    metric, t0 = metric_for(cfg), time.perf_counter()
    seen = {"step": -1, "ckpt": None, "sent": None, "resumed_at": 0}
    node_ip = ray.util.get_node_ip_address()
    work = fresh_work_dir(f"{params.get('work_prefix', 'ptncn-tune-')}{tune.get_context().get_trial_id()}-")
    run_dir = work / "run"
    try:
        restored = tune.get_checkpoint()
        if restored is not None:
            with restored.as_directory() as d:
                shutil.copytree(d, run_dir, dirs_exist_ok=True)
            t0 -= _read_wall(run_dir)  # the wall seconds before the checkpoint count too

        def on_record(rec: dict) -> None:
            if metric not in rec or rec["step"] <= seen["step"]:
                return
            seen["step"] = rec["step"]
            out = {k: v for k, v in rec.items() if k.startswith("test_") or k == "reference"}
            out.update(step=rec["step"], wall_s=time.perf_counter() - t0, diverged=0, node_ip=node_ip,
                       resumed_at=seen["resumed_at"])
            if seen["ckpt"] is not None and seen["ckpt"] != seen["sent"]:
                seen["sent"] = seen["ckpt"]
                (run_dir / WALL_FILE).write_text(json.dumps({"wall_s": out["wall_s"]}), encoding="utf-8")
                tune.report(out, checkpoint=Checkpoint.from_directory(str(run_dir)))
            else:
                tune.report(out)

        def on_segment(trainer) -> None:
            seen["ckpt"] = trainer.checkpoint_step

        try:
            trainer = Trainer(cfg, str(run_dir), log=lambda *_: None, on_record=on_record, callbacks=[on_segment])
            if trainer.step > 0:  # continued from a checkpoint: its evaluations were reported before
                seen["resumed_at"] = seen["step"] = trainer.step
            try:
                trainer.run()
            finally:
                trainer.close()
        except DivergenceError as exc:
            tune.report({metric: FAILED_LOSS, "step": max(seen["step"], 0) + 1,
                         "wall_s": time.perf_counter() - t0, "diverged": 1, "error": str(exc)[:200],
                         "node_ip": node_ip})
    finally:
        shutil.rmtree(work, ignore_errors=True)
