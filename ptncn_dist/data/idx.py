"""MNIST-style IDX files: reading (gzip or raw), locating by split, and checked downloads."""
from __future__ import annotations

import hashlib
import math
import os
import struct
import tempfile
import urllib.request
import zlib
from pathlib import Path

import numpy as np

from ..errors import DataError

GZIP_MAGIC = b"\x1f\x8b"
IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
SPLITS = ("train", "t10k")
# The largest IDX file read, on disk and decompressed: 1 GiB, 20 times MNIST's train images (47 MB
# raw) and more than twice notMNIST's large set as IDX; checked before reading or inflating.
MAX_IDX_BYTES = 1 << 30


def _gunzip(raw: bytes, path: Path) -> tuple[bytes, bool]:
    """Decompress every gzip member; return the bytes and whether the stream ended properly.

    A truncated stream yields what could be decompressed, so the caller can report sizes. More
    than `MAX_IDX_BYTES` of output is refused as it is produced (a gzip bomb is never inflated).
    """
    out, total = [], 0
    while raw:
        d = zlib.decompressobj(wbits=31)
        try:
            chunk = d.decompress(raw, MAX_IDX_BYTES + 1 - total)
        except zlib.error as e:
            raise DataError(f"{path}: corrupt gzip data ({e})") from None
        total += len(chunk)
        if total > MAX_IDX_BYTES:
            raise DataError(f"{path}: decompresses to more than {MAX_IDX_BYTES:,} bytes (idx.MAX_IDX_BYTES), "
                            f"the largest IDX file this reader takes")
        out.append(chunk)
        if not d.eof:
            return b"".join(out), False
        raw = d.unused_data
        if raw and not raw.startswith(GZIP_MAGIC):
            raise DataError(f"{path}: {len(raw)} stray bytes after the gzip stream")
    return b"".join(out), True


def read_idx(path) -> np.ndarray:
    """Read an IDX images (N, rows, cols) or labels (N,) file as uint8.

    Gzip is detected by its magic bytes, not the file name. The byte count must match the header,
    images must have at least one pixel, and no file over `MAX_IDX_BYTES` is read.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_IDX_BYTES:
            raise DataError(f"{path}: {size:,} bytes, more than the {MAX_IDX_BYTES:,} (idx.MAX_IDX_BYTES) an "
                            f"IDX file may have; refused before reading it")
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read IDX file ({e.strerror})") from None
    complete = True
    if raw.startswith(GZIP_MAGIC):
        raw, complete = _gunzip(raw, path)
    if len(raw) < 8:
        raise DataError(f"{path}: expected an IDX header of at least 8 bytes, got {len(raw)} bytes")
    magic, count = struct.unpack(">ii", raw[:8])
    if magic == IMAGES_MAGIC:
        if len(raw) < 16:
            raise DataError(f"{path}: expected a 16-byte IDX images header, got {len(raw)} bytes")
        rows, cols = struct.unpack(">ii", raw[8:16])
        header, shape = 16, (count, rows, cols)
        if min(rows, cols) == 0:
            raise DataError(f"{path}: IDX header says {count} images of {rows}x{cols} pixels; "
                            f"an image needs at least 1x1")
    elif magic == LABELS_MAGIC:
        header, shape = 8, (count,)
    else:
        raise DataError(
            f"{path}: expected IDX magic {IMAGES_MAGIC} (images) or {LABELS_MAGIC} (labels), got {magic}"
        )
    if min(shape) < 0:
        raise DataError(f"{path}: negative size in IDX header {shape}")
    expected = header + math.prod(shape)
    if len(raw) != expected or not complete:
        note = "" if complete else " (gzip stream truncated)"
        raise DataError(
            f"{path}: header says {shape} so expected {expected} bytes, got {len(raw)} bytes{note}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _find(directory, split: str, kind: str, rank: int) -> Path:
    """The first existing spelling of `{split}-{kind}-idx{rank}-ubyte` (dash or dot, gzip or raw)."""
    if split not in SPLITS:
        raise DataError(f"unknown IDX split {split!r}; expected one of {SPLITS}")
    directory = Path(directory)
    names = [
        f"{split}-{kind}{sep}idx{rank}-ubyte{ext}" for sep in ("-", ".") for ext in (".gz", "")
    ]
    for name in names:
        if (directory / name).is_file():
            return directory / name
    raise DataError(f"{directory}: no {split} {kind} IDX file; tried {', '.join(names)}")


def find_idx(directory, split: str, kind: str = "images") -> Path:
    """Path of the images or labels file for `split` ('train' or 't10k'); DataError if absent."""
    rank = {"images": 3, "labels": 1}.get(kind)
    if rank is None:
        raise DataError(f"unknown IDX kind {kind!r}; expected 'images' or 'labels'")
    return _find(directory, split, kind, rank)


def load_idx_images(directory, split: str) -> np.ndarray:
    """The (N, rows, cols) uint8 images of `split` in an MNIST-layout directory."""
    path = find_idx(directory, split, "images")
    images = read_idx(path)
    if images.ndim != 3:
        raise DataError(f"{path}: expected an images file (magic {IMAGES_MAGIC}), got labels")
    if len(images) == 0:
        raise DataError(f"{path}: IDX header says 0 images; expected at least one")
    return images


def load_idx_labels(directory, split: str) -> np.ndarray:
    """The (N,) uint8 labels of `split` in an MNIST-layout directory."""
    path = find_idx(directory, split, "labels")
    labels = read_idx(path)
    if labels.ndim != 1:
        raise DataError(f"{path}: expected a labels file (magic {LABELS_MAGIC}), got images")
    return labels


def sha256_file(path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download(url: str, dest, sha256: str) -> Path:
    """Fetch `url` to `dest`, verifying its SHA-256; write atomically (temp file + rename).

    On a checksum mismatch nothing is left at `dest` and DataError says expected vs actual.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url) as response:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                h.update(chunk)
                out.write(chunk)
        actual = h.hexdigest()
        if actual != sha256.lower():
            raise DataError(f"{url} -> {dest}: expected sha256 {sha256.lower()}, got {actual}")
        os.replace(tmp, dest)
    except OSError as e:
        raise DataError(f"{url} -> {dest}: download failed ({e})") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest
