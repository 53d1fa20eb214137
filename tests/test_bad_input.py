"""Bad input of every kind ends in one line `error: ...` and exit status 2, never a traceback,
unbounded work or a run that "succeeds" on nothing: config files, PTB and IDX files, settings the
data cannot serve, evaluations that diverge and re-signed checkpoints whose layer state is wrong.
Everything runs in process through `cli.main`, on tiny files and models; no Ray."""
from __future__ import annotations

import glob
import hashlib
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from ptncn_dist import cli
from ptncn_dist.checkpoint import codec
from ptncn_dist.checkpoint import manifest as cm
from helpers import REPO

PTB_CHAR = str(REPO / "experiments" / "configs" / "ptb_char.toml")
QUIET = ["--set", "train.progress=false", "--set", "train.plots=false", "--set", "train.tensorboard=false",
         "--set", "train.references=false"]
TINY = ["--set", "model.hidden=[8,8]", "--set", "data.batch=4", "--set", "data.eval_batch=4",
        "--set", "train.eval_batches=1", *QUIET]


def run_cli(capsys, *argv) -> tuple[int, str]:
    """(exit status, stderr) of `ptncn ARGV` run in this process."""
    rc = cli.main([str(a) for a in argv])
    return rc, capsys.readouterr().err


def one_error(capsys, *argv) -> str:
    """The message of the one `error:` line `ptncn ARGV` must print, with status 2."""
    rc, err = run_cli(capsys, *argv)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), (rc, err)
    assert "Traceback" not in err
    return lines[0][len("error: "):]


def train_args(tmp_path, *extra, config=None):
    return ["train", *(["--config", config] if config else []), "--steps", "10", *TINY, *extra,
            "--run-dir", tmp_path / "run"]


# -- config files ----------------------------------------------------------------------------------
def test_config_of_binary_garbage(tmp_path, capsys):
    path = tmp_path / "garbage.toml"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe" + bytes(range(256)))
    msg = one_error(capsys, "train", "--config", path)
    assert msg.startswith(f"{path} is not valid TOML: not UTF-8 text (byte 0 is 0x89); is it a binary file?")


def test_config_that_is_a_directory(tmp_path, capsys):
    msg = one_error(capsys, "train", "--config", tmp_path)
    assert msg.startswith(f"{tmp_path} is a directory, not a config file")


def test_config_larger_than_a_config(tmp_path, capsys):
    path = tmp_path / "huge.toml"
    with open(path, "wb") as f:
        f.truncate(2 << 30)  # sparse: costs no disk, and must not be read
    assert one_error(capsys, "train", "--config", path) == \
        f"{path} is larger than 1,048,576 bytes: not a config file (a few KB of TOML)"


def test_section_that_is_not_a_table(tmp_path, capsys):
    path = tmp_path / "m5.toml"
    path.write_text("model = 5\n")
    assert one_error(capsys, "train", "--config", path) == "[model] must be a table of keys, not 5"
    assert one_error(capsys, "train", "--config", path, "--set", "model.hidden=[16,16]") == \
        f"[model] must be a table of keys, not 5 (in {path}); --set model.hidden=[16,16] cannot add a key to it"


def test_inference_steps_has_a_limit(tmp_path, capsys):
    from ptncn_dist.config import load
    from ptncn_dist.core.spec import MAX_INFERENCE_STEPS
    assert MAX_INFERENCE_STEPS == 1000 and load(None, ["model.inference_steps=1000"]).model.inference_steps == 1000
    msg = one_error(capsys, *train_args(tmp_path, "--set", "model.inference_steps=100000"))
    assert msg.startswith("model.inference_steps (K, state-correction iterations per step) must be an integer "
                          "from 1 to 1000, not 100000 (each iteration costs about a tenth of a step")
    assert not (tmp_path / "run").exists()


# -- PTB files -------------------------------------------------------------------------------------
def ptb_dir(tmp_path, fmt: str, text: str, vocab: str = "a\nb\n") -> Path:
    """A directory of PTB files of format `fmt` ('word', 'char' or 'ids'), every split `text`."""
    d = tmp_path / f"ptb_{fmt}"
    d.mkdir()
    for split in ("train", "valid", "test"):
        name = {"word": f"ptb.{split}.txt", "char": f"ptb.char.{split}.txt", "ids": f"{split}X.txt"}[fmt]
        (d / name).write_text(text)
    if fmt == "ids":
        (d / "vocab.txt").write_text(vocab)
    return d


