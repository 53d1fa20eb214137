"""Chaos on real processes: layer actors killed by pid, a worker node stopped, the driver
killed, the newest checkpoint damaged. Each run must finish on exactly the weights of a run
that never failed (float64).

In-process drills fire each fault from a trainer callback at a step the test chooses (a multiple
of train.log_every, where a segment ends), so where it lands never depends on timing: the
recovery record says exactly which segment met the failure and which checkpoint it went back to.
The subprocess drills (killed driver, lost node) wait for a step in metrics.jsonl, on runs long
enough that the fault cannot land after their end, and check that it landed mid-run."""
import gc
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import ray
from ray.actor import ActorHandle

from helpers import NODE_IP, REPO, local_ray
from ptncn_dist.studies import chaos
from ptncn_dist.config import load
from ptncn_dist.engines.placement import shutdown_ray
from ptncn_dist.engines.ray_session import start_private
from ptncn_dist.trainer import Trainer

LOG_EVERY, CKPT_EVERY = 10, 20
SETS = ["model.hidden=[48,32,24]", "data.frame=32", "data.batch=8", "data.seq_len=10", 'model.dtype="float64"',
        "train.eval_batches=1", "train.eval_every=0", f"train.log_every={LOG_EVERY}",
        f"train.checkpoint_every={CKPT_EVERY}", "train.plots=false", "train.progress=false",
        "train.max_failures=-1", "engine.cpus_per_layer=0.5"]


