"""The error raised for bad input data."""

__all__ = ['DataError']


class DataError(ValueError):
    """Input data is missing, empty, unreadable or does not fit the model; the message says which."""
