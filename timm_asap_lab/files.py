"""Folder writes of the lab's tools: staged folders, folder locks and the output-folder guard.

Files are written atomically through :mod:`timm_asap._files` (:func:`~timm_asap._files.atomic_path`); Hub folders are staged with
:func:`staging_dir` and moved into place with :func:`replace_dir`, which replaces an existing folder only
when :func:`check_replaceable` allows it (missing, empty, or written by the same tool, and holding none of
the inputs). :func:`folder_lock` keeps a second writer out of a folder while one writes into it.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

from timm_asap._files import LOCK_NAME, set_new_file_mode

try:
    import fcntl
except ImportError:  # not POSIX (Windows): folders are not locked, see folder_lock
    fcntl = None

__all__ = ['staging_dir', 'replace_dir', 'check_replaceable', 'folder_lock', 'FolderError',
           'FolderInUseError', 'OutputFolderError', 'check_folder_path', 'check_output_folder']

_logger = logging.getLogger(__name__)



class FolderError(ValueError):
    """A folder that cannot be used as asked (a bad ``--output``); the CLIs report it as bad input."""


class FolderInUseError(FolderError):
    """Another process holds the folder's lock (:func:`folder_lock`)."""


class OutputFolderError(FolderError):
    """The folder may not be replaced as a whole (:func:`check_replaceable`)."""


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


def replace_dir(staging: str | os.PathLike, target: str | os.PathLike, *, writer: str,
                foreign: Callable[[Path], Sequence[str]],
                inputs: Mapping[str, str | os.PathLike] | None = None) -> Path:
    """Move a finished ``staging`` folder to ``target``, replacing an existing folder there.

    The guard :func:`check_replaceable` (``writer``, ``foreign`` and ``inputs`` are its arguments) is
    checked first, right before the move, so a folder that is not ``writer``'s own is never replaced.

    ``target`` always names either the complete old or the complete new folder: on Linux the two are
    swapped in one step (``renameat2(RENAME_EXCHANGE)``); elsewhere, or on file systems without it,
    the old folder is renamed aside first, so for a moment ``target`` is missing while both complete
    folders exist. The old folder is deleted afterwards.

    When this process holds ``target``'s :func:`folder_lock`, the lock moves with the new folder: a
    lock file in ``staging`` is locked before the move, so ``target`` stays locked throughout.

    Raises:
        OutputFolderError: ``target`` may not be replaced (see :func:`check_replaceable`).
    """
    staging, target = Path(staging), Path(target)
    check_replaceable(target, writer=writer, foreign=foreign, inputs=inputs)
    carried = _carry_lock(staging, target)
    try:
        _move_into_place(staging, target)
    except BaseException:
        if carried is not None:
            os.close(carried[1])
        raise
    if carried is not None:
        held, fd = carried
        held.fd, old_fd = fd, held.fd
        os.close(old_fd)  # the old folder's lock file, deleted with it
    return target


def _move_into_place(staging: Path, target: Path) -> None:
    old = None
    if target.exists() or target.is_symlink():
        if not target.is_dir():
            raise FileExistsError(f"{target} exists and is not a folder; refusing to replace it")
        if not target.is_symlink() and _exchange(staging, target):
            shutil.rmtree(staging, ignore_errors=True)  # now the old folder
            return
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


def _listing(names: Sequence[str], limit: int = 8) -> str:
    shown = ', '.join(names[:limit])
    return shown + (f", and {len(names) - limit} more" if len(names) > limit else '')


def _is_empty(folder: Path) -> bool:
    """Whether the folder holds nothing but, perhaps, our lock file."""
    with os.scandir(folder) as entries:
        return all(e.name == LOCK_NAME for e in entries)


