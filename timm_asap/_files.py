"""Atomic file and folder writes (temp file or folder + rename) for every package of timm-asap.

:func:`atomic_path` is the one atomic-write helper: the weights, checkpoints, results, reports and
plots of the train, evaluation and hub packages are all written through it (or through
:func:`atomic_write_bytes`/:func:`atomic_write_text` built on it); Hub folders are staged with
:func:`staging_dir` and moved into place with :func:`replace_dir`.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Iterator

__all__ = ['new_file_mode', 'set_new_file_mode', 'atomic_path', 'atomic_write_bytes', 'atomic_write_text',
           'staging_dir', 'replace_dir', 'check_folder_path']


def _umask() -> int:
    try:  # Linux reports it without changing it
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('Umask:'):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_file_mode(directory: bool = False) -> int:
    """The permission bits a new file (``0o666 & ~umask``) or folder (``0o777 & ~umask``) gets under the
    process umask."""
    return (0o777 if directory else 0o666) & ~_umask()


def set_new_file_mode(path: str | os.PathLike) -> Path:
    """Give a temp file or folder the mode of an ordinarily created one (``tempfile.mkstemp``/``mkdtemp``
    and safetensors create theirs 0600/0700, which would hide results from the group once renamed into
    place)."""
    os.chmod(path, new_file_mode(directory=os.path.isdir(path)))
    return Path(path)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temp path beside ``path`` for a writer to create; on success it replaces ``path`` in one rename.

    The temp file is created by the caller (``torch.save``, ``safetensors.torch.save_file``,
    ``fig.savefig``, ``os.link`` ...). When the block exits cleanly the file is fsync'd, given an
    ordinary file's mode (:func:`set_new_file_mode`) and renamed onto ``path``, so readers see either
    the complete old or the complete new file. On any error it is removed and ``path`` is unchanged.

    Args:
        path: the destination file; its folder is created if missing.

    Yields:
        The temp path (same folder, so the rename stays on one file system; it does not exist yet).

    Example:
        >>> with atomic_path('out/weights.pth') as tmp:
        ...     torch.save(state, tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        set_new_file_mode(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`); returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    return atomic_write_bytes(path, text.encode('utf-8'))


@contextlib.contextmanager
def staging_dir(target: str | os.PathLike) -> Iterator[Path]:
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


def replace_dir(staging: str | os.PathLike, target: str | os.PathLike) -> Path:
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


def check_folder_path(path: str | os.PathLike, what: str) -> Path:
    """Check, before any work, that ``path`` is or can become a folder this process writes into.

    Args:
        path: the folder (created later when missing).
        what: what the folder is for, named in the message (e.g. ``'--corruption-cache'``).

    Returns:
        ``path`` as a Path.

    Raises:
        NotADirectoryError: ``path`` is a file, or lies below a file.
        PermissionError: the folder (or, when missing, its nearest existing parent) is not writable.

    Example:
        >>> check_folder_path(tempfile.gettempdir(), 'scratch') == Path(tempfile.gettempdir())
        True
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{what} {path} is a file, not a folder; name a folder (it is created when "
                                 f"missing)")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(f"{what} {path} cannot be created: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"{what} {path}: {existing} is not writable by this user")
    return path
