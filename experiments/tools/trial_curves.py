"""The held-out curve of comparison trials as a Markdown table: for each trial whose id matches,
its step, training seconds and held-out loss at every evaluation of its first phase. Reads the
trial files `python -m experiments.compare` committed.

    python -m experiments.tools.trial_curves experiments/results/bouncing/long notmnist-s0
"""
from __future__ import annotations

import argparse
from pathlib import Path

from experiments.compare.runner import read_trial


def curves(out: Path, match: str) -> str:
    """Markdown, one table per trial (in id order) whose id contains `match`."""
    parts = []
    found = sorted((read_trial(p) for p in (out / "trials").glob("*.json")), key=lambda jr: jr[0]["id"])
    for job, res in found:
        if match not in job["id"] or not res.get("phases"):
            continue
        rows = [f"| {p['step']:,} | {p['train_s']:.0f} | {p['loss']:.4g} |" for p in res["phases"][0].get("curve", [])]
        parts += [f"### {job['id']}", "", "| step | train s | held-out loss |", "|---|---|---|", *rows, ""]
    if not parts:
        raise SystemExit(f"{out / 'trials'}: no trial id contains {match!r}")
    return "\n".join(parts)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", type=Path, help="an experiment's results directory (holding trials/)")
    p.add_argument("match", nargs="?", default="", help="only trials whose id contains this")
    args = p.parse_args(argv)
    print(curves(args.results, args.match))


if __name__ == "__main__":
    main()
