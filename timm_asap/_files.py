"""Atomic file writes (temp file + fsync + rename), shared by the Hub loader and the lab.

:func:`atomic_path` is the one atomic-write helper: weights, configs, checkpoints, results and plots are
written through it (or through :func:`atomic_write_bytes`/:func:`atomic_write_text` built on it), so a
reader sees either the complete old or the complete new file. The folder guards and locks of the lab's
writers are in :mod:`timm_asap_lab.files`.
"""
from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Iterator

__all__ = ['new_file_mode', 'set_new_file_mode', 'atomic_path', 'atomic_write_bytes', 'atomic_write_text', 'LOCK_NAME']

#: the lock file :func:`timm_asap_lab.files.folder_lock` keeps inside a folder while a writer holds it
#: (removed on release); the Hub loader skips it when it copies a folder
LOCK_NAME = '.timm-asap.lock'


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
