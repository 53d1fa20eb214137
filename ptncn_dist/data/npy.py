"""Reading one NumPy file without ever unpickling (and writing a user's in-memory splits): a `.npy` memory-mapped from its parsed header,
or a member of a `.npz` (memory-mapped in place when stored uncompressed). Every failure is a
one-line DataError naming the file (and the member)."""
from __future__ import annotations

from pathlib import Path
import struct
import zipfile
import zlib

import numpy as np

from ..errors import DataError

NPY_MAGIC = b"\x93NUMPY"
SPLITS = ("train", "valid", "test")


def _shape(shape) -> str:
    return "(" + ", ".join(str(int(s)) for s in shape) + ")"


def _read_header(f, path, where: str = "") -> tuple:
    """(shape, fortran_order, dtype) of the .npy header at the file's current position."""
    start = f.tell()
    head = f.read(8)
    if head[:6] != NPY_MAGIC:
        if len(head) < 6 and NPY_MAGIC.startswith(head) and head:
            raise DataError(f"{path}{where}: not a NumPy .npy file: its header is truncated "
                            f"({len(head)} bytes)")
        raise DataError(f"{path}{where}: not a NumPy .npy file (it starts with {head[:6]!r}, "
                        f"not the .npy magic {NPY_MAGIC!r})")
    f.seek(start)
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            header = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            header = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"format version {version[0]}.{version[1]}: only 1.0 and 2.0 hold numeric arrays")
    except (ValueError, EOFError, OSError, SyntaxError) as e:
        raise DataError(f"{path}{where}: not a NumPy .npy file: its header is truncated or damaged ({e})") from None
    shape, fortran, dtype = header
    if dtype.hasobject:
        raise DataError(f"{path}{where}: holds Python objects (dtype {dtype}), which load only by unpickling; "
                        f"pickles are never loaded (allow_pickle=False): save a numeric array")
    return tuple(int(s) for s in shape), bool(fortran), dtype


def _check_size(path, offset: int, end: int, shape, dtype, where: str = "") -> int:
    """The data's byte count; DataError when the file ends before it does."""
    need = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    have = end - offset
    if have < need:
        raise DataError(f"{path}{where}: truncated: its header says shape {_shape(shape)} {dtype}, "
                        f"{need:,} bytes of data, but it holds {max(have, 0):,}")
    return need


def _memmap(path, offset: int, end: int, shape, fortran, dtype, where: str = "") -> np.ndarray:
    if _check_size(path, offset, end, shape, dtype, where) == 0:
        return np.zeros(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=shape, order="F" if fortran else "C", offset=offset)


def load_npy(path) -> np.ndarray:
    """A .npy file memory-mapped read-only (`np.load(path, mmap_mode="r", allow_pickle=False)`,
    after its header is checked so that every failure is one DataError naming the file)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size == 0:
            raise DataError(f"{path}: empty file (0 bytes), not a NumPy .npy file")
        with open(path, "rb") as f:
            shape, fortran, dtype = _read_header(f, path)
            offset = f.tell()
        _check_size(path, offset, size, shape, dtype)
        if 0 in shape:
            return np.zeros(shape, dtype)
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, ValueError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{path}: cannot read as a NumPy .npy file ({e})") from None


def _npz_member(path, zf: zipfile.ZipFile, name: str) -> np.ndarray:
    """Member `name` (without .npy) of an open .npz: memory-mapped when stored, else read whole."""
    info = zf.getinfo(name + ".npy")
    where = f" (member {name!r})"
    if info.compress_type == zipfile.ZIP_STORED:
        with open(path, "rb") as f:
            f.seek(info.header_offset)
            local = f.read(30)
            if len(local) < 30 or local[:4] != b"PK\x03\x04":
                raise DataError(f"{path}{where}: damaged zip archive (no local header at byte {info.header_offset:,})")
            n_name, n_extra = struct.unpack("<HH", local[26:30])
            start = info.header_offset + 30 + n_name + n_extra
            f.seek(start)
            shape, fortran, dtype = _read_header(f, path, where)
            offset = f.tell()
        return _memmap(path, offset, start + info.file_size, shape, fortran, dtype, where)
    with zf.open(info) as f:
        try:
            shape, fortran, dtype = _read_header(f, path, where)
            del shape, fortran, dtype
            return np.lib.format.read_array(zf.open(info), allow_pickle=False)
        except (ValueError, EOFError, OSError, zipfile.BadZipFile, zlib.error) as e:
            if isinstance(e, DataError):
                raise
            raise DataError(f"{path}{where}: cannot read ({e})") from None


def load_npz(path) -> tuple:
    """(data, mask or None) from a .npz: member `x` (or its only non-mask member) and `mask`."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise DataError(f"{path}: empty file (0 bytes), not a NumPy .npz file")
        with zipfile.ZipFile(path) as zf:
            names = [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
            data = [n for n in names if n != "mask"]
            if "x" in names:
                key = "x"
            elif len(data) == 1:
                key = data[0]
            else:
                raise DataError(f"{path}: expected the data as member 'x' (or as the only member besides "
                                f"'mask'); it holds {', '.join(repr(n) for n in names) or 'no arrays'}")
            x = _npz_member(path, zf, key)
            mask = _npz_member(path, zf, "mask") if "mask" in names else None
        return x, mask
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except zipfile.BadZipFile as e:
        raise DataError(f"{path}: not a NumPy .npz file (not a zip archive: {e})") from None
    except (OSError, ValueError, KeyError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{path}: cannot read as a NumPy .npz file ({e})") from None

def write_splits(data, directory) -> Path:
    """Save a user's in-memory arrays as the files `data.source = "arrays"` reads: `data` is one
    array (train only; valid and test are then held out by the split rule) or a dict of "train",
    "valid", "test" arrays and their "<split>_mask" masks. Each is written with np.save (no
    pickle) into `directory` (created; it must not hold split files already)."""
    if not isinstance(data, dict):
        data = {"train": data}
    names = {*SPLITS, *(f"{s}_mask" for s in SPLITS)}
    unknown = sorted(set(data) - names)
    if unknown or "train" not in data:
        raise DataError(f"data must be an array or a dict with 'train' (and 'valid', 'test', '<split>_mask'); "
                        f"got keys {sorted(data)}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    taken = [p.name for p in directory.iterdir() if p.suffix in (".npy", ".npz")]
    if taken:
        raise DataError(f"{directory}: already holds {', '.join(sorted(taken))}; give an empty data directory")
    for name, value in data.items():
        arr = np.asarray(value)
        if arr.dtype == object:
            raise DataError(f"data[{name!r}] is an object array; give a numeric array")
        np.save(directory / f"{name}.npy", arr, allow_pickle=False)
    return directory
