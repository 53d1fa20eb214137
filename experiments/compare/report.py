"""Tables, CSV, plots and provenance for the comparison: pure functions of the trial results.

Per-seed records are dicts of named numbers; `aggregate` turns them into mean and sample
standard deviation over seeds, and `markdown_table` prints them as "mean ± std".
"""
from __future__ import annotations

import csv
import importlib.metadata
import math
import os
import platform
import subprocess
import sys
from pathlib import Path

CSV_FIELDS = ("experiment", "method", "label", "seed", "hidden", "params", "phase", "trained_on",
              "eval_on", "correction", "steps", "items_seen", "split_items", "test_bce", "test_se",
              "test_nll", "test_bpc", "test_ppl", "train_s", "wall_s", "peak_rss_mib",
              "rss_before_train_mib", "seq_memory_mib", "settings", "status")


def result_rows(experiment: str, job: dict, res: dict) -> list[dict]:
    """Long-format CSV rows of one job: one per (phase, eval set, correction on/off).

    Phase 0 is the untrained model; a reference job gives one phase per reference forecast.
    """
    base = {"experiment": experiment, "seed": job["seed"], "status": res.get("status", "?"),
            "wall_s": res.get("wall_s"), "peak_rss_mib": res.get("peak_rss_mib"),
            "settings": ", ".join(s.replace('"', "") for s in job.get("settings", ())) or "default"}
    if job.get("kind") == "reference":
        rows = []
        for ref, per_eval in res.get("references", {}).items():
            for ds, m in per_eval.items():
                rows.append({**base, "method": ref, "label": REFERENCE_LABELS.get(ref, ref), "params": None,
                             "phase": 1, "trained_on": job["phases"][0]["data"], "eval_on": ds,
                             "correction": "", **m})
        return rows or [{**base, "method": "reference", "label": "reference", "phase": 1}]
    base.update({"method": job["method"], "label": job["label"], "hidden": job["hidden_text"],
                 "params": res.get("params"), "rss_before_train_mib": res.get("rss_before_train_mib"),
                 "seq_memory_mib": res.get("seq_memory_mib")})
    corr = "on" if job["type"] == "ptncn" else ""
    rows = [{**base, "phase": 0, "trained_on": "untrained", "eval_on": ds, "correction": corr, "steps": 0, **m}
            for ds, m in res.get("initial", {}).items()]
    for k, ph in enumerate(res.get("phases", []), start=1):
        seen, split = ph.get("items_seen") or (None, None)
        common = {**base, "phase": k, "trained_on": ph["train_data"], "steps": ph["steps"],
                  "items_seen": seen, "split_items": split, "train_s": ph["train_s"]}
        rows += [{**common, "eval_on": ds, "correction": corr, **m} for ds, m in ph["evals"].items()]
        rows += [{**common, "eval_on": ds, "correction": "off", **m}
                 for ds, m in ph.get("evals_nocorr", {}).items()]
    if not rows:
        rows = [{**base, "phase": 1}]
    return rows


REFERENCE_LABELS = {"mean_frame": "Mean training frame (reference)",
                    "copy_last": "Copy previous frame (reference)",
                    "blur_blend": "Blur blend of previous and mean frame (reference)",
                    "unigram": "Unigram frequencies (reference)",
                    "bigram": "Bigram frequencies (reference)",
                    "trigram": "Trigram frequencies (reference)"}


def strongest_reference(stats: dict, names: tuple, column: str) -> str | None:
    """Of the references `names` that the table holds, the one with the lowest mean `column`:
    what a learner must beat (the most elaborate one need not be it: a word trigram without
    smoothing loses to the unigram on held-out text)."""
    held = [n for n in names if n in stats and math.isfinite(stats[n][column][0])]
    return min(held, key=lambda n: stats[n][column][0]) if held else None


def write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: _csv_value(r.get(k)) for k in CSV_FIELDS})


def _csv_value(v):
    if isinstance(v, float):
        return f"{v:.6g}"
    return "" if v is None else v


