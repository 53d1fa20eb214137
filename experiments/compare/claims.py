"""The paper's claims, answered from a results table: per benchmark, does P-TNCN beat RTRL, UORO
and the echo state network at equal training time (the paper's claim); where it stands against
BPTT, truncated BPTT and the LSTM; whether it beats the strongest reference forecast; and how its
rank compares with the same benchmark at the other scales committed beside this one (25 seconds
at medium, 10 or 20 minutes at long, one epoch of PTB characters).

A difference counts as clear when the two means differ by more than the sum of their seeds'
standard deviations (`tables.separated`); with one seed no spread is known and the words say so.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

from . import report as rep

RIVALS = ("rtrl", "uoro", "esn")  # the methods the paper says P-TNCN beats
OTHERS = ("bptt", "tbptt", "lstm")
NUMERIC = ("phase", "seed", "params", "steps", "items_seen", "split_items")


def _learners(stats: dict, column: str, keys) -> dict:
    return {k: stats[k] for k in keys if k in stats and math.isfinite(stats[k][column][0])}


def rank(stats: dict, column: str, key: str, keys) -> tuple[int, int] | None:
    """(rank of `key`, how many) among the learners `keys` with a finite `column` (1 = lowest)."""
    have = _learners(stats, column, keys)
    if key not in have:
        return None
    order = sorted(have, key=lambda k: have[k][column][0])
    return order.index(key) + 1, len(order)


def _versus(me: dict, them: dict, column: str, separated) -> str:
    a, b = me[column], them[column]
    side = "ahead of" if a[0] < b[0] else "behind"
    if a[2] < 2 or b[2] < 2:
        how = "one seed"
    else:
        how = "clearly" if separated(a, b) else "within the seeds' spread"
    return f"{side} {them['label']} ({rep.fmt_ms(b)}; {how})"


def claims_lines(stats: dict, column: str, what: str, reference: str | None, method_keys,
                 separated, others: list[tuple[str, dict]] = ()) -> list[str]:
    """Plain answers for one benchmark (see the module docstring); `others`: (scale, stats) of the
    same benchmark at other scales."""
    if "ptncn" not in stats or not math.isfinite(stats["ptncn"][column][0]):
        return [f"- {what}: P-TNCN has no finished run; the paper's claim cannot be judged here."]
    me = stats["ptncn"]
    lines = [f"**The paper's claims, {what}** (P-TNCN (tanh): {rep.fmt_ms(me[column])})", ""]
    rivals = _learners(stats, column, RIVALS)
    if rivals:
        beaten = [k for k in rivals if me[column][0] < rivals[k][column][0]]
        verdict = ("holds" if len(beaten) == len(rivals) else
                   "does not hold" if not beaten else "holds in part")
        lines.append(f"- Against RTRL, UORO and the ESN (the paper's claim, equal training time): it {verdict}. "
                     "P-TNCN is " + "; ".join(_versus(me, rivals[k], column, separated) for k in rivals) + ".")
    others_here = _learners(stats, column, OTHERS)
    if others_here:
        lines.append("- Against BPTT, truncated BPTT and the LSTM: "
                     + "; ".join(_versus(me, others_here[k], column, separated) for k in others_here) + ".")
    r = rank(stats, column, "ptncn", method_keys)
    if r:
        lines.append(f"- Rank: {r[0]} of {r[1]} learners here.")
    for scale, st in others:
        ro = rank(st, column, "ptncn", method_keys)
        if ro:
            where = (f"ranked {ro[0]} of {ro[1]}" if ro[1] > 1 else "was the only learner run")
            lines.append(f"- At the `{scale}` scale it {where} ({rep.fmt_ms(st['ptncn'][column])}).")
    if reference and reference in stats and math.isfinite(stats[reference][column][0]):
        ref = stats[reference]
        beats = me[column][0] < ref[column][0]
        lines.append(f"- Against {ref['label']} ({rep.fmt(ref[column][0])}): "
                     + ("P-TNCN beats it." if beats else "P-TNCN does not beat it."))
    return lines + [""]


def read_rows(path: Path) -> list[dict]:
    """results.csv as the tables' rows (numbers back to numbers)."""
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        for k, v in list(r.items()):
            if v == "":
                r[k] = None
            elif k in NUMERIC:
                r[k] = int(float(v))
            elif k.startswith("test_") or k in ("train_s", "wall_s", "peak_rss_mib", "rss_before_train_mib",
                                                 "seq_memory_mib"):
                r[k] = float(v)
    return rows


def other_scales(out: Path) -> list[tuple[str, list]]:
    """(scale, rows) of every other scale of this experiment committed beside `out`."""
    found = []
    for path in sorted(Path(out).parent.glob("*/results.csv")):
        if path.parent.resolve() != Path(out).resolve():
            try:
                found.append((path.parent.name, read_rows(path)))
            except (OSError, ValueError, csv.Error):
                continue
    return found


def spread_note(stats: dict, column: str, mnist: dict | None, mnist_column: str = "test_bce") -> str:
    """For a table of one seed: the spread over seeds measured on Bouncing MNIST at the same
    scale (`mnist`: its stats), the yardstick for the differences here ('' when not needed)."""
    learners = [v for k, v in stats.items() if k in RIVALS + OTHERS + ("ptncn", "ptncn_sign")]
    if not learners or max(v[column][2] for v in learners) > 1 or not mnist:
        return ""
    rel = {k: v[mnist_column][1] / v[mnist_column][0] for k, v in mnist.items()
           if k in RIVALS + OTHERS + ("ptncn", "ptncn_sign") and v[mnist_column][2] > 1
           and math.isfinite(v[mnist_column][1]) and v[mnist_column][0]}
    if not rel:
        return ""
    p = f"{100 * rel['ptncn']:.1f}% for P-TNCN (tanh), " if "ptncn" in rel else ""
    return (f"- One seed here. On Bouncing MNIST at this scale the seeds' standard deviation was {p}"
            f"{100 * min(rel.values()):.1f}-{100 * max(rel.values()):.1f}% of the mean across the learners: "
            "read differences smaller than that as ties.")
