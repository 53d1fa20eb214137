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

The manifest (checkpoint_manifest.py, format 3) carries its own sha256 and is cross-checked
against the directory name and the reader's config; shard sizes are checked before reading. Any
error while reading a checkpoint, of whatever type, marks it damaged. A write goes to a staging
directory that is renamed to ckpt-<step> only once every shard and the manifest are durable; a
failed write removes the staging directory and raises CheckpointWriteError, keeping every complete
checkpoint.

The root may be a URI (`s3://bucket/prefix?endpoint_override=...`, see storage.py). An object
store has no atomic rename, so there each shard object goes straight into ckpt-<step>/ (one PUT
each) and the manifest last; rewriting a step deletes its manifest first. Either way a
checkpoint exists only once its manifest does.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import time
import warnings
from dataclasses import dataclass, field

from . import manifest as cm
from . import storage
from .manifest import MANIFEST, Expect, FormatError
from .codec import packb, unpackb
from ..errors import CheckpointError, ConfigError, PtncnError
from .storage import fsync_dir

FORMAT = 2
READABLE = (1, 2)
_DIR = cm.DIR_RE
_STAGING = re.compile(r"^\.ckpt-(\d+)\.(partial|replaced)-\d+$")


class CheckpointWriteError(PtncnError):
    """A checkpoint could not be written (disk full, read-only, permission...)."""


class CheckpointWarning(UserWarning):
    """A damaged checkpoint was passed over for an older one."""


def _check_format(path: str, obj, what: str, readable=READABLE) -> int:
    """The format of a decoded shard or manifest, or CheckpointError saying what is wrong."""
    fmt = obj.get("format") if isinstance(obj, dict) else None
    if not isinstance(fmt, int) or isinstance(fmt, bool):
        raise CheckpointError(f"{path}: not a checkpoint {what} (no format number)")
    if fmt > max(readable):
        raise FormatError(f"{path}: {what} format {fmt}, written by a newer version of ptncn_dist; "
                          f"this version reads formats {', '.join(map(str, readable))}")
    if fmt not in readable:
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
    return storage.join(root, f"ckpt-{step:010d}")


def root_for(checkpoint_dir_setting: str, run_dir: str | None, run_id: str | None = None) -> str | None:
    """Where a run keeps its checkpoints: `<train.checkpoint_dir>/<run id>` (a path or URI, one
    namespace per run, so runs sharing the setting never touch each other's checkpoints) if
    set, else RUN_DIR/checkpoints (the run directory is its own namespace; None without one).
    A run made before run ids existed (run_id None) keeps the setting itself."""
    if checkpoint_dir_setting:
        return storage.join(checkpoint_dir_setting, run_id) if run_id else checkpoint_dir_setting
    return os.path.join(run_dir, "checkpoints") if run_dir else None


