"""Atomic file and folder writes (temp + os.replace) shared by the Hub helpers."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

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
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix='.tmp', dir=target.parent))
    try:
        yield tmp
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def replace_dir(staging: str | Path, target: str | Path) -> Path:
    """Move a finished ``staging`` folder to ``target``, replacing an existing folder there.

    The old folder is first renamed aside, so ``target`` always names either the complete old or the
    complete new folder; the old one is deleted afterwards.
    """
    staging, target = Path(staging), Path(target)
    old = None
    if target.exists() or target.is_symlink():
        if not target.is_dir():
            raise FileExistsError(f"{target} exists and is not a folder; refusing to replace it")
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
