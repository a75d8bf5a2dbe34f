"""The failures every module shares, so a caller catches one type per kind of failure."""

from __future__ import annotations


class NetworkError(Exception):
    """A request could not be completed: dial failure, reset stream, timeout, bad reply."""


class ProtocolViolation(NetworkError):
    """The remote sent something the protocol forbids."""


class StoreError(Exception):
    """The store cannot be used; the message is one line saying why and what to do."""


class StoreUnavailable(StoreError):
    """A store operation failed because the database did not answer or refused it (lost
    connection, locked file, disk full). Every store API raises this, never a driver's or
    SQLAlchemy's own error, so a caller catches one type and may retry later."""