def check_replaceable(target: str | os.PathLike, *, writer: str, foreign: Callable[[Path], Sequence[str]],
                      inputs: Mapping[str, str | os.PathLike] | None = None) -> Path:
    """Refuse a folder that ``writer`` may not replace as a whole; the output-folder guard of every such write.

    A folder may be replaced when it does not exist, is empty (a lock file of :func:`folder_lock` does
    not count) or holds only what ``writer`` wrote (``foreign(folder)`` lists nothing). Never when it
    is, or contains, one of ``inputs`` (the files the writer reads), the working directory, the home
    folder or the file system root; never a symbolic link or a file.

    Args:
        target: the folder that is going to be replaced.
        writer: the tool that writes it, for the messages (e.g. ``'timm-asap publish'``).
        foreign: given an existing, non-empty folder, the names of its entries ``writer`` did not write
            (a folder's name ending in ``/``); empty when the folder is recognisably ``writer``'s.
        inputs: what the writer reads, by description (``{'checkpoint': path}``).

    Returns:
        ``target`` as a Path.

    Raises:
        OutputFolderError: one line naming the folder and what is there.

    Example:
        >>> check_replaceable('hub/new_model', writer='timm-asap publish', foreign=lambda f: [])  # doctest: +SKIP
    """
    target = Path(target)
    where = Path(os.path.realpath(target))
    refuse = f"refusing to replace {target}"
    advice = 'choose an empty or new folder'
    if where == Path(where.anchor):
        raise OutputFolderError(f"{refuse}: it is the file system root; {advice}")
    for name, place in (('the working directory', Path.cwd()), ('your home folder', Path.home())):
        place = Path(os.path.realpath(place))
        if where == place or where in place.parents:
            it = 'it is' if where == place else 'it contains'
            raise OutputFolderError(f"{refuse}: {it} {name} ({place}); {advice}")
    for what, path in (inputs or {}).items():
        real = Path(os.path.realpath(path))
        if real == where or where in real.parents:
            raise OutputFolderError(f"{refuse}: it holds the {what} {path} that {writer} reads; {advice}")
    if target.is_symlink():
        raise OutputFolderError(f"{refuse}: it is a symbolic link to {os.readlink(target)}; name a folder itself, "
                                f"or {advice}")
    if not target.exists():
        return target
    if not target.is_dir():
        raise OutputFolderError(f"{refuse}: it is a file, not a folder; {advice}")
    if _is_empty(target):
        return target
    bad = sorted(foreign(target))
    if bad:
        entries = f"{len(bad)} entr{'y' if len(bad) == 1 else 'ies'}"
        raise OutputFolderError(f"{target} holds {entries} not written by {writer} ({_listing(bad)}); nothing was "
                                f"replaced; {advice}")
    return target


# ---- folder locks -------------------------------------------------------------------------------------

class _Held:
    """One lock this process holds: the open lock file and how many nested holds share it."""

    def __init__(self, fd: int, path: Path, created: tuple[int, int] | None):
        self.fd, self.path, self.created, self.depth, self.pid = fd, path, created, 1, os.getpid()


_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}
_held: dict[str, _Held] = {}  # real path of the folder -> its lock
_held_guard = threading.Lock()


def _forget_in_child() -> None:
    # a forked child shares the parent's lock; it drops its references so that the lock ends with the parent
    for held in _held.values():
        with contextlib.suppress(OSError):
            os.close(held.fd)
    _held.clear()


if hasattr(os, 'register_at_fork'):
    os.register_at_fork(after_in_child=_forget_in_child)


def _same_file(a: os.stat_result, b: os.stat_result | None) -> bool:
    return b is not None and (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _stat(path: Path) -> os.stat_result | None:
    try:
        return os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _holder(fd: int) -> str:
    """What the lock file says about the process holding it (written when it took the lock)."""
    try:
        info = json.loads(os.pread(fd, 65536, 0).decode('utf-8'))
        return f" ({info['what']}, pid {int(info['pid'])} on {info['host']}: {info['command']})"
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # being written, or not ours
        return ''


def _make_folder(folder: Path) -> tuple[int, int] | None:
    """Create ``folder`` if missing; the (device, inode) of a folder made here, else None."""
    if folder.is_dir():
        return None
    if folder.exists() or folder.is_symlink():
        raise FolderError(f"{folder} exists and is not a folder; name a folder")
    try:
        folder.mkdir(parents=True)
    except FileExistsError:
        if not folder.is_dir():
            raise FolderError(f"{folder} exists and is not a folder; name a folder") from None
        return None
    st = os.stat(folder)
    return st.st_dev, st.st_ino


def _acquire(folder: Path, what: str) -> _Held:
    created = _make_folder(folder)
    path = folder / LOCK_NAME
    flags = os.O_RDWR | os.O_CREAT | getattr(os, 'O_CLOEXEC', 0) | getattr(os, 'O_NOFOLLOW', 0)
    while True:
        try:
            fd = os.open(path, flags, 0o666)
        except FileNotFoundError:  # the folder was removed meanwhile (its creator gave it up): make it again
            created = _make_folder(folder) or created
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in _NO_LOCKS:  # a file system without locks (some network mounts): say so, go on
                _logger.warning(f"{folder}: the file system does not support locks ({e.strerror}); the folder is "
                                "not locked against other writers")
                return _Held(fd, path, created)
            if not isinstance(e, BlockingIOError):
                os.close(fd)
                raise
            holder = _holder(fd)
            os.close(fd)
            raise FolderInUseError(f"{folder} is in use by another process{holder}, which holds its lock "
                                   f"{path.name} while it writes there; wait until it has finished, or choose "
                                   f"another folder") from None
        except BaseException:
            os.close(fd)
            raise
        if not _same_file(os.fstat(fd), _stat(path)):  # the file was released and removed before we locked it
            os.close(fd)
            continue
        info = {'pid': os.getpid(), 'host': os.uname().nodename, 'what': what,
                'command': ' '.join([os.path.basename(sys.executable), *sys.argv]) or what}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + '\n').encode('utf-8'), 0)
        return _Held(fd, path, created)


