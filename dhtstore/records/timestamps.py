"""RFC 3339 timestamps with nanoseconds, as Go's ``time.RFC3339Nano`` writes and reads them.

IPNS ``Validity`` and the DHT ``Record.timeReceived`` use this form
(``1970-01-01T00:00:00.000000001Z``). Python's ``datetime`` stops at microseconds, so
times here are integers: nanoseconds since the Unix epoch.
"""

from __future__ import annotations

import calendar
import datetime
import re

NS_PER_SECOND = 1_000_000_000
_EPOCH = datetime.datetime(1970, 1, 1)

_RFC3339 = re.compile(
    rb"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?:(Z)|([+-])(\d{2}):(\d{2}))"
)


class TimestampError(ValueError):
    """Text that is not an RFC 3339 timestamp."""


def parse_ns(text: bytes | str) -> int:
    """Nanoseconds since the epoch of an RFC 3339 timestamp (``Z`` or a numeric offset)."""
    raw = text.encode("ascii", "replace") if isinstance(text, str) else bytes(text)
    m = _RFC3339.fullmatch(raw)
    if m is None:
        raise TimestampError(f"not an RFC 3339 timestamp: {raw[:64]!r}")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    if not (1 <= month <= 12 and 1 <= day <= calendar.monthrange(max(year, 1), month)[1]):
        raise TimestampError(f"no such date: {raw[:64]!r}")
    if hour > 23 or minute > 59 or second > 59:
        raise TimestampError(f"no such time of day: {raw[:64]!r}")
    fraction = m.group(7) or b""
    nanos = int(fraction.ljust(9, b"0")) if fraction else 0
    offset = 0
    if m.group(8) is None:
        off_h, off_m = int(m.group(10)), int(m.group(11))
        if off_h > 23 or off_m > 59:
            raise TimestampError(f"bad UTC offset: {raw[:64]!r}")
        offset = (off_h * 3600 + off_m * 60) * (1 if m.group(9) == b"+" else -1)
    seconds = calendar.timegm((year, month, day, hour, minute, second)) - offset
    return seconds * NS_PER_SECOND + nanos


def format_ns(ns: int) -> str:
    """UTC RFC 3339 with the fraction's trailing zeros dropped, as Go's RFC3339Nano."""
    seconds, nanos = divmod(ns, NS_PER_SECOND)
    year, month, day, hour, minute, second = _utc_fields(seconds)
    text = f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}"
    if nanos:
        text += "." + f"{nanos:09d}".rstrip("0")
    return text + "Z"


def _utc_fields(seconds: int) -> tuple[int, int, int, int, int, int]:
    t = _EPOCH + datetime.timedelta(seconds=seconds)
    return t.year, t.month, t.day, t.hour, t.minute, t.second
