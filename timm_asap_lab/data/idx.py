"""Reading and writing IDX files, the format of MNIST and Fashion-MNIST (optionally gzip-compressed).

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of dimensions), one
big-endian uint32 per dimension, then the values in C order, big-endian.
"""
from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np

from timm_asap._files import atomic_path

__all__ = ['IdxError', 'read_idx', 'write_idx']

# IDX type code -> numpy dtype (big-endian where it matters)
_IDX_TYPES = {
    0x08: np.dtype('>u1'),
    0x09: np.dtype('>i1'),
    0x0B: np.dtype('>i2'),
    0x0C: np.dtype('>i4'),
    0x0D: np.dtype('>f4'),
    0x0E: np.dtype('>f8'),
}
_IDX_CODES = {dt.newbyteorder('='): code for code, dt in _IDX_TYPES.items()}


class IdxError(ValueError):
    """An IDX file is malformed or truncated; the message names the file."""


def _open(path: Path, mode: str, compressed: bool | None = None):
    if compressed is None:
        compressed = path.suffix == '.gz'
    return gzip.open(path, mode) if compressed else open(path, mode)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (``.gz`` compressed or plain) into a native-endian numpy array.

    Args:
        path: the file, e.g. ``train-images-idx3-ubyte.gz``.

    Returns:
        Array of the file's shape and dtype (``uint8`` for (Fashion-)MNIST images and labels).

    Raises:
        FileNotFoundError: the file does not exist.
        IdxError: bad magic number, unknown type code, or fewer bytes than the header promises.
    """
    path = Path(path)
    try:
        with _open(path, 'rb') as f:
            data = f.read()
    except (OSError, EOFError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise IdxError(f"{path}: cannot be read ({e})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise IdxError(f"{path}: not an IDX file (magic bytes {data[:4].hex() or 'missing'})")
    code, ndim = data[2], data[3]
    if code not in _IDX_TYPES:
        raise IdxError(f"{path}: unknown IDX type code 0x{code:02x}; allowed: {[hex(c) for c in _IDX_TYPES]}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IdxError(f"{path}: truncated header ({len(data)} bytes, need {header})")
    shape = struct.unpack(f'>{ndim}I', data[4:header])
    dtype = _IDX_TYPES[code]
    count = int(np.prod(shape, dtype=np.int64))
    need = header + count * dtype.itemsize
    if len(data) < need:
        raise IdxError(f"{path}: truncated: shape {tuple(shape)} needs {need} bytes, file has {len(data)}")
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder('='), copy=True)


def write_idx(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write ``array`` as an IDX file (gzip-compressed when ``path`` ends in ``.gz``), atomically.

    Args:
        path: destination file.
        array: values of dtype uint8, int8, int16, int32, float32 or float64, at most 255 dimensions.

    Returns:
        The path written.

    Raises:
        IdxError: the dtype has no IDX type code.
    """
    path = Path(path)
    array = np.asarray(array)
    native = array.dtype.newbyteorder('=')
    if native not in _IDX_CODES:
        raise IdxError(f"{path}: dtype {array.dtype} has no IDX type; allowed: {[str(d) for d in _IDX_CODES]}")
    code = _IDX_CODES[native]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f'>{array.ndim}I', *array.shape)
    body = np.ascontiguousarray(array, dtype=_IDX_TYPES[code]).tobytes()
    with atomic_path(path) as tmp, _open(tmp, 'wb', compressed=path.suffix == '.gz') as f:
        f.write(header + body)
    return path
