"""Builders for the own-data tests (tests/test_own_data*.py): small arrays, text and Moving MNIST
files in a user's layouts, and `ptncn train` run in this process through `cli.main`."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ptncn_dist import cli
from ptncn_dist.data import moving_mnist

QUIET = ["--set", "train.progress=false", "--set", "train.plots=false", "--set", "train.tensorboard=false"]


def sets(**kv) -> list:
    """--set arguments; strings quoted as TOML strings."""
    out = []
    for key, value in kv.items():
        value = json.dumps(value) if isinstance(value, str) else value
        out += ["--set", f"{key.replace('__', '.')}={value}"]
    return out


def run_cli(capsys, *argv) -> tuple:
    """(exit status, stderr, stdout) of `ptncn ARGV` run in this process."""
    rc = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.err, captured.out


def train_run(tmp_path, capsys, steps: int, *extra) -> dict:
    """Train through the CLI; the run's summary.json, with what it printed under "_stdout"."""
    run = tmp_path / "run"
    rc, err, out = run_cli(capsys, "train", "--steps", steps, *QUIET, *extra, "--run-dir", run)
    assert rc == 0, err
    return {**json.loads((run / "summary.json").read_text()), "_stdout": out}


def one_error(tmp_path, capsys, *argv) -> str:
    """The one `error:` line of a refused `ptncn train`, status 2, no traceback, no run written."""
    run = tmp_path / "run"
    rc, err, _ = run_cli(capsys, "train", "--steps", 10, *QUIET, "--set", "model.hidden=[8,8]",
                      "--set", "data.batch=4", "--set", "data.eval_batch=4", *argv, "--run-dir", run)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), (rc, err)
    assert "Traceback" not in err
    assert not (run / "config.toml").exists()
    return lines[0][len("error: "):]


def sines(n=64, steps=20, dim=4, seed=0, noise=0.05) -> np.ndarray:
    """Noisy sines (N, T, D) float32: each sequence and dimension its own frequency and phase."""
    rng = np.random.default_rng(seed)
    t = np.arange(steps)[None, :, None]
    freq = rng.uniform(0.2, 0.5, (n, 1, dim))
    phase = rng.uniform(0, 2 * np.pi, (n, 1, dim))
    x = np.sin(freq * t + phase) + noise * rng.standard_normal((n, steps, dim))
    return x.astype(np.float32)


def arrays_args(path, output="identity", **more) -> list:
    return sets(data__source="arrays", data__path=str(path), model__output=output, **more)


SMALL = ["--set", "model.hidden=[16,16]", "--set", "data.batch=8", "--set", "data.eval_batch=16",
         "--set", "train.eval_batches=1"]



def write_text(d: Path, train: str, test: str, valid: str | None = None) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / "train.txt").write_text(train, encoding="utf-8")
    (d / "test.txt").write_text(test, encoding="utf-8")
    (d / "valid.txt").write_text(valid if valid is not None else test, encoding="utf-8")


def story(n=200, seed=0) -> str:
    rng = np.random.default_rng(seed)
    words = "the cat sat on a mat and the dog ran to the big red house".split()
    return "".join(" ".join(rng.choice(words, rng.integers(3, 8))) + "\n" for _ in range(n))



def write_moving_mnist(d: Path, n=30, steps=20, side=64) -> np.ndarray:
    """A small file in the distributed layout: uint8 (T, N, H, W), a square moving per sequence."""
    d.mkdir(parents=True, exist_ok=True)
    x = np.zeros((steps, n, side, side), np.uint8)
    for s in range(n):
        for t in range(steps):
            r, c = (3 + 2 * t + s) % (side - 10), (5 + 3 * t) % (side - 10)
            x[t, s, r:r + 10, c:c + 10] = 255
    np.save(d / moving_mnist.FILE, x)
    return x
