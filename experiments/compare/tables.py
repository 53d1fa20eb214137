"""The comparison's per-experiment tables: the Markdown tables, rankings and plots each
experiment's results.md shows."""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from . import report as rep
from .claims import claims_lines, other_scales, read_rows, spread_note
from .methods import METHOD_KEYS
from .seen import first, ordered_methods, text_seen, video_steps

if TYPE_CHECKING:
    from .scales import Scale


VIDEO_NAMES = {"mnist": "Bouncing MNIST", "notmnist": "Bouncing NotMNIST"}


def status_note(rows: list) -> str:
    bad = sorted({r["status"] for r in rows if r.get("status") != "ok"})
    return f" ({'; '.join(bad)})" if bad else ""


def single_phase_table(rows: list, dataset: str, metrics: list, names: dict) -> tuple[str, dict]:
    """Markdown table of one-phase runs on `dataset`, and {method: {column: stat}} for the text."""
    header = ["Method", "Hidden", "Params", "Chosen setting"] + [names[m] for m in metrics] + \
             ["Train s", "Wall s", "Peak RSS MiB", "Seq. memory MiB"]
    body, stats = [], {}
    for key, label in ordered_methods(select_phase(rows, dataset)):
        rs = [r for r in select_phase(rows, dataset) if r["method"] == key]
        agg = rep.aggregate(rs, metrics + ["train_s", "wall_s", "peak_rss_mib", "seq_memory_mib"])
        stats[key] = {"label": label, **agg}
        params = first(rs, "params")
        body.append([label + status_note(rs), first(rs, "hidden") or "–",
                     f"{int(params):,}" if params not in (None, "") else "–",
                     first(rs, "settings") if key in METHOD_KEYS else "–"]
                    + [rep.fmt_ms(agg[m]) for m in metrics]
                    + [rep.fmt_ms(agg[k]) for k in ("train_s", "wall_s", "peak_rss_mib", "seq_memory_mib")])
    return rep.markdown_table(header, body), stats


VIDEO_REFERENCES = ("mean_frame", "copy_last", "blur_blend")


def select_phase(rows: list, dataset: str) -> list:
    return [r for r in rows if r.get("phase") == 1 and r.get("eval_on") == dataset
            and r.get("trained_on") == dataset and r.get("correction") in ("", "on", None)]


def ranking_text(stats: dict, column: str, what: str, reference: str | None = None) -> list[str]:
    """Plain statements from a table: the best method, where P-TNCN stands, who beats it."""
    learners = {k: v for k, v in stats.items() if k in METHOD_KEYS and math.isfinite(v[column][0])}
    if not learners:
        return [f"- {what}: no finished runs."]
    order = sorted(learners, key=lambda k: learners[k][column][0])
    best = order[0]
    lines = [f"- {what}: lowest is {learners[best]['label']} ({rep.fmt_ms(learners[best][column])})."]
    for key in ("ptncn", "ptncn_sign"):
        if key not in learners:
            continue
        m, s, _ = learners[key][column]
        better = [k for k in order if learners[k][column][0] < m and k not in ("ptncn", "ptncn_sign")]
        clear = [k for k in better if separated(learners[k][column], learners[key][column])]
        txt = (f"{learners[key]['label']} ranks {order.index(key) + 1} of {len(order)} "
               f"({rep.fmt_ms(learners[key][column])})")
        if better:
            txt += "; P-TNCN loses to " + ", ".join(learners[k]["label"] for k in better)
            if learners[key][column][2] < 2:
                txt += " (one seed: no spread to judge by)"
            elif clear:
                txt += f" (by more than the seeds' spread: {', '.join(learners[k]['label'] for k in clear)})"
            else:
                txt += " (all within the seeds' spread)"
        else:
            rest = [k for k in order if k not in ("ptncn", "ptncn_sign")]
            if rest:
                nxt = learners[rest[0]]
                spread = ("by more than the seeds' spread" if separated(nxt[column], learners[key][column])
                          else "within the seeds' spread")
                txt += f"; the best baseline, {nxt['label']} ({rep.fmt_ms(nxt[column])}), trails {spread}"
        lines.append(f"- {txt}.")
    if reference and reference in stats and math.isfinite(stats[reference][column][0]):
        ref = stats[reference][column][0]
        worse = [learners[k]["label"] for k in order if learners[k][column][0] >= ref]
        lines.append(f"- {stats[reference]['label']}: {rep.fmt(ref)}; "
                     + (f"not beaten by: {', '.join(worse)}." if worse else "every learner beats it."))
    return lines


