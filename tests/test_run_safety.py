"""Runs that cannot destroy each other: a claimed run directory, a config written once and never
by a refused command, checkpoints namespaced per run, a TOML writer that round-trips any string,
and readers that refuse a newest checkpoint they cannot read or verify."""
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile

import numpy as np
import pytest

from ptncn_dist import checkpoint
from ptncn_dist.checkpoint import manifest as cm, rundir
from ptncn_dist.cli import main
from ptncn_dist.checkpoint.codec import packb, unpackb
from ptncn_dist.config import load

RUN = ["--set", "model.hidden=[16,16]", "--set", "train.checkpoint_every=20", "--set", "data.frame=32",
       "--set", "data.batch=8", "--set", "data.seq_len=10", "--set", "train.progress=false",
       "--set", "train.plots=false", "--set", "train.eval_every=0", "--set", "train.eval_batches=1",
       "--set", "train.tensorboard=false", "--set", "train.references=false", "--set", "train.log_every=20"]


def train(run_dir, *extra, steps=40) -> int:
    return main(["train", "--run-dir", str(run_dir), "--steps", str(steps), *RUN, *extra])


def snapshot(root) -> dict:
    """Every file under `root` with its bytes' sha256 and mtime: what 'nothing changed' means."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            p = os.path.join(dirpath, name)
            out[os.path.relpath(p, root)] = (hashlib.sha256(open(p, "rb").read()).hexdigest(), os.stat(p).st_mtime_ns)
    return out


def one_error_line(capsys) -> str:
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.fixture
def run(tmp_path, capsys):
    r = tmp_path / "run"
    assert train(r) == 0
    capsys.readouterr()
    return r


# -- 1. a refused command changes no file ---------------------------------------------------------
def test_refused_resume_changes_no_file_and_the_run_stays_usable(run, capsys):
    before = snapshot(run)
    assert main(["train", "--resume", str(run), "--set", "model.hidden=[32,16]"]) == 2
    line = one_error_line(capsys)
    assert "holds a different run" in line and "model.hidden = [32, 16] (the run's [16, 16])" in line, line
    assert snapshot(run) == before
    assert main(["eval", str(run), "--batches", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["step"] == 40


def test_a_new_run_into_a_directory_of_another_run_is_refused_and_changes_nothing(run, capsys):
    before = snapshot(run)
    assert train(run, "--set", "train.seed=1") == 2
    assert "holds a different run" in one_error_line(capsys) and snapshot(run) == before


def test_resume_with_more_steps_keeps_config_toml(run, capsys):
    config = (run / "config.toml").read_bytes()
    assert main(["train", "--resume", str(run), "--steps", "60"] + RUN) == 0
    out = capsys.readouterr().out
    assert "train.steps = 60 (the run's 40)" in out and "resumed from" in out
    assert (run / "config.toml").read_bytes() == config
    assert checkpoint.list_checkpoints(str(run / "checkpoints"))[-1].endswith("ckpt-0000000060")


def test_a_refused_run_leaves_no_new_directory(tmp_path, capsys):
    """A run refused before training (a memory estimate over this machine's) creates nothing."""
    target = tmp_path / "never"
    assert train(target, "--set", "model.hidden=[10000000]") == 2
    assert "needs about" in one_error_line(capsys) and not target.exists()


# -- 2. a claimed run directory -------------------------------------------------------------------
def test_a_claimed_directory_is_refused_naming_its_holder(tmp_path, capsys):
    """A Trainer holds its run directory until its run ends: a second run, in another process,
    is refused with one line naming the holder's pid and host, and changes nothing."""
    from ptncn_dist.trainer import Trainer
    r = tmp_path / "run"
    args = [a for a in RUN if a != "--set"]
    holder = Trainer(load(None, args + ["train.steps=40"]), str(r), log=lambda *_: None)
    try:
        before = snapshot(r)
        proc = subprocess.run([sys.executable, "-m", "ptncn_dist.cli", "train", "--run-dir", str(r), "--steps", "40",
                               *RUN, "--set", "train.seed=1"], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2, proc.stderr
        err = proc.stderr.strip().splitlines()
        assert len(err) == 1 and f"is in use by pid {os.getpid()} on host {socket.gethostname()}" in err[0], err
        assert snapshot(r) == before
        holder.run()
    finally:
        holder.close()
    assert not (r / rundir.LOCK).exists()  # released at the end of the run
    assert train(r) == 0  # the same run again: nothing to train, the directory is free


def test_two_runs_started_together_into_one_directory_lose_nothing(tmp_path):
    """Two `ptncn train` processes into one --run-dir at once (seeds 0 and 1): one trains, the
    other is refused (by the lock, or as a different run once the first has written its config);
    the run left there is whole: its checkpoints belong to its config and `ptncn eval` works."""
    r = tmp_path / "run"
    cmd = [sys.executable, "-m", "ptncn_dist.cli", "train", "--run-dir", str(r), "--steps", "200", *RUN]
    procs = [subprocess.Popen(cmd + ["--set", f"train.seed={seed}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for seed in (0, 1)]
    outs = [p.communicate(timeout=300) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], outs
    loser = outs[[p.returncode for p in procs].index(2)][1]
    assert "is in use by pid" in loser or "holds a different run" in loser, loser
    cfg = load(str(r / "config.toml"))
    for path in checkpoint.list_checkpoints(str(r / "checkpoints")):
        assert checkpoint.read_manifest(path, cfg.hash())["step"] >= 0
    proc = subprocess.run([sys.executable, "-m", "ptncn_dist.cli", "eval", str(r), "--batches", "1"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and json.loads(proc.stdout)["step"] == 200, proc.stderr


def test_a_stale_lock_of_a_dead_process_is_taken_over(run, capsys):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (run / rundir.LOCK).write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(), "started": 1.0}))
    assert main(["train", "--resume", str(run), "--steps", "60"] + RUN) == 0
    assert not (run / rundir.LOCK).exists()


def test_a_lock_naming_another_host_is_refused_with_the_file_to_delete(run, capsys):
    lock = run / rundir.LOCK
    lock.write_text(json.dumps({"pid": 4242, "host": "elsewhere.example", "started": 1.0}))
    assert main(["train", "--resume", str(run), "--steps", "60"] + RUN) == 2
    line = one_error_line(capsys)
    assert "pid 4242 on host elsewhere.example" in line and f"delete {lock}" in line, line
    assert lock.exists()


def test_runs_sharing_a_checkpoint_dir_keep_their_own(tmp_path, capsys):
    """Two runs (different seeds) at once with one train.checkpoint_dir and keep_checkpoints=1:
    each prunes only its own namespace, each manifest names its run, and both can be evaluated and
    exported afterwards, the first with the weights it ended on."""
    shared = tmp_path / "shared-ckpts"
    runs = [tmp_path / "a", tmp_path / "b"]
    procs = [subprocess.Popen([sys.executable, "-m", "ptncn_dist.cli", "train", "--run-dir", str(r), "--steps", "200",
                               *RUN, "--set", f'train.checkpoint_dir="{shared}"', "--set", "train.keep_checkpoints=1",
                               "--set", f"train.seed={seed}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for seed, r in enumerate(runs)]  # at the same time
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    ids = [rundir.read_run_id(str(r)) for r in runs]
    assert sorted(os.listdir(shared)) == sorted(ids) and ids[0] != ids[1]
    for r, run_id in zip(runs, ids):
        (newest,) = checkpoint.list_checkpoints(str(shared / run_id))
        assert checkpoint.read_manifest(newest)["run_id"] == run_id
    capsys.readouterr()
    weights = []
    for r in runs:
        assert main(["export", str(r), "--npz", str(r / "w.npz")]) == 0
        weights.append(dict(np.load(r / "w.npz")))
    assert not np.array_equal(weights[0]["M1"], weights[1]["M1"])
    # a checkpoint copied into the other run's namespace is refused as not its own
    (a_ckpt,) = checkpoint.list_checkpoints(str(shared / ids[0]))
    (b_ckpt,) = checkpoint.list_checkpoints(str(shared / ids[1]))
    shutil.rmtree(b_ckpt)
    shutil.copytree(a_ckpt, b_ckpt)
    capsys.readouterr()
    assert main(["eval", str(runs[1]), "--batches", "1"]) == 2
    assert f"written by run '{ids[0]}', not by this run ({ids[1]})" in one_error_line(capsys)


def test_two_copies_of_a_run_cannot_write_its_shared_namespace_at_once(tmp_path, capsys):
    """A run directory copied (so two directories share one run id) and resumed twice: the
    second is refused while the first holds the run's namespace in the shared checkpoint_dir."""
    from ptncn_dist.trainer import Trainer
    shared, a, b = tmp_path / "ck", tmp_path / "a", tmp_path / "b"
    assert train(a, "--set", f'train.checkpoint_dir="{shared}"') == 0
    shutil.copytree(a, b)
    holder = Trainer(load(str(a / "config.toml"), ["train.steps=60"]), str(a), resume=True, log=lambda *_: None)
    try:
        capsys.readouterr()
        assert main(["train", "--resume", str(b), "--steps", "60"]) == 2
        line = one_error_line(capsys)
        assert f"checkpoint namespace {shared / rundir.read_run_id(str(a))} is in use by pid {os.getpid()}" in line
    finally:
        holder.close()
    assert main(["train", "--resume", str(b), "--steps", "60"]) == 0


# -- 3. any string in the config round-trips ------------------------------------------------------
def test_a_config_string_outside_the_bmp_round_trips(tmp_path, capsys):
    r, ck = tmp_path / "run", tmp_path / "ck\U0001F600dir"
    assert train(r, "--set", f'train.checkpoint_dir="{ck}"') == 0
    assert load(str(r / "config.toml")).train.checkpoint_dir == str(ck)
    assert main(["train", "--resume", str(r), "--steps", "60"] + RUN) == 0
    capsys.readouterr()
    assert main(["eval", str(r), "--batches", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["step"] == 60


# -- 4. readers refuse what they cannot read or verify --------------------------------------------
def test_eval_and_export_refuse_a_newest_checkpoint_without_manifest(run, capsys):
    newest = checkpoint.list_checkpoints(str(run / "checkpoints"))[-1]
    os.remove(os.path.join(newest, checkpoint.MANIFEST))
    for argv in (["eval", str(run), "--batches", "1"], ["export", str(run), "--npz", str(run / "w.npz")]):
        assert main(argv) == 2
        line = one_error_line(capsys)
        assert "ckpt-0000000040/manifest.msgpack" in line and "older step 20" in line and "--allow-older" in line
    assert main(["export", str(run), "--npz", str(run / "w.npz"), "--allow-older"]) == 0
    assert "warning: damaged checkpoint skipped" in capsys.readouterr().err


NOBODY = 65534


def _as_nobody(argv) -> tuple[int, str]:
    """`ptncn ARGV` in a forked child that has dropped root for nobody (root reads everything, so
    this is how a test meets a permission error); its rc and what it printed. The modules it
    needs are already imported by the parent."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        rc = 99
        try:
            os.close(r)
            sys.stdout = sys.stderr = os.fdopen(w, "w", buffering=1)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            rc = main(argv)
        except BaseException:  # noqa: BLE001 - a traceback is what the test must see
            import traceback
            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(rc)
    os.close(w)
    with os.fdopen(r) as fh:
        out = fh.read()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to run a command as nobody")
def test_unreadable_checkpoints_are_one_line_not_a_fallback_or_traceback(capsys):
    """As a user who cannot read the newest checkpoint directory, eval refuses it (no silent
    fallback); one who cannot list checkpoints/ at all gets one line, not a PermissionError."""
    base = tempfile.mkdtemp(prefix="ptncn-perm-")
    try:
        os.chmod(base, 0o777)
        # The data lives in `base` too: the offline default sits in the installer's site-packages,
        # which another user may not be able to read (a root-only ~/.pyenv, as on CI).
        data = os.path.join(base, "data")
        os.makedirs(data)
        np.save(os.path.join(data, "train.npy"), np.random.default_rng(0).random((64, 10, 12), dtype=np.float32))
        r = os.path.join(base, "run")
        assert train(r, "--set", 'data.source="arrays"', "--set", f'data.path="{data}"',
                     "--set", 'model.output="sigmoid"') == 0
        for dirpath, dirs, files in os.walk(base):
            for name in dirs:
                os.chmod(os.path.join(dirpath, name), 0o755)
            for name in files:
                os.chmod(os.path.join(dirpath, name), 0o644)
        ckpts = os.path.join(r, "checkpoints")
        assert main(["eval", r, "--batches", "1"]) == 0 and main(["export", r, "--npz", os.path.join(base, "w.npz")]) == 0
        rc, out = _as_nobody(["eval", r, "--batches", "1"])
        assert rc == 0, out  # readable to nobody as made
        newest = checkpoint.list_checkpoints(ckpts)[-1]
        os.chmod(newest, 0o700)
        rc, out = _as_nobody(["eval", r, "--batches", "1"])
        err = out.strip().splitlines()
        assert rc == 2 and len(err) == 1, out
        assert "ckpt-0000000040" in err[0] and "older step 20" in err[0] and "--allow-older" in err[0], err
        os.chmod(ckpts, 0o700)
        rc, out = _as_nobody(["export", r, "--npz", os.path.join(base, "w2.npz")])
        err = out.strip().splitlines()
        assert rc == 2 and len(err) == 1, out
        assert f"cannot list the checkpoints under {ckpts}: Permission denied" in err[0], err
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _resign(ckpt_dir, key: str | None, change_shard: bool):
    """Rewrite a checkpoint as a writer of its directory could: optionally alter a shard, then
    re-encode the manifest with fresh checksums (signed with `key`, or unsigned)."""
    mpath = os.path.join(ckpt_dir, checkpoint.MANIFEST)
    outer = unpackb(open(mpath, "rb").read())
    body = unpackb(outer["body"])
    if change_shard:
        rec = body["shards"][0]
        spath = os.path.join(ckpt_dir, rec["name"])
        shard = unpackb(open(spath, "rb").read())
        params = shard["payload"]["params"]
        params["M"] = np.zeros_like(params["M"])
        data = packb(shard)
        open(spath, "wb").write(data)
        rec.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    body.pop("format")
    env = os.environ.pop(cm.KEY_ENV, None)
    try:
        if key:
            os.environ[cm.KEY_ENV] = key
        open(mpath, "wb").write(cm.encode(body))
    finally:
        os.environ.pop(cm.KEY_ENV, None)
        if env is not None:
            os.environ[cm.KEY_ENV] = env


def test_a_keyed_run_refuses_a_resigned_checkpoint(tmp_path, capsys, monkeypatch):
    """With PTNCN_CHECKPOINT_KEY the manifest is signed (format 4): a shard altered and its
    manifest re-written without the key, or with another key, is refused by eval as damaged;
    without the key set, the unaltered signed checkpoint still reads (its sha256 checked)."""
    key = "k" * 24
    monkeypatch.setenv(cm.KEY_ENV, key)
    r = tmp_path / "run"
    assert train(r) == 0
    ckpts = checkpoint.list_checkpoints(str(r / "checkpoints"))
    assert unpackb(open(os.path.join(ckpts[-1], checkpoint.MANIFEST), "rb").read())["format"] == cm.SIGNED_FORMAT
    monkeypatch.delenv(cm.KEY_ENV)
    capsys.readouterr()
    assert main(["eval", str(r), "--batches", "1"]) == 0
    monkeypatch.setenv(cm.KEY_ENV, key)
    for other, why in ((None, "an unsigned manifest"), ("x" * 24, "manifest signature does not match")):
        _resign(ckpts[-1], other, change_shard=True)
        capsys.readouterr()
        assert main(["eval", str(r), "--batches", "1"]) == 2
        line = one_error_line(capsys)
        assert why in line and "ckpt-0000000040" in line and "older step 20" in line, line
    monkeypatch.setenv(cm.KEY_ENV, "short")
    assert main(["eval", str(r), "--batches", "1"]) == 2
    assert "PTNCN_CHECKPOINT_KEY must be at least 16 characters" in one_error_line(capsys)


def test_runs_given_no_run_dir_never_share_one(tmp_path, monkeypatch, capsys):
    """Two runs started in the same second each get a directory of their own (the second with
    -2), made exclusively; a run refused before it writes leaves none behind."""
    import re
    first, second = rundir.new_default_dir(str(tmp_path)), rundir.new_default_dir(str(tmp_path))
    assert first != second and os.path.isdir(first) and os.path.isdir(second)
    assert re.fullmatch(r"\d{8}-\d{6}(-2)?", os.path.basename(second))
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--steps", "5", "--set", "data.frame=16"]) == 2  # refused: sprites do not fit
    printed = capsys.readouterr().out.strip().splitlines()[0]
    assert printed.startswith("run directory: runs/") and not os.path.exists(printed.split(": ", 1)[1])
    assert main(["train", "--steps", "4", *RUN[2:]]) == 0
    made = capsys.readouterr().out.strip().splitlines()[0].split(": ", 1)[1]
    assert os.path.isfile(os.path.join(made, "summary.json"))
