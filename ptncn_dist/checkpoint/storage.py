"""Where checkpoint bytes live: a local directory, or any `scheme://` URI through `pyarrow.fs`.

A location is a plain string, so it travels unchanged to every layer actor and is resolved
there. A plain path (no `scheme://`) keeps the os-based code: writes go to a temporary file that
is fsynced and renamed, reads open with O_NOFOLLOW and accept only regular files. A URI such as
`s3://bucket/prefix?endpoint_override=host:port&scheme=http` goes to
`pyarrow.fs.FileSystem.from_uri`, one filesystem per scheme, authority and query in a process.
The query stays at the end of every location joined under a root, so each names its store in
full. Object stores have no atomic rename: `atomic_rename(loc)` says which kind a location is,
and checkpoint.py writes accordingly. Error messages name a location with any credentials in
its user-info part redacted (`display`).
"""
from __future__ import annotations

import errno
import os
import posixpath
import re
import shutil
import stat
import threading
from urllib.parse import unquote, urlsplit

from ..errors import CheckpointError, ConfigError

_URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
SCHEMES = ("file", "s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")
_NO_DIRS = ("s3", "gcs")  # pyarrow filesystem types with no directories to create
_cache: dict = {}
_lock = threading.Lock()


def is_uri(loc: str) -> bool:
    return bool(_URI.match(loc))


def _split(loc: str):
    parts = urlsplit(loc, allow_fragments=False)
    return parts.scheme.lower(), parts.netloc, parts.path, parts.query


def display(loc: str) -> str:
    """`loc` as messages show it: a URI's user-info (access key and secret) replaced by ***."""
    if not is_uri(loc):
        return loc
    scheme, netloc, path, query = _split(loc)
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    return f"{scheme}://{netloc}{path}" + (f"?{query}" if query else "")


def check_location(loc: str, key: str = "train.checkpoint_dir") -> None:
    """ConfigError (one line) when `loc` is a URI that pyarrow.fs does not serve; plain paths pass."""
    if not loc or not is_uri(loc):
        return
    scheme, netloc, _, _ = _split(loc)
    if scheme not in SCHEMES:
        raise ConfigError(f"{key} = {display(loc)!r}: unknown storage scheme {scheme!r}; use a local path or a "
                          f"URI with one of {', '.join(s + '://' for s in SCHEMES)}")
    if scheme != "file" and not netloc:
        raise ConfigError(f"{key} = {display(loc)!r}: no bucket or host after {scheme}://")


def join(loc: str, *names: str) -> str:
    """`loc` / names; for a URI the names go into the path and the query stays at the end."""
    if not is_uri(loc):
        return os.path.join(loc, *names)
    scheme, netloc, path, query = _split(loc)
    path = "/".join([path.rstrip("/"), *names])
    return f"{scheme}://{netloc}{path}" + (f"?{query}" if query else "")


def basename(loc: str) -> str:
    if not is_uri(loc):
        return os.path.basename(os.path.normpath(loc))
    return posixpath.basename(_split(loc)[2].rstrip("/"))


def _one_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__


def resolve(loc: str):
    """(pyarrow filesystem, path inside it) for a URI. The filesystem is made once per scheme,
    authority and query in this process; from_uri's path for the first location fixes how URL
    paths map to paths inside it (an S3 path starts with the bucket, a file:// one does not)."""
    scheme, netloc, path, query = _split(loc)
    key = (scheme, netloc, query)
    urlpath = unquote(path).rstrip("/")
    with _lock:
        hit = _cache.get(key)
        if hit is None:
            check_location(loc)
            from pyarrow import fs as pafs
            try:
                filesystem, first = pafs.FileSystem.from_uri(loc)
            except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a bad URI
                raise CheckpointError(f"{display(loc)}: cannot open the store ({type(exc).__name__}: "
                                      f"{_one_line(exc)})") from None
            first = first.rstrip("/")
            if urlpath and not first.endswith(urlpath):
                raise CheckpointError(f"{display(loc)}: pyarrow maps it to {first!r}, which does not end in its path")
            hit = _cache[key] = (filesystem, first[:len(first) - len(urlpath)] if urlpath else first)
    filesystem, prefix = hit
    return filesystem, prefix + urlpath


def atomic_rename(loc: str) -> bool:
    """Whether `loc` is a local directory, where a staging directory is renamed into place;
    a URI's objects are written where they stay, the manifest last."""
    return not is_uri(loc)


# -- local files -------------------------------------------------------------------------------
def fsync_dir(path: str) -> None:
    """Make a directory's entries (renames, new files) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def atomic_write(path: str, data: bytes) -> None:
    """Write, flush, fsync, rename, fsync the directory; a failure leaves no temporary file."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(os.path.dirname(path) or ".")