def separated(a: tuple, b: tuple) -> bool:
    """Whether two (mean, std, n) differ by more than the sum of their stds (a rough screen)."""
    sa = a[1] if math.isfinite(a[1]) else 0.0
    sb = b[1] if math.isfinite(b[1]) else 0.0
    return abs(a[0] - b[0]) > sa + sb and (a[2] > 1 and b[2] > 1)


def cost_text(stats: dict) -> str:
    learners = {k: v for k, v in stats.items() if k in METHOD_KEYS and math.isfinite(v["train_s"][0])}
    if not learners:
        return ""
    fast = min(learners, key=lambda k: learners[k]["train_s"][0])
    slow = max(learners, key=lambda k: learners[k]["train_s"][0])
    return (f"- Training time: fastest {learners[fast]['label']} ({rep.fmt(learners[fast]['train_s'][0])} s), "
            f"slowest {learners[slow]['label']} ({rep.fmt(learners[slow]['train_s'][0])} s).")


def _elsewhere(out: Path, dataset: str, metrics: list, names: dict) -> list:
    """(scale, stats) of `dataset` in the other scales' results beside `out`."""
    found = []
    for scale, rows in other_scales(out):
        if select_phase(rows, dataset):
            found.append((scale, single_phase_table(rows, dataset, metrics, names)[1]))
    return found


def _bouncing_mnist(out: Path) -> dict | None:
    """Bouncing MNIST's stats at the same scale as `out` (a sibling experiment), if committed."""
    path = Path(out).parent.parent / "bouncing" / Path(out).name / "results.csv"
    if not path.is_file():
        return None
    rows = read_rows(path)
    names = {"test_bce": "BCE", "test_se": "SE"}
    return single_phase_table(rows, "mnist", ["test_bce", "test_se"], names)[1] if select_phase(rows, "mnist") else None


def report_bouncing(rows: list, scale: Scale, out: Path) -> str:
    parts, panels = [], []
    names = {"test_bce": "Test BCE / frame", "test_se": "Test SE / frame"}
    mnist = single_phase_table(rows, "mnist", ["test_bce", "test_se"], names)[1] if select_phase(rows, "mnist") else None
    for ds in ("mnist", "notmnist"):
        if not select_phase(rows, ds):
            continue
        table, stats = single_phase_table(rows, ds, ["test_bce", "test_se"], names)
        parts += [f"### {VIDEO_NAMES[ds]}", "", table, ""]
        parts += [line for line in [spread_note(stats, "test_bce", mnist)] if line]
        if scale.video_minutes:
            parts += [line for line in [video_steps([r for r in select_phase(rows, ds)
                                                     if r["method"] in METHOD_KEYS], scale)] if line]
        ref = rep.strongest_reference(stats, VIDEO_REFERENCES, "test_bce")
        parts += ranking_text(stats, "test_bce", f"{VIDEO_NAMES[ds]} BCE", ref)
        parts += ranking_text(stats, "test_se", f"{VIDEO_NAMES[ds]} SE")[:2]
        parts += [cost_text(stats), ""]
        parts += claims_lines(stats, "test_bce", f"{VIDEO_NAMES[ds]} (BCE per frame)", ref, METHOD_KEYS, separated,
                              _elsewhere(out, ds, ["test_bce", "test_se"], names))
        panels.append((VIDEO_NAMES[ds], stats, "test_bce", "test BCE per frame", ref, False))
    plot_panels(out / "bouncing_bce.png", panels)
    return "\n".join(parts)


def report_ptb(rows: list, scale: Scale, out: Path) -> str:
    parts, panels = [], []
    specs = (("char", "Penn Treebank, characters", ["test_bpc", "test_nll"], "test_bpc"),
             ("word", "Penn Treebank, words", ["test_ppl", "test_nll"], "test_ppl"))
    names = {"test_bpc": "Test BPC", "test_nll": "Test NLL (nats)", "test_ppl": "Test perplexity"}
    for ds, title, metrics, main in specs:
        if not select_phase(rows, ds):
            continue
        table, stats = single_phase_table(rows, ds, metrics, names)
        parts += [f"### {title}", "", table, ""]
        parts += [line for line in [spread_note(stats, main, _bouncing_mnist(out))] if line]
        parts += [text_seen(select_phase(rows, ds), "characters" if ds == "char" else "words")]
        ref = rep.strongest_reference(stats, ("unigram", "bigram", "trigram"), main)
        parts += ranking_text(stats, main, f"{title}, {names[main]}", ref)
        parts += [cost_text(stats), ""]
        parts += claims_lines(stats, main, f"{title} ({names[main]})", ref, METHOD_KEYS, separated,
                              _elsewhere(out, ds, metrics, names))
        panels.append((title, stats, main, ref))
    plot_panels(out / "ptb.png", [(title, stats, main, names[main], ref, main == "test_ppl")
                                  for title, stats, main, ref in panels])
    return "\n".join(parts)


def plot_panels(path: Path, panels: list) -> None:
    """One dot panel per (title, stats, column, ylabel, reference key, log scale): the learners as
    points with seed std bars, the reference forecast as a dashed line."""
    plt = rep.pyplot()
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(6 * max(1, len(panels)), 4.2))
    for ax, (title, stats, column, ylabel, reference, log) in zip(list(getattr(axes, "flat", [axes])), panels):
        keys = [k for k in stats if k in METHOD_KEYS]
        ref = stats.get(reference, {}).get(column, (math.nan,))[0]
        rep.dot_panel(ax, [stats[k]["label"] for k in keys], [stats[k][column] for k in keys], title,
                      ylabel, ref, stats.get(reference, {}).get("label", ""), log=log)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def per_seed(rows: list, method: str, cells: dict, metric: str) -> list[dict]:
    """Per-seed records {column: value of `metric`} of `method`, each column picked by a row filter."""
    out = []
    for seed in sorted({r["seed"] for r in rows if r["method"] == method}):
        rec = {}
        for col, match in cells.items():
            hit = rep.select(rows, method=method, seed=seed, **match)
            rec[col] = hit[0].get(metric) if hit else None
        out.append(rec)
    return out


def correction_variants(key: str) -> list[str]:
    """P-TNCN is scored with its state correction on and off; other methods have no such switch."""
    return ["on", "off"] if key in ("ptncn", "ptncn_sign") else [""]


def report_zeroshot(rows: list, scale: Scale, out: Path) -> str:
    parts = []
    for metric, mname in (("test_bce", "BCE"), ("test_se", "SE")):
        header = ["Method", "Params", f"MNIST→MNIST {mname}", f"MNIST→NotMNIST {mname} (zero-shot)",
                  f"NotMNIST→NotMNIST {mname} (trained on it)", "Zero-shot gap"]
        body, stats = [], {}
        for key, label in ordered_methods([r for r in rows if r.get("phase") == 1]):
            rs = [r for r in rows if r["method"] == key]
            params = first(rs, "params")
            for c in correction_variants(key):
                base = {"phase": 1, "correction": c}
                recs = per_seed(rows, key, {
                    "mm": {**base, "trained_on": "mnist", "eval_on": "mnist"},
                    "mn": {**base, "trained_on": "mnist", "eval_on": "notmnist"},
                    "nn": {**base, "trained_on": "notmnist", "eval_on": "notmnist"}}, metric)
                recs = [dict(r, gap=diff(r["mn"], r["nn"])) for r in recs]
                agg = rep.aggregate(recs, ["mm", "mn", "nn", "gap"])
                name = label + (", correction off" if c == "off" else "")
                stats[(key, c)] = {"label": name, **agg}
                body.append([name + status_note(rs), f"{int(params):,}" if params not in (None, "") else "–"]
                            + [rep.fmt_ms(agg[k]) for k in ("mm", "mn", "nn", "gap")])
        parts += [f"### Test {mname} per frame", "", rep.markdown_table(header, body), ""]
        parts += zeroshot_text(stats, mname) + [""]
        if metric == "test_bce":
            plot_zeroshot(out / "zeroshot.png", stats)
    return "\n".join(parts)