@pytest.mark.parametrize("fmt, first", [("char", "ptb.char.train.txt"), ("word", "ptb.train.txt"),
                                        ("ids", "trainX.txt")])
def test_ptb_files_of_blank_lines(tmp_path, capsys, fmt, first):
    """Char files of blank lines crashed (IndexError: an empty vocabulary); word and id files of
    blank lines trained "successfully" on nothing."""
    d = ptb_dir(tmp_path, fmt, "\n\n\n")
    msg = one_error(capsys, *train_args(tmp_path, "--set", f'data.path="{d}"', config=PTB_CHAR))
    assert msg == f"{d / first}: all 3 lines are blank; expected one sentence per line"


def test_ptb_id_of_20_digits(tmp_path, capsys):
    d = ptb_dir(tmp_path, "ids", "0,1\n1,12345678901234567890,0\n")
    msg = one_error(capsys, *train_args(tmp_path, "--set", f'data.path="{d}"', config=PTB_CHAR))
    assert msg == f"{d / 'trainX.txt'}:2: id 12345678901234567890 is outside the vocabulary range 0..1"


def test_sparse_2gb_ptb_file_is_refused_before_reading(tmp_path, capsys):
    """A 2 GiB file was read whole (10.5 GB peak) before anything refused it."""
    d = ptb_dir(tmp_path, "word", "a b\n")
    with open(d / "ptb.train.txt", "r+b") as f:
        f.truncate(2 << 30)
    msg = one_error(capsys, *train_args(tmp_path, "--set", f'data.path="{d}"', config=PTB_CHAR))
    assert msg == (f"{d / 'ptb.train.txt'}: 2,147,483,648 bytes (2,048.0 MiB), larger than the 512.0 MiB a text "
                   f"file may have (ptb.MAX_TEXT_BYTES; PTB's largest file is 5 MB)")


def test_text_read_is_bounded_for_a_pipe(tmp_path, monkeypatch):
    """A file whose size the system does not tell (a pipe) is read only up to the limit."""
    from ptncn_dist.data import ptb
    from ptncn_dist.errors import DataError
    monkeypatch.setattr(ptb, "MAX_TEXT_BYTES", 64)
    path = tmp_path / "small.txt"
    path.write_text("x\n" * 32)
    assert len(ptb.read_lines(path)) == 32
    path.write_text("x\n" * 33)
    with pytest.raises(DataError, match="66 bytes"):
        ptb.read_lines(path)
    fifo = tmp_path / "fifo.txt"
    os.mkfifo(fifo)
    import threading

    def feed():
        try:
            with open(fifo, "wb") as w:
                w.write(b"y\n" * 1000)
        except BrokenPipeError:
            pass
    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    with pytest.raises(DataError, match="more than 64 bytes, larger than the 64 bytes"):
        ptb.read_lines(fifo)
    writer.join(5)


# -- sequence lengths and t_prime ------------------------------------------------------------------
def test_t_prime_past_the_video_length(tmp_path, capsys):
    msg = one_error(capsys, *train_args(tmp_path, "--set", "data.seq_len=5", "--set", "model.t_prime=5",
                                        "--set", "data.frame=32"))
    assert msg == ("model.t_prime = 5 leaves no step to score: every video has data.seq_len = 5 frames (steps "
                   "0..4) and only steps t >= model.t_prime of a sequence are scored and learned; set "
                   "model.t_prime below 5 or data.seq_len above 5")
    assert not (tmp_path / "run" / "config.toml").exists()


def test_t_prime_past_the_longest_sentence(tmp_path, capsys):
    d = ptb_dir(tmp_path, "word", "a b\n\nb\n")
    args = train_args(tmp_path, "--set", 'data.source="ptb_word"', "--set", f'data.path="{d}"',
                      "--set", "model.t_prime=3", config=PTB_CHAR)
    assert one_error(capsys, *args) == (
        f"model.t_prime = 3 leaves no step to score: the longest sentence of PTB words from {d / 'ptb.train.txt'} "
        f"has 3 tokens and only steps t >= model.t_prime of a sequence are scored and learned; set model.t_prime "
        f"below 3")
    msg = one_error(capsys, *args[:-2], "--set", "model.t_prime=2", "--set", "data.max_len=2", *args[-2:])
    assert "has 2 tokens (cut to data.max_len = 2)" in msg