def _read_local(path: str, limit: int | None, want: int | None) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot open: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CheckpointError(f"{path}: not a regular file")
        _check_size(path, st.st_size, limit, want)
        chunks, left = [], st.st_size
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 24))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        if len(data) != st.st_size:
            raise CheckpointError(f"{path}: read {len(data)} of {st.st_size} bytes (file changed while read)")
        return data
    finally:
        os.close(fd)


def _check_size(shown: str, size: int, limit: int | None, want: int | None) -> None:
    if want is not None and size != want:
        raise CheckpointError(f"{shown}: {size} bytes, the manifest says {want} (truncated or altered)")
    if limit is not None and size > limit:
        raise CheckpointError(f"{shown}: {size} bytes, more than the {limit} this config's shapes allow")


# -- any location ------------------------------------------------------------------------------
def write_bytes(loc: str, data: bytes) -> None:
    """Store `data` at `loc` whole: locally by atomic_write, in a store as one object (a reader
    sees the old object, the new one or none, never part of one)."""
    if not is_uri(loc):
        atomic_write(loc, data)
        return
    filesystem, path = resolve(loc)
    with filesystem.open_output_stream(path) as out:
        out.write(data)


def read_bounded(loc: str, limit: int | None, want: int | None = None) -> bytes:
    """A file's or object's bytes, its size checked before reading: equal to `want` when given,
    at most `limit`. Locally, symbolic links, devices and pipes are refused."""
    if not is_uri(loc):
        return _read_local(loc, limit, want)
    shown = display(loc)
    filesystem, path = resolve(loc)
    from pyarrow import fs as pafs
    try:
        info = filesystem.get_file_info(path)
    except Exception as exc:  # noqa: BLE001 - a store that cannot answer cannot give this checkpoint
        raise CheckpointError(f"{shown}: cannot open: {type(exc).__name__}: {_one_line(exc)}") from None
    if info.type == pafs.FileType.NotFound:
        raise CheckpointError(f"{shown}: cannot open: No such file or directory")
    if info.type != pafs.FileType.File:
        raise CheckpointError(f"{shown}: not a regular file")
    _check_size(shown, info.size, limit, want)
    try:
        with filesystem.open_input_stream(path) as src:
            data = src.read(info.size)
    except Exception as exc:  # noqa: BLE001 - any read error means damaged, as locally
        raise CheckpointError(f"{shown}: cannot read: {type(exc).__name__}: {_one_line(exc)}") from None
    if len(data) != info.size:
        raise CheckpointError(f"{shown}: read {len(data)} of {info.size} bytes (file changed while read)")
    return data


def makedirs(loc: str) -> None:
    """Create directory `loc` and its parents (nothing to do in an object store)."""
    if not is_uri(loc):
        os.makedirs(loc, exist_ok=True)
        return
    filesystem, path = resolve(loc)
    if filesystem.type_name not in _NO_DIRS:
        filesystem.create_dir(path, recursive=True)


def exists(loc: str) -> bool:
    if not is_uri(loc):
        return os.path.exists(loc)
    from pyarrow import fs as pafs
    filesystem, path = resolve(loc)
    return filesystem.get_file_info(path).type != pafs.FileType.NotFound


def is_dir(loc: str) -> bool:
    if not is_uri(loc):
        return os.path.isdir(loc)
    from pyarrow import fs as pafs
    filesystem, path = resolve(loc)
    return filesystem.get_file_info(path).type == pafs.FileType.Directory


def list_dir(loc: str) -> list[str]:
    """The names directly under `loc` ([] when there is nothing there)."""
    if not is_uri(loc):
        return os.listdir(loc) if os.path.isdir(loc) else []
    from pyarrow import fs as pafs
    filesystem, path = resolve(loc)
    infos = filesystem.get_file_info(pafs.FileSelector(path, recursive=False, allow_not_found=True))
    return [posixpath.basename(i.path.rstrip("/")) for i in infos]


def delete_file(loc: str) -> None:
    """Remove one file or object; one that is not there is no error."""
    if not is_uri(loc):
        try:
            os.unlink(loc)
        except FileNotFoundError:
            pass
        return
    filesystem, path = resolve(loc)
    try:
        filesystem.delete_file(path)
    except FileNotFoundError:
        pass


def delete_tree(loc: str) -> None:
    """Remove a directory and all under it, ignoring errors (as shutil.rmtree(ignore_errors))."""
    if not is_uri(loc):
        shutil.rmtree(loc, ignore_errors=True)
        return
    try:
        filesystem, path = resolve(loc)
        filesystem.delete_dir(path)
    except Exception:  # noqa: BLE001 - what is left over is pruned later, as locally
        pass