def zeroshot_text(stats: dict, mname: str) -> list[str]:
    """Plain statements from the zero-shot table of one metric."""
    learners = {k: v for k, v in stats.items() if k[0] in METHOD_KEYS and math.isfinite(v["mn"][0])}
    if not learners:
        return ["- No finished runs."]
    order = sorted(learners, key=lambda k: learners[k]["mn"][0])
    lines = [f"- Best zero-shot NotMNIST {mname}: {learners[order[0]]['label']} "
             f"({rep.fmt_ms(learners[order[0]]['mn'])}); order: {'; '.join(learners[k]['label'] for k in order)}."]
    for key in (("ptncn", "on"), ("ptncn_sign", "on")):
        off = (key[0], "off")
        if key in learners and off in learners:
            d = learners[key]["mn"][0] - learners[off]["mn"][0]
            pct = 100 * d / learners[off]["mn"][0]
            lines.append(f"- {learners[key]['label']}: the state correction changes zero-shot {mname} by "
                         f"{rep.fmt(d)} ({pct:+.1f}%; {'helps' if d < 0 else 'does not help'}; same weights, "
                         f"beta = 0 for 'off').")
    gaps = sorted(learners, key=lambda k: learners[k]["gap"][0])
    lines.append(f"- Smallest gap to training on NotMNIST directly: {learners[gaps[0]]['label']} "
                 f"({rep.fmt_ms(learners[gaps[0]]['gap'])}).")
    for ref in ("mean_frame", "copy_last", "blur_blend"):
        st = stats.get((ref, ""))
        if st and math.isfinite(st["mn"][0]):
            beat = [learners[k]["label"] for k in order if learners[k]["mn"][0] < st["mn"][0]]
            lines.append(f"- {st['label']} scores {rep.fmt(st['mn'][0])} on NotMNIST; "
                         + (f"frozen models below it: {'; '.join(beat)}." if beat else
                            "no frozen model does better."))
    return lines


