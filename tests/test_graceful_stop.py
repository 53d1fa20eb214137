"""Ctrl-C or SIGTERM loses nothing: the run stops at the end of its segment, writes a checkpoint
there and says how to continue; continued, it ends exactly where the uninterrupted run ends. A
second signal stops at once, and the handlers that were there before come back."""
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest

from ptncn_dist import checkpoint
from ptncn_dist.config import load
from ptncn_dist.errors import RunStopped
from ptncn_dist.trainer import Trainer

SETS = ["model.hidden=[8,8]", "data.frame=32", "data.batch=4", "data.seq_len=10", "train.steps=120",
        "train.log_every=7", "train.eval_every=0", "train.eval_batches=1", "train.progress=false",
        "train.plots=false", "train.tensorboard=false", "train.references=false", 'model.dtype="float64"']


def _signal_at(step: int, times: int = 1, sig=signal.SIGINT):
    """A trainer callback that sends this process `sig`, `times` times, at the first segment end
    at or past `step`: the signal arrives at an exact step, independent of timing."""
    sent = []

    def callback(trainer):
        if trainer.step >= step and not sent:
            sent.append(trainer.step)
            for _ in range(times):
                os.kill(os.getpid(), sig)
    callback.sent = sent
    return callback


def _final_weights(trainer) -> dict:
    try:
        trainer.run()
        return {k: np.array(v) for k, v in trainer.engine.weights().items()}
    finally:
        trainer.close()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_at_a_checkpoint_and_the_continued_run_is_exact(tmp_path, sig):
    cfg = load(None, SETS)
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    whole = _final_weights(Trainer(cfg, str(tmp_path / "whole"), log=lambda *_: None))
    run_dir = str(tmp_path / "stopped")
    stop = _signal_at(51, sig=sig)
    lines = []
    trainer = Trainer(cfg, run_dir, log=lines.append, callbacks=[stop])
    try:
        with pytest.raises(RunStopped) as info:
            trainer.run()
    finally:
        trainer.close()
    at = stop.sent[0]
    assert at % 10 != 0  # mid-sequence: log_every 7 against 10-frame videos
    name = signal.Signals(sig).name
    assert re.fullmatch(rf"stopped by {name} at step {at} of 120 \([\d.]+ s of training\); its checkpoint is "
                        rf"{re.escape(run_dir)}/checkpoints/ckpt-0*{at}; continue with: ptncn train --resume "
                        rf"{re.escape(run_dir)}", str(info.value)), str(info.value)
    assert any(line.startswith(f"{name}: the run stops at the end of this segment") for line in lines)
    assert checkpoint.list_checkpoints(os.path.join(run_dir, "checkpoints"))[-1].endswith(f"{at:010d}")
    assert not os.path.exists(os.path.join(run_dir, "summary.json"))  # the run is not finished
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers
    said = []
    continued = _final_weights(Trainer(cfg, run_dir, resume=True, log=said.append))
    # resumed mid-sequence: no loss of the resumed weights, and nothing called untrained
    assert [line for line in said if line.startswith("test_bce:")][0].startswith("test_bce: trained ")
    assert sorted(continued) == sorted(whole)
    for k in whole:
        np.testing.assert_array_equal(continued[k], whole[k], err_msg=k)


def test_a_second_signal_stops_at_once_and_the_old_handlers_come_back(tmp_path):
    cfg = load(None, SETS)
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    stop = _signal_at(30, times=2)
    trainer = Trainer(cfg, str(tmp_path / "run"), log=lambda *_: None, callbacks=[stop])
    try:
        with pytest.raises(KeyboardInterrupt):
            trainer.run()
    finally:
        trainer.close()
    steps = [int(p.rsplit("-", 1)[1]) for p in checkpoint.list_checkpoints(str(tmp_path / "run" / "checkpoints"))]
    assert stop.sent and stop.sent[0] not in steps  # no checkpoint: it stopped at once
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers


def test_ctrl_c_on_ptncn_train_ends_with_one_line_and_status_130(tmp_path):
    """The command line, with a real SIGINT from outside: status 130 and the line that says how to
    continue, naming a checkpoint that exists."""
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "ptncn_dist.cli", "train", "--run-dir", str(run_dir), "--steps", "10000000"]
    cmd += [a for s in SETS if not s.startswith("train.steps") for a in ("--set", s)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:  # the loop has started once the model line is out
            if line.startswith("engine:"):
                break
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    last = err.strip().splitlines()[-1]
    match = re.fullmatch(r"stopped by SIGINT at step [\d,]+ of 10,000,000 .*; its checkpoint is (\S+); continue "
                         rf"with: ptncn train --resume {re.escape(str(run_dir))}", last)
    assert match and os.path.isdir(match.group(1)), err
