"""Errors of Hub publishing."""
from __future__ import annotations

__all__ = ['HubPublishError', 'HubAuthError', 'MissingEvaluationError']


class HubPublishError(RuntimeError):
    """Publishing cannot go ahead (bad input, refused upload, repository in an unexpected state)."""


class HubAuthError(HubPublishError):
    """No Hugging Face token was found, or the Hub rejected it. The message never contains the token."""


class MissingEvaluationError(HubPublishError):
    """Publishing was asked for without evaluation results (pass ``allow_no_eval`` to publish anyway)."""
