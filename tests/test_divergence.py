"""The divergence guard watches every layer: a NaN that appears in layer 2 is named as layer 2's,
the run stops before any checkpoint holds it, and a checkpoint is never written from a state
that holds NaN or Inf."""
import os

import numpy as np
import pytest

from ptncn_dist import checkpoint
from ptncn_dist.config import load
from ptncn_dist.errors import DivergenceError
from ptncn_dist.core.finite import FiniteWatch, Sighting, first_origin
from ptncn_dist.trainer import Trainer

BASE = ["model.hidden=[24, 16, 12]", "data.frame=32", "data.batch=4", "data.seq_len=10", "train.progress=false",
        "train.plots=false", "train.references=false", "train.eval_every=0", "train.eval_batches=1",
        "train.log_every=5", "train.checkpoint_every=10", 'model.dtype="float64"']


def poison(engine, layer: int, name: str) -> None:
    """One NaN in a weight of `layer`, put there through the engine's own state hand-over."""
    states = engine.layer_states()
    w = states[layer - 1]["params"][name] = np.array(states[layer - 1]["params"][name])  # Ray's are read-only
    w[0, 0] = np.nan
    engine.load_layer_states(states)


def run_poisoned(tmp_path, at_step: int, layer: int, name: str, extra=()):
    cfg = load(None, BASE + ["train.steps=40", *extra])
    holder = {}

    def on_record(rec):
        if rec.get("step") == at_step and "train_loss" in rec:
            poison(holder["trainer"], layer, name)

    trainer = Trainer(cfg, str(tmp_path), log=lambda *_: None, on_record=on_record)
    holder["trainer"] = trainer.engine
    try:
        with pytest.raises(DivergenceError) as err:
            trainer.run()
    finally:
        trainer.close()
    return str(err.value)


def every_checkpoint_is_finite(root) -> list:
    paths = checkpoint.list_checkpoints(root)
    for path in paths:
        for st in checkpoint.load(path).shards.values():
            for part in ("params", "slots"):
                for v in part == "params" and st[part].values() or [a for sl in st[part].values() for a in sl.values()]:
                    assert np.all(np.isfinite(v)), path
    return paths


@pytest.mark.parametrize("name", ["W", "E", "V"])
def test_a_nan_that_appears_in_layer_2_is_named_as_layer_2s(tmp_path, name):
    """Poisoned after step 15 (no checkpoint due there): the next segment stops, naming layer 2,
    and the last good checkpoint it names (step 10) holds no NaN."""
    msg = run_poisoned(tmp_path, 15, 2, name)
    assert "in layer 2 (first seen:" in msg, msg
    assert "at step 15 " in msg or "at step 16 " in msg, msg
    assert msg.endswith(os.path.join(str(tmp_path), "checkpoints", "ckpt-0000000010")), msg
    assert [os.path.basename(p) for p in every_checkpoint_is_finite(str(tmp_path / "checkpoints"))] == \
        ["ckpt-0000000000", "ckpt-0000000010"]


def test_no_checkpoint_is_written_from_a_state_that_holds_a_nan(tmp_path):
    """Poisoned right before the step-20 checkpoint: every layer checks itself before writing its
    shard; the write stops naming layer 3 and its weight, and nothing of step 20 is left."""
    msg = run_poisoned(tmp_path, 20, 3, "W")
    assert msg.startswith("layer 3 holds non-finite values in W at step 20: its checkpoint is not written"), msg
    assert msg.endswith("ckpt-0000000010"), msg
    root = tmp_path / "checkpoints"
    assert sorted(os.listdir(root)) == ["ckpt-0000000000", "ckpt-0000000010"]
    every_checkpoint_is_finite(str(root))


def test_pipelined_schedule_names_the_layer_too(tmp_path):
    """(Poisoned at a sequence boundary: the pipelined step carries messages within a sequence.)"""
    msg = run_poisoned(tmp_path, 10, 2, "W", ['engine.mode="pipelined"', "train.checkpoint_every=0"])
    assert "in layer 2 (first seen:" in msg, msg


def test_the_layer_that_sent_it_first_is_the_origin():
    """Layer 2 sends a NaN prediction; layer 1 receives it and sends NaN on: at the same step
    the sender is named, not the receivers; an earlier step wins over a later one."""
    two, one = FiniteWatch(2, np), FiniteWatch(1, np)
    for w in (one, two):
        w.t = 7
    one.sent(2, [("z", np.ones(3))])
    two.sent(1, [("pred", np.array([1.0, np.nan]))])
    one.received(((7, 0, "pred", 2),), (np.array([np.nan]),))
    one.sent(2, [("eps", np.array([np.inf]))])
    assert one.first == Sighting(1, 7, False, "the pred received from layer 2")
    assert two.first == Sighting(2, 7, True, "its pred sent to layer 1")
    assert first_origin([one.first, two.first, None]) is two.first
    assert first_origin([Sighting(3, 6, False, "x"), two.first]).layer == 3
    assert first_origin([None, None]) is None
    ids = FiniteWatch(1, np)
    ids.sent(2, [("tokens", np.array([-1, 5]))])
    assert ids.first is None
