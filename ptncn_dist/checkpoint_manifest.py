"""The checkpoint manifest: written last, it carries its own checksum and is cross-checked.

Format 3 (written now): the file is {"format": 3, "body": <bytes>, "sha256": <hex>} where body is
the canonical msgpack encoding (sorted keys) of {"format", "step", "position", "config_hash",
"shards", "created", "extra"} and sha256 is over those exact bytes. Formats 1 and 2 (no checksum)
are still read, with the same checks on their fields. Whatever a manifest says is checked before
it is used: the step against the directory name, the position, every shard record (a plain file
name inside the directory, a size, a sha256) and, when the reader knows them, the shard names in
order (one per layer of the config) and a size bound from the config's shapes.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass

from . import storage
from .codec import packb, unpackb
from .errors import CheckpointError
from .storage import read_bounded

MANIFEST = "manifest.msgpack"
MANIFEST_FORMAT = 3
MANIFEST_READABLE = (1, 2, 3)
MAX_MANIFEST_BYTES = 16 << 20
DIR_RE = re.compile(r"^ckpt-(\d+)$")
_HEX = re.compile(r"^[0-9a-f]{64}$")


class FormatError(CheckpointError):
    """A file in a format this version does not read (written by a newer one)."""


@dataclass(frozen=True)
class Expect:
    """What the reader's config says a checkpoint holds: the shard names in order, and the most
    bytes one shard may have (None: unchecked)."""
    names: tuple[str, ...] | None = None
    max_bytes: int | None = None


def _canonical(obj):
    if isinstance(obj, dict):
        return {k: _canonical(obj[k]) for k in sorted(obj)}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    return obj


def encode(body: dict) -> bytes:
    """The bytes of a format-3 manifest file for `body`."""
    raw = packb(_canonical({**body, "format": MANIFEST_FORMAT}))
    return packb({"format": MANIFEST_FORMAT, "body": raw, "sha256": hashlib.sha256(raw).hexdigest()})


def _int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def plain_name(path: str, name) -> str:
    """`name` if it is a plain file name (no separator, not `.`/`..`, not absolute), else
    CheckpointError."""
    if (not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name
            or "\0" in name or os.path.isabs(name) or name == MANIFEST):
        raise CheckpointError(f"{path}: shard name {name!r} is not a plain file name in the checkpoint directory")
    return name


def _decode(path: str, data: bytes, check_format) -> dict:
    outer = unpackb(data)
    fmt = check_format(path, outer, "manifest", MANIFEST_READABLE)
    if fmt < 3:
        return outer
    raw, digest = outer.get("body"), outer.get("sha256")
    if set(outer) != {"format", "body", "sha256"} or not isinstance(raw, bytes) or not isinstance(digest, str):
        raise CheckpointError(f"{path}: a format-{fmt} manifest without its body and checksum")
    if hashlib.sha256(raw).hexdigest() != digest:
        raise CheckpointError(f"{path}: manifest checksum does not match its contents (file altered)")
    body = unpackb(raw)
    if not isinstance(body, dict) or body.get("format") != fmt:
        raise CheckpointError(f"{path}: manifest body format differs from its header")
    return body


def validate(path: str, ckpt_dir: str, m: dict, config_hash: str | None, expect: Expect | None) -> dict:
    """`m` if every field is well formed and agrees with the directory and the reader's config;
    else CheckpointError naming the manifest and what is wrong."""
    for key in ("step", "position", "config_hash", "shards"):
        if key not in m:
            raise CheckpointError(f"{path}: manifest has no {key!r}")
    match = DIR_RE.match(storage.basename(ckpt_dir))
    if not _int(m["step"]) or match is None or int(match.group(1)) != m["step"]:
        raise CheckpointError(f"{path}: manifest step {m['step']!r} does not match the directory name")
    pos = m["position"]
    if not isinstance(pos, dict) or not _int(pos.get("batch")) or not _int(pos.get("t")):
        raise CheckpointError(f"{path}: manifest data position {pos!r} is malformed")
    if not isinstance(m["config_hash"], str):
        raise CheckpointError(f"{path}: manifest config hash is malformed")
    if config_hash is not None and m["config_hash"] != config_hash:
        raise CheckpointError(f"{path}: written by a run with config hash {m['config_hash']}, "
                              f"this run's is {config_hash} (model, optimizer, data or seed differ)")
    shards = m["shards"]
    if not isinstance(shards, list) or not shards:
        raise CheckpointError(f"{path}: manifest lists no shards")
    for rec in shards:
        if not isinstance(rec, dict):
            raise CheckpointError(f"{path}: a shard record is malformed")
        plain_name(path, rec.get("name"))
        if not _int(rec.get("bytes")) or not isinstance(rec.get("sha256"), str) or not _HEX.match(rec["sha256"]):
            raise CheckpointError(f"{path}: shard record {rec.get('name')!r} has no valid size and sha256")
        if expect is not None and expect.max_bytes is not None and rec["bytes"] > expect.max_bytes:
            raise CheckpointError(f"{path}: shard {rec['name']} of {rec['bytes']} bytes, more than the "
                                  f"{expect.max_bytes} this config's shapes allow")
    names = [rec["name"] for rec in shards]
    if len(set(names)) != len(names):
        raise CheckpointError(f"{path}: manifest lists a shard twice")
    if expect is not None and expect.names is not None and tuple(names) != tuple(expect.names):
        raise CheckpointError(f"{path}: manifest lists shards {names}, this config has "
                              f"{len(expect.names)} ({', '.join(expect.names)})")
    return m


def read(ckpt_dir: str, config_hash: str | None, expect: Expect | None, check_format) -> dict:
    """The verified manifest of `ckpt_dir`. Any error while reading or decoding it becomes a
    CheckpointError naming the file; FormatError (a newer format) passes unchanged."""
    loc = storage.join(ckpt_dir, MANIFEST)
    path = storage.display(loc)
    try:
        data = read_bounded(loc, MAX_MANIFEST_BYTES)
        return validate(path, ckpt_dir, _decode(path, data, check_format), config_hash, expect)
    except CheckpointError as exc:
        msg = str(exc)
        if isinstance(exc, FormatError) or msg.startswith(path):
            raise
        raise CheckpointError(f"{path}: {msg}") from None
    except Exception as exc:  # noqa: BLE001 - any failure to read a manifest means damaged
        raise CheckpointError(f"{path}: unreadable manifest ({type(exc).__name__}: {exc})") from None
