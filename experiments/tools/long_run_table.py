"""The test curve of a long run as a Markdown table (step, training minutes, test loss) from its
metrics.jsonl, and with --png a plot of the test loss against training minutes beside the
run's reference forecasts. Training minutes are summed from each logged window's steps and
steps_per_s, so the time spent evaluating is left out.

    python -m experiments.tools.long_run_table experiments/results/tuning/long_runs/video --metric test_bce \
        --png experiments/results/tuning/long_runs/video/curve.png
"""
from __future__ import annotations

import argparse
import json
import os


def read(run_dir: str) -> list[dict]:
    with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def curve(records: list[dict], metric: str) -> list[tuple[int, float, float]]:
    """[(step, training minutes, test loss)] for every evaluation in the records."""
    out, minutes, last = [], 0.0, 0
    for r in records:
        if r.get("steps_per_s"):
            minutes += (r["step"] - last) / r["steps_per_s"] / 60.0
            last = r["step"]
        if metric in r:
            out.append((r["step"], minutes, r[metric]))
    return out


def references(records: list[dict], metric: str) -> dict[str, float]:
    """The run's overall reference losses in the metric's unit (`<name>_bce`, `<name>_bpc`)."""
    unit = metric.rsplit("_", 1)[-1]
    ref = next((r["reference"] for r in records if isinstance(r.get("reference"), dict)), {})
    return {k: v for k, v in ref.items() if k.endswith(f"_{unit}") and isinstance(v, (int, float))}


def plot(points, refs: dict, metric: str, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    shown = [(s, m, v) for s, m, v in points if s > 0]
    ax.plot([m for _, m, _ in shown], [v for *_, v in shown], "o-", label="P-TNCN (test)")
    lo, hi = min(v for *_, v in shown), max(v for *_, v in shown)
    top = max(hi + 0.25 * (hi - lo), 1.03 * min(refs.values(), default=hi))  # the best reference always shows
    for i, (name, value) in enumerate(sorted(refs.items(), key=lambda kv: kv[1])):
        if value <= top:
            ax.axhline(value, ls="--", lw=1, color=f"C{i + 1}", label=name)
    ax.set_ylim(min([lo] + [v for v in refs.values() if v <= top]) * 0.98, top)
    ax.set_xlabel("training minutes (one core)")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir")
    p.add_argument("--metric", default="test_bce")
    p.add_argument("--png", help="also plot the curve against the references into this file")
    args = p.parse_args()
    records = read(args.run_dir)
    points = curve(records, args.metric)
    print(f"| step | training minutes | {args.metric} |\n|---|---|---|")
    for step, minutes, loss in points:
        print(f"| {step:,} | {minutes:.1f} | {loss:.4g} |")
    if args.png:
        plot(points, references(records, args.metric), args.metric, args.png)


if __name__ == "__main__":
    main()
