#!/usr/bin/env bash
# The GPU device check (issue 14), one command, within 8 minutes on the device machine (one H200,
# 16 cores, Python 3.12 with CuPy, NumPy, msgpack, PyTorch and pytest; no Ray, no network):
#
#     bash cluster/device_bundle.sh          # here, once: build/device/ (Ray trimmed + wheels)
#     bash experiments/device_check.sh       # there, with build/device carried; results in $OUT/gpu
#
# Steps, in order, each under its own timeout and all under one overall deadline:
#   install   the bundle offline into $WORK/site (wheels unzipped, Ray's tar.xz unpacked; no pip)
#   versions  python, numpy, cupy, CUDA runtime/driver, ray, torch, GPU (nvidia-smi) -> versions.json
#   ray_smoke ray.init on 127.0.0.2 and one actor call
#   pytest    pytest -q -m gpu tests/test_gpu.py tests/test_optim.py (golden on CuPy float64 1e-9;
#             CuPy vs NumPy float64 on tokens and frames; local engine float32 after 300 steps 1e-4
#             relative; Ray layers sharing the GPU with gpus_per_layer=0.5, weights and slots CuPy
#             arrays in the actors; Adam on CuPy vs NumPy) -> pytest_gpu.xml
#   ptb_gpu / ptb_cpu   the single-process engine at the authors' PTB settings (2 x 1000 tanh,
#             batch 50, 49 symbols, Nesterov) on the GPU and on NumPy with all cores -> ptb_*.json
#   frames    2 x 1024 Bouncing-MNIST-sized frames at batch 16 and 64, GPU vs NumPy all cores
#             -> frames.csv
#   scaling   on the CPU cores: one actor per layer (2 CPUs, 2 BLAS threads each; TCP links, exact
#             and pipelined) for 2, 4, 8 layers at widths 256 and 1024 against the single process
#             on 2 threads and on all cores, one width at a time -> sweep_w256.csv, sweep_w1024.csv,
#             sweep.csv, cost_model.json (fit on these rows, with its mean error), model_validation.csv,
#             scaling.png (speed-up and efficiency against layer workers, one panel per width;
#             only where matplotlib is installed)
#   summary   ratios GPU / CPU -> summary.json
#
# DEVICE_CHECK_DRY=1: tiny settings (a flow test on any machine); without CuPy or a GPU the GPU
# steps are skipped either way. BUNDLE (default build/device), OUT (default /tmp/device_check),
# DEADLINE_S (default 450: the steps' time in all) may be set.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
OUT=${OUT:-/tmp/device_check}
R="$OUT/gpu"
mkdir -p "$R"
DRY=${DEVICE_CHECK_DRY:-0}
BUNDLE=${BUNDLE:-build/device}
PY=${PYTHON:-python3}
WORK=${WORK:-$(mktemp -d /tmp/device_check.XXXXXX)}
DEADLINE_S=${DEADLINE_S:-450}
START=$(date +%s)
exec > >(tee -a "$R/device_check.log") 2>&1
echo "device_check: repo $REPO, out $R, dry=$DRY, started $(date -u +%FT%TZ)"
echo "step,rc,seconds,limit_s" > "$R/steps.csv"

step() {  # step NAME LIMIT_S CMD...: run with a timeout, never past the overall deadline
    local name=$1 limit=$2; shift 2
    local left=$(( DEADLINE_S - ($(date +%s) - START) ))
    (( left < limit )) && limit=$left
    if (( limit < 5 )); then
        echo "== $name: skipped, overall deadline reached"; echo "$name,skipped,0,0" >> "$R/steps.csv"; return 1
    fi
    echo "== $name (limit ${limit}s) $(date -u +%T)"
    local s=$(date +%s)
    timeout -k 10 "$limit" "$@"
    local rc=$?
    local e=$(( $(date +%s) - s ))
    echo "== $name: rc=$rc in ${e}s"
    echo "$name,$rc,$e,$limit" >> "$R/steps.csv"
    return $rc
}

