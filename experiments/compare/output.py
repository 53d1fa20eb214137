"""The comparison's outputs from the trial cache: results.csv, results.md (tables, time to quality,
tuning, failed trials), the plots and meta.json. Pure functions of [(job, result)]; rebuilding
the report reruns nothing."""
from __future__ import annotations

import json
import math
from pathlib import Path

from . import report as rep
from .curves import plot_by_position, time_to_quality
from .runner import diverged as is_diverged
from .runner import finished
from .scales import Scale
from .tables import REPORTERS
from .text import failed_text, page, setup_text
from .tuning import tuning_rows


def tuning_text(done: list, source: tuple | None = None) -> str:
    """The chosen setting per (method, dataset), then every tuning trial's validation loss; with
    `source` ((directory, its tuning trials) of --settings-from), the choices made there."""
    rows = tuning_rows(source[1] if source else done)
    if not rows:
        return "No tuning trials (every method ran at its default setting)."
    chosen = [r for r in rows if r["chosen"]]
    seen, body = set(), []
    for r in chosen:
        if (r["method"], r["dataset"]) not in seen:
            seen.add((r["method"], r["dataset"]))
            body.append([r["label"], r["dataset"], settings_text(r["settings"]), rep.fmt(r["valid_loss"])])
    top = rep.markdown_table(["Method", "Tuned on", "Chosen setting", "Validation loss"], body)
    every = rep.markdown_table(["Trial", "Setting", "Validation loss", "Status"],
                               [[r["id"], settings_text(r["settings"]),
                                 rep.fmt(r["valid_loss"]) if math.isfinite(r["valid_loss"]) else "–", r["status"]]
                                for r in rows])
    if source:
        top = f"No tuning trials here: the settings were chosen by the tuning trials in `{source[0]}`.\n\n{top}"
    return "\n".join([top, "", "<details><summary>Every tuning trial</summary>", "", every, "", "</details>"])


def settings_text(settings) -> str:
    return ", ".join(s.replace('"', "") for s in settings) or "default"


def datasets_of(done: list) -> list:
    out = []
    for job, _ in done:
        d = job["phases"][0]["data"]
        if d not in out:
            out.append(d)
    return out


def compute_cost(done: list) -> dict:
    """What the trials cost, summed over every trial of `done` that ran: training hours
    (each trial's training clock, resumed attempts included), wall hours as recorded (the last
    attempt of a resumed trial only), how many were resumed, and busy hours: the wall time during
    which at least one trial ran (the union of their last attempts), which leaves out the gaps
    between the commands of a run continued over several sessions."""
    have = [res for _, res in done if res.get("status") not in (None, "not run")]
    train = sum(float(res.get("train_s_total") or sum(ph.get("train_s", 0) for ph in res.get("phases", [])))
                for res in have)
    spans = sorted((res["start"], res["end"]) for res in have
                   if res.get("start") is not None and res.get("end") is not None)
    busy, reach = 0.0, None
    for start, end in spans:
        if reach is None or start > reach:
            busy, reach = busy + end - start, end
        elif end > reach:
            busy, reach = busy + end - reach, end
    return {"trials": len(have), "train_hours": round(train / 3600, 2),
            "wall_hours_recorded": round(sum(float(res.get("wall_s") or 0) for res in have) / 3600, 2),
            "resumed_trials": sum(1 for res in have if res.get("resumed")), "busy_hours": round(busy / 3600, 2)}


def cost_line(cost: dict, reused: int = 0) -> str:
    """The cost in words; `reused`: trials another experiment ran (not counted) that this one reads."""
    if reused and not cost["trials"]:
        return f"- Cost: no trial of its own; it reads {reused} trials of the Bouncing experiment, whose cost is stated there."
    also = f" (and {reused} trials of the Bouncing experiment, reused, not counted here)" if reused else ""
    resumed = cost["resumed_trials"]
    earlier = (f", {resumed} trial{'s' if resumed > 1 else ''} resumed after an interruption, whose earlier "
               f"attempts are not in that figure" if resumed else "")
    return (f"- Cost: {cost['trials']} trials{also}, {cost['train_hours']:,.2f} hours of training in all "
            f"({cost['wall_hours_recorded']:,.2f} trial-hours of wall time recorded{earlier}); some trial ran "
            f"during {cost['busy_hours']:,.2f} hours of wall time.")


def write_results(experiment: str, scale: Scale, seeds: list, done: list, out: Path, meta: dict,
                  rerun: str = "", source: tuple | None = None, reused: frozenset = frozenset()) -> list:
    """results.csv, results.md, the plots and meta.json for one experiment; its CSV rows.
    `source`: (directory, its tuning trials) when the settings came from another run; `reused`:
    ids of trials another experiment ran and this one reads (left out of the cost)."""
    out.mkdir(parents=True, exist_ok=True)
    tests = [(j, r) for j, r in done if j.get("stage", "test") == "test"]
    rows = [r for job, res in tests for r in rep.result_rows(experiment, job, res)]
    rep.write_csv(out / "results.csv", rows)
    body = REPORTERS[experiment](rows, scale, out)
    datasets = datasets_of(tests)
    plot_by_position(tests, datasets, out / "loss_by_position.png")
    failed = [(job["id"], res.get("status")) for job, res in done if not finished(res)]
    diverged = [(job["id"], res.get("status")) for job, res in done if is_diverged(res)]
    cost = {**compute_cost([(job, res) for job, res in done if job["id"] not in reused]),
            "reused_trials": len(reused)}
    md = page(experiment, command=meta["command"].replace(" --report-only", ""), results=body, curve_points=scale.curve_points,
              setup=setup_text(experiment, scale, seeds, meta["blas_threads_per_job"], meta["trials_at_a_time"],
                               meta["machine"].get("cpu_count"), source[0] if source else "")
              + "\n" + cost_line(cost, len(reused)),
              time_to_quality=time_to_quality(tests, datasets), tuning=tuning_text(done, source),
              failed=failed_text(failed, rerun, diverged))
    (out / "results.md").write_text(md, encoding="utf-8")
    meta["data"] = sorted({f"{k}: {v}" for _, res in done for k, v in (res.get("data") or {}).items()})
    meta["trials"] = [{"id": job["id"], "key": job["key"], "stage": job.get("stage"), "status": res.get("status"),
                       "wall_s": round(res.get("wall_s") or 0, 3), "peak_rss_mib": round(res.get("peak_rss_mib") or 0, 1),
                       "start": res.get("start"), "end": res.get("end"), "host": res.get("host"),
                       "node_ip": res.get("node_ip"),
                       "settings": job.get("settings", []), "overrides": job["overrides"]}
                      for job, res in done]
    meta["failed"] = [jid for jid, _ in failed]
    meta["diverged"] = [jid for jid, _ in diverged]
    spans = [(res["start"], res["end"]) for _, res in done if res.get("start") and res.get("end")]
    meta["trials_span_s"] = round(max(e for _, e in spans) - min(s for s, _ in spans), 1) if spans else None
    meta["cost"] = cost
    (out / "meta.json").write_text(json.dumps(meta, indent=1, default=str), encoding="utf-8")
    return rows
