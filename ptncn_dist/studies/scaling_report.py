"""The scaling study's plots (sweep, sequence length, projection) and its results.md."""
from __future__ import annotations

import json
import os
import platform
import time

import numpy as np

from .cost_model import PROJECTION


def plots(out: str, sweep_rows, seq_rows, proj_rows) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    written = []
    if sweep_rows:
        fig, axes = plt.subplots(1, 3, figsize=(15, 4))
        for engine in sorted({r["engine"] for r in sweep_rows}):
            for placement in sorted({r["placement"] for r in sweep_rows if r["engine"] == engine}):
                rs = [r for r in sweep_rows if r["engine"] == engine and r["placement"] == placement]
                label = engine + ("" if placement in ("-", "pack") else f" ({placement})")
                xs = [f"{r['hidden']}\nB{r['batch']}" for r in rs]
                axes[0].plot(xs, [r["steps_per_s"] for r in rs], "o-", label=label)
                axes[1].plot(xs, [r["speedup_vs_1thread"] for r in rs], "o-", label=label)
                axes[2].plot(xs, [r["share_of_gemm_roof"] for r in rs], "o-", label=label)
        for ax, t in zip(axes, ("steps/s", "speed-up vs 1 thread", "share of GEMM roof")):
            ax.set_title(t)
            ax.set_yscale("log" if t == "steps/s" else "linear")
            ax.tick_params(axis="x", labelsize=6)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        written.append(os.path.join(out, "sweep.png"))
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    if seq_rows:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for method in sorted({r["method"] for r in seq_rows}):
            rs = [r for r in seq_rows if r["method"] == method]
            axes[0].plot([r["T"] for r in rs], [r["tokens_per_s"] for r in rs], "o-", label=method)
            axes[1].plot([r["T"] for r in rs], [r["peak_extra_mb"] for r in rs], "o-", label=method)
        for ax, t in zip(axes, ("tokens/s", "peak memory above start (MB)")):
            ax.set_xscale("log")
            ax.set_xlabel("sequence length")
            ax.set_title(t)
            ax.grid(alpha=0.3)
        axes[0].legend()
        fig.tight_layout()
        written.append(os.path.join(out, "seqlen.png"))
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    if proj_rows:
        fig, ax = plt.subplots(figsize=(6, 4))
        for net in sorted({r["network"] for r in proj_rows}):
            rs = [r for r in proj_rows if r["network"] == net]
            ax.plot([r["layers"] for r in rs], [r["layer_parallel_steps_per_s"] for r in rs], "o-", label=f"one GPU per layer, {net}")
        rs = [r for r in proj_rows if r["network"] == proj_rows[0]["network"]]
        ax.plot([r["layers"] for r in rs], [r["one_gpu_steps_per_s"] for r in rs], "k--", label="all layers on one GPU")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("layers")
        ax.set_ylabel("steps/s (projected)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        written.append(os.path.join(out, "projection.png"))
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    return written


def table(rows, keys) -> str:
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def cost_model_text(model: dict, checks: list) -> str:
    """The cost model's terms, its error per row (in the fit and with the row's model size held
    out of the fit) and the mean absolute errors."""
    from .cost_model import TERM_TEXT
    terms = "\n".join(f"- `{k}`: " + (f"{v:.3f} " if k == "compute" else f"{1e3 * v:.3f} ms ") + TERM_TEXT[k]
                      for k, v in model["terms"].items())
    fit = np.mean([abs(c["error_pct"]) for c in checks]) if checks else float("nan")
    held = [abs(c["held_out_error_pct"]) for c in checks if c.get("held_out_error_pct") is not None]
    worst = max((abs(c["error_pct"]) for c in checks), default=float("nan"))
    return ("## Cost model\n\n"
            "A step of the ray engine with TCP links is modelled as a sum of terms, each fitted (>= 0) to "
            "the ray rows above by least squares in relative error (`ptncn_dist/studies/cost_model.py`):\n\n"
            f"{terms}\n\n"
            f"Mean absolute error over the {len(checks)} measured ray configurations: {fit:.1f}% (worst {worst:.1f}%); "
            f"with each model size left out of the fit and predicted: {np.mean(held) if held else float('nan'):.1f}%.\n\n"
            + table(checks, list(checks[0])) + "\n")


def report(out, argv, sweep_rows, seq_rows, model, checks, proj_rows, mode_rows=()) -> str:
    import ray
    meta = {"command": "ptncn bench scaling " + " ".join(argv), "python": platform.python_version(),
            "numpy": np.__version__, "ray": ray.__version__, "machine": platform.platform(),
            "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M")}
    with open(os.path.join(out, "meta.json"), "w") as fh:
        json.dump({**meta, "cost_model": model}, fh, indent=2)
    parts = [f"# Layer-parallel scaling study\n\nCommand: `{meta['command']}` on {meta['cpus']} CPU cores "
             f"({meta['machine']}), Python {meta['python']}, NumPy {meta['numpy']}, Ray {meta['ray']}, {meta['date']}.\n"]
    if sweep_rows:
        parts.append("## Sweep (steps/s side by side in one run)\n\n" + table(sweep_rows, [
            "hidden", "batch", "engine", "placement", "workers", "steps_per_s", "speedup_vs_1thread", "efficiency",
            "achieved_gflops", "share_of_gemm_roof", "max_layer_compute_ms", "max_layer_comm_ms",
            "max_layer_wait_ms", "bytes_per_step"]) + "\n\n![sweep](sweep.png)\n")
    if model:
        parts.append(cost_model_text(model, checks))
    if proj_rows:
        parts.append("## Projection to GPU nodes\n\nAssumptions, each a number a user can change in "
                     "`ptncn_dist/studies/cost_model.py:PROJECTION`:\n"
                     f"- width {PROJECTION['width']}, batch {PROJECTION['batch']}, every layer on its own GPU;\n"
                     f"- a GPU sustains {PROJECTION['gpu_tflops']:.0f} TFLOP/s on these fp32 products;\n"
                     "- a step pays the per-layer and per-link software overheads fitted above (the exact "
                     "schedule's included; no crowding, every layer has its own node), plus 2 rounds of network "
                     "latency (50 us at 10 Gbit/s, 10 us at 100 Gbit/s);\n"
                     "- a layer's 5 messages of B x d float32 go at the full line rate;\n"
                     "- the one-GPU line runs all L layers' products back to back at the same rate.\n\n"
                     + table(proj_rows, list(proj_rows[0])) + "\n\n![projection](projection.png)\n")
    if mode_rows:
        parts.append("## Pipelined against exact: the loss\n\nThe same 3 x 256 tanh model on Bouncing MNIST "
                     "(32 x 32 frames, batch 16, offline digits), trained with each schedule:\n\n"
                     + table(mode_rows, list(mode_rows[0])) + "\n")
    if seq_rows:
        parts.append("## P-TNCN against BPTT as the sequence grows\n\nBatch 16, 256 hidden units, 50-symbol "
                     "one-hot input. Peak memory is measured above what the process held before its first "
                     "sequence, in a fresh process per point.\n\n"
                     + table(seq_rows, ["method", "T", "tokens_per_s", "peak_extra_mb"]) + "\n\n![seqlen](seqlen.png)\n")
    text = "\n".join(parts)
    with open(os.path.join(out, "results.md"), "w") as fh:
        fh.write(text)
    return text


