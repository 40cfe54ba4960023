"""Errors raised by the Hub loaders and integrity checks."""
from __future__ import annotations

from timm_asap.models.registry import UnknownModelError

__all__ = ['IntegrityError', 'HubDownloadError', 'UnregisteredArchitectureError']


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
