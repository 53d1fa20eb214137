"""`ptncn tune`: space files are validated, and a real Ray Tune study trains each variant as the
ordinary trainer would (same numbers), keeps diverged trials as results and writes its tables."""
import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from ptncn_dist.errors import ConfigError
from ptncn_dist.tune.space import Dist, nest, read_space, trial_config

TINY = """
[search]
max_concurrent = 2
cpus_per_trial = 1
[scheduler]
grace_period = 40
reduction_factor = 2
[space]
"train.steps" = 80
"train.log_every" = 20
"train.eval_every" = 40
"train.eval_batches" = 1
"model.hidden" = [16, 16]
"data.frame" = 32
"data.sprites" = 1
"data.seq_len" = 10
"data.batch" = 4
"data.eval_batch" = 4
[[variant]]
name = "base"
[[variant]]
name = "blows_up"
set = { "optim.lr" = 1e6, "model.update_radius" = 0.0, "model.activation" = "identity" }
"""


def _write(tmp_path, text, name="space.toml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_space_file_is_read_and_checked(tmp_path):
    s = read_space(_write(tmp_path, TINY))
    assert [v.name for v in s.variants] == ["base", "blows_up"]
    assert s.fixed["model.hidden"] == [16, 16] and s.grace_period == 40
    s = read_space(_write(tmp_path, '[space]\n"optim.lr" = { loguniform = [0.01, 0.1] }\n'
                                    '"model.beta" = { grid = [0.1, 0.2] }\n'))
    assert s.sampled["optim.lr"] == Dist("loguniform", [0.01, 0.1])
    assert nest({"optim.lr": 1, "model.beta": 2}) == {"optim": {"lr": 1}, "model": {"beta": 2}}
    cfg = trial_config(None, {"optim.lr": 0.5, "model.hidden": [8]})
    assert cfg.optim.lr == 0.5 and cfg.model.hidden == [8]


@pytest.mark.parametrize("text, words", [
    ('[space]\n"optim.lrr" = 0.1\n', "unknown config key 'optim.lrr'"),
    ('[space]\n"optim.lr" = { normal = [0, 1] }\n', "must be a value or one of"),
    ('[space]\n"optim.lr" = { loguniform = [0.0, 1.0] }\n', "loguniform needs low > 0"),
    ('[space]\n"optim.lr" = { uniform = [1.0, 0.5] }\n', "low < high"),
    ('[search]\nworkers = 2\n', "unknown key [search].workers"),
    ('[sweep]\n', "unknown section"),
    ('[[variant]]\nname = "a"\n[[variant]]\nname = "a"\n', "unique non-empty name"),
    ('[[variant]]\nname = "a"\nset = { "model.nope" = 1 }\n', "unknown config key 'model.nope'"),
])
def test_bad_space_files_name_the_problem(tmp_path, text, words):
    with pytest.raises(ConfigError) as err:
        read_space(_write(tmp_path, text))
    assert words in str(err.value)


def test_bad_override_type_fails_before_any_trial(tmp_path):
    with pytest.raises(ConfigError, match="optim.lr must be of type float"):
        trial_config(None, {"optim.lr": "fast"})


@pytest.mark.ray
@pytest.mark.slow
def test_tiny_study_runs_real_trials(tmp_path):
    pytest.importorskip("ray.tune")
    from ptncn_dist.trainer import train
    from ptncn_dist.tune import study
    out = tmp_path / "out"
    before = signal.getsignal(signal.SIGINT)
    rows = study(None, _write(tmp_path, TINY), str(out), str(tmp_path / "storage"), "tiny", num_cpus=2)
    assert signal.getsignal(signal.SIGINT) is before  # Tune's own handler is not left behind
    assert not _work_dirs(tmp_path / "storage" / "tiny")  # ASHA kills a trial at max_t before its own cleanup
    by_name = {r["variant"]: r for r in rows}
    assert set(by_name) == {"base", "blows_up"}
    assert by_name["blows_up"]["diverged"] == 1 and by_name["base"]["diverged"] == 0
    assert rows[0]["variant"] == "base"
    with open(out / "trials.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == 2 and table[0]["variant"] == "base"
    curves = [json.loads(line) for line in open(out / "curves.jsonl")]
    base_curve = [c for c in curves if c["variant"] == "base"]
    assert [c["step"] for c in base_curve] == [0, 40, 80]
    # the trial trained exactly as the ordinary trainer does with the same settings
    space = read_space(_write(tmp_path, TINY))
    cfg = trial_config(None, {**space.fixed, "engine.blas_threads": 1, "train.progress": False,
                              "train.plots": False})
    direct = train(cfg, None, log=lambda *_: None)
    assert base_curve[-1]["test_bce"] == pytest.approx(direct.final_test["test_bce"], rel=1e-6)
    assert (out / "curves.png").stat().st_size > 0


# one variant, long enough (about 10 s) to be stopped mid-run, a checkpoint every 200 steps
LONG = (TINY.split("[[variant]]")[0]
        .replace('"train.steps" = 80', '"train.steps" = 4000')
        .replace('"model.hidden" = [16, 16]', '"model.hidden" = [192, 192]')
        .replace('"train.eval_every" = 40', '"train.eval_every" = 200\n"train.checkpoint_every" = 200'))


def _work_dirs(study_path) -> list:
    """The temporary run directories the study's trials left behind."""
    from ptncn_dist.tune.study import work_prefix
    return list(Path(tempfile.gettempdir()).glob(work_prefix(str(study_path)) + "*"))


def _tune_command(tmp_path, *extra) -> list:
    return [sys.executable, "-m", "ptncn_dist.cli", "tune", "--space", str(tmp_path / "long.toml"), "--name", "long",
            "--storage", str(tmp_path / "storage"), "--out", str(tmp_path / "out"), "--num-cpus", "2", *extra]


@pytest.mark.ray
@pytest.mark.slow
def test_interrupted_study_continues_from_its_checkpoints(tmp_path):
    """Ctrl-C once a trial's checkpoint is in Tune's state: one line, status 130, no tables.
    The same command again continues the trial from that checkpoint (not from step 0) to the
    same test loss as the ordinary trainer; a changed space file is refused; --fresh restarts."""
    pytest.importorskip("ray.tune")
    import psutil
    from helpers import REPO, tune_state_names_checkpoint
    from ptncn_dist.trainer import train
    (tmp_path / "long.toml").write_text(LONG)
    # Tune saves its experiment state every second here (else every 10 s or more), so the stop
    # lands while the trial runs
    proc = subprocess.Popen(_tune_command(tmp_path), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True, text=True, env={**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "1"})
    try:
        deadline = time.monotonic() + 300
        while not tune_state_names_checkpoint([tmp_path / "storage" / "long"]):
            assert proc.poll() is None, "the study ended before its trial saved a checkpoint"
            assert time.monotonic() < deadline, "no Tune checkpoint within 300 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            for p in [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]:
                p.kill()
            proc.wait(timeout=30)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted: 1 of 1 trial(s) stopped before their end" in err.splitlines()[-1]
    assert not (tmp_path / "out" / "trials.csv").exists()
    assert not _work_dirs(tmp_path / "storage" / "long")

    again = subprocess.run(_tune_command(tmp_path), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "continuing the unfinished study" in again.stdout
    with open(tmp_path / "out" / "trials.csv", newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    assert 0 < int(row["resumed_at"]) < 4000 and int(row["last_step"]) == 4000
    assert not _work_dirs(tmp_path / "storage" / "long")
    cfg = trial_config(None, {**read_space(str(tmp_path / "long.toml")).fixed, "engine.blas_threads": 1,
                              "train.progress": False, "train.plots": False})
    direct = train(cfg, None, log=lambda *_: None)
    assert float(row["last_test_bce"]) == pytest.approx(direct.final_test["test_bce"], rel=1e-6)

    (tmp_path / "long.toml").write_text(LONG.replace('"train.steps" = 4000', '"train.steps" = 400'))
    changed = subprocess.run(_tune_command(tmp_path), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert changed.returncode != 0 and "holds a study started from another space file" in changed.stderr
    fresh = subprocess.run(_tune_command(tmp_path, "--fresh"), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert fresh.returncode == 0 and "continuing" not in fresh.stdout, fresh.stderr[-2000:]
    with open(tmp_path / "out" / "trials.csv", newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    assert int(row["resumed_at"]) == 0 and int(row["last_step"]) == 400
