"""How much of its budget's data each method saw: the lines under the tables of a timed scale,
where learners differ by their speed (steps, videos, or the share of the text)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .methods import METHOD_KEYS

if TYPE_CHECKING:
    from .scales import Scale


def ordered_methods(rows: list) -> list:
    """(method, label) in table order: the learners as METHODS lists them, references last."""
    seen = {}
    for r in rows:
        seen.setdefault(r["method"], r.get("label") or r["method"])
    keys = [k for k in METHOD_KEYS if k in seen] + [k for k in seen if k not in METHOD_KEYS]
    return [(k, seen[k]) for k in keys]


def first(rows: list, field: str):
    return next((r.get(field) for r in rows if r.get(field) not in (None, "")), None)


def percent(x: float) -> str:
    """A share in percent, two significant digits below 10 and whole numbers above."""
    return f"{x:.0f}" if x >= 10 else f"{x:.2g}"


def video_steps(rows: list, scale: Scale, what: str = "run") -> str:
    """How many steps (and videos) each method took in a timed run, mean over `rows` (one per
    seed, or per seed and phase): under equal time the learners differ by their speed."""
    taken = {}
    for key, label in ordered_methods(rows):
        got = [float(r["steps"]) for r in rows if r["method"] == key and r.get("steps") not in (None, "")]
        if got:
            taken[label] = sum(got) / len(got)
    if not taken:
        return ""
    each = "; ".join(f"{label} {n:,.0f} ({n / scale.seq_len * scale.batch:,.0f} videos)" for label, n in taken.items())
    return f"- Training steps per {what} in the time (mean over seeds): {each}."


def text_seen(rows: list, unit: str) -> str:
    """How much of the training split each method's runs saw (mean over seeds): under a time
    budget the learners differ by their speed; baselines finish their last sentence."""
    split = first(rows, "split_items")
    seen = {}
    for key, label in ordered_methods(rows):
        got = [float(r["items_seen"]) for r in rows if r["method"] == key and r.get("items_seen") not in (None, "")]
        if got:
            seen[label] = sum(got) / len(got)
    if not seen or not split:
        return "- Training text seen: unknown."
    each = "; ".join(f"{label} {n:,.0f} ({percent(100 * n / split)}%)" for label, n in seen.items())
    return f"- Training {unit} seen per run (mean over seeds; share of the {split:,.0f} in the training split): {each}."
