"""A run directory, claimed for the life of a run: an exclusive lock, a run id, a config written once.

`RUN/.ptncn-lock` is held with `flock` by the driver that trains into RUN (released on exit, and
by the kernel when the process dies) and names its holder (pid, host, start time, command). A
second run into RUN is refused with one line naming the holder. A lock file left by a dead
process on this host is taken over (flock succeeds, so its holder is gone); one that names
another host is refused, since this host cannot tell whether that run is alive (flock over a
network filesystem is not reliable): the message says which file to delete.

`RUN/run.json` holds the run id, made once when the run starts: checkpoints in a shared
`train.checkpoint_dir` live under `<checkpoint_dir>/<run id>/`, and every manifest records it, so
two runs sharing that directory never list, prune or load each other's checkpoints.
`RUN/config.toml` is written once, by a real TOML writer, after every check has passed; a resume
never rewrites it.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import secrets
import socket
import sys
import time

from ..errors import PtncnError

LOCK = ".ptncn-lock"
RUN_FILE = "run.json"
CONFIG = "config.toml"


class RunDirInUse(PtncnError):
    """Another live run holds this run directory."""


def _holder_text(info: dict) -> str:
    when = info.get("started")
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when)) if isinstance(when, (int, float)) else "?"
    return f"pid {info.get('pid', '?')} on host {info.get('host', '?')} (since {since})"


def _read_info(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = os.read(fd, 1 << 16)
        info = json.loads(data.decode("utf-8")) if data.strip() else {}
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


class RunLock:
    """The exclusive claim of one run directory by this process (see the module docstring)."""

    def __init__(self, run_dir: str, what: str = "run directory", hint: str = "choose another --run-dir"):
        self.run_dir, self.path, self.fd = run_dir, os.path.join(run_dir, LOCK), None
        self.what, self.hint = what, hint
        self.taken_over: dict | None = None  # the stale holder replaced, if any

    def acquire(self) -> "RunLock":
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise PtncnError(f"cannot claim {self.what} {self.run_dir}: {exc.strerror}: {self.path}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                info = _read_info(fd)
                os.close(fd)
                raise RunDirInUse(f"{self.what} {self.run_dir} is in use by {_holder_text(info)}: "
                                  f"wait for that run to end or {self.hint}") from None
            except OSError as exc:
                os.close(fd)
                raise PtncnError(f"cannot lock {self.path}: {exc.strerror}") from None
            try:  # the file may have been unlinked by its releasing holder between open and flock
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        old = _read_info(fd)
        host = socket.gethostname()
        if old and old.get("host") != host:
            os.close(fd)
            raise RunDirInUse(f"{self.what} {self.run_dir} is claimed by {_holder_text(old)}, another host; "
                              f"if no run is alive there, delete {self.path}")
        self.taken_over = old or None
        info = {"pid": os.getpid(), "host": host, "started": time.time(), "argv": sys.argv[:8]}
        try:  # who holds it: for the refusal message only (the claim is the flock itself, so a
            # full disk that cannot take these bytes does not stop the run it would only describe)
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
        except OSError:
            pass
        self.fd = fd
        return self

    def release(self) -> None:
        """Remove the lock file and let go of it (unlinked while still held, so a waiting
        claimer that opened the old file notices and opens the new one)."""
        if self.fd is None:
            return
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None


def new_default_dir(root: str = "runs") -> str:
    """A run directory of its own for a run given no --run-dir: ROOT/<start time>, or with -2,
    -3, ... when that exists. It is created here (exclusively), so two runs started in the same
    second never share one; it is empty until the run writes into it."""
    os.makedirs(root, exist_ok=True)
    base = os.path.join(root, time.strftime("%Y%m%d-%H%M%S"))
    for k in range(1, 10_000):
        path = base if k == 1 else f"{base}-{k}"
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            continue
        except OSError as exc:
            raise PtncnError(f"cannot create run directory {path}: {exc.strerror}") from None
    raise PtncnError(f"cannot create a run directory under {root}: {base}-2 to -9999 exist too")


def remove_if_empty(path: str) -> None:
    """Remove the directory `path` when nothing is in it (a default run directory whose run was
    refused before writing)."""
    try:
        os.rmdir(path)
    except OSError:
        pass


def new_run_id(run_dir: str | None) -> str:
    """A fresh run id: the run directory's name (made safe for a path or an object key), the
    start time and 8 random hex digits."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.basename(os.path.normpath(run_dir)) if run_dir else "run")
    return f"{base.strip('._') or 'run'}-{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(4)}"


