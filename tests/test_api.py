"""A trained run from Python (`load_run`: forecast, evaluate, weights), training on a user's arrays
directly, `ptncn predict` (arrays and text), and the examples at a small size."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import ptncn_dist
from ptncn_dist.cli import main
from ptncn_dist.errors import DataError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETS = ["train.steps=120", "model.hidden=[24, 16]", 'model.output="identity"', "data.batch=8", "data.eval_batch=8",
        "train.eval_batches=2", "train.progress=false", "train.plots=false", "train.tensorboard=false",
        "train.log_every=40", "train.checkpoint_every=60"]


def series(n, t=12, d=3, seed=0):
    rng = np.random.default_rng(seed)
    steps = np.arange(t)[None, :, None]
    return (np.sin(rng.uniform(0.2, 0.5, (n, 1, d)) * steps + rng.uniform(0, 6, (n, 1, d)))
            + rng.normal(0, 0.05, (n, t, d))).astype(np.float32)


@pytest.fixture(scope="module")
def arrays_run(tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("api") / "run")
    cfg = ptncn_dist.load_config(None, SETS)
    ptncn_dist.train(cfg, run_dir, data={"train": series(64), "test": series(16, seed=1)}, log=lambda *_: None)
    return run_dir


def test_train_takes_arrays_and_load_run_gives_the_run(arrays_run):
    run = ptncn_dist.load_run(arrays_run)
    assert run.step == 120 and run.kind == "frames" and run.dim == 3
    assert run.config.data.source == "arrays" and os.path.isfile(f"{arrays_run}-data/train.npy")
    assert set(run.weights()) >= {"M1", "W1", "E1", "M2"}
    x = series(5, t=9, seed=3)
    out = run.forecast(x)
    assert out.shape == (5, 9, 3) and np.isfinite(out).all()
    # the forecast of x[:, t] uses x[:, :t] only: changing later steps leaves it unchanged
    y = x.copy()
    y[:, 6:] += 5.0
    np.testing.assert_array_equal(run.forecast(y)[:, :7], out[:, :7])
    assert run.weights()["M1"].tobytes() == ptncn_dist.load_run(arrays_run).weights()["M1"].tobytes()


def test_forecasts_equal_what_ptncn_eval_computes(arrays_run, capsys):
    """The squared error of run.forecast on the run's test batches, computed here with NumPy,
    equals `ptncn eval`'s test_se (to float rounding), by position too."""
    run = ptncn_dist.load_run(arrays_run)
    se, count = 0.0, 0.0
    t_prime = run.config.model.t_prime
    for pos in range(2):
        b = run.streams.test.batch(pos)
        x, m = b.x.transpose(1, 0, 2), b.mask.T
        err = ((run.forecast(x, m) - x) ** 2).sum(axis=2) * m
        se += err[:, t_prime:].sum()
        count += m[:, t_prime:].sum()
    capsys.readouterr()
    assert main(["eval", arrays_run, "--batches", "2"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["test_se"] == pytest.approx(se / count, rel=1e-5)
    assert run.evaluate(batches=2)["test_se"] == pytest.approx(got["test_se"], rel=1e-12)
    b = run.streams.test.batch(0)
    mine = run.evaluate(b.x.transpose(1, 0, 2), b.mask.T)
    assert mine["test_se"] == pytest.approx(run.evaluate(batches=1)["test_se"], rel=1e-12)


def test_predict_writes_the_forecasts(arrays_run, tmp_path, capsys):
    x = series(3, t=7, seed=4)
    np.save(tmp_path / "x.npy", x)
    assert main(["predict", arrays_run, "--input", str(tmp_path / "x.npy"), "--out", str(tmp_path / "f.npy")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "f.npy"), ptncn_dist.load_run(arrays_run).forecast(x))
    np.save(tmp_path / "bad.npy", series(3, d=5))
    capsys.readouterr()
    assert main(["predict", arrays_run, "--input", str(tmp_path / "bad.npy"), "--out", str(tmp_path / "g.npy")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {tmp_path / 'bad.npy'}: this run forecasts (B, T, 3) real values; got an array of "
                   f"shape (3, 12, 5) and dtype float32"]
    run = ptncn_dist.load_run(arrays_run)
    with pytest.raises(DataError, match=r"^the input holds NaN or Inf at sequence 0, step 0 \(and at 3 more steps\); "
                                        r"mask such steps out"):
        run.forecast(np.full((1, 4, 3), np.nan, np.float32))
    padded, mask = x.copy(), np.ones(x.shape[:2], np.float32)
    padded[1, 5:], mask[1, 5:] = np.nan, 0  # NaN padding under the mask is fine: it reaches the model as 0
    zeroed = np.where(mask[:, :, None] == 0, 0, padded)
    np.testing.assert_array_equal(run.forecast(padded, mask), run.forecast(zeroed, mask))
    with pytest.raises(DataError, match="at sequence 1, step 5 "):
        run.forecast(padded)


def test_a_text_run_predicts_and_generates_text(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.txt").write_text("the cat sat on the mat\nthe dog sat on the log\n" * 20, encoding="utf-8")
    run_dir = str(tmp_path / "run")
    cfg = ptncn_dist.load_config(None, ['data.source="text"', 'data.format="char"', f'data.path="{data}"',
                                        'model.output="softmax"', "model.hidden=[32, 32]", "train.steps=200",
                                        "data.batch=8", "train.progress=false", "train.plots=false",
                                        "train.tensorboard=false"])
    ptncn_dist.train(cfg, run_dir, log=lambda *_: None)
    run = ptncn_dist.load_run(run_dir)
    assert run.kind == "tokens" and run.vocab and "<unk>" in run.vocab
    capsys.readouterr()
    assert main(["predict", run_dir, "--text", "the cat"]) == 0
    line = capsys.readouterr().out.strip("\n")
    assert len(line) == len("the cat") and all(c in run.vocab for c in line)
    for _ in range(2):
        assert main(["predict", run_dir, "--text", "the cat", "--generate", "12", "--seed", "3"]) == 0
    outs = capsys.readouterr().out.strip("\n").splitlines()
    assert len(outs) == 2 and outs[0] == outs[1] and len(outs[0]) == 12


EXAMPLES = [("forecast_series.py", ["--steps", "200"], "squared error per step on new series"),
            ("text_generate.py", ["--steps", "200"], "the cat|")]


@pytest.mark.slow
@pytest.mark.parametrize("script,args,expect", EXAMPLES)
def test_examples_run(tmp_path, script, args, expect):
    run_dir = str(tmp_path / "run")
    proc = subprocess.run([sys.executable, os.path.join(REPO, "examples", script), *args, "--run-dir", run_dir],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert expect in proc.stdout
    if script == "forecast_series.py":
        png = tmp_path / "f.png"
        plot = subprocess.run([sys.executable, os.path.join(REPO, "examples", "plot_forecasts.py"), run_dir,
                               "--out", str(png)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert plot.returncode == 0, plot.stderr[-3000:]
        assert png.stat().st_size > 10_000


@pytest.mark.ray
@pytest.mark.slow
def test_own_arrays_and_text_train_on_the_ray_engine_as_locally(tmp_path, capsys):
    """One command each, on both engines: arrays and a text file train through `ptncn train
    --engine ray` (one actor per layer) to the weights of the single-process run, and the Ray
    run loads and forecasts through `load_run`."""
    arrays = tmp_path / "arrays"
    arrays.mkdir()
    np.save(arrays / "train.npy", series(40))
    text = tmp_path / "text"
    text.mkdir()
    (text / "train.txt").write_text("the cat sat on the mat\nthe dog sat on the log\n" * 10, encoding="utf-8")
    common = ["--steps", "40", "--set", "model.hidden=[12,10]", "--set", "data.batch=4", "--set", "train.progress=false",
              "--set", "train.plots=false", "--set", "train.tensorboard=false", "--set", 'model.dtype="float64"',
              "--set", "engine.cpus_per_layer=0.5"]
    sources = {"arrays": ["--set", 'data.source="arrays"', "--set", f'data.path="{arrays}"',
                          "--set", 'model.output="identity"'],
               "text": ["--set", 'data.source="text"', "--set", 'data.format="char"', "--set", f'data.path="{text}"',
                        "--set", 'model.output="softmax"']}
    for name, sets in sources.items():
        weights = {}
        for engine in ("local", "ray"):
            run_dir = str(tmp_path / f"{name}-{engine}")
            assert main(["train", "--engine", engine, "--run-dir", run_dir, *common, *sets]) == 0
            weights[engine] = ptncn_dist.load_run(run_dir).weights()
        for k in weights["local"]:
            np.testing.assert_allclose(weights["ray"][k], weights["local"][k], rtol=0, atol=1e-12, err_msg=f"{name} {k}")
