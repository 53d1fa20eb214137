"""Checkpoints: msgpack shards + manifest, verified on load, damaged ones skipped; format 2's
plain optimizer slots (the true velocity), format 1 still read, newer formats refused."""
import hashlib
import os
import re

import msgpack
import numpy as np
import pytest

from ptncn_dist import checkpoint
from ptncn_dist.checkpoint import manifest as checkpoint_manifest
from ptncn_dist.checkpoint.codec import packb, unpackb
from ptncn_dist.errors import CheckpointError


def write(root, step, value, hash_="h"):
    d = checkpoint.checkpoint_dir(root, step)
    shards = [checkpoint.write_shard(d, f"layer-{l}.msgpack", {"params": {"M": np.full((3, 2), value + l)}})
              for l in (1, 2)]
    checkpoint.write_manifest(d, step=step, position={"batch": step, "t": 0}, config_hash=hash_, shards=shards)
    return d


def edit_manifest(d, **changes):
    """Rewrite a checkpoint's manifest with `changes` (a dict per shard index under "shard0"...),
    re-encoded with a valid checksum: what a buggy or hostile writer could produce."""
    body = checkpoint.read_manifest(d)
    for key, value in changes.items():
        if re.fullmatch(r"shard\d+", key):
            body["shards"][int(key[5:])].update(value)
        else:
            body[key] = value
    body.pop("format", None)
    open(os.path.join(d, checkpoint.MANIFEST), "wb").write(checkpoint_manifest.encode(body))


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


def test_checkpoint_without_manifest_is_damaged_not_silently_skipped(tmp_path):
    """A newest ckpt-<step> directory without a manifest is no checkpoint for the writer (not
    listed, not pruned as complete) but a damaged one for a reader: passed over with a warning
    naming it, never in silence."""
    root = str(tmp_path)
    write(root, 10, 10)
    d = checkpoint.checkpoint_dir(root, 20)
    checkpoint.write_shard(d, "layer-1.msgpack", {"x": 1})
    assert [os.path.basename(p) for p in checkpoint.list_checkpoints(root)] == ["ckpt-0000000010"]
    with pytest.warns(checkpoint.CheckpointWarning, match="ckpt-0000000020/manifest.msgpack"):
        loaded = checkpoint.latest_valid(root)
    assert loaded.manifest["step"] == 10 and len(loaded.skipped) == 1


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
    edit_manifest(d, shard0=dict(bytes=len(evil), sha256=hashlib.sha256(evil).hexdigest()))
    with pytest.raises(CheckpointError):
        checkpoint.load(d)
    assert not marker.exists()


def test_object_dtype_rejected():
    record = msgpack.packb({"__nd__": "|O", "shape": [1], "data": b"\x00" * 8})
    with pytest.raises(CheckpointError, match="not allowed"):
        unpackb(record)


def momentum_engine(opt, sparse=False):
    """Three layers (the middle one stacks M, V and U), float64; token ids when `sparse`."""
    from ptncn_dist.engines.local import LocalEngine
    from ptncn_dist.engines.factory import engine_config
    from ptncn_dist.core.spec import init_params, layer_specs
    from ptncn_dist.core.optim import OptimConfig
    specs = layer_specs(7, [6, 5, 4], sparse_input=sparse, output="softmax" if sparse else "sigmoid")
    params = [init_params(s, 4, 0.3, 0.3, np.float64) for s in specs]
    return LocalEngine(engine_config(OptimConfig(opt, 0.05, 0.9)), specs, params)


def sequences(sparse, T=9, B=3):
    rng = np.random.default_rng(20)
    x = rng.integers(0, 7, (T, B)) if sparse else rng.random((T, B, 7))
    return x, np.ones((T, B))


def save(engine, root, step):
    d = checkpoint.checkpoint_dir(root, step)
    checkpoint.write_manifest(d, step=step, position={"batch": 0, "t": step}, config_hash="h",
                              shards=engine.save_shards(d))


