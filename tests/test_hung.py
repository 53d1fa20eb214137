"""A hung layer (its actor process SIGSTOPped: alive, silent) is caught by the heartbeats within
seconds, not at the end of engine.segment_timeout_s (left at 300 s here); the recovery record
counts the time it took to notice, and the run ends on the weights of one that never failed."""
import os
import signal
import time

import numpy as np
import pytest

from ptncn_dist.config import load
from ptncn_dist.engines.heartbeat import LayerHung
from ptncn_dist.errors import ConfigError
from ptncn_dist.trainer import Trainer
from helpers import NODE_IP, FireAt, local_ray

HUNG_AFTER = 4.0
SETS = ["model.hidden=[32,24,16]", "data.frame=32", "data.batch=4", "data.seq_len=10", 'model.dtype="float64"',
        "train.eval_batches=1", "train.eval_every=0", "train.log_every=10", "train.checkpoint_every=10",
        "train.plots=false", "train.progress=false", "train.tensorboard=false", "train.references=false",
        "train.max_failures=2", "train.steps=40", "engine.cpus_per_layer=0.5", "engine.heartbeat_s=0.5",
        f"engine.hung_after_s={HUNG_AFTER}", "engine.segment_timeout_s=300"]


@pytest.fixture(scope="module")
def ray_session():
    with local_ray(4):
        yield


@pytest.fixture(scope="module")
def reference():
    t = Trainer(load(None, SETS), None, log=lambda *_: None)
    t.run()
    return t.engine.weights()


def state(pid: int) -> str:
    """The process's state letter (T: stopped, Z: zombie), or "" when there is none."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return ""


@pytest.fixture
def stopped():
    """Pids this test SIGSTOPs; any still stopped afterwards (a failed test) is SIGKILLed."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if state(pid) in ("T", "t"):
            os.kill(pid, signal.SIGKILL)


def stop_layer(layer: int, pids: list, when: list):
    """What the callback does: SIGSTOP `layer`'s actor process (alive, silent)."""
    def fire(trainer):
        pids.append(trainer.engine.placement[layer - 1]["pid"])
        when.append(time.monotonic())
        os.kill(pids[0], signal.SIGSTOP)
    return fire


@pytest.mark.ray
@pytest.mark.slow
def test_stopped_layer_is_detected_within_seconds_and_recovers_exactly(ray_session, reference, stopped, tmp_path):
    """Layer 2 stopped by a trainer callback at step 20, exactly (after that step's checkpoint):
    the next segment (20 -> 30) hangs and is the one that fails. Over actor calls (the links
    transport behaves the same and costs another 20 s here)."""
    lines = []
    log = lambda *a: lines.append((time.monotonic(), " ".join(map(str, a))))
    when: list = []
    at_20 = FireAt(20, stop_layer(2, stopped, when))
    trainer = Trainer(load(None, SETS + ['engine.name="ray"', 'engine.transport="calls"']), str(tmp_path),
                      log=log, callbacks=[at_20])
    try:
        trainer.run()
        got = trainer.engine.weights()
    finally:
        trainer.close()
    assert at_20.fired == [20]
    (rec,) = trainer.recovery_log
    recovered_at = next(t for t, line in lines if line.startswith("recovered in"))
    assert rec["cause"].startswith(f"LayerHung: layer 2 (pid {stopped[0]} on {NODE_IP})")
    assert HUNG_AFTER <= rec["detection_s"] < HUNG_AFTER + 3.0
    assert rec["seconds"] == pytest.approx(rec["detection_s"] + rec["rebuild_s"], abs=2e-3)
    assert rec["seconds"] >= rec["detection_s"] and (rec["failed_by_step"], rec["resumed_from_step"]) == (30, 20)
    assert recovered_at - when[0] < 30.0
    assert state(stopped[0]) in ("", "Z")  # the engine killed the stopped process
    assert max(float(np.abs(got[k] - reference[k]).max()) for k in reference) == 0.0


def test_layer_hung_names_the_layer_and_carries_its_silence():
    from ptncn_dist.engines.heartbeat import Beat
    exc = LayerHung(Beat(3, 12.34, 57, 4242, "127.0.0.3", "ab"), 10.0)
    assert str(exc) == ("layer 3 (pid 4242 on 127.0.0.3) sent no heartbeat for 12.3 s "
                        "(engine.hung_after_s = 10, 57 steps run): stopped or hung")
    assert exc.detection_s == 12.34 and exc.layer == 3
    never = LayerHung(Beat(2, 11.0), 10.0)
    assert str(never) == ("layer 2 (its process never beat) sent no heartbeat for 11.0 s "
                          "(engine.hung_after_s = 10): stopped or hung")


@pytest.mark.parametrize("sets, key", [(["engine.heartbeat_s=0"], "engine.heartbeat_s"),
                                       (["engine.hung_after_s=1.0"], "engine.hung_after_s"),
                                       (["engine.heartbeat_s=2", "engine.hung_after_s=2"], "engine.hung_after_s"),
                                       (["engine.hung_after_s=nan"], "engine.hung_after_s")])
def test_heartbeat_settings_are_checked(sets, key):
    with pytest.raises(ConfigError, match=key):
        load(None, sets)
