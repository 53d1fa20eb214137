"""Train P-TNCN on a synthetic multivariate series given as NumPy arrays, then forecast it.

    python examples/forecast_series.py --steps 3000 --run-dir runs/sines

The series: 8 noisy sine waves per sequence (random amplitude, frequency and phase). The model
sees the arrays directly (`train(cfg, run_dir, data=...)`, saved beside the run as .npy files),
forecasts each next step, and is compared with copying the previous step.
"""
import argparse

import numpy as np

from ptncn_dist import load_config, load_run, train


def sines(n: int, t: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    amp = rng.uniform(0.5, 1.0, (n, 1, d))
    freq = rng.uniform(0.15, 0.45, (n, 1, d))
    phase = rng.uniform(0, 2 * np.pi, (n, 1, d))
    steps = np.arange(t)[None, :, None]
    return (amp * np.sin(freq * steps + phase) + rng.normal(0, 0.05, (n, t, d))).astype(np.float32)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--run-dir", default="runs/sines")
    args = p.parse_args(argv)
    cfg = load_config(None, [f"train.steps={args.steps}", "model.hidden=[64, 64]", 'model.output="identity"',
                             "optim.lr=0.001", "data.batch=32", "train.progress=false", "train.plots=false"])
    train(cfg, args.run_dir, data={"train": sines(400, 40, 8, 0), "test": sines(50, 40, 8, 1)})

    run = load_run(args.run_dir)
    x = sines(4, 40, 8, 2)
    xhat = run.forecast(x)                                   # (4, 40, 8): xhat[:, t] forecasts x[:, t]
    model = float(((xhat[:, 1:] - x[:, 1:]) ** 2).sum(axis=2).mean())
    copy = float(((x[:, :-1] - x[:, 1:]) ** 2).sum(axis=2).mean())
    print(f"squared error per step on new series: P-TNCN {model:.4f}, copy the previous step {copy:.4f}")
    print(f"held-out test_se {run.evaluate()['test_se']:.4f} at step {run.step}")


if __name__ == "__main__":
    main()