def assert_landed_at(res, at_steps):
    """Each fault fired at its chosen step, and the recovery after it met the failure in the very
    next segment and went back to the checkpoint at or before that step."""
    assert [f["at_step"] for f in res["faults"]] == at_steps
    assert [(r["failed_by_step"], r["resumed_from_step"]) for r in res["recovery_log"]] == \
        [(at + LOG_EVERY, at // CKPT_EVERY * CKPT_EVERY) for at in at_steps]


def reference_weights(steps):
    t = Trainer(load(None, SETS + [f"train.steps={steps}"]), None, log=lambda *_: None)
    t.run()
    return t.engine.weights()


@pytest.mark.ray
@pytest.mark.slow
def test_killed_layer_actors_recover_exactly(tmp_path):
    at_steps = [70, 140, 230]
    with local_ray(4):
        cfg = load(None, SETS + ['engine.name="ray"', "train.steps=300"])
        res = chaos.drill(cfg, faults=3, seed=1, run_dir=str(tmp_path), log=lambda *_: None, at_steps=at_steps)
        gc.collect()
        leftover = [type(o).__name__ for o in gc.get_objects() if isinstance(o, (ray.ObjectRef, ActorHandle))]
    # nothing keeps the failed calls' refs or the closed actors' handles once the run is over
    assert leftover == []
    assert res["faults_injected"] == 3 and res["recoveries"] == 3
    assert_landed_at(res, at_steps)
    assert res["max_final_weight_difference"] == 0.0
    assert all("ActorDied" in r["cause"] or "RayActorError" in r["cause"] for r in res["recovery_log"])
    assert all(r["seconds"] > 0 for r in res["recovery_log"])
    logged = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["step"] for r in logged if "recovery" in r] == [60, 140, 220]
    assert json.load(open(tmp_path / "summary.json"))["recoveries"] == 3


@pytest.mark.ray
def test_shutdown_frees_ray_objects_in_cycles_while_the_session_lives():
    """A Ray object freed by a garbage collection after its session is gone can crash the
    process; `shutdown_ray` collects first, so a cycle holding an ObjectRef dies in-session."""
    seen = []

    class Cycle:
        def __init__(self, ref):
            self.ref, self.me = ref, self

        def __del__(self):
            seen.append(ray.is_initialized())

    start_private(NODE_IP, 1)
    try:
        gc.disable()
        Cycle(ray.put(np.zeros(4)))
    finally:
        shutdown_ray()
        gc.enable()
    gc.collect()
    assert seen == [True]


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.parametrize("transport", ["compiled"])
def test_other_transports_recover_exactly(tmp_path, transport):
    """The drill on the compiled graph (the links are the default, above; actor calls recover
    exactly in tests/test_storage.py, killed, and tests/test_hung.py, stopped): a killed actor
    closes a compiled graph, which is torn down and rebuilt with the layers. The fault fires at
    step 50 of 120."""
    with local_ray(4):
        sets = ["engine.compiled=true"] if transport == "compiled" else ['engine.transport="calls"']
        cfg = load(None, SETS + ['engine.name="ray"', *sets, "train.steps=120", "model.hidden=[32,24]"])
        res = chaos.drill(cfg, faults=1, seed=7, run_dir=str(tmp_path), log=lambda *_: None, at_steps=[50])
    assert res["faults_injected"] == 1 and res["recoveries"] == 1
    assert_landed_at(res, [50])
    assert res["max_final_weight_difference"] == 0.0


@pytest.mark.ray
@pytest.mark.slow
def test_chaos_command_fires_at_the_chosen_step_and_prints_its_figures(tmp_path, capsys):
    """`ptncn chaos --at 40`: one layer process killed at exactly step 40 of 60, recovered from
    the checkpoint of step 40; it prints every figure it promises and the fault's step, and
    exits 0 (every fault fired and was recovered, final weights equal)."""
    from ptncn_dist import cli
    with local_ray(4):
        rc = cli.main(["chaos", "--steps", "60", "--at", "40", "--set", "model.hidden=[16,12]",
                       "--run-dir", str(tmp_path / "run")])
    out = capsys.readouterr().out
    promised = ("faults_injected", "recoveries", "steps_replayed", "seconds_to_recover", "seconds_to_notice",
                "max_final_weight_difference", "steps", "seconds")
    figures = dict(line.split(None, 1) for line in out.splitlines() if line.split()[:1] and line.split()[0] in promised)
    assert sorted(figures) == sorted(promised), out[-3000:]
    assert rc == 0, out[-3000:]
    assert figures["faults_injected"] == "1" and figures["recoveries"] == "1" and figures["steps"] == "60"
    assert figures["steps_replayed"] == "10" and figures["max_final_weight_difference"] == "0.0"
    assert len(json.loads(figures["seconds_to_recover"])) == 1 and float(figures["seconds"]) > 0
    assert re.search(r"^  fault at step 40: actor process of layer [12] on 127\.0\.0\.1 \(pid \d+\)$", out, re.M), out
    assert "lost a worker at step 50" in out


def ptncn(*args, env=None, **kw):
    return subprocess.Popen([sys.executable, "-m", "ptncn_dist.cli", *args], cwd=REPO,
                            env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, **kw)


def logged_steps(run_dir) -> list[dict]:
    """The complete records of metrics.jsonl so far (a line being written is left out)."""
    path = os.path.join(run_dir, "metrics.jsonl")
    recs = []
    if os.path.exists(path):
        for line in open(path):
            try:
                recs.append(json.loads(line))
            except ValueError:
                pass
    return recs


def wait_for_step(run_dir, step, proc, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        steps = [r.get("step", 0) for r in logged_steps(run_dir)]
        if steps and max(steps) >= step:
            return
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        time.sleep(0.1)
    raise TimeoutError(f"run did not reach step {step}")


def cluster_args(c, steps, run_dir, placement="spread"):
    sets = SETS + [f'engine.address="{c.address}"', 'engine.node_ip="127.0.0.2"', f'engine.placement="{placement}"',
                   "engine.cpus_per_layer=0.5"]
    return ["train", "--engine", "ray", "--steps", str(steps), "--run-dir", run_dir,
            *[a for s in sets for a in ("--set", s)]]


def final_weights(run_dir, tmp_path):
    npz = tmp_path / "w.npz"
    out = subprocess.run([sys.executable, "-m", "ptncn_dist.cli", "export", run_dir, "--npz", str(npz)],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return dict(np.load(npz))


@pytest.mark.ray
@pytest.mark.cluster
@pytest.mark.slow
def test_killed_driver_resumes_exactly(cluster, tmp_path):
    """SIGKILL the driver mid-run (at step 100 or a little after, of 1000: several seconds before
    its end); the same command, submitted again, continues the run."""
    steps = 1000
    run_dir = str(tmp_path / "run")
    args = cluster_args(cluster, steps, run_dir)
    proc = ptncn(*args, env=cluster.env())
    try:
        wait_for_step(run_dir, 100, proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    # the kill landed mid-run: it ended the driver, which had not written its final record
    assert proc.returncode == -signal.SIGKILL
    killed_at = max(r["step"] for r in logged_steps(run_dir))
    assert 100 <= killed_at < steps and not any(r.get("final") for r in logged_steps(run_dir))
    again = ptncn(*args, env=cluster.env())
    out, _ = again.communicate(timeout=600)
    assert again.returncode == 0, out[-3000:]
    assert "continuing from its last good checkpoint" in out
    want = reference_weights(steps)
    got = final_weights(run_dir, tmp_path)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_damaged_newest_checkpoint_is_skipped_on_resume(tmp_path, capsys):
    """--resume past a damaged newest checkpoint: one warning line on stderr (not a Python
    warning) naming the file and the step it falls back to; the run ends on the right weights."""
    run_dir = str(tmp_path / "run")
    first = Trainer(load(None, SETS + ["train.steps=85"]), run_dir, log=lambda *_: None)
    first.run()
    newest = sorted((tmp_path / "run" / "checkpoints").glob("ckpt-*"))[-1]
    shard = newest / "layer-2.msgpack"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        second = Trainer(load(None, SETS + ["train.steps=200"]), run_dir, resume=True, log=lambda *_: None)
    assert second.step == 80
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: damaged checkpoint skipped: ") and \
        "layer-2.msgpack" in err[0] and err[0].endswith("falling back to step 80 (" + run_dir + "/checkpoints/ckpt-0000000080)"), err
    second.run()
    want = reference_weights(200)
    got = second.engine.weights()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


@pytest.mark.ray
@pytest.mark.cluster
@pytest.mark.slow
def test_lost_worker_node_moves_its_layers(cluster, tmp_path):
    """Stop a worker node (its whole process group) mid-run: its layer moves to a live node and
    the run ends on the uninterrupted weights. The node is started again for the next tests. (The
    run is long enough, about 8 s here, for the stop to land well before its end.)"""
    steps = 1500
    run_dir = str(tmp_path / "run")
    proc = ptncn(*cluster_args(cluster, steps, run_dir), env=cluster.env())
    try:
        wait_for_step(run_dir, 200, proc)
        cluster.stop_node(2, hard=True)
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
        cluster.restart_node(2)
    assert proc.returncode == 0, out[-3000:]
    recs = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    recoveries = [r for r in recs if "recovery" in r]
    assert len(recoveries) == 1, out[-4000:]
    # the stop landed mid-run: a segment after step 200 met it, well before the last step
    assert 200 < recoveries[0]["failed_by_step"] < steps and recs[-1].get("final") and recs[-1]["step"] == steps
    assert {p["ip"] for p in recoveries[0]["placement"]} <= {"127.0.0.2", "127.0.0.3"}
    want = reference_weights(steps)
    got = final_weights(run_dir, tmp_path)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
