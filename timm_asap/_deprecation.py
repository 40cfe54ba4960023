"""Renamed public names of earlier releases, kept working with a DeprecationWarning."""
from __future__ import annotations

import warnings
from typing import Any, Callable

__all__ = ['deprecated_getattr']


def deprecated_getattr(module: str, name: str, replacements: dict[str, tuple[str, Callable[[], Any]]]) -> Any:
    """The body of a module's ``__getattr__``: a renamed ``name`` with a DeprecationWarning, else AttributeError.

    Args:
        module: the module's ``__name__``.
        name: the attribute asked for.
        replacements: old name -> (what to use instead, in words; a function returning the value).

    Example:
        >>> def __getattr__(name):
        ...     return deprecated_getattr(__name__, name, {'old': ('new', lambda: new)})
    """
    if name not in replacements:
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    instead, value = replacements[name]
    warnings.warn(f"{module}.{name} is deprecated; use {instead}", DeprecationWarning, stacklevel=3)
    return value()