def plot_zeroshot(path: Path, stats: dict) -> None:
    plt = rep.pyplot()
    keys = [k for k in stats if k[0] in METHOD_KEYS]
    fig, ax = plt.subplots(figsize=(9, 4.2))
    for j, (col, name) in enumerate((("mm", "MNIST→MNIST"), ("mn", "MNIST→NotMNIST (zero-shot)"),
                                     ("nn", "NotMNIST→NotMNIST"))):
        xs = [i + (j - 1) * 0.25 for i in range(len(keys))]
        means = [stats[k][col][0] for k in keys]
        errs = [s if math.isfinite(s) else 0.0 for s in (stats[k][col][1] for k in keys)]
        ax.errorbar(xs, means, yerr=errs, fmt="o", capsize=3, label=name)
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels([stats[k]["label"] for k in keys], rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("test BCE per frame")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


CONTINUAL_COLS = [(f"p{k}_{ds}", k, ds) for k in (1, 2, 3) for ds in ("mnist", "notmnist")]


def report_continual(rows: list, scale: Scale, out: Path) -> str:
    parts = []
    after = {1: "after MNIST", 2: "after NotMNIST", 3: "after MNIST again"}
    for metric, mname in (("test_bce", "BCE"), ("test_se", "SE")):
        header = ["Method", "Params"] + [f"{after[k]}: {'MNIST' if ds == 'mnist' else 'NotMNIST'}"
                                         for _, k, ds in CONTINUAL_COLS] + ["MNIST forgetting", "NotMNIST forgetting"]
        body, stats = [], {}
        for key, label in ordered_methods([r for r in rows if r.get("phase", 0) >= 1]):
            recs = per_seed(rows, key, {col: {"phase": k, "eval_on": ds} for col, k, ds in CONTINUAL_COLS}, metric)
            recs = [dict(r, f_m=diff(r["p2_mnist"], r["p1_mnist"]), f_n=diff(r["p3_notmnist"], r["p2_notmnist"]))
                    for r in recs]
            cols = [c for c, _, _ in CONTINUAL_COLS] + ["f_m", "f_n"]
            agg = rep.aggregate(recs, cols)
            stats[key] = {"label": label, **agg}
            rs = [r for r in rows if r["method"] == key]
            params = first(rs, "params")
            body.append([label + status_note(rs), f"{int(params):,}" if params not in (None, "") else "–"]
                        + [rep.fmt_ms(agg[c]) for c in cols])
        parts += [f"### Test {mname} per frame", "", rep.markdown_table(header, body), ""]
        if metric == "test_bce":
            if scale.video_minutes:
                learned = [r for r in rows if r.get("phase", 0) >= 1 and r["method"] in METHOD_KEYS
                           and r.get("eval_on") == r.get("trained_on") and r.get("correction") in ("", "on", None)]
                parts += [line for line in [video_steps(learned, scale, "phase")] if line]
            parts += continual_text(stats) + [""]
            plot_continual(out / "continual.png", stats)
    return "\n".join(parts)


def diff(a, b):
    return None if a is None or b is None else a - b


def continual_text(stats: dict) -> list[str]:
    """Plain statements from the continual table (BCE)."""
    learners = {k: v for k, v in stats.items() if k in METHOD_KEYS and math.isfinite(v["f_m"][0])}
    if not learners:
        return ["- No finished runs."]
    lines = []
    for col, what in (("f_m", "MNIST forgetting (after NotMNIST minus after the first MNIST phase)"),
                      ("f_n", "NotMNIST forgetting (after MNIST again minus after NotMNIST)")):
        order = sorted(learners, key=lambda k: learners[k][col][0])
        lines.append(f"- {what}: least {learners[order[0]]['label']} ({rep.fmt_ms(learners[order[0]][col])}), "
                     f"most {learners[order[-1]]['label']} ({rep.fmt_ms(learners[order[-1]][col])}); order: "
                     f"{'; '.join(learners[k]['label'] for k in order)}.")
    back = [learners[k]["label"] for k in learners if learners[k]["p3_mnist"][0] < learners[k]["p1_mnist"][0]]
    lines.append("- Ends the third phase (MNIST again) with a lower MNIST BCE than after the first: "
                 f"{'; '.join(back) if back else 'none'}.")
    final = sorted(learners, key=lambda k: learners[k]["p3_mnist"][0] + learners[k]["p3_notmnist"][0])
    rank = f"; P-TNCN (tanh) is {final.index('ptncn') + 1} of {len(final)}" if "ptncn" in final else ""
    lines.append(f"- Lowest summed BCE on both test sets after the last phase: {learners[final[0]]['label']}{rank}.")
    return lines


def plot_continual(path: Path, stats: dict) -> None:
    plt = rep.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True)
    for ax, ds, title in ((axes[0], "mnist", "MNIST test"), (axes[1], "notmnist", "NotMNIST test")):
        for key, st in stats.items():
            if key not in METHOD_KEYS:
                continue
            ax.plot([1, 2, 3], [st[f"p{k}_{ds}"][0] for k in (1, 2, 3)], "o-", label=st["label"])
        ax.set_xticks([1, 2, 3])
        ax.set_xticklabels(["after MNIST", "after NotMNIST", "after MNIST"])
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("test BCE per frame")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


REPORTERS = {"bouncing": report_bouncing, "ptb": report_ptb, "zeroshot": report_zeroshot,
             "continual": report_continual}
