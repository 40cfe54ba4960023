"""Preemption signals: the first SIGTERM/SIGINT becomes a flag the training loop polls."""
from __future__ import annotations

import logging
import signal
import threading
from typing import Any

__all__ = ['SignalCatcher', 'ignore_signals_in_worker']

_logger = logging.getLogger(__name__)


class SignalCatcher:
    """Turns the first SIGTERM/SIGINT into :attr:`signum`; a second one acts as usual.

    Args:
        enabled: install the handlers (only possible in the main thread).
    """

    def __init__(self, enabled: bool):
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        if enabled and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.signum = signum
        _logger.warning(f"received {signal.Signals(signum).name}: writing a checkpoint at the next step; "
                        f"send it again to stop at once")
        self.restore()

    def restore(self) -> None:
        """Put the previous handlers back."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


def ignore_signals_in_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: workers leave SIGINT/SIGTERM to the main process, which checkpoints
    and shuts them down."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
