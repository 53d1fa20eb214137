"""Checkpoints: msgpack shards + manifest, verified on load, damaged ones skipped."""
import os

import msgpack
import numpy as np
import pytest

from ptncn_dist import checkpoint
from ptncn_dist.codec import packb, unpackb
from ptncn_dist.errors import CheckpointError


def write(root, step, value, hash_="h"):
    d = checkpoint.checkpoint_dir(root, step)
    shards = [checkpoint.write_shard(d, f"layer-{l}.msgpack", {"params": {"M": np.full((3, 2), value + l)}})
              for l in (1, 2)]
    checkpoint.write_manifest(d, step=step, position={"batch": step, "t": 0}, config_hash=hash_, shards=shards)
    return d


def test_round_trip_exact(tmp_path):
    arrays = {"f32": np.random.rand(3, 4).astype(np.float32), "f64": np.random.rand(5), "i": np.arange(4),
              "empty": np.zeros((0, 3)), "nested": [1, {"x": np.ones(2)}], "s": "text", "n": None}
    back = unpackb(packb(arrays))
    for k in ("f32", "f64", "i", "empty"):
        assert back[k].dtype == arrays[k].dtype and np.array_equal(back[k], arrays[k])
    assert back["nested"][1]["x"].tolist() == [1.0, 1.0] and back["s"] == "text" and back["n"] is None


def test_latest_and_prune(tmp_path):
    root = str(tmp_path)
    for step in (10, 20, 30):
        write(root, step, step)
    assert checkpoint.latest_valid(root).manifest["step"] == 30
    checkpoint.prune(root, keep=2)
    assert [os.path.basename(p) for p in checkpoint.list_checkpoints(root)] == ["ckpt-0000000020", "ckpt-0000000030"]


def test_checkpoint_without_manifest_does_not_exist(tmp_path):
    root = str(tmp_path)
    write(root, 10, 10)
    d = checkpoint.checkpoint_dir(root, 20)
    checkpoint.write_shard(d, "layer-1.msgpack", {"x": 1})
    assert checkpoint.latest_valid(root).manifest["step"] == 10


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_damaged_newest_falls_back_with_warning(tmp_path, damage):
    root = str(tmp_path)
    write(root, 10, 10)
    newest = write(root, 20, 20)
    shard = os.path.join(newest, "layer-2.msgpack")
    data = open(shard, "rb").read()
    if damage == "truncate":
        open(shard, "wb").write(data[: len(data) // 2])
    elif damage == "flip":
        pos = len(data) - 5
        open(shard, "wb").write(data[:pos] + bytes([data[pos] ^ 0xFF]) + data[pos + 1:])
    else:
        os.remove(shard)
    with pytest.warns(UserWarning, match="layer-2.msgpack"):
        loaded = checkpoint.latest_valid(root)
    assert loaded.manifest["step"] == 10
    assert loaded.shards["layer-1.msgpack"]["params"]["M"][0, 0] == 11


def test_all_damaged_names_the_file(tmp_path):
    root = str(tmp_path)
    d = write(root, 10, 10)
    open(os.path.join(d, "layer-1.msgpack"), "wb").write(b"\x00")
    with pytest.warns(UserWarning), pytest.raises(CheckpointError, match="layer-1.msgpack"):
        checkpoint.latest_valid(root)


def test_config_hash_mismatch(tmp_path):
    root = str(tmp_path)
    write(root, 10, 10, hash_="aaa")
    with pytest.warns(UserWarning), pytest.raises(CheckpointError, match="config hash"):
        checkpoint.latest_valid(root, "bbb")


def test_loading_never_runs_code(tmp_path):
    """A shard holding a pickle (or any non-msgpack bytes) is rejected, never executed."""
    import pickle
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    root = str(tmp_path / "ck")
    d = write(root, 10, 10)
    evil = pickle.dumps(Evil())
    path = os.path.join(d, "layer-1.msgpack")
    open(path, "wb").write(evil)
    manifest = unpackb(open(os.path.join(d, "manifest.msgpack"), "rb").read())
    import hashlib
    manifest["shards"][0].update(bytes=len(evil), sha256=hashlib.sha256(evil).hexdigest())
    open(os.path.join(d, "manifest.msgpack"), "wb").write(packb(manifest))
    with pytest.raises(CheckpointError):
        checkpoint.load(d)
    assert not marker.exists()


def test_object_dtype_rejected():
    record = msgpack.packb({"__nd__": "|O", "shape": [1], "data": b"\x00" * 8})
    with pytest.raises(CheckpointError, match="not allowed"):
        unpackb(record)