# -- IDX files -------------------------------------------------------------------------------------
def idx_dir(tmp_path, count: int, rows: int, cols: int) -> Path:
    d = tmp_path / "idx"
    d.mkdir()
    for split in ("train", "t10k"):
        data = struct.pack(">iiii", 2051, count, rows, cols) + bytes(count * rows * cols)
        (d / f"{split}-images-idx3-ubyte").write_bytes(data)
    return d


def test_idx_of_0x0_images(tmp_path, capsys):
    """Images of no pixels gave blank videos that trained "successfully"."""
    d = idx_dir(tmp_path, 5, 0, 0)
    msg = one_error(capsys, *train_args(tmp_path, "--set", f'data.path="{d}"', "--set", "data.frame=8"))
    assert msg == f"{d / 't10k-images-idx3-ubyte'}: IDX header says 5 images of 0x0 pixels; an image needs at least 1x1"


def test_idx_of_no_images(tmp_path, capsys):
    d = idx_dir(tmp_path, 0, 4, 4)
    msg = one_error(capsys, *train_args(tmp_path, "--set", f'data.path="{d}"', "--set", "data.frame=8"))
    assert msg == f"{d / 't10k-images-idx3-ubyte'}: IDX header says 0 images; expected at least one"


def test_idx_gzip_bomb_is_not_inflated(tmp_path, monkeypatch):
    import gzip
    from ptncn_dist.data import idx
    from ptncn_dist.errors import DataError
    monkeypatch.setattr(idx, "MAX_IDX_BYTES", 1000)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(struct.pack(">iiii", 2051, 100, 10, 10) + bytes(10_000)))
    with pytest.raises(DataError, match="decompresses to more than 1,000 bytes"):
        idx.read_idx(path)


# -- divergence in an evaluation -------------------------------------------------------------------
def test_initial_evaluation_that_diverges(tmp_path, capsys):
    msg = one_error(capsys, *train_args(tmp_path, "--set", "model.alpha=1e308", "--set", "data.frame=32"))
    assert msg.startswith("non-finite values in the evaluation after step 0 (test batch 0, sequence step 0) in "
                          "layer 1 (first seen: ")
    assert msg.endswith(": the evaluated weights and settings give NaN or Inf")


# -- re-signed checkpoints whose layer state is wrong ----------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run of 30 steps: its newest checkpoint is mid-sequence (step 10 of 20), so it carries state."""
    run = tmp_path_factory.mktemp("bad_input") / "run"
    rc = cli.main(["train", "--steps", "30", *TINY, "--set", "data.frame=32", "--run-dir", str(run)])
    assert rc == 0
    return run


def resign(run: Path, layer: int, change) -> str:
    """Apply `change` to layer `layer`'s payload in the newest checkpoint, re-encode the shard and
    re-sign the manifest with its new size and sha256 (as an editing user could); the shard path."""
    ckpt = sorted(glob.glob(str(run / "checkpoints" / "ckpt-*")))[-1]
    shard = os.path.join(ckpt, f"layer-{layer}.msgpack")
    with open(shard, "rb") as f:
        obj = codec.unpackb(f.read())
    change(obj["payload"])
    data = codec.packb(obj)
    with open(shard, "wb") as f:
        f.write(data)
    manifest = os.path.join(ckpt, cm.MANIFEST)
    with open(manifest, "rb") as f:
        body = codec.unpackb(codec.unpackb(f.read())["body"])
    for rec in body["shards"]:
        if rec["name"] == f"layer-{layer}.msgpack":
            rec["bytes"], rec["sha256"] = len(data), hashlib.sha256(data).hexdigest()
    with open(manifest, "wb") as f:
        f.write(cm.encode(body))
    return shard


def set_slot(key, value):
    return lambda p: [sl.update({key: value}) for sl in p["slots"].values()]


def set_carry(key, value):
    return lambda p: p["carry"].update({key: value})


