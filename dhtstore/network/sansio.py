"""What the sans-I/O protocol machines (multistream, Noise, yamux) share."""

from __future__ import annotations

import enum
from typing import Final


class NeedData(enum.Enum):
    """The type of NEED_DATA: a one-member enum, so ``event is not NEED_DATA`` narrows
    an event's type for the type checker."""

    NEED_DATA = "NEED_DATA"

    def __repr__(self) -> str:
        return "NEED_DATA"


# Returned by every sans-I/O machine's ``next_event()`` (multistream, Noise, yamux)
# when it cannot make progress until ``receive_data`` gives it more bytes.
NEED_DATA: Final = NeedData.NEED_DATA
