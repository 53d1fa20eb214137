"""`ptncn bench scaling`: the layer-parallel scaling study.

1. sweep: layers x width x engine (single process on 1 thread and on all, ray exact, ray
   pipelined, compiled graph; pack on one node, spread on a local multi-node cluster): steps/s,
   speed-up and parallel efficiency against the single-process engine, per-layer compute /
   message / wait time, bytes per step, and achieved GFLOP/s against the GEMM rate NumPy reaches
   on the same shapes, measured in the same run.
2. seqlen: P-TNCN against BPTT as a user would run it (NumPy BPTT here; PyTorch RNN and LSTM
   when torch is installed): tokens/s and peak memory as the sequence grows from 10 to 1,000.
3. model: a cost model calibrated on the sweep, validated against every measured configuration,
   and projected to 8, 16, 64 layers on GPU nodes with 10 and 100 Gbit/s networks.

Writes CSV files, PNG plots and results.md into --out (default experiments/results/scaling).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time

import numpy as np

from ..engines.placement import shutdown_ray
from .cost_model import fit_cost_model, flops, gemm_seconds, model_layers, project, validate
from .harness import ENGINES, engine_rate, local_ray, ray_cpus
from .scaling_report import plots, report

DEFAULT_OUT = os.path.join("experiments", "results", "scaling")


# -- the arithmetic of one layer ------------------------------------------------------------------
# -- 1. the sweep ---------------------------------------------------------------------------------
def measure(hidden, B: int, x_dim: int, engine: str, seconds: float, extra=()) -> dict:
    sets, threads = ENGINES[engine]
    probe_steps = 10
    rate, _ = engine_rate(hidden, B, x_dim, probe_steps, [*sets, *extra], threads)
    steps = int(min(400, max(20, rate * seconds)))
    rate, stats = engine_rate(hidden, B, x_dim, steps, [*sets, *extra], threads)
    row = {"steps_per_s": rate, "steps": steps}
    for k in ("compute", "comm", "wait"):
        vals = [v for key, v in stats.items() if key.endswith(f"_{k}_ms_per_step")]
        row[f"max_layer_{k}_ms"] = max(vals) if vals else 0.0
    row["bytes_per_step"] = sum(v for key, v in stats.items() if key.endswith("_sent_bytes_per_step"))
    row["max_layer_bytes"] = max([v for key, v in stats.items() if key.endswith("_sent_bytes_per_step")] or [0])
    return row


def sweep(configs, engines, seconds: float, spread_nodes: int, out: str, log=print) -> list[dict]:
    """Every (configuration, engine) pair. The single-process engines run first, before Ray
    starts: multi-threaded BLAS spin-waits, and the processes a Ray session leaves on a small
    machine would slow it by a third. Then the ray engines, in one Ray session."""
    results: dict = {}
    shapes = {}

    def run(hidden, B, x_dim, engine):
        results[hidden, engine] = measure(hidden, B, x_dim, engine, seconds)
        log(f"{_h(hidden):>18s} B={B:<3d} {engine:17s} {results[hidden, engine]['steps_per_s']:10.2f} steps/s")

    for hidden, B, x_dim in configs:
        layers = model_layers(x_dim, hidden, B)
        shapes[hidden] = ([flops(g) for g in layers], [gemm_seconds(g) for g in layers])
        for engine in [e for e in engines if not e.startswith("ray")]:
            run(hidden, B, x_dim, engine)
    ray_engines = [e for e in engines if e.startswith("ray")]
    with local_ray(ray_cpus([len(h) for h, _, _ in configs] if ray_engines else [])):
        for hidden, B, x_dim in configs:
            for engine in ray_engines:
                if engine == "ray_compiled" and len(hidden) > 2:
                    continue
                run(hidden, B, x_dim, engine)
    rows = []
    for hidden, B, x_dim in configs:
        fl, roof = shapes[hidden]
        base = results[hidden, engines[0]]["steps_per_s"]
        for engine in engines:
            if (hidden, engine) in results:
                rows.append(_row(hidden, B, x_dim, engine, "pack" if engine.startswith("ray") else "-",
                                 results[hidden, engine], fl, roof, base))
                log(_fmt(rows[-1]))
    if spread_nodes > 1:
        rows += sweep_spread(configs, spread_nodes, seconds, rows, log)
    write_csv(os.path.join(out, "sweep.csv"), rows)
    return rows


def sweep_spread(configs, nodes: int, seconds: float, rows, log) -> list[dict]:
    """ray exact (tcp links) with one layer per node of a real local cluster (STRICT_SPREAD), measured by a
    driver process that joins the cluster with its token (a process that already ran another
    Ray session cannot switch to token authentication)."""
    from .local_cluster import LocalCluster
    todo = [c for c in configs if len(c[0]) <= nodes]
    bases = [next(r["steps_per_s"] for r in rows if r["hidden"] == _h(h) and r["batch"] == B
                  and r["engine"] == "local_1thread") for h, B, _ in todo]
    with LocalCluster(nodes=nodes, cpus_per_node=1) as cluster:
        code = ("import json, sys; from ptncn_dist.studies.scaling import spread_child; "
                f"print(json.dumps(spread_child({cluster.address!r}, {cluster.ip(0)!r}, {json.dumps(todo)}, "
                f"{seconds}, {bases})))")
        res = subprocess.run([sys.executable, "-c", code], env={**os.environ, **cluster.env()},
                             capture_output=True, text=True, timeout=3600)
    if res.returncode != 0:
        log("spread sweep failed: " + res.stderr.strip()[-500:])
        return []
    out = json.loads(res.stdout.strip().splitlines()[-1])
    for row in out:
        log(_fmt(row))
    return out


def spread_child(address: str, node_ip: str, configs, seconds: float, bases) -> list[dict]:
    from ..engines.ray_session import join
    join(address, node_ip, "the cluster's head IP")
    out = []
    try:
        for (hidden, B, x_dim), base in zip(configs, bases):
            layers = model_layers(x_dim, hidden, B)
            r = measure(hidden, B, x_dim, "ray_exact_tcp", seconds,
                        extra=['engine.placement="spread"', "engine.cpus_per_layer=0.5"])
            out.append(_row(hidden, B, x_dim, "ray_exact_tcp", "spread", r, [flops(g) for g in layers],
                            [gemm_seconds(g) for g in layers], base))
    finally:
        shutdown_ray()
    return out


def _h(hidden) -> str:
    return "x".join(map(str, hidden))


def _row(hidden, B, x_dim, engine, placement, r, fl, roof, base) -> dict:
    L = len(hidden)
    parallel = engine.startswith("ray")
    gflop = sum(fl) / 1e9
    roof_rate = 1.0 / (max(roof) if parallel else sum(roof))
    workers = L if parallel else (1 if engine == "local_1thread" else os.cpu_count())
    return {"hidden": _h(hidden), "layers": L, "batch": B, "x_dim": x_dim, "engine": engine,
            "placement": placement, "workers": workers, "steps_per_s": round(r["steps_per_s"], 3),
            "speedup_vs_1thread": round(r["steps_per_s"] / base, 3),
            "efficiency": round(r["steps_per_s"] / base / workers, 3),
            "gflop_per_step": round(gflop, 4), "achieved_gflops": round(r["steps_per_s"] * gflop, 2),
            "gemm_roof_steps_per_s": round(roof_rate, 3), "share_of_gemm_roof": round(r["steps_per_s"] / roof_rate, 3),
            "max_layer_gflop": round(max(fl) / 1e9, 4),
            "max_layer_compute_ms": round(r["max_layer_compute_ms"], 3),
            "max_layer_comm_ms": round(r["max_layer_comm_ms"], 3), "max_layer_wait_ms": round(r["max_layer_wait_ms"], 3),
            "bytes_per_step": int(r["bytes_per_step"]), "max_layer_bytes": int(r["max_layer_bytes"])}


def _fmt(row) -> str:
    return (f"{row['hidden']:>14s} B={row['batch']:<3d} {row['engine']:17s} {row['placement']:6s} "
            f"{row['steps_per_s']:9.2f} steps/s  x{row['speedup_vs_1thread']:.2f}  roof {row['share_of_gemm_roof']:.2f}")


def read_csv(path: str) -> list[dict]:
    """Rows an earlier run wrote (numbers back as numbers); [] when there is no such file."""
    if not os.path.exists(path):
        return []

    def num(v):
        for cast in (int, float):
            try:
                return cast(v)
            except ValueError:
                pass
        return v

    with open(path, newline="") as fh:
        return [{k: num(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def write_csv(path: str, rows: list[dict]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


# -- 2. P-TNCN against BPTT as the sequence grows -------------------------------------------------
SEQ_METHODS = ("ptncn", "bptt_numpy", "torch_rnn", "torch_lstm")


def seqlen_one(method: str, T: int, B: int = 16, V: int = 50, H: int = 256, reps: int = 2) -> dict:
    """One measurement (run in a fresh process): tokens/s of training on sequences of length T,
    and the process's peak resident memory while training, above what it held just before."""
    import resource
    rng = np.random.default_rng(0)
    x = rng.integers(0, V, (T, B)).astype(np.int32)
    mask = np.ones((T, B), np.float32)
    if method == "ptncn":
        from ..config import load
        from ..engines.factory import build_engine
        eng = build_engine(load(None, [f"model.hidden=[{H}, {H}]", 'model.output="softmax"']), V, "tokens")
        run = lambda: eng.run_segment(x, mask, 0, T, learn=True, t_prime=1)
    elif method == "bptt_numpy":
        from ..baselines import BaselineConfig, build_baseline
        m = build_baseline("bptt", BaselineConfig(hidden=H, truncation=0, output="softmax"), V, "tokens",
                           np, np.float32, 0)
        run = lambda: m.run_sequence(x, mask, True)
    else:
        import torch
        torch.set_num_threads(os.cpu_count() or 1)
        cell = torch.nn.RNN if method == "torch_rnn" else torch.nn.LSTM
        net, head = cell(V, H), torch.nn.Linear(H, V)
        opt = torch.optim.SGD(list(net.parameters()) + list(head.parameters()), lr=0.01)
        xt = torch.nn.functional.one_hot(torch.as_tensor(x[:-1], dtype=torch.long), V).float()
        yt = torch.as_tensor(x[1:], dtype=torch.long)

        def run():
            opt.zero_grad()
            out, _ = net(xt)
            loss = torch.nn.functional.cross_entropy(head(out).reshape(-1, V), yt.reshape(-1))
            loss.backward()
            opt.step()
    before = _reset_peak_rss()
    run()
    t0 = time.perf_counter()
    for _ in range(reps):
        run()
    dt = (time.perf_counter() - t0) / reps
    peak = _proc_status_kb("VmHWM") if before is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"method": method, "T": T, "batch": B, "hidden": H, "tokens_per_s": T * B / dt,
            "peak_extra_mb": max(0, peak - (before or 0)) / 1024.0}


