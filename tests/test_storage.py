"""Checkpoints in an object store: a real S3-protocol server (moto, a subprocess on 127.0.0.1)
behind `s3://bucket/prefix?endpoint_override=...`. Round trips, damaged objects, the manifest
written last, and a Ray run whose layer actors write their shards to S3, one of them killed
mid-run, ending on the weights of an uninterrupted run; then a stopped run resumed from S3."""
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from ptncn_dist import checkpoint
from ptncn_dist.checkpoint import storage
from ptncn_dist.checkpoint import CheckpointWriteError
from ptncn_dist.errors import CheckpointError, ConfigError
from helpers import FireAt, local_ray
from test_checkpoint import write

pytest.importorskip("moto.server")
pafs = pytest.importorskip("pyarrow.fs")

BUCKET = "ckpts"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_EC2_METADATA_DISABLED": "true"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory):
    """A moto S3 server on 127.0.0.1, up once it answers HTTP; stopped by pid even when a test fails."""
    port = _free_port()
    log = open(tmp_path_factory.mktemp("moto") / "server.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, "moto server exited at start"
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError("moto server did not answer within 60 s") from None
                time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


@pytest.fixture(scope="module")
def s3(s3_endpoint):
    """A function prefix -> s3:// URI of a fresh prefix in a bucket created on the server; the
    credentials are in the environment (also for Ray workers started later by this process)."""
    with pytest.MonkeyPatch.context() as mp:
        for k, v in CREDENTIALS.items():
            mp.setenv(k, v)
        mp.setenv("AWS_CONFIG_FILE", "/nonexistent")
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        query = f"endpoint_override={s3_endpoint}&scheme=http&region=us-east-1"
        fs, _ = pafs.FileSystem.from_uri(f"s3://{BUCKET}?{query}&allow_bucket_creation=true")
        fs.create_dir(BUCKET)
        yield lambda prefix: f"s3://{BUCKET}/{prefix}?{query}"


def obj(loc):
    """(filesystem, path) of a location, to damage objects behind the code's back."""
    return storage.resolve(loc)


def test_locations_join_name_and_check():
    loc = "s3://AK:SECRET@b/run?endpoint_override=h:1&scheme=http"
    assert storage.join(loc, "ckpt-1", "m") == "s3://AK:SECRET@b/run/ckpt-1/m?endpoint_override=h:1&scheme=http"
    assert storage.basename(storage.join(loc, "ckpt-1")) == "ckpt-1"
    assert "SECRET" not in storage.display(loc) and storage.display("/a/b") == "/a/b"
    with pytest.raises(ConfigError, match=r"^train.checkpoint_dir = 'foo://x/y': unknown storage scheme 'foo'"):
        storage.check_location("foo://x/y")
    storage.check_location("s3://bucket/prefix")
    storage.check_location("relative/dir")


def test_round_trip_list_load_prune(s3):
    root = s3("unit")
    for step in (10, 20, 30):
        write(root, step, step)
    assert [storage.basename(p) for p in checkpoint.list_checkpoints(root)] == \
        ["ckpt-0000000010", "ckpt-0000000020", "ckpt-0000000030"]
    loaded = checkpoint.latest_valid(root)
    assert loaded.manifest["step"] == 30 and loaded.shards["layer-2.msgpack"]["params"]["M"][0, 0] == 32
    assert loaded.path == checkpoint.checkpoint_dir(root, 30)
    checkpoint.write_shard(checkpoint.checkpoint_dir(root, 5), "layer-1.msgpack", {"x": 1})  # a leftover
    checkpoint.prune(root, keep=2)
    assert sorted(storage.list_dir(root)) == ["ckpt-0000000020", "ckpt-0000000030"]
    assert checkpoint.list_checkpoints(s3("nothing-here")) == []


def test_file_uri_round_trip(tmp_path):
    """Any pyarrow.fs URI works, file:// too (its directories are created)."""
    root = "file://" + str(tmp_path / "ck")
    for step in (10, 20, 30):
        write(root, step, step)
    checkpoint.prune(root, keep=2)
    assert [storage.basename(p) for p in checkpoint.list_checkpoints(root)] == ["ckpt-0000000020", "ckpt-0000000030"]
    assert checkpoint.latest_valid(root).shards["layer-1.msgpack"]["params"]["M"][0, 0] == 31


def test_manifest_is_written_last(s3):
    """While the shards are written no checkpoint of the step is listed, and rewriting a step
    that exists deletes its manifest before any shard; a checkpoint without manifest is none."""
    root = s3("order")
    seen = []

    def shards(d):
        seen.append([storage.basename(p) for p in checkpoint.list_checkpoints(root)])
        recs = [checkpoint.write_shard(d, "layer-1.msgpack", {"v": len(seen)})]
        seen.append(storage.exists(storage.join(d, checkpoint.MANIFEST)))
        return recs

    for _ in range(2):
        checkpoint.save(root, 10, shards, position={"batch": 0, "t": 0}, config_hash="h", extra={})
    assert seen == [[], False, [], False]
    assert checkpoint.latest_valid(root).shards["layer-1.msgpack"] == {"v": 3}
    checkpoint.write_shard(checkpoint.checkpoint_dir(root, 20), "layer-1.msgpack", {"v": 9})
    assert [storage.basename(p) for p in checkpoint.list_checkpoints(root)] == ["ckpt-0000000010"]
    with pytest.warns(checkpoint.CheckpointWarning, match="ckpt-0000000020"):  # a reader calls it damaged
        assert checkpoint.latest_valid(root).manifest["step"] == 10


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_damaged_shard_object_falls_back_like_a_file(s3, tmp_path, damage):
    """The same damage to an object and to a local file gives the same message, but for the name."""
    messages = []
    for root in (s3(f"damage-{damage}"), str(tmp_path)):
        write(root, 10, 10)
        newest = write(root, 20, 20)
        shard = storage.join(newest, "layer-2.msgpack")
        data = storage.read_bounded(shard, None)
        if damage == "truncate":
            storage.write_bytes(shard, data[: len(data) // 2])
        elif damage == "flip":
            pos = len(data) - 5
            storage.write_bytes(shard, data[:pos] + bytes([data[pos] ^ 0xFF]) + data[pos + 1:])
        else:
            storage.delete_file(shard)
        with pytest.warns(UserWarning, match="layer-2.msgpack") as caught:
            loaded = checkpoint.latest_valid(root)
        assert loaded.manifest["step"] == 10 and loaded.shards["layer-1.msgpack"]["params"]["M"][0, 0] == 11
        assert len(loaded.skipped) == 1 and "\n" not in loaded.skipped[0]
        messages.append(loaded.skipped[0].replace(storage.display(shard), "SHARD"))
        assert str(caught[0].message).count(storage.display(shard)) == 1
    assert messages[0] == messages[1] and messages[0].startswith("SHARD: ")


def test_damaged_manifest_and_nothing_usable(s3):
    root = s3("nothing-usable")
    d = write(root, 10, 10)
    fs, path = obj(storage.join(d, checkpoint.MANIFEST))
    with fs.open_output_stream(path) as out:
        out.write(b"\x81\xa6format")
    with pytest.raises(CheckpointError, match=r"^no usable checkpoint under s3://ckpts/nothing-usable\?.*manifest"):
        with pytest.warns(UserWarning):
            checkpoint.latest_valid(root)


def test_unwritable_store_is_one_line(s3):
    """A bucket that does not exist: CheckpointWriteError, one line naming the URI."""
    root = s3("x").replace(f"s3://{BUCKET}/", "s3://no-such-bucket/")
    with pytest.raises(CheckpointWriteError) as err:
        checkpoint.save(root, 10, lambda d: [checkpoint.write_shard(d, "layer-1.msgpack", {"x": 1})],
                        position={"batch": 0, "t": 0}, config_hash="h", extra={})
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("cannot write the checkpoint of step 10 under s3://no-such-bucket/x?")
    assert "the last complete checkpoint is none" in msg


# -- a Ray run checkpointing to S3 -------------------------------------------------------------
SETS = ["model.hidden=[16,12]", "data.frame=32", "data.batch=4", "data.seq_len=10", 'model.dtype="float64"',
        "train.eval_batches=1", "train.eval_every=0", "train.log_every=10", "train.checkpoint_every=20",
        "train.plots=false", "train.progress=false", "train.references=false", "train.tensorboard=false",
        "engine.cpus_per_layer=0.5"]


def reference_weights(steps):
    from ptncn_dist.config import load
    from ptncn_dist.trainer import Trainer
    t = Trainer(load(None, SETS + [f"train.steps={steps}"]), None, log=lambda *_: None)
    t.run()
    return t.engine.weights()


def assert_same(got, want):
    assert sorted(got) == sorted(want)
    assert max(float(np.abs(got[k] - want[k]).max()) for k in want) == 0.0


@pytest.mark.ray
@pytest.mark.slow
def test_ray_run_on_s3_survives_a_killed_actor_and_resumes(s3, tmp_path):
    """Layer actors write their own shards to S3 and read them back there; one is SIGKILLed at
    step 30, the run rolls back to the S3 checkpoint of step 20 and ends on the uninterrupted
    weights. A second Trainer (one process: the config hash leaves the engine out) then resumes
    that stopped run from S3 alone and continues it, again exactly, and `ptncn export RUN_DIR`
    reads the run's weights back from its S3 root. About 40 s on 2 busy cores."""
    from ptncn_dist.config import load
    from ptncn_dist.checkpoint.rundir import read_run_id
    from ptncn_dist.studies.chaos import kill_actor_process
    from ptncn_dist.trainer import Trainer

    root = s3("run")
    sets = SETS + [f'train.checkpoint_dir="{root}"']
    with local_ray(2):
        killed = []

        def kill_layer_2(trainer):
            victim = trainer.engine.placement[1]
            killed.append(kill_actor_process(victim["node_id"], victim["pid"]))

        at_30 = FireAt(30, kill_layer_2)  # a trainer callback: at the end of the segment that reaches step 30
        trainer = Trainer(load(None, sets + ['engine.name="ray"', "train.steps=40"]), str(tmp_path),
                          log=lambda *_: None, callbacks=[at_30])
        try:
            trainer.run()
            first = trainer.engine.weights()
        finally:
            trainer.close()
        assert at_30.fired == [30] and killed == [True] and trainer.recoveries == 1
        # the next segment (30 -> 40) met the dead actor; the run went back to step 20's S3 checkpoint
        rec = trainer.recovery_log[0]
        assert (rec["failed_by_step"], rec["resumed_from_step"]) == (40, 20)
        assert not (tmp_path / "checkpoints").exists()
        own = trainer.ckpt_root  # the run's namespace under the shared prefix
        assert own == storage.join(root, read_run_id(str(tmp_path)))
        assert [storage.basename(p) for p in checkpoint.list_checkpoints(own)] == \
            ["ckpt-0000000000", "ckpt-0000000020", "ckpt-0000000040"]

        second = Trainer(load(None, sets + ["train.steps=60"]), str(tmp_path), resume=True, log=lambda *_: None)
        try:
            assert second.step == 40
            second.run()
            resumed = second.engine.weights()
        finally:
            second.close()
        assert second.ckpt_root == own
        assert [storage.basename(p) for p in checkpoint.list_checkpoints(own)][-1] == "ckpt-0000000060"
    assert_same(first, reference_weights(40))
    assert_same(resumed, reference_weights(60))
    from ptncn_dist.cli import main
    npz = tmp_path / "w.npz"
    assert main(["export", str(tmp_path), "--npz", str(npz)]) == 0  # the run's S3 root, not RUN_DIR/checkpoints
    assert_same(dict(np.load(npz)), resumed)