def raw_velocities(engine):
    """Each layer's velocity by weight name, from the optimizer's own (v, v_scale) slots."""
    from ptncn_dist.core import optim
    out = []
    for layer in engine.layers:
        rows = layer.weights.rows
        out.append({name: optim.velocity(layer.stack_slots)[rows[name]] if name in rows
                    else optim.velocity(layer.slots[name]) for name in layer.p})
    return out


def assert_same(a, b, exact=True):
    check = np.testing.assert_array_equal if exact else (
        lambda x, y, err_msg: np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-15, err_msg=err_msg))
    for l, (sa, sb) in enumerate(zip(a.layer_states(), b.layer_states()), start=1):
        for name in sa["params"]:
            check(sa["params"][name], sb["params"][name], err_msg=f"{name}{l}")
            check(sa["slots"][name]["v"], sb["slots"][name]["v"], err_msg=f"v of {name}{l}")


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("opt", ["momentum", "nag"])
def test_momentum_resumes_bit_identically_from_the_true_velocity(tmp_path, opt, sparse):
    """A run saved mid-sequence and resumed from its shards continues bit for bit as the run
    that saved it. The shards hold the true velocity, the optimizer's own v * v_scale, and no
    scale; a run that never saved differs only by that one rounding of the velocity."""
    x, mask = sequences(sparse)
    saved, resumed, never = (momentum_engine(opt, sparse) for _ in range(3))
    for e in (saved, never):
        e.run_segment(x, mask, 0, 5, learn=True, t_prime=1)
    assert saved.layers[1].stack_slots["v_scale"] != 1.0
    want = raw_velocities(saved)
    save(saved, str(tmp_path), 5)
    loaded = checkpoint.latest_valid(str(tmp_path), "h", restore=resumed.load_shards)
    assert loaded.manifest["format"] == 3 and checkpoint.FORMAT == 2
    for l, rec in enumerate(loaded.manifest["shards"]):
        shard = checkpoint.read_shard(loaded.path, rec)
        for name, sl in shard["slots"].items():
            assert set(sl) == {"v"}, name
            np.testing.assert_array_equal(sl["v"], want[l][name], err_msg=f"{name}{l + 1}")
    for e in (saved, resumed, never):
        e.run_segment(x, mask, 5, 9, learn=True, t_prime=1)
    assert_same(saved, resumed)
    assert_same(saved, never, exact=False)


