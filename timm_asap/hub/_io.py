"""Atomic file and folder writes (temp + os.replace) shared by the Hub helpers."""
from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import sys
import tempfile
from pathlib import Path

from .._files import set_new_file_mode

__all__ = ['atomic_write_bytes', 'atomic_write_text', 'staging_dir', 'replace_dir']


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temp file in the same folder, fsync'd, then renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix='.tmp', dir=path.parent)
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        set_new_file_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    return atomic_write_bytes(path, text.encode('utf-8'))


@contextlib.contextmanager
def staging_dir(target: str | Path):
    """A fresh temp folder beside ``target`` (same file system), removed again unless it was moved away.

    Yields:
        Path of the staging folder; move it into place with :func:`replace_dir`.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = set_new_file_mode(tempfile.mkdtemp(prefix=f".{target.name}.", suffix='.tmp', dir=target.parent))
    try:
        yield tmp
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one step (Linux ``renameat2`` with ``RENAME_EXCHANGE``); False where
    the system or the file system does not offer it."""
    if not sys.platform.startswith('linux'):
        return False
    try:
        renameat2 = ctypes.CDLL(None).renameat2
    except (AttributeError, OSError):
        return False
    # any failure (no such flag on this file system, FUSE refusals, ...) leaves both paths as they were:
    # the caller then renames aside, which raises the real error if there is one
    return renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0


def replace_dir(staging: str | Path, target: str | Path) -> Path:
    """Move a finished ``staging`` folder to ``target``, replacing an existing folder there.

    ``target`` always names either the complete old or the complete new folder: on Linux the two are
    swapped in one step (``renameat2(RENAME_EXCHANGE)``); elsewhere, or on file systems without it,
    the old folder is renamed aside first, so for a moment ``target`` is missing while both complete
    folders exist. The old folder is deleted afterwards.
    """
    staging, target = Path(staging), Path(target)
    old = None
    if target.exists() or target.is_symlink():
        if not target.is_dir():
            raise FileExistsError(f"{target} exists and is not a folder; refusing to replace it")
        if not target.is_symlink() and _exchange(staging, target):
            shutil.rmtree(staging, ignore_errors=True)  # now the old folder
            return target
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix='.old', dir=target.parent))
        os.replace(target, old / 'folder')
    try:
        os.replace(staging, target)
    except BaseException:
        if old is not None:
            os.replace(old / 'folder', target)
            shutil.rmtree(old, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target
