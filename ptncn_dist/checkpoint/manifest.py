"""The checkpoint manifest: written last, it carries its own checksum and is cross-checked.

Format 3 (written now): the file is {"format": 3, "body": <bytes>, "sha256": <hex>} where body is
the canonical msgpack encoding (sorted keys) of {"format", "step", "position", "config_hash",
"run_id", "shards", "created", "extra"} and sha256 is over those exact bytes. Formats 1 and 2 (no
checksum) are still read, with the same checks on their fields.

The sha256 has no key: it catches accidents (a torn write, a flipped bit, a file from another
checkpoint), not a writer of the directory, who can rewrite a shard and the manifest's checksums
alike. Where that matters, set PTNCN_CHECKPOINT_KEY (at least 16 characters) in the driver's
environment: manifests are then written as format 4, with an HMAC-SHA256 of the body under that
key beside the sha256, and a reader that has the key accepts only manifests signed with it (an
unsigned or wrongly signed one counts as damaged). Shards are covered through the sha256 each
manifest records for them. A reader without the key checks a signed manifest's sha256 only. Whatever a manifest says is checked before
it is used: the step against the directory name, the position, every shard record (a plain file
name inside the directory, a size, a sha256) and, when the reader knows them, the shard names in
order (one per layer of the config) and a size bound from the config's shapes.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import re
from dataclasses import dataclass

from . import storage
from .codec import packb, unpackb
from ..errors import CheckpointError, ConfigError
from .storage import read_bounded

MANIFEST = "manifest.msgpack"
MANIFEST_FORMAT = 3
SIGNED_FORMAT = 4
MANIFEST_READABLE = (1, 2, 3, 4)
KEY_ENV = "PTNCN_CHECKPOINT_KEY"
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
    run_id: str | None = None  # the run that must have written it (None: any)


def _canonical(obj):
    if isinstance(obj, dict):
        return {k: _canonical(obj[k]) for k in sorted(obj)}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    return obj


def signing_key() -> bytes | None:
    """The checkpoint signing key from PTNCN_CHECKPOINT_KEY, or None when it is not set."""
    text = os.environ.get(KEY_ENV)
    if not text:
        return None
    if len(text) < 16:
        raise ConfigError(f"{KEY_ENV} must be at least 16 characters (it has {len(text)})")
    return text.encode("utf-8")


def _mac(key: bytes, raw: bytes) -> str:
    return hmac.new(key, raw, hashlib.sha256).hexdigest()


def encode(body: dict) -> bytes:
    """The bytes of a manifest file for `body`: format 3, or format 4 signed with the key from
    PTNCN_CHECKPOINT_KEY when it is set."""
    key = signing_key()
    fmt = SIGNED_FORMAT if key else MANIFEST_FORMAT
    raw = packb(_canonical({**body, "format": fmt}))
    outer = {"format": fmt, "body": raw, "sha256": hashlib.sha256(raw).hexdigest()}
    if key:
        outer["hmac"] = _mac(key, raw)
    return packb(outer)


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
    key = signing_key()
    if fmt < 3:
        if key:
            raise CheckpointError(f"{path}: an unsigned manifest, and {KEY_ENV} is set")
        return outer
    raw, digest = outer.get("body"), outer.get("sha256")
    fields = {"format", "body", "sha256"} | ({"hmac"} if fmt == SIGNED_FORMAT else set())
    if set(outer) != fields or not isinstance(raw, bytes) or not isinstance(digest, str):
        raise CheckpointError(f"{path}: a format-{fmt} manifest without its body and checksum")
    if hashlib.sha256(raw).hexdigest() != digest:
        raise CheckpointError(f"{path}: manifest checksum does not match its contents (file altered)")
    if key and fmt != SIGNED_FORMAT:
        raise CheckpointError(f"{path}: an unsigned manifest, and {KEY_ENV} is set")
    if key and not (isinstance(outer["hmac"], str) and hmac.compare_digest(outer["hmac"], _mac(key, raw))):
        raise CheckpointError(f"{path}: manifest signature does not match {KEY_ENV} (signed with another key, "
                              f"or altered)")
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
    if expect is not None and expect.run_id is not None and m.get("run_id", expect.run_id) != expect.run_id:
        raise CheckpointError(f"{path}: written by run {m['run_id']!r}, not by this run ({expect.run_id})")
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
    except ConfigError:
        raise
    except CheckpointError as exc:
        msg = str(exc)
        if isinstance(exc, FormatError) or msg.startswith(path):
            raise
        raise CheckpointError(f"{path}: {msg}") from None
    except Exception as exc:  # noqa: BLE001 - any failure to read a manifest means damaged
        raise CheckpointError(f"{path}: unreadable manifest ({type(exc).__name__}: {exc})") from None
