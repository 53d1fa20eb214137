"""A study's test loss at each ASHA rung, per variant, beside its base variant: the table that
experiments/results/tuning/results.md quotes. Reads what `ptncn tune` wrote.

    python -m experiments.tools.tuning_table experiments/results/tuning/bouncing_onefactor --base default
"""
from __future__ import annotations

import argparse
import json
import os


def _rung(step: int, steps: list[int]) -> int:
    """The rung an evaluation stands for: text runs evaluate at the first sentence end after a
    rung (step 2,093 for 2,000), so a step counts for the largest rung at or below it."""
    below = [s for s in steps if s <= step]
    return below[-1] if below and step - below[-1] < 0.1 * below[-1] + 200 else step


def rung_table(study_dir: str, base: str, metric: str, steps: list[int]) -> str:
    """Markdown: one row per variant, the test loss at each of `steps` (blank where ASHA stopped
    the trial earlier), and the change from `base` at the furthest step both reached."""
    curves: dict = {}
    with open(os.path.join(study_dir, "curves.jsonl"), encoding="utf-8") as fh:
        for line in fh:
            c = json.loads(line)
            if c.get(metric) is not None:
                curves.setdefault(c["variant"], {})[_rung(c["step"], steps)] = c[metric]
    if base not in curves:
        raise SystemExit(f"{study_dir}: no variant named {base!r}")
    head = "| variant | " + " | ".join(f"{s:,} steps" for s in steps) + f" | vs {base} |"
    lines = [head, "|---" * (len(steps) + 2) + "|"]
    order = sorted(curves, key=lambda v: min((curves[v].get(s, float("inf")) for s in reversed(steps)
                                              if s in curves[v]), default=float("inf")))
    order = sorted(order, key=lambda v: -max((s for s in steps if s in curves[v]), default=0))
    for v in order:
        row = curves[v]
        fmt = ".3f" if row.get(steps[0], 100.0) < 20 else ".1f"
        cells = [f"{row[s]:{fmt}}" if s in row and row[s] < 1e8 else ("diverged" if s in row else "")
                 for s in steps]
        shared = [s for s in steps if s in row and s in curves[base]]
        if shared and row[shared[-1]] < 1e8:
            s = shared[-1]
            delta = f"{100 * (row[s] / curves[base][s] - 1):+.1f}% at {s:,}"
        else:
            blown = [s for s, loss in sorted(row.items()) if loss >= 1e8]
            delta = f"diverged by step {blown[0]:,}" if blown else ""
        lines.append(f"| {v} | " + " | ".join(cells) + f" | {delta} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("study_dir")
    p.add_argument("--base", required=True)
    p.add_argument("--metric", default="test_bce")
    p.add_argument("--steps", default="3000,9000,12000")
    args = p.parse_args()
    print(rung_table(args.study_dir, args.base, args.metric, [int(s) for s in args.steps.split(",")]))


if __name__ == "__main__":
    main()