DAMAGED = {
    "carry of the wrong shape": (2, set_carry("y", np.zeros((4, 5), np.float32)),
                                 "saved carried state y must be (4, 8) floats (batch 4), not an array of dtype "
                                 "float32 and shape (4, 5)"),
    "carry of the wrong type": (1, set_carry("y", "hello"),
                                "saved carried state y must be a (batch, 8) float array, not str 'hello'"),
    "carry of the wrong dtype": (1, set_carry("inp", np.zeros((4, 1024), np.int64)),
                                 "saved carried state inp must be (4, 1024) floats (batch 4), not an array of "
                                 "dtype int64 and shape (4, 1024)"),
    "carry missing in one layer": (1, lambda p: p.update(carry=None),
                                   None),
    "negative Adam step count": (1, set_slot("t", -1), "saved optimizer step count t of weight M must be an "
                                                        "integer >= 0, not -1"),
    "fractional Adam step count": (2, set_slot("t", 2.5), "saved optimizer step count t of weight M must be an "
                                                          "integer >= 0, not 2.5"),
    "weight of the wrong type": (1, lambda p: p["params"].update(W=np.zeros((8, 1024), np.bool_)),
                                 "saved weight W must be a float array, not an array of dtype bool and shape "
                                 "(8, 1024)"),
}


@pytest.mark.parametrize("case", list(DAMAGED))
def test_resigned_checkpoint_with_a_wrong_layer_state(trained, tmp_path, capsys, case):
    """Such a checkpoint loaded and then crashed (a matmul's ValueError, ZeroDivisionError from
    Adam's t = 0) or ran on a truncated step count. Now its layer refuses it, naming the shard and
    the field: `ptncn eval` stops with one line, `--resume` falls back with one warning line."""
    layer, change, what = DAMAGED[case]
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    shard = resign(run, layer, change)
    if what is None:  # layer 1 without its carried state, layer 2 with one
        shard = shard.replace("layer-1", "layer-2")
        what = "saved carried state for a batch of 4, but layer 1 saved no carried state: the layers' carried states " \
               "must agree"
        layer = 2
    damaged = f"{shard}: layer {layer}: {what}"
    msg = one_error(capsys, "eval", run)
    assert msg.startswith(f"damaged checkpoint: {damaged}") and "pass --allow-older" in msg
    rc, err = run_cli(capsys, "train", "--resume", run, "--steps", "35")
    assert rc == 0 and "Traceback" not in err
    assert err.strip().splitlines() == [
        f"warning: damaged checkpoint skipped: {damaged}; falling back to step 0 "
        f"({run / 'checkpoints' / 'ckpt-0000000000'})"]


def test_resigned_checkpoint_for_another_batch(trained, tmp_path, capsys):
    """Every layer's carried state consistently for 3 sequences, the data's batches have 4."""
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    for layer in (1, 2):
        resign(run, layer, lambda p: p.update(carry={k: None if v is None else np.zeros((3,) + v.shape[1:], v.dtype)
                                                     for k, v in p["carry"].items()}))
    assert one_error(capsys, "train", "--resume", run, "--steps", "35") == (
        "layer 1 has a carried state for a batch of 3, and continuing a sequence at step 10 needs one for the "
        "data's batch of 4: the checkpoint it was restored from does not fit this data")


def test_eval_of_nan_weights(trained, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    resign(run, 1, lambda p: p["params"]["W"].__setitem__((0, 0), np.nan))
    msg = one_error(capsys, "eval", run)
    assert msg.startswith("non-finite values in the evaluation after step 30 (test batch 0, sequence step 0) in "
                          "layer 1 (first seen: its eps, y sent to layer 2); non-finite now in layer 1: W")


def test_a_cluster_address_where_nothing_answers_is_one_line_not_a_wait_without_end(capsys, tmp_path):
    """`--address` with a typo: Ray would wait for that GCS for ever. The address is tried first,
    and the refused run leaves no run directory behind."""
    import socket
    with socket.socket() as s:  # a port with no listener: bound, never listened on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        msg = one_error(capsys, "train", "--engine", "ray", "--address", f"127.0.0.1:{port}", "--steps", "5",
                        "--run-dir", tmp_path / "run", *TINY)
    assert msg == (f"engine.address = '127.0.0.1:{port}': nothing answers there (connection refused); start the cluster first (ray start --head --node-ip-address=HOST --port=PORT) "
                   f"or correct the address")
    assert not (tmp_path / "run").exists()