# -- install the bundle, offline and without pip ----------------------------------------------------
SITE="$WORK/site"
install_bundle() {
    mkdir -p "$SITE"
    ls "$BUNDLE"/ray-*-cp312-trimmed.tar.xz "$BUNDLE"/wheels/*.whl >/dev/null || return 1
    tar -C "$SITE" -xJf "$BUNDLE"/ray-*-cp312-trimmed.tar.xz || return 1
    "$PY" - "$SITE" "$BUNDLE"/wheels/*.whl <<'EOF'
import sys, zipfile
site = sys.argv[1]
for whl in sys.argv[2:]:
    with zipfile.ZipFile(whl) as z:
        z.extractall(site)
    print("unpacked", whl.rsplit("/", 1)[-1])
EOF
}
if "$PY" -c "import ray" 2>/dev/null && [ ! -d "$BUNDLE" ]; then
    echo "ray is installed and no bundle at $BUNDLE: using the installed ray"
else
    export -f install_bundle
    export SITE PY BUNDLE
    step install 120 bash -c install_bundle || { echo "bundle install failed: $BUNDLE"; exit 1; }
fi
export PYTHONPATH="$REPO:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled PYTHONUNBUFFERED=1
CORES=$(nproc)

# -- the helpers (versions, PTB, frames, scaling sweep, summary) -------------------------------------
H="$WORK/device_helpers.py"
cat > "$H" <<'EOF'
"""device_check.sh's measurements; each writes its figures under the results folder."""
import csv, json, os, platform, subprocess, sys, time
import numpy as np

R = os.environ["R"]
DRY = os.environ.get("DRY") == "1"


def has_gpu() -> bool:
    try:
        import cupy
        return bool(cupy.is_available())
    except Exception:
        return False


def dump(name, obj):
    with open(os.path.join(R, name), "w") as fh:
        json.dump(obj, fh, indent=1, default=str)
    print(json.dumps(obj, indent=1, default=str))


def versions():
    v = {"python": sys.version, "platform": platform.platform(), "cpu_count": os.cpu_count(),
         "numpy": np.__version__}
    try:
        import numpy
        v["numpy_blas"] = str(numpy.show_config(mode="dicts")["Build Dependencies"]["blas"].get("name"))
    except Exception as exc:
        v["numpy_blas"] = repr(exc)
    for mod in ("ray", "torch", "msgpack", "zmq", "pytest"):
        try:
            v[mod] = __import__(mod).__version__
        except Exception as exc:
            v[mod] = f"missing ({exc.__class__.__name__})"
    try:
        import cupy
        v["cupy"] = cupy.__version__
        v["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
        v["cuda_driver"] = cupy.cuda.runtime.driverGetVersion()
        v["gpu_available"] = bool(cupy.is_available())
        if v["gpu_available"]:
            props = cupy.cuda.runtime.getDeviceProperties(0)
            v["gpu_name"] = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
            v["gpu_memory_gib"] = round(props["totalGlobalMem"] / 2**30, 1)
    except Exception as exc:
        v["cupy"] = f"missing or broken ({exc!r})"
    try:
        v["nvidia_smi"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20).stdout.strip()
    except Exception as exc:
        v["nvidia_smi"] = f"unavailable ({exc.__class__.__name__})"
    dump("versions.json", v)


def ray_smoke():
    import ray
    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.2",
             num_gpus=1 if has_gpu() else 0)

    @ray.remote
    class A:
        def ping(self, x):
            return x + 1
    a = A.remote()
    assert ray.get(a.ping.remote(1)) == 2
    res = ray.cluster_resources()
    ray.shutdown()
    dump("ray_smoke.json", {"seconds": round(time.perf_counter() - t0, 2), "resources": res})


def ptb(device, threads, steps, rounds):
    from ptncn_dist.studies.bench import bench_ptb, print_ptb
    res = bench_ptb(steps, threads, rounds, ("nag",), device)
    print_ptb(res, steps, rounds)
    res.update(device=device, threads=threads, steps=steps, rounds=rounds)
    dump(f"ptb_{device}.json", res)


def frames(threads, steps):
    from ptncn_dist.config import load
    from ptncn_dist.engines.factory import build_engine
    from ptncn_dist.studies.harness import pin_blas
    devices = ["gpu", "cpu"] if has_gpu() else ["cpu"]
    width = 64 if DRY else 1024
    rows = []
    for B in (16, 64):
        for device in devices:
            cfg = load(None, [f"model.hidden=[{width}, {width}]", 'model.output="sigmoid"', f"data.batch={B}",
                              f'model.device="{device}"', "engine.blas_threads=0"])
            rng = np.random.default_rng(0)
            T = 50
            x = (rng.random((T, B, width)) > 0.8).astype(np.float32)
            mask = np.ones((T, B), np.float32)
            sync = (lambda: __import__("cupy").cuda.Device().synchronize()) if device == "gpu" else (lambda: None)
            with pin_blas(threads if device == "cpu" else None):
                e = build_engine(cfg, width, "frames")
                e.run_segment(x, mask, 0, 10, learn=True, t_prime=1)
                best = None
                for _ in range(3):
                    sync()
                    done, t0 = 0, time.perf_counter()
                    while done < steps:
                        n = min(T, steps - done)
                        e.run_segment(x, mask, 0, n, learn=True, t_prime=1)
                        done += n
                    sync()
                    rate = done / (time.perf_counter() - t0)
                    best = max(best or 0, rate)
                e.close()
            row = {"hidden": f"{width}x{width}", "batch": B, "x_dim": width, "device": device,
                   "threads": threads if device == "cpu" else "", "steps": steps,
                   "steps_per_s": round(best, 2), "ms_per_step": round(1000 / best, 3)}
            rows.append(row)
            print(row, flush=True)
    with open(os.path.join(R, "frames.csv"), "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def scaling(seconds):
    """The sweep, one width at a time (its own Ray session; sweep_w<width>.csv written as each
    ends, so a timeout keeps the widths done), each (configuration, engine) measured by one engine
    build: a fixed number of steps after 10 warm-up steps."""
    from ptncn_dist.studies import scaling as sc
    from ptncn_dist.studies.cost_model import fit_cost_model, validate
    from ptncn_dist.studies.harness import ENGINES, engine_rate
    cores = os.cpu_count() or 1
    ray_sets = ['engine.name="ray"', 'engine.transport="tcp"', "engine.cpus_per_layer=2", "engine.blas_threads=2"]
    ENGINES["local_2threads"] = (["engine.blas_threads=0"], 2)
    ENGINES[f"local_{cores}threads"] = (["engine.blas_threads=0"], cores)
    # the cost model fits the rows of these two names: here with 2 CPUs and 2 BLAS threads a layer
    ENGINES["ray_exact_tcp"] = (ray_sets, None)
    ENGINES["ray_pipelined_tcp"] = (ray_sets + ['engine.mode="pipelined"'], None)
    sc.ray_cpus = lambda counts, *a, **k: max([2 * n for n in counts] + [cores, 2])

    def measure(hidden, B, x_dim, engine, _seconds, extra=()):
        sets, threads = ENGINES[engine]
        steps = max(20, int(seconds * {32: 20, 256: 60, 1024: 20}.get(hidden[0], 20)))
        rate, stats = engine_rate(hidden, B, x_dim, steps, [*sets, *extra], threads)
        row = {"steps_per_s": rate, "steps": steps}
        for k in ("compute", "comm", "wait"):
            vals = [v for key, v in stats.items() if key.endswith(f"_{k}_ms_per_step")]
            row[f"max_layer_{k}_ms"] = max(vals) if vals else 0.0
        sent = [v for key, v in stats.items() if key.endswith("_sent_bytes_per_step")]
        row["bytes_per_step"], row["max_layer_bytes"] = sum(sent), max(sent or [0])
        return row
    sc.measure = measure
    widths = ((32, 8, 32),) if DRY else ((256, 32, 256), (1024, 64, 1024))
    engines = tuple(dict.fromkeys(("local_2threads", f"local_{cores}threads", "ray_exact_tcp", "ray_pipelined_tcp")))
    rows = []
    for w, B, x in widths:
        sub = os.path.join(R, f"sweep_w{w}")
        os.makedirs(sub, exist_ok=True)
        rows += sc.sweep([((w,) * L, B, x) for L in (2, 4, 8)], engines, seconds, 0, sub)
        os.replace(os.path.join(sub, "sweep.csv"), os.path.join(R, f"sweep_w{w}.csv"))
        os.rmdir(sub)
        sc.write_csv(os.path.join(R, "sweep.csv"), rows)
        # the cost model fitted to the rows so far (a timeout in the next width keeps this one)
        model = fit_cost_model(rows)
        checks = validate(model, rows)
        errs = [abs(c["error_pct"]) for c in checks]
        dump("cost_model.json", {"model": model, "mean_abs_error_pct": float(np.mean(errs)) if errs else None,
                                 "max_abs_error_pct": float(np.max(errs)) if errs else None,
                                 "widths": sorted({r["hidden"].split("x")[0] for r in rows}),
                                 "engines": {k: ENGINES[k] for k in engines}})
        sc.write_csv(os.path.join(R, "model_validation.csv"), checks)
        plot_scaling(rows, engines)


def plot_scaling(rows, engines):
    """Speed-up over the single process on 2 threads and parallel efficiency against the number of
    layer workers: one line per engine, one panel per width, the ideal drawn in."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: scaling.png not drawn (sweep.csv has the figures)")
        return
    widths = sorted({int(str(r["hidden"]).split("x")[0]) for r in rows})
    fig, axes = plt.subplots(2, len(widths), figsize=(5 * len(widths), 7), squeeze=False)
    for j, w in enumerate(widths):
        sub = [r for r in rows if int(str(r["hidden"]).split("x")[0]) == w]
        base = {r["layers"]: r["steps_per_s"] for r in sub if r["engine"] == engines[0]}
        Ls = sorted(base)
        for eng in engines[1:]:
            pts = sorted((r["layers"], r["steps_per_s"] / base[r["layers"]]) for r in sub
                         if r["engine"] == eng and r["layers"] in base)
            if not pts:
                continue
            x, s = zip(*pts)
            axes[0, j].plot(x, s, "o-", label=eng)
            axes[1, j].plot(x, [v / L for v, L in zip(s, x)], "o-", label=eng)
        axes[0, j].plot(Ls, Ls, "k--", lw=1, label="ideal (one worker a layer)")
        axes[1, j].axhline(1.0, color="k", ls="--", lw=1, label="ideal")
        axes[0, j].set_title(f"width {w}")
        axes[0, j].set_ylabel(f"speed-up over {engines[0]}")
        axes[1, j].set_ylabel("speed-up / layer workers")
        for i in (0, 1):
            axes[i, j].set_xlabel("layers (= layer workers)")
            axes[i, j].set_xticks(Ls)
            axes[i, j].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(R, "scaling.png"), dpi=110)


def summary():
    out = {}
    def load(name):
        p = os.path.join(R, name)
        return json.load(open(p)) if os.path.exists(p) else None
    g, c = load("ptb_gpu.json"), load("ptb_cpu.json")
    if g and c:
        gs, cs = g["by_optim"]["nag"]["steps_per_s"], c["by_optim"]["nag"]["steps_per_s"]
        out["ptb"] = {"gpu_steps_per_s": gs, "cpu_steps_per_s": cs, "cpu_threads": c["threads"],
                      "gpu_over_cpu": gs / cs}
    p = os.path.join(R, "frames.csv")
    if os.path.exists(p):
        rows = list(csv.DictReader(open(p)))
        for B in ("16", "64"):
            by = {r["device"]: float(r["steps_per_s"]) for r in rows if r["batch"] == B}
            out[f"frames_2x1024_b{B}"] = {**by, **({"gpu_over_cpu": by["gpu"] / by["cpu"]}
                                                   if "gpu" in by and "cpu" in by else {})}
    cm = load("cost_model.json")
    if cm:
        out["cost_model_mean_abs_error_pct"] = cm["mean_abs_error_pct"]
    steps = list(csv.DictReader(open(os.path.join(R, "steps.csv"))))
    out["steps"] = steps
    dump("summary.json", out)


if __name__ == "__main__":
    fn, args = sys.argv[1], sys.argv[2:]
    globals()[fn](*[int(a) if a.isdigit() else (float(a) if a.replace(".", "", 1).isdigit() else a)
                    for a in args])
EOF
export R DRY

GPU=0
"$PY" -c "import cupy, sys; sys.exit(0 if cupy.is_available() else 1)" 2>/dev/null && GPU=1
echo "cores: $CORES; CuPy with a GPU: $GPU"
if [ "$DRY" = 1 ]; then
    PTB_STEPS=20; PTB_ROUNDS=1; FRAME_STEPS=20; SWEEP_S=1
else
    PTB_STEPS=200; PTB_ROUNDS=3; FRAME_STEPS=200; SWEEP_S=1
fi

step versions 60 "$PY" "$H" versions
nvidia-smi > "$R/nvidia-smi.txt" 2>&1 || true
step ray_smoke 90 "$PY" "$H" ray_smoke
if [ "$GPU" = 1 ]; then
    step pytest 180 "$PY" -m pytest -q -p no:cacheprovider -m gpu -rA tests/test_gpu.py tests/test_optim.py \
        --junitxml="$R/pytest_gpu.xml"
    step ptb_gpu 60 "$PY" "$H" ptb gpu 0 "$PTB_STEPS" "$PTB_ROUNDS"
else
    echo "== pytest / ptb_gpu: no CuPy with a GPU here; the gpu tests must skip cleanly:"
    step pytest_skip 60 "$PY" -m pytest -q -p no:cacheprovider -rs tests/test_gpu.py
fi
step ptb_cpu 90 "$PY" "$H" ptb cpu "$CORES" "$PTB_STEPS" "$PTB_ROUNDS"
step frames 90 "$PY" "$H" frames "$CORES" "$FRAME_STEPS"
step scaling 240 "$PY" "$H" scaling "$SWEEP_S"
timeout -k 5 30 "$PY" "$H" summary   # past the deadline too: it only reads what was written
echo "device_check: done in $(( $(date +%s) - START ))s; results in $R"
ls -la "$R"