def _carry_lock(staging: Path, target: Path) -> tuple[_Held, int] | None:
    """When this process holds ``target``'s lock: a locked lock file in ``staging`` (the lock once
    ``staging`` has become ``target``), with the lock it will replace; else None."""
    if fcntl is None:
        return None
    with _held_guard:
        held = _held.get(os.path.realpath(target))
    if held is None or held.pid != os.getpid():
        return None
    fd = os.open(staging / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, 'O_CLOEXEC', 0), 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new file: nobody else can hold it
        except OSError as e:
            if e.errno not in _NO_LOCKS:  # without locks (warned when the folder was taken) it moves all the same
                raise
        os.pwrite(fd, os.pread(held.fd, 65536, 0), 0)  # the same holder
    except BaseException:
        os.close(fd)
        raise
    return held, fd


def _release(held: _Held) -> None:
    if held.pid != os.getpid():  # a forked child leaving the parent's block: the lock is the parent's
        return
    try:
        if _same_file(os.fstat(held.fd), _stat(held.path)):  # still this folder's lock file (not moved away)
            os.unlink(held.path)
    finally:
        os.close(held.fd)
    folder = held.path.parent
    if held.created is not None:  # a folder made only to hold the lock and left empty: removed again
        st = _stat(folder)
        if st is not None and (st.st_dev, st.st_ino) == held.created:
            with contextlib.suppress(OSError):  # not empty: it holds what was written, and stays
                os.rmdir(folder)


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, what: str) -> Iterator[Path]:
    """Hold ``folder``'s lock while writing into it; a second writer is refused at once.

    The lock is ``fcntl.flock`` on :data:`LOCK_NAME` inside the folder, so it ends with the process
    that holds it, even one killed with SIGKILL (its lock file is then left, unlocked, and taken over
    by the next writer). The lock file records the holder's pid, host and command for the refusal
    message, and is removed on release. The folder is created if missing (and removed again if it is
    still empty at release). The same process may take the lock again while it holds it (nested
    holds share it). Forked children do not keep it. Without ``fcntl`` (not POSIX) nothing is locked.

    Args:
        folder: the folder written into.
        what: the writer, named in a refusal (e.g. ``'timm-asap finetune'``).

    Yields:
        ``folder`` as a Path.

    Raises:
        FolderInUseError: another process holds the lock (one line naming the folder and the holder).
        FolderError: ``folder`` exists and is not a folder.

    Example:
        >>> with folder_lock('output/run', 'timm-asap finetune'):  # doctest: +SKIP
        ...     train_into('output/run')
    """
    folder = Path(folder)
    if fcntl is None:
        _logger.warning(f"{folder}: folder locks need fcntl (POSIX); not locked against other writers")
        _make_folder(folder)
        yield folder
        return
    with _held_guard:  # taking the lock never waits, so other threads wait at most that long here
        key = os.path.realpath(folder)
        held = _held.get(key)
        if held is not None and held.pid == os.getpid():
            held.depth += 1
        else:
            held = _acquire(folder, what)
            key = os.path.realpath(folder)  # the folder may have been created just now
            _held[key] = held
    try:
        yield folder
    finally:
        with _held_guard:
            held.depth -= 1
            last = held.depth == 0
            if last and _held.get(key) is held:
                del _held[key]
        if last:
            _release(held)


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


def check_output_folder(folder: str | os.PathLike, *, writer: str, ours: Sequence[str]) -> Path:
    """Refuse to write files into a folder that holds someone else's: ``writer``'s output folder must be missing,
    empty (a lock file of :func:`folder_lock` aside) or one ``writer`` wrote before (it holds one of ``ours``).

    Args:
        folder: the output folder ``writer`` writes its files into (summaries, results, plots).
        writer: the tool, named in the message (e.g. ``'timm-asap study'``).
        ours: file names only ``writer`` writes there (e.g. ``['options.json']``); one of them marks the folder
            as ``writer``'s (a re-run then resumes or rewrites its own files).

    Returns:
        ``folder`` as a Path.

    Raises:
        OutputFolderError: one line naming the folder and (some of) what is there.

    Example:
        >>> check_output_folder(tempfile.mkdtemp(), writer='timm-asap study', ours=['options.json']).is_dir()
        True
    """
    folder = Path(folder)
    if not folder.is_dir() or any((folder / name).is_file() for name in ours):
        return folder
    entries = sorted(p.name + ('/' if p.is_dir() else '') for p in folder.iterdir() if p.name != LOCK_NAME)
    if entries:
        shown = ', '.join(entries[:5]) + (f' and {len(entries) - 5} more' if len(entries) > 5 else '')
        raise OutputFolderError(f"{folder} holds {len(entries)} entries not written by {writer} ({shown}); its files "
                                f"would be written among them: choose an empty or new folder")
    return folder