def write_shard(ckpt_dir: str, name: str, payload: dict) -> dict:
    """Write one shard; returns its manifest record {name, bytes, sha256}."""
    storage.makedirs(ckpt_dir)
    data = packb({"format": FORMAT, "name": name, "payload": payload})
    storage.write_bytes(storage.join(ckpt_dir, cm.plain_name(storage.display(ckpt_dir), name)), data)
    return {"name": name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def read_shard(ckpt_dir: str, record: dict, max_bytes: int | None = None) -> dict:
    """Read and verify one shard against its manifest record, its size checked before reading;
    any failure is a CheckpointError naming the file."""
    name = cm.plain_name(storage.display(storage.join(ckpt_dir, MANIFEST)),
                         record.get("name") if isinstance(record, dict) else None)
    loc = storage.join(ckpt_dir, name)
    path = storage.display(loc)
    try:
        want = record["bytes"]
        if not isinstance(want, int) or isinstance(want, bool) or want < 0:
            raise CheckpointError(f"{path}: the manifest records no valid size")
        data = storage.read_bounded(loc, max_bytes, want)
        if hashlib.sha256(data).hexdigest() != record["sha256"]:
            raise CheckpointError(f"{path}: checksum does not match the manifest (file altered)")
        obj = unpackb(data)
        fmt = _check_format(path, obj, "shard")
        if "payload" not in obj:
            raise CheckpointError(f"{path}: a format-{fmt} shard without a payload")
        return _from_format_1(obj["payload"]) if fmt == 1 else obj["payload"]
    except CheckpointError as exc:
        if isinstance(exc, FormatError) or str(exc).startswith(path):
            raise
        raise CheckpointError(f"{path}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - any failure to read a shard means damaged
        raise CheckpointError(f"{path}: unreadable shard ({type(exc).__name__}: {exc})") from None


def damaged_shard(ckpt_dir: str, name: str, exc: Exception) -> CheckpointError:
    """The CheckpointError for a shard that verified but whose state its layer refused (wrong
    shape, type or value): it names the shard file, so the checkpoint counts as damaged."""
    return CheckpointError(f"{storage.display(storage.join(ckpt_dir, name))}: {exc}")


def write_manifest(ckpt_dir: str, *, step: int, position: dict, config_hash: str,
                   shards: list[dict], extra: dict | None = None, run_id: str | None = None) -> str:
    body = {"step": int(step), "position": position, "config_hash": config_hash, "shards": shards,
            "created": time.time(), "extra": extra or {}}
    if run_id:
        body["run_id"] = run_id
    path = storage.join(ckpt_dir, MANIFEST)
    storage.write_bytes(path, cm.encode(body))
    return path


def read_manifest(ckpt_dir: str, config_hash: str | None = None, expect: Expect | None = None) -> dict:
    return cm.read(ckpt_dir, config_hash, expect, _check_format)


def list_checkpoints(root: str) -> list[str]:
    """Checkpoint directories under `root` that have a manifest, oldest first (what a writer
    keeps and prunes)."""
    return [p for p in list_candidates(root) if storage.exists(storage.join(p, MANIFEST))]


def list_candidates(root: str) -> list[str]:
    """Every ckpt-<step> directory under `root`, oldest first, whether or not its manifest can
    be seen: a reader tries each, so a newest one without a readable manifest counts as damaged
    instead of being passed over in silence (a plain file with such a name is no checkpoint). A
    root that exists but cannot be listed is a CheckpointError naming it."""
    try:
        names = storage.list_dir(root)
    except Exception as exc:  # noqa: BLE001 - whatever stops the listing, no checkpoint can be trusted
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else f"{type(exc).__name__}: {_one_line(exc)}"
        raise CheckpointError(f"cannot list the checkpoints under {storage.display(root)}: {reason}") from None
    found = [(int(m.group(1)), storage.join(root, name)) for name in names if (m := _DIR.match(name))]
    return [p for _, p in sorted(found) if storage.is_dir(p)]


@dataclass
class Loaded:
    path: str
    manifest: dict
    shards: dict
    skipped: list = field(default_factory=list)  # messages of the newer, damaged checkpoints passed over


def load(ckpt_dir: str, config_hash: str | None = None, expect: Expect | None = None) -> Loaded:
    """One checkpoint, every shard verified."""
    manifest = read_manifest(ckpt_dir, config_hash, expect)
    max_bytes = expect.max_bytes if expect else None
    shards = {rec["name"]: read_shard(ckpt_dir, rec, max_bytes) for rec in manifest["shards"]}
    return Loaded(ckpt_dir, manifest, shards)


def _one_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__


def latest_valid(root: str, config_hash: str | None = None, *, restore=None, expect: Expect | None = None,
                 warn=None, passthrough: tuple = ()):
    """The newest checkpoint under `root` that verifies; each damaged one passed over is reported
    to `warn(message)` (default: a CheckpointWarning) and listed in the result's `skipped`.

    With `restore(path, manifest)` (an engine's `load_shards`, where each layer reads and checks
    its own shard) the shards are read by it, not here. Any exception while reading a checkpoint
    marks it damaged, except `passthrough` (a lost worker) and FormatError: a checkpoint in a
    format this version cannot read is refused at once, as falling back past it would quietly drop
    the progress of the run that wrote it. Returns None when there is no checkpoint at all; raises
    CheckpointError naming the bad files when some exist but none verifies.
    """
    if warn is None:
        def warn(msg):
            warnings.warn(f"skipping damaged checkpoint: {msg}", CheckpointWarning, stacklevel=3)
    errors = []
    for path in reversed(list_candidates(root)):
        try:
            if restore is None:
                loaded = load(path, config_hash, expect)
            else:
                manifest = read_manifest(path, config_hash, expect)
                restore(path, manifest)
                loaded = Loaded(path, manifest, {})
            loaded.skipped = errors
            return loaded
        except (FormatError, ConfigError):
            raise
        except passthrough:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever the error, this checkpoint is damaged
            msg = _one_line(exc) if isinstance(exc, CheckpointError) else \
                f"{path}: {type(exc).__name__}: {_one_line(exc)}"
            warn(msg)
            errors.append(msg)
    if errors:
        raise CheckpointError("no usable checkpoint under " + storage.display(root) + ": " + "; ".join(errors))
    return None


def save(root: str, step: int, write_shards, *, position: dict, config_hash: str, extra: dict,
         passthrough: tuple = (), run_id: str | None = None) -> str:
    """Write checkpoint `step` under `root`: shards by `write_shards(dir)` (each layer its own),
    then the manifest. Locally into a staging directory renamed to ckpt-<step> once all is
    durable; in an object store straight into ckpt-<step>, the manifest last. A failure removes
    the partial files and raises CheckpointWriteError (one line); every other complete
    checkpoint is kept. `passthrough` exceptions (a lost worker) pass unchanged."""
    final = checkpoint_dir(root, step)
    write = _save_staged if storage.atomic_rename(root) else _save_direct
    try:
        write(root, final, lambda d: write_manifest(d, step=step, position=position, config_hash=config_hash,
                                                    shards=write_shards(d), extra=extra, run_id=run_id))
    except BaseException as exc:
        if isinstance(exc, passthrough) or not isinstance(exc, Exception):
            raise
        reason = (f"{exc.strerror}: {exc.filename}" if isinstance(exc, OSError) and exc.strerror and exc.filename
                  else _one_line(exc))
        try:
            kept = list_checkpoints(root)[-1:]
        except Exception:  # noqa: BLE001 - the error names the write's cause; the listing is a courtesy
            kept = []
        raise CheckpointWriteError(
            f"cannot write the checkpoint of step {step} under {storage.display(root)} ({reason}); its partial "
            f"files are removed; the last complete checkpoint is {storage.display(kept[0]) if kept else 'none'}: "
            f"fix the cause and rerun the same command to continue from it") from None
    return final


def _save_staged(root: str, final: str, write) -> None:
    """Local: write into a staging directory, fsync, swap it in for ckpt-<step> by renames."""
    staging = os.path.join(root, f".{os.path.basename(final)}.partial-{os.getpid()}")
    replaced = os.path.join(root, f".{os.path.basename(final)}.replaced-{os.getpid()}")
    try:
        os.makedirs(root, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
        os.makedirs(staging)
        write(staging)
        fsync_dir(staging)
        if os.path.isdir(final):  # the same step written before (a rerun): swap it for this one
            os.rename(final, replaced)
        os.rename(staging, final)
        fsync_dir(root)
        shutil.rmtree(replaced, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if os.path.isdir(replaced) and not os.path.exists(final):
            os.rename(replaced, final)
        raise


def _save_direct(root: str, final: str, write) -> None:
    """Object store: each object is whole once written, so write into ckpt-<step> itself, the
    manifest last; a step written before stops being a checkpoint (its manifest deleted) first."""
    try:
        storage.makedirs(root)
        storage.delete_file(storage.join(final, MANIFEST))
        write(final)
    except BaseException:
        storage.delete_tree(final)
        raise


def _remove(path: str) -> None:
    """Delete one checkpoint directory; in a store its manifest first, so a deletion cut short
    leaves no listed checkpoint without its shards."""
    if storage.is_uri(path):
        try:
            storage.delete_file(storage.join(path, MANIFEST))
        except Exception:  # noqa: BLE001 - still listed, so pruned again next time
            return
    storage.delete_tree(path)


def prune(root: str, keep: int) -> None:
    """Delete all but the newest `keep` complete checkpoints (and leftovers without a manifest
    or staging directories that are older than the newest complete one). Called only after the
    newest checkpoint is durable."""
    complete = list_checkpoints(root)
    for path in complete[:-keep] if keep > 0 else []:
        _remove(path)
    if complete:
        newest = int(_DIR.match(storage.basename(complete[-1])).group(1))
        for name in storage.list_dir(root):
            path = storage.join(root, name)
            match = _DIR.match(name) or _STAGING.match(name)
            if (match and int(match.group(1)) < newest and storage.is_dir(path)
                    and not (_DIR.match(name) and storage.exists(storage.join(path, MANIFEST)))):
                storage.delete_tree(path)