def select(rows: list[dict], **match) -> list[dict]:
    """The rows whose fields equal every `match` value."""
    return [r for r in rows if all(r.get(k) == v for k, v in match.items())]


def mean_std(values: list[float]) -> tuple[float, float, int]:
    """(mean, sample std (nan for one value), n) of the finite values; (nan, nan, 0) if none."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not xs:
        return math.nan, math.nan, 0
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, math.nan, len(xs)
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)), len(xs)


def aggregate(records: list[dict], columns: list[str]) -> dict:
    """{column: (mean, std, n)} over per-seed records."""
    return {c: mean_std([r.get(c) for r in records]) for c in columns}


def fmt(value: float) -> str:
    """About four significant digits; '–' for a missing number."""
    if value is None or not math.isfinite(value):
        return "–"
    a = abs(value)
    if a >= 1000:
        return f"{value:.0f}"
    if a >= 100:
        return f"{value:.1f}"
    if a >= 10:
        return f"{value:.2f}"
    return f"{value:.3f}"


def fmt_ms(stat: tuple) -> str:
    """'mean ± std' with the std to two significant digits (just the mean for one seed)."""
    m, s, n = stat
    if n == 0:
        return "–"
    if n < 2 or not math.isfinite(s):
        return fmt(m)
    shown = fmt(m)
    mean_decimals = len(shown.split(".")[1]) if "." in shown else 0
    d = 1 - math.floor(math.log10(s)) if s > 0 else mean_decimals
    d = max(0, min(d, mean_decimals))
    return f"{m:.{d}f} ± {s:.{d}f}"


def markdown_table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in body]
    return "\n".join(lines)


def package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def git_state(repo: Path) -> dict:
    """The commit, the tracked files changed since it and the untracked paths (best effort)."""
    def git(*args):
        try:
            return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                                  timeout=10).stdout.rstrip("\n")
        except (OSError, subprocess.SubprocessError):
            return ""
    status = git("status", "--porcelain").splitlines()
    return {"commit": git("rev-parse", "HEAD").strip(),
            "changed_tracked": [line[3:] for line in status if not line.startswith("??")],
            "untracked": [line[3:] for line in status if line.startswith("??")]}


def machine_info() -> dict:
    info = {"platform": platform.platform(), "machine": platform.machine(),
            "processor": platform.processor(), "cpu_count": os.cpu_count(),
            "python_implementation": platform.python_implementation()}
    try:
        info["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return info


def software_versions() -> dict:
    return {"python": sys.version.split()[0], "numpy": package_version("numpy"),
            "ray": package_version("ray"), "matplotlib": package_version("matplotlib"),
            "mlxtend": package_version("mlxtend")}


def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def dot_panel(ax, labels: list[str], stats: list[tuple], title: str, ylabel: str,
              reference: float | None = None, reference_label: str = "", log: bool = False) -> None:
    """One panel of means with std error bars (and a dashed reference line): points, not bars,
    so that an axis not starting at zero does not mislead."""
    means = [s[0] for s in stats]
    errs = [0.0 if not math.isfinite(s[1]) else s[1] for s in stats]
    xs = range(len(labels))
    ax.errorbar(list(xs), means, yerr=errs, fmt="o", capsize=4, color="#4c72b0")
    ax.set_xlim(-0.5, len(labels) - 0.5)
    ax.set_xticks(list(xs))
    ax.set_xticklabels(labels, rotation=35, ha="right", fontsize=8)
    if reference is not None and math.isfinite(reference):
        ax.axhline(reference, ls="--", color="#c44e52", lw=1, label=reference_label)
        ax.legend(fontsize=8)
    ends = [v for m, e in zip(means, errs) if math.isfinite(m) for v in (m - e, m + e)]
    if reference is not None and math.isfinite(reference):
        ends.append(reference)
    if log:
        ax.set_yscale("log")
    elif ends:
        lo, hi = min(ends), max(ends)
        pad = 0.08 * (hi - lo) or 1.0
        ax.set_ylim(lo - pad, hi + pad)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
