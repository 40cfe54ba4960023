"""The one place where the command-line tools turn expected failures into one line and an exit status.

Every CLI runs its body through :func:`run_cli`: an exception of a listed type prints
``<prog>: error: <what went wrong>`` on stderr (never a traceback) and returns that type's exit status;
anything else is a bug and propagates with its traceback.
"""
from __future__ import annotations

import sys
from typing import Callable, Sequence

__all__ = ['STATUS_BAD_INPUT', 'STATUS_FAILED', 'STATUS_UNREACHABLE', 'BAD_INPUT', 'run_cli', 'describe_error']

STATUS_FAILED = 1       # the work started and could not finish (training diverged, upload refused, ...)
STATUS_BAD_INPUT = 2    # arguments, config, files or data that cannot be used; nothing long was started
STATUS_UNREACHABLE = 3  # a server (the Hugging Face Hub) could not be reached

#: exception types that mean "bad input" for every CLI (ConfigError, DataError, IntegrityError, FolderError are
#: ValueErrors; ImportError: a missing optional package, named with its extra). A TypeError is a bug and keeps its
#: traceback unless a command lists it (one that passes user options on as keyword arguments).
BAD_INPUT: tuple[type[BaseException], ...] = (
    ValueError, ImportError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
    PermissionError,
)


def describe_error(e: BaseException) -> str:
    """The one-line text of an exception; an OSError without a message still names its file and cause."""
    text = str(e).strip()
    if isinstance(e, OSError) and e.filename is not None and (not text or text.startswith('[Errno')):
        cause = e.strerror or type(e).__name__
        return f"{e.filename}: {cause}"
    if not text:
        return type(e).__name__
    return ' '.join(text.split('\n')[0].split()) if isinstance(e, KeyError) else text


def run_cli(prog: str, body: Callable[[], int | None],
            statuses: Sequence[tuple[type[BaseException] | tuple[type[BaseException], ...], int]] = ()) -> int:
    """Run ``body`` and map expected failures to one line on stderr and an exit status.

    ``statuses`` is tried first, in order, then :data:`BAD_INPUT` (status 2). An exception with a ``signum``
    attribute (a stop signal, e.g. ``TrainingInterrupted``) returns ``128 + signum`` as shells do.

    Args:
        prog: the command's name, printed before ``error:``.
        body: the command's work; its return value (None: 0) is the exit status.
        statuses: (exception type(s), exit status) pairs specific to the command.

    Returns:
        The exit status.

    Example:
        >>> run_cli('timm-asap demo', lambda: int('x'))  # prints "timm-asap demo: error: invalid literal ..."
        2
    """
    try:
        return int(body() or 0)
    except BaseException as e:  # noqa: B036 - re-raised below unless it is an expected failure
        status = _status_of(e, statuses)
        if status is None:
            raise
        print(f"{prog}: error: {describe_error(e)}", file=sys.stderr, flush=True)
        return status


def _status_of(e: BaseException, statuses) -> int | None:
    signum = getattr(e, 'signum', None)
    if isinstance(signum, int):
        return 128 + signum
    for types, status in (*statuses, (BAD_INPUT, STATUS_BAD_INPUT)):
        if isinstance(e, types):
            return status
    return None
