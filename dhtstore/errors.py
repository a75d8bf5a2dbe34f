"""The failures every module shares, so a caller catches one type per kind of failure."""

from __future__ import annotations


class NetworkError(Exception):
    """A request could not be completed: dial failure, reset stream, timeout, bad reply."""


class ProtocolViolation(NetworkError):
    """The remote sent something the protocol forbids."""
