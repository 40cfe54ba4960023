"""File-mode helper for the atomic writers (temp file + rename) of the train, evaluation and hub packages."""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ['new_file_mode', 'set_new_file_mode']


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
