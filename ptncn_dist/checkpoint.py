"""Checkpoints on disk: one msgpack shard per layer plus a manifest written last.

Layout: ROOT/ckpt-<step>/layer-<l>.msgpack ... and manifest.msgpack. Each file is written to a
temporary name, flushed, fsynced and renamed, so a reader never sees half a file; a checkpoint
exists only once its manifest does. The manifest records the step, the data position, the config
hash and every shard's name, size and sha256. Loading verifies all of them and never runs code
from a file (msgpack, no pickle); a damaged newest checkpoint falls back to the previous one.

Format 2 (written now): a layer shard's payload is {"params": {name: array}, "slots": {name:
{slot: value}}, "carry": ...} with plain optimizer slots (`LayerWeights.state`): momentum and nag
keep the true velocity as "v". Format 1 kept their velocity as the optimizer holds it, "v" and
"v_scale"; it is still read, as the true velocity v * v_scale. A newer format is refused with a
`FormatError`, never skipped as damaged.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import time
import warnings
from dataclasses import dataclass

from .codec import packb, unpackb
from .errors import CheckpointError

FORMAT = 2
READABLE = (1, 2)
MANIFEST = "manifest.msgpack"
_DIR = re.compile(r"^ckpt-(\d+)$")


class FormatError(CheckpointError):
    """A file in a format this version does not read (written by a newer one)."""


def _check_format(path: str, obj, what: str) -> int:
    """The format of a decoded shard or manifest, or CheckpointError saying what is wrong."""
    fmt = obj.get("format") if isinstance(obj, dict) else None
    if not isinstance(fmt, int) or isinstance(fmt, bool):
        raise CheckpointError(f"{path}: not a checkpoint {what} (no format number)")
    if fmt > FORMAT:
        raise FormatError(f"{path}: {what} format {fmt}, written by a newer version of ptncn_dist; "
                          f"this version reads formats {', '.join(map(str, READABLE))}")
    if fmt not in READABLE:
        raise CheckpointError(f"{path}: {what} format {fmt} is no format ptncn_dist wrote")
    return fmt


def _from_format_1(payload):
    """A format-1 layer payload with format 2's slots: each momentum / nag slot pair (v,
    v_scale) becomes the true velocity v * v_scale. Other payloads pass unchanged."""
    slots = payload.get("slots") if isinstance(payload, dict) else None
    if not isinstance(slots, dict):
        return payload
    plain = {}
    for name, sl in slots.items():
        if isinstance(sl, dict) and "v_scale" in sl:
            sl = {k: v for k, v in sl.items() if k != "v_scale"}
            sl["v"] = (sl["v"] * slots[name]["v_scale"]).astype(sl["v"].dtype, copy=False)
        plain[name] = sl
    return {**payload, "slots": plain}


def checkpoint_dir(root: str, step: int) -> str:
    return os.path.join(root, f"ckpt-{step:010d}")


def atomic_write(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_shard(ckpt_dir: str, name: str, payload: dict) -> dict:
    """Write one shard; returns its manifest record {name, bytes, sha256}."""
    os.makedirs(ckpt_dir, exist_ok=True)
    data = packb({"format": FORMAT, "name": name, "payload": payload})
    atomic_write(os.path.join(ckpt_dir, name), data)
    return {"name": name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def read_shard(ckpt_dir: str, record: dict) -> dict:
    """Read and verify one shard against its manifest record; CheckpointError names the file."""
    path = os.path.join(ckpt_dir, record["name"])
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read shard: {exc.strerror}") from None
    if len(data) != record["bytes"]:
        raise CheckpointError(f"{path}: {len(data)} bytes, the manifest says {record['bytes']} (truncated?)")
    if hashlib.sha256(data).hexdigest() != record["sha256"]:
        raise CheckpointError(f"{path}: checksum does not match the manifest (file altered)")
    obj = unpackb(data)
    fmt = _check_format(path, obj, "shard")
    if "payload" not in obj:
        raise CheckpointError(f"{path}: a format-{fmt} shard without a payload")
    return _from_format_1(obj["payload"]) if fmt == 1 else obj["payload"]


def write_manifest(ckpt_dir: str, *, step: int, position: dict, config_hash: str,
                   shards: list[dict], extra: dict | None = None) -> str:
    manifest = {"format": FORMAT, "step": int(step), "position": position,
                "config_hash": config_hash, "shards": shards, "created": time.time(),
                "extra": extra or {}}
    path = os.path.join(ckpt_dir, MANIFEST)
    atomic_write(path, packb(manifest))
    return path


def read_manifest(ckpt_dir: str, config_hash: str | None = None) -> dict:
    path = os.path.join(ckpt_dir, MANIFEST)
    try:
        with open(path, "rb") as fh:
            manifest = unpackb(fh.read())
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read manifest: {exc.strerror}") from None
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    _check_format(path, manifest, "manifest")
    if config_hash is not None and manifest["config_hash"] != config_hash:
        raise CheckpointError(f"{path}: written by a run with config hash {manifest['config_hash']}, "
                              f"this run's is {config_hash} (model, optimizer, data or seed differ)")
    return manifest


def list_checkpoints(root: str) -> list[str]:
    """Checkpoint directories under `root` that have a manifest, oldest first."""
    if not os.path.isdir(root):
        return []
    found = []
    for name in os.listdir(root):
        match = _DIR.match(name)
        if match and os.path.exists(os.path.join(root, name, MANIFEST)):
            found.append((int(match.group(1)), os.path.join(root, name)))
    return [p for _, p in sorted(found)]


@dataclass
class Loaded:
    path: str
    manifest: dict
    shards: dict


def load(ckpt_dir: str, config_hash: str | None = None) -> Loaded:
    """One checkpoint, every shard verified."""
    manifest = read_manifest(ckpt_dir, config_hash)
    shards = {rec["name"]: read_shard(ckpt_dir, rec) for rec in manifest["shards"]}
    return Loaded(ckpt_dir, manifest, shards)


def latest_valid(root: str, config_hash: str | None = None, *, restore=None):
    """The newest checkpoint under `root` that verifies, warning about each damaged one skipped.

    With `restore(path, manifest)` (an engine's `load_shards`, where each layer reads and checks
    its own shard) the shards are read by it, not here. Returns None when there is no checkpoint
    at all; raises CheckpointError naming the bad files when some exist but none verifies. A
    checkpoint in a format this version cannot read raises its FormatError at once: falling back
    past it would quietly drop the progress of the run that wrote it.
    """
    errors = []
    for path in reversed(list_checkpoints(root)):
        try:
            if restore is None:
                return load(path, config_hash)
            manifest = read_manifest(path, config_hash)
            restore(path, manifest)
            return Loaded(path, manifest, {})
        except FormatError:
            raise
        except CheckpointError as exc:
            warnings.warn(f"skipping damaged checkpoint: {exc}", stacklevel=2)
            errors.append(str(exc))
    if errors:
        raise CheckpointError("no usable checkpoint under " + root + ": " + "; ".join(errors))
    return None


def prune(root: str, keep: int) -> None:
    """Delete all but the newest `keep` complete checkpoints (and leftovers without a manifest
    that are older than the newest complete one)."""
    complete = list_checkpoints(root)
    for path in complete[:-keep] if keep > 0 else []:
        shutil.rmtree(path, ignore_errors=True)
    if complete:
        newest = complete[-1]
        for name in os.listdir(root):
            path = os.path.join(root, name)
            if _DIR.match(name) and path < newest and not os.path.exists(os.path.join(path, MANIFEST)):
                shutil.rmtree(path, ignore_errors=True)
