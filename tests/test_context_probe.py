"""The context-length probe: each context sees exactly the frames it names, and no older ones."""
import numpy as np
import pytest

from ptncn_dist.diagnostics import context_probe
from ptncn_dist.config import load
from ptncn_dist.trainer import Trainer

SMALL = ["model.hidden=[24, 24]", "data.frame=32", "data.sprites=1", "data.seq_len=8",
         "data.batch=4", "data.eval_batch=4", "train.steps=160", "train.progress=false",
         "train.plots=false", "train.eval_every=0", "model.dtype=\"float64\""]


@pytest.fixture(scope="module")
def trained():
    trainer = Trainer(load(None, SMALL), None, log=lambda *_: None)
    trainer.run()
    yield trainer
    trainer.close()


def test_longest_context_on_a_short_sequence_is_the_whole_past(trained):
    b = trained.streams.test.batch(0)
    k = b.x.shape[0] - 1
    out = context_probe.probe(trained.engine, trained.streams.test, [k])
    assert out["positions"] == [k, k]
    assert out["by_context"][k]["bce"] == pytest.approx(out["full"]["bce"], rel=1e-12)


def test_a_context_ignores_older_frames(trained):
    engine = trained.engine
    b = trained.streams.test.batch(0)
    x, mask = b.x, b.mask
    changed = x.copy()
    changed[:3] = np.random.default_rng(0).random(changed[:3].shape)
    kept = context_probe._score_segment(engine, x, mask, 4, 6)
    engine.run_segment(changed, mask, 0, x.shape[0], learn=False, t_prime=1)
    again = context_probe._score_segment(engine, changed, mask, 4, 6)
    assert again["bce"] == pytest.approx(kept["bce"], rel=1e-12)
    full_x, _ = engine.run_segment(x[:7], mask[:7], 0, 7, learn=False, t_prime=6)
    full_changed, _ = engine.run_segment(changed[:7], mask[:7], 0, 7, learn=False, t_prime=6)
    assert full_changed["bce"] != full_x["bce"]


def test_contexts_differ_on_a_trained_model(trained):
    out = context_probe.probe(trained.engine, trained.streams.test, [1, 3])
    assert out["by_context"][1]["bce"] != out["by_context"][3]["bce"]


def test_bad_contexts_are_refused(trained):
    with pytest.raises(ValueError, match=">= 1"):
        context_probe.probe(trained.engine, trained.streams.test, [0, 2])
    with pytest.raises(ValueError, match="longer than the longest context"):
        context_probe.probe(trained.engine, trained.streams.test, [50])


def test_eval_command_prints_the_probe(tmp_path, capsys):
    import json
    from ptncn_dist.cli import main
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run)] + sum((["--set", s] for s in SMALL), [])) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--batches", "1", "--context", "1,2,7"]) == 0
    out = json.loads(capsys.readouterr().out)
    probe = out["context_probe"]
    assert probe["positions"] == [7, 7] and set(probe["by_context"]) == {"1", "2", "7"}
    assert probe["by_context"]["7"]["bce"] == pytest.approx(probe["full"]["bce"], rel=1e-9)
    assert main(["eval", str(run), "--context", "0"]) == 2
