"""Load a trained run and plot its forecasts of held-out sequences against the data.

    python examples/plot_forecasts.py runs/sines --out forecasts.png

For a run on real values (arrays, video) it plots, for the first held-out sequence, each of the
first few dimensions over time: the data and the one-step-ahead forecast.
"""
import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ptncn_dist import load_run  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir")
    p.add_argument("--out", default="forecasts.png")
    p.add_argument("--dims", type=int, default=3)
    args = p.parse_args(argv)
    run = load_run(args.run_dir)
    if run.kind != "frames":
        raise SystemExit(f"{args.run_dir} forecasts token ids; this example plots real values")
    batch = run.streams.test.batch(0)                     # time-major (T, B, D)
    x = batch.x.transpose(1, 0, 2)[:1]                     # the first sequence, (1, T, D)
    xhat = run.forecast(x)
    dims = min(args.dims, x.shape[2])
    fig, axes = plt.subplots(dims, 1, figsize=(8, 2 * dims), sharex=True, squeeze=False)
    for d in range(dims):
        ax = axes[d, 0]
        ax.plot(x[0, :, d], label="data")
        ax.plot(xhat[0, :, d], label="forecast", linestyle="--")
        ax.set_ylabel(f"dim {d}")
    axes[0, 0].legend(loc="upper right")
    axes[-1, 0].set_xlabel("step")
    fig.suptitle(f"{args.run_dir}, step {run.step}")
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
