"""Errors raised by the Hub publishing and loading helpers."""
from __future__ import annotations

from ..models.registry import UnknownModelError

__all__ = ['HubPublishError', 'HubAuthError', 'MissingEvaluationError', 'IntegrityError', 'HubDownloadError',
           'UnregisteredArchitectureError']


class HubPublishError(RuntimeError):
    """Publishing cannot go ahead (bad input, refused upload, repository in an unexpected state)."""


class HubAuthError(HubPublishError):
    """No Hugging Face token was found, or the Hub rejected it. The message never contains the token."""


class MissingEvaluationError(HubPublishError):
    """Publishing was asked for without evaluation results (pass ``allow_no_eval`` to publish anyway)."""


class IntegrityError(ValueError):
    """A weights or config file is truncated, corrupted or does not fit its architecture.

    Attributes:
        path: the offending file.
    """

    def __init__(self, path, message: str):
        self.path = str(path)
        super().__init__(f"{path}: {message}")


class HubDownloadError(OSError):
    """A download from the Hub broke off (connection lost, incomplete transfer); nothing partial is kept."""


UnregisteredArchitectureError = UnknownModelError
"""A config names an architecture that timm's registry does not hold: the one unknown-architecture error,
:class:`timm_asap.models.UnknownModelError` (also an ImportError), under its earlier name."""
