"""What the sans-I/O protocol machines (multistream, Noise, yamux) share."""

from __future__ import annotations


class NeedData:
    """The type of NEED_DATA; a singleton whose repr reads well in test failures."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


# Returned by every sans-I/O machine's ``next_event()`` (multistream, Noise, yamux)
# when it cannot make progress until ``receive_data`` gives it more bytes.
NEED_DATA = NeedData()