def read_run_id(run_dir: str) -> str | None:
    """The run id recorded in RUN/run.json; None for a run made before run ids existed. A
    run.json that is present but unreadable is an error, never a silent legacy fallback."""
    path = os.path.join(run_dir, RUN_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            run_id = json.load(fh)["run_id"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PtncnError(f"{path}: unreadable run record ({type(exc).__name__}: {exc})") from None
    if not isinstance(run_id, str) or not re.fullmatch(r"[A-Za-z0-9._-]{1,200}", run_id):
        raise PtncnError(f"{path}: run_id {run_id!r} is not a valid run id")
    return run_id


def write_once(path: str, text: str) -> None:
    """Create `path` with `text` (UTF-8), durably; an existing file is never replaced."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    try:
        os.link(tmp, path)  # fails if path exists: written once
    finally:
        os.unlink(tmp)


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    """'key = new (the run's old)' for every leaf where the nested dicts differ."""
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _differences(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k} = {va!r} (the run's {vb!r})")
    return out


class Claim:
    """A run directory claimed by this process, and what it already holds.

    `open(cfg, run_dir, resume)` checks, before writing anything but the lock, that `cfg` may
    train into `run_dir`: `resume=True` needs the run's config.toml with the same config hash;
    `resume=None` continues a run of the same hash that has checkpoints and refuses a different
    run; `resume=False` refuses a directory that already holds a run. `commit(cfg)` writes
    config.toml and run.json for a new run (never over existing ones); `release()` gives the
    directory back, removing it if this claim created it and nothing was committed."""

    def __init__(self, run_dir: str, lock: RunLock, created: bool):
        self.run_dir, self.lock, self.created = run_dir, lock, created
        self.config_path = os.path.join(run_dir, CONFIG)
        self.existing = None  # the Config in config.toml, when there is one
        self.run_id: str | None = None
        self.committed = False

    @classmethod
    def open(cls, cfg, run_dir: str) -> "Claim":
        created = not os.path.isdir(run_dir)
        try:
            os.makedirs(run_dir, exist_ok=True)
        except OSError as exc:
            raise PtncnError(f"cannot create run directory {run_dir}: {exc.strerror}") from None
        try:
            claim = cls(run_dir, RunLock(run_dir).acquire(), created)
        except BaseException:
            if created:
                _rmdir_quiet(run_dir)
            raise
        try:
            claim._inspect(cfg)
        except BaseException:
            claim.release()
            raise
        return claim

    def _inspect(self, cfg) -> None:
        from ..config import load
        if os.path.exists(self.config_path):
            try:
                self.existing = load(self.config_path)
            except PtncnError as exc:
                raise PtncnError(f"{self.run_dir} holds a config.toml that cannot be read ({exc}); "
                                 f"choose another --run-dir") from None
            self.run_id = read_run_id(self.run_dir)
            if self.existing.hash() != cfg.hash():
                diff = _differences(cfg.to_dict(), self.existing.to_dict())
                diff = [d for d in diff if not d.startswith(("train.", "engine."))] or diff
                raise PtncnError(f"{self.run_dir} holds a different run (config hash {self.existing.hash()}, "
                                 f"this one's {cfg.hash()}: {'; '.join(diff[:4])}); its files are unchanged: "
                                 f"choose another --run-dir")
        else:  # a new run (a run.json left by a commit cut short keeps its id)
            self.run_id = read_run_id(self.run_dir) or new_run_id(self.run_dir)

    @property
    def holds_run(self) -> bool:
        return self.existing is not None

    def changed_keys(self, cfg) -> list[str]:
        """The keys where `cfg` differs from the run's config.toml (none that change the hash)."""
        return _differences(cfg.to_dict(), self.existing.to_dict()) if self.existing is not None else []

    def commit(self, cfg) -> None:
        """Write config.toml and run.json for a new run; nothing for one that holds them."""
        if self.existing is None and not self.committed:
            from ..config import to_toml
            run_file = os.path.join(self.run_dir, RUN_FILE)
            if not os.path.exists(run_file):
                write_once(run_file, json.dumps({"run_id": self.run_id, "created": time.time(),
                                                 "config_hash": cfg.hash()}) + "\n")
            write_once(self.config_path, to_toml(cfg))
        self.committed = True

    def claim_namespace(self, ckpt_root: str | None) -> None:
        """Also lock the run's checkpoint namespace when it lies outside the run directory on a
        local filesystem (a shared train.checkpoint_dir): two copies of one run directory, which
        share a run id, then cannot write into it at once. An object store has no lock to take
        (docs/reliability.md says what a shared prefix risks)."""
        from .storage import is_uri
        if not ckpt_root or is_uri(ckpt_root) or os.path.abspath(ckpt_root).startswith(
                os.path.abspath(self.run_dir) + os.sep):
            return
        self.namespace_created = not os.path.isdir(ckpt_root)
        try:
            os.makedirs(ckpt_root, exist_ok=True)
        except OSError as exc:
            raise PtncnError(f"cannot create the checkpoint directory {ckpt_root}: {exc.strerror}") from None
        lock = RunLock(ckpt_root, "checkpoint namespace", "resume only one copy of this run")
        self.namespace_lock = lock.acquire()

    def release(self) -> None:
        ns = getattr(self, "namespace_lock", None)
        if ns is not None:
            ns.release()
            if self.namespace_created and not self.committed:
                _rmdir_quiet(ns.run_dir)
        self.lock.release()
        if self.created and not self.committed:
            _rmdir_quiet(self.run_dir)


def _rmdir_quiet(path: str) -> None:
    try:
        os.rmdir(path)  # only if empty: a refused command leaves nothing behind
    except OSError:
        pass
