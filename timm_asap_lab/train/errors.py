"""Errors and outcomes of a fine-tuning run."""
from __future__ import annotations

import signal

__all__ = ['TrainingError', 'TrainingInterrupted', 'NonFiniteLossError', 'CheckpointError', 'RunExistsError']


class TrainingError(RuntimeError):
    """A run cannot go on; the message says why and what was kept."""


class NonFiniteLossError(TrainingError):
    """The training loss became NaN or Inf; nothing after the last good checkpoint was written."""


class CheckpointError(TrainingError):
    """A checkpoint cannot be used: unreadable, not a fine-tuning checkpoint, or from another model."""


class RunExistsError(TrainingError):
    """The output folder already holds a run that this call must not overwrite."""


class TrainingInterrupted(TrainingError):
    """A SIGTERM/SIGINT stopped the run after writing a resumable checkpoint.

    Attributes:
        signum: the signal number.
        checkpoint: path of the checkpoint written on the way out.
    """

    def __init__(self, signum: int, checkpoint: str):
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f'signal {signum}'
        super().__init__(f"stopped by {name}; resumable checkpoint written to {checkpoint}")
        self.signum = signum
        self.checkpoint = checkpoint
