"""Learning curves of the comparison's trials: time to quality (training seconds until the held-out
loss first reaches fixed levels) and the loss-by-position plot of each method.

The levels of a dataset: the reference forecasts' losses (mean frame and blur blend for video;
unigram, bigram and trigram for text; those a trial scored), then halfway from the last of them
to the best method's final loss.
"""
from __future__ import annotations

import math
from pathlib import Path

from . import report as rep
from .methods import METHOD_KEYS

MAIN = {"frames": "test_bce", "tokens": "test_nll"}
REFS = {"frames": ("mean_frame", "blur_blend"), "tokens": ("unigram", "bigram", "trigram")}


def kind_of(done: list) -> str:
    return "tokens" if any(j["kind"] == "reference" and "unigram" in (r.get("references") or {})
                           for j, r in done) else "frames"


def first_phase_runs(done: list, dataset: str) -> dict:
    """{method: [(label, result)]} of ok test runs whose first phase trained on `dataset`."""
    out: dict = {}
    for job, res in done:
        if job.get("stage", "test") != "test" or job["kind"] != "model" or res.get("status") != "ok":
            continue
        if job["phases"][0]["data"] == dataset and res.get("phases"):
            out.setdefault(job["method"], []).append((job["label"], res))
    return out


def reference_loss(done: list, dataset: str, ref: str, metric: str) -> float:
    vals = [r["references"][ref][dataset].get(metric) for j, r in done
            if j["kind"] == "reference" and r.get("status") == "ok" and j["phases"][0]["data"] == dataset
            and dataset in (r.get("references") or {}).get(ref, {})]
    return rep.mean_std(vals)[0]


def final_loss(res: dict, dataset: str, metric: str):
    return res["phases"][0]["evals"].get(dataset, {}).get(metric)


def levels(done: list, dataset: str) -> list[tuple[str, float]]:
    """[(name, loss)] the curves are timed against, highest (easiest) first."""
    kind = kind_of(done)
    metric = MAIN[kind]
    out = [(ref, reference_loss(done, dataset, ref, metric)) for ref in REFS[kind]]
    out = [(n, v) for n, v in out if math.isfinite(v)]
    runs = first_phase_runs(done, dataset)
    finals = [rep.mean_std([final_loss(r, dataset, metric) for _, r in rs])[0] for rs in runs.values()]
    finals = [f for f in finals if math.isfinite(f)]
    if out and finals:
        best, last = min(finals), out[-1][1]
        out.append((f"halfway {out[-1][0]} → best final", last + (best - last) / 2))
    return out


def seconds_to(curve: list, level: float):
    """Training seconds at the first evaluation whose loss is at or below `level` (None if never)."""
    return next((p["train_s"] for p in curve if p.get("loss") is not None and p["loss"] <= level), None)


def time_to_quality(done: list, datasets: list) -> str:
    """One Markdown table per dataset: methods by levels, training seconds to reach each."""
    kind = kind_of(done)
    unit = "NLL nats/token" if kind == "tokens" else "BCE/frame"
    parts = []
    for ds in datasets:
        lv = levels(done, ds)
        runs = first_phase_runs(done, ds)
        if not lv or not runs:
            continue
        header = ["Method"] + [f"{name} ({rep.fmt(v)} {unit})" for name, v in lv]
        body = []
        for key in [k for k in METHOD_KEYS if k in runs]:
            row = [runs[key][0][0]]
            for _, v in lv:
                hits = [seconds_to(r["phases"][0].get("curve") or [], v) for _, r in runs[key]]
                got = [h for h in hits if h is not None]
                row.append("not reached" if not got else f"{rep.fmt(rep.mean_std(got)[0])} s ({len(got)}/{len(hits)})")
            body.append(row)
        parts += [f"### {ds}", "", rep.markdown_table(header, body), ""]
    return "\n".join(parts) or "No finished runs with learning curves."


def position_series(metrics: dict, kind: str):
    """(positions, values) of a result's loss by position (frames: BCE per t; text: BPC per bucket)."""
    if kind == "frames":
        vals = metrics.get("test_bce_by_t") or []
        return list(range(1, len(vals) + 1)), vals
    d = metrics.get("test_bpc_by_t") or {}
    return list(d), list(d.values())


def plot_by_position(done: list, datasets: list, path: Path) -> None:
    """The loss by position of every method (mean over seeds) after training, per dataset."""
    kind = kind_of(done)
    shown = [ds for ds in datasets if first_phase_runs(done, ds)]
    if not shown:
        return
    plt = rep.pyplot()
    fig, axes = plt.subplots(1, len(shown), figsize=(6.5 * len(shown), 4.2), squeeze=False)
    for ax, ds in zip(axes[0], shown):
        for key, rs in sorted(first_phase_runs(done, ds).items(), key=lambda kv: METHOD_KEYS.index(kv[0])
                              if kv[0] in METHOD_KEYS else 99):
            series = [position_series(r["phases"][0]["evals"].get(ds, {}), kind) for _, r in rs]
            xs = series[0][0] if series else []
            if not xs:
                continue
            ys = [rep.mean_std([s[1][i] for s in series if i < len(s[1])])[0] for i in range(len(xs))]
            ax.plot([str(x) for x in xs] if kind == "tokens" else xs, ys, marker=".", label=rs[0][0])
        for job, res in done:
            refs = res.get("references") or {}
            name = next((n for n in ("trigram", "bigram", "blur_blend") if ds in refs.get(n, {})), None)
            if job["kind"] == "reference" and name and job["seed"] == min(j["seed"] for j, _ in done):
                xs, ys = position_series(refs[name][ds], kind)
                ax.plot([str(x) for x in xs] if kind == "tokens" else xs, ys, "k--", lw=1,
                        label=f"{name.replace('_', ' ')} (reference)")
        ax.set_xlabel("position in sequence" + (" (bucket)" if kind == "tokens" else ""))
        ax.set_ylabel("test BPC" if kind == "tokens" else "test BCE per frame")
        ax.set_title(f"{ds}: loss by position", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