def _proc_status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak_rss():
    """Reset the kernel's peak-RSS mark to the current RSS (Linux: clear_refs 5); returns the
    current RSS in kB, or None where that is not possible (then ru_maxrss is used)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return _proc_status_kb("VmRSS")
    except OSError:
        return None


def seqlen_study(lengths, out: str, log=print) -> list[dict]:
    rows = []
    try:
        import torch  # noqa: F401
        methods = SEQ_METHODS
    except ImportError:
        methods = SEQ_METHODS[:2]
        log("torch is not installed (pip install 'ptncn_dist[torch]'): PyTorch BPTT rows skipped")
    for method in methods:
        for T in lengths:
            code = f"import json; from ptncn_dist.studies.scaling import seqlen_one; print(json.dumps(seqlen_one({method!r}, {T})))"
            res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=1800)
            if res.returncode != 0:
                log(f"{method} T={T} failed: {res.stderr.strip().splitlines()[-1:]}")
                continue
            rows.append({k: (round(v, 3) if isinstance(v, float) else v)
                         for k, v in json.loads(res.stdout.strip().splitlines()[-1]).items()})
            log(f"{method:11s} T={T:5d} {rows[-1]['tokens_per_s']:10.0f} tokens/s  {rows[-1]['peak_extra_mb']:8.1f} MB")
    write_csv(os.path.join(out, "seqlen.csv"), rows)
    return rows


# -- the pipelined mode's loss against the exact mode's --------------------------------------------
def mode_losses(steps: int = 1500, seeds=(0, 1), log=print) -> list[dict]:
    """Test BCE per frame after training the same 3-layer model with the exact and the pipelined
    schedule (single-process engine; the ray engine gives the same numbers)."""
    from ..config import load
    from ..trainer import train
    rows = []
    for mode in ("exact", "pipelined"):
        for seed in seeds:
            cfg = load(None, ["model.hidden=[256, 256, 256]", "data.frame=32", "data.batch=16", f"train.seed={seed}",
                              f'engine.mode="{mode}"', f"train.steps={steps}", "train.progress=false",
                              "train.plots=false", "train.eval_every=0", "train.eval_batches=4"])
            res = train(cfg, None, log=lambda *_: None)
            rows.append({"mode": mode, "seed": seed, "steps": steps,
                         "test_bce_untrained": round(res.initial_test["test_bce"], 2),
                         "test_bce": round(res.final_test["test_bce"], 2), "test_se": round(res.final_test["test_se"], 2)})
            log(f"{mode:9s} seed {seed}: test BCE {rows[-1]['test_bce']}")
    return rows


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="ptncn bench scaling", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=DEFAULT_OUT)
    p.add_argument("--quick", action="store_true", help="a few configurations (minutes)")
    p.add_argument("--seconds", type=float, default=2.0, help="measuring time per configuration")
    p.add_argument("--spread-nodes", type=int, default=4, help="nodes of the local cluster for spread rows (0: none)")
    p.add_argument("--skip", default="", help="comma-separated parts not to measure again: sweep, seqlen, "
                   "modes (their CSV from an earlier run in --out is reported, if there)")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    skip = set(filter(None, args.skip.split(",")))
    configs = [((64,), 16, 64), ((64, 64), 16, 64), ((64,) * 4, 16, 64), ((512, 512), 64, 512),
               ((1024, 1024), 64, 1024), ((512,) * 4, 64, 512)]
    if not args.quick:
        configs += [((64,) * 8, 16, 64), ((256,) * 8, 32, 256), ((1024,) * 3, 64, 1024)]
    engines = ("local_1thread", "local_all_threads", "ray_exact", "ray_pipelined", "ray_exact_tcp",
               "ray_pipelined_tcp", "ray_compiled")
    sweep_rows = read_csv(os.path.join(args.out, "sweep.csv")) if "sweep" in skip else \
        sweep(configs, engines, args.seconds, args.spread_nodes, args.out)
    model = fit_cost_model(sweep_rows) if sweep_rows else None
    checks = validate(model, sweep_rows) if model else []
    proj = project(model) if model else []
    if proj:
        write_csv(os.path.join(args.out, "projection.csv"), proj)
    if checks:
        write_csv(os.path.join(args.out, "model_validation.csv"), checks)
    lengths = (10, 30, 100, 300, 1000)
    seq_rows = read_csv(os.path.join(args.out, "seqlen.csv")) if "seqlen" in skip else seqlen_study(lengths, args.out)
    mode_rows = read_csv(os.path.join(args.out, "modes.csv")) if "modes" in skip else mode_losses()
    if mode_rows:
        write_csv(os.path.join(args.out, "modes.csv"), mode_rows)
    plots(args.out, sweep_rows, seq_rows, proj)
    print(report(args.out, argv, sweep_rows, seq_rows, model, checks, proj, mode_rows))
    return 0