def write_format_1(engine, root, step):
    """A checkpoint as format 1 wrote it: each layer's momentum slots as the optimizer holds
    them, v and v_scale (the stacked weights' rows of the stack's v, sharing its scale)."""
    d = checkpoint.checkpoint_dir(root, step)
    os.makedirs(d)
    records = []
    for l, layer in enumerate(engine.layers, start=1):
        rows = layer.weights.rows
        slots = {name: {"v": (layer.stack_slots["v"][rows[name]] if name in rows else layer.slots[name]["v"]).copy(),
                        "v_scale": (layer.stack_slots if name in rows else layer.slots[name])["v_scale"]}
                 for name in layer.p}
        payload = {"params": {k: v.copy() for k, v in layer.p.items()}, "slots": slots,
                   "carry": {k: None if v is None else v.copy() for k, v in layer.carry.items()}}
        data = packb({"format": 1, "name": f"layer-{l}.msgpack", "payload": payload})
        open(os.path.join(d, f"layer-{l}.msgpack"), "wb").write(data)
        records.append({"name": f"layer-{l}.msgpack", "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    manifest = {"format": 1, "step": step, "position": {"batch": 0, "t": step}, "config_hash": "h",
                "shards": records, "created": 0.0, "extra": {}}
    open(os.path.join(d, checkpoint.MANIFEST), "wb").write(packb(manifest))


@pytest.mark.parametrize("opt", ["momentum", "nag"])
def test_format_1_checkpoint_still_resumes(tmp_path, opt):
    """A format-1 checkpoint (scaled velocity) loads as the true velocity v * v_scale and the
    run goes on as the run that wrote it, up to that rounding."""
    x, mask = sequences(False)
    old, resumed = momentum_engine(opt), momentum_engine(opt)
    old.run_segment(x, mask, 0, 4, learn=True, t_prime=1)
    assert old.layers[0].slots["W"]["v_scale"] != 1.0
    want = raw_velocities(old)
    write_format_1(old, str(tmp_path), 4)
    loaded = checkpoint.latest_valid(str(tmp_path), "h", restore=resumed.load_shards)
    assert loaded.manifest["format"] == 1
    for l, st in enumerate(resumed.layer_states()):
        for name, sl in st["slots"].items():
            assert set(sl) == {"v"}
            np.testing.assert_array_equal(sl["v"], want[l][name], err_msg=f"{name}{l + 1}")
    for e in (old, resumed):
        e.run_segment(x, mask, 4, 9, learn=True, t_prime=1)
    assert_same(old, resumed, exact=False)


@pytest.mark.parametrize("what", ["manifest", "shard"])
def test_newer_format_is_refused_not_skipped(tmp_path, what):
    """A checkpoint from a newer writer stops the load with a FormatError naming the file and
    the formats this version reads; it is not taken for a damaged one and passed over."""
    root = str(tmp_path)
    write(root, 10, 10)
    newest = write(root, 20, 20)
    path = os.path.join(newest, checkpoint.MANIFEST if what == "manifest" else "layer-1.msgpack")
    obj = unpackb(open(path, "rb").read())
    obj["format"] = 9
    data = packb(obj)
    open(path, "wb").write(data)
    if what == "shard":
        edit_manifest(newest, shard0=dict(bytes=len(data), sha256=hashlib.sha256(data).hexdigest()))
    newer = rf"{what} format 9, written by a newer version.*reads formats 1, 2" + (", 3" if what == "manifest" else "")
    with pytest.raises(checkpoint.FormatError, match=newer):
        checkpoint.latest_valid(root)


def test_file_without_format_is_not_a_checkpoint(tmp_path):
    d = write(str(tmp_path), 10, 10)
    open(os.path.join(d, checkpoint.MANIFEST), "wb").write(packb({"step": 10}))
    with pytest.raises(CheckpointError, match="not a checkpoint manifest"):
        checkpoint.read_manifest(d)


EXPECT = checkpoint.Expect(("layer-1.msgpack", "layer-2.msgpack"), 1 << 20)


def quiet(_msg):
    pass


def test_every_manifest_bit_flip_is_detected_or_harmless(tmp_path):
    """Each single-bit flip of a real manifest is detected (fallback to the older checkpoint, or
    a FormatError refusal) or leaves exactly the same state; none crashes, none resumes at
    another step or data position."""
    root = str(tmp_path)
    write(root, 10, 10)
    newest = write(root, 20, 20)
    path = os.path.join(newest, checkpoint.MANIFEST)
    good = open(path, "rb").read()
    want = checkpoint.latest_valid(root, "h", expect=EXPECT, warn=quiet)
    assert want.manifest["step"] == 20 and not want.skipped
    outcomes = {"same": 0, "fallback": 0, "refused": 0}
    fd = os.open(path, os.O_RDWR)  # each flip written in place: fast on any filesystem
    for bit in range(8 * len(good)):
        os.pwrite(fd, bytes([good[bit // 8] ^ (1 << (bit % 8))]), bit // 8)
        try:
            got = checkpoint.latest_valid(root, "h", expect=EXPECT, warn=quiet)
        except checkpoint.FormatError:
            outcomes["refused"] += 1
            continue
        finally:
            os.pwrite(fd, good[bit // 8: bit // 8 + 1], bit // 8)
        if got.manifest["step"] == 20:
            assert got.manifest == want.manifest and not got.skipped, bit
            for name, shard in want.shards.items():
                np.testing.assert_array_equal(got.shards[name]["params"]["M"], shard["params"]["M"])
            outcomes["same"] += 1
        else:
            assert got.manifest["step"] == 10 and got.skipped and got.manifest["position"] == {"batch": 10, "t": 0}, bit
            outcomes["fallback"] += 1
    os.close(fd)
    assert outcomes["fallback"] > 0.9 * 8 * len(good), outcomes


def test_manifest_with_fewer_shards_than_layers_is_damaged(tmp_path):
    """A manifest listing one shard for a two-layer config (or the shards out of order) is
    damaged: the missing layer would keep fresh weights."""
    root = str(tmp_path)
    write(root, 10, 10)
    newest = write(root, 20, 20)
    body = checkpoint.read_manifest(newest)
    edit_manifest(newest, shards=body["shards"][:1])
    seen = []
    loaded = checkpoint.latest_valid(root, "h", expect=EXPECT, warn=seen.append)
    assert loaded.manifest["step"] == 10 and "this config has 2" in seen[0]
    edit_manifest(newest, shards=body["shards"][::-1])
    assert checkpoint.latest_valid(root, "h", expect=EXPECT, warn=quiet).manifest["step"] == 10


def test_step_must_match_the_directory_name(tmp_path):
    root = str(tmp_path)
    write(root, 10, 10)
    newest = write(root, 20, 20)
    edit_manifest(newest, step=30)
    seen = []
    assert checkpoint.latest_valid(root, "h", expect=EXPECT, warn=seen.append).manifest["step"] == 10
    assert "does not match the directory name" in seen[0]


@pytest.mark.parametrize("name", ["/dev/zero", "../ckpt-0000000010/layer-1.msgpack", "..", "a/b"])
def test_shard_names_must_be_plain_file_names(tmp_path, name):
    """Absolute, `..` and nested names in a manifest are damage; nothing outside is opened."""
    root = str(tmp_path)
    write(root, 10, 10)
    newest = write(root, 20, 20)
    edit_manifest(newest, shard0={"name": name})
    seen = []
    assert checkpoint.latest_valid(root, "h", warn=seen.append).manifest["step"] == 10
    assert "not a plain file name" in seen[0]


def test_shard_sizes_are_checked_before_reading(tmp_path):
    """A 6 GB sparse shard, and a symlink to /dev/zero under a shard's own name, are refused
    from their size / file type: no read, no MemoryError, a fallback."""
    root = str(tmp_path)
    write(root, 10, 10)
    newest = write(root, 20, 20)
    shard = os.path.join(newest, "layer-2.msgpack")
    with open(shard, "r+b") as fh:
        fh.truncate(6 << 30)
    seen = []
    assert checkpoint.latest_valid(root, "h", expect=EXPECT, warn=seen.append).manifest["step"] == 10
    assert "6442450944 bytes, the manifest says" in seen[0]
    edit_manifest(newest, shard1={"bytes": 6 << 30})
    seen.clear()
    assert checkpoint.latest_valid(root, "h", expect=EXPECT, warn=seen.append).manifest["step"] == 10
    assert "more than the 1048576 this config's shapes allow" in seen[0]
    os.remove(shard)
    os.symlink("/dev/zero", shard)
    seen.clear()
    assert checkpoint.latest_valid(root, "h", warn=seen.append).manifest["step"] == 10
    assert "layer-2.msgpack: cannot open" in seen[0]


def test_any_error_while_restoring_falls_back(tmp_path):
    """Not only CheckpointError: whatever a restore raises marks that checkpoint damaged."""
    root = str(tmp_path)
    write(root, 10, 10)
    write(root, 20, 20)

    def restore(path, manifest):
        if manifest["step"] == 20:
            raise KeyError("M")

    seen = []
    loaded = checkpoint.latest_valid(root, "h", restore=restore, warn=seen.append)
    assert loaded.manifest["step"] == 10 and "KeyError" in seen[0]
