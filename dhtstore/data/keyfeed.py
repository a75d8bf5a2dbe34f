"""The keys other processes add to a table of a shared PostgreSQL store, as they commit:
what lets a shared store keep the negative filters that a single writer keeps from its
own writes (``providerstore.keyfilter`` over ``provider_records``,
``provider.listfilter`` over the provide list).

Revision 0008's triggers send every key an ``INSERT`` adds on the table's channel
(``PROVIDER_KEYS``, ``PROVIDED_KEYS``; hex keys joined by commas), delivered when the
transaction commits and in commit order. A feed is one asyncpg connection of its own
that listens on the channel; the filter scans the table only after the feed listens,
so a key committed during the scan arrives by one road or the other.

A notification can be late (our event loop busy, a slow network) and a connection can
die silently, so the filter is trusted only while the feed is known to be current: every
``BEAT`` seconds the feed sends a notification of its own on the channel, and since
notifications arrive in commit order, receiving it means every key committed before it
was sent has arrived. ``current`` is True for ``STALE_AFTER`` seconds after the send of
the last beat received; outside that, and before the first, the filter answers "maybe"
for every key. So a record another process committed more than ``STALE_AFTER`` (1 s)
ago is never filtered out: the shared store's promise, that a record another process
received is served within 1 s, holds. A connection lost (or a beat not answered in
time) is counted and logged; the feed connects again, and the filter, told so, starts
over with a new scan (keys committed while the feed was lost are only in the table).

Every listener must read what is sent: PostgreSQL keeps the channel's queue (8 GB by
default) until each listening session has read it, so a process stopped (SIGSTOP) while
connected holds its share; its beats then stop, and its own filter is untrusted.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information
from sqlalchemy.engine import URL

from .failures import first_line

log = logging.getLogger(__name__)

PROVIDER_KEYS = "dhtstore_provider_keys"  # revision 0008: provider_records.key_mh
PROVIDED_KEYS = "dhtstore_provided_keys"  # revision 0008: provided_keys.multihash
BEAT = 0.25  # seconds between the feed's own notifications
STALE_AFTER = 1.0  # seconds after a beat's send that the feed counts as current
CONNECT_TIMEOUT = 10.0
RETRY_DELAY = 2.0  # seconds before a lost feed connects again
APPLICATION_NAME = "dhtstore key feed"  # pg_stat_activity shows "dhtstore key feed <channel>"


class FeedLost(Exception):
    """The feed's connection died, or its beats stopped coming back."""


# What a connection going away raises; asyncpg's InternalClientError included (a
# statement on a connection the server terminated mid-read: "another operation is in
# progress").
FEED_ERRORS: tuple[type[BaseException], ...] = (
    FeedLost, OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError,
)  # fmt: skip


class PostgresKeyFeed:
    """See the module docstring. ``run`` keeps the feed listening until cancelled."""

    def __init__(self, url: URL, channel: str, counters: dict[str, int] | None = None):
        self._dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
        self.channel = channel
        self.counters = {"key_feed_losses": 0} if counters is None else counters  # (a store's, to count in)
        self._beat_prefix = f"beat {secrets.token_hex(8)} "  # other processes' beats are not ours
        self._current_until = 0.0  # time.monotonic() deadline
        self._lost = False  # since the last loss, not listening yet
        self.listens = 0  # times it started listening: a filter built across a change missed keys
        self._listening = anyio.Event()  # set once it first listens

    @property
    def current(self) -> bool:
        """Whether every key committed more than ``STALE_AFTER`` ago has arrived."""
        return time.monotonic() < self._current_until

    async def run_beside(
        self, on_keys: Callable[[list[bytes]], None], on_listening: Callable[[], None], builds: Callable[[], Awaitable[None]]
    ) -> None:
        """``run``, and ``builds`` (a filter's build loop) once the feed first listens: a
        scan of the table before that could miss a key committed meanwhile."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.run, on_keys, on_listening)
            await self._listening.wait()
            await builds()
            tg.cancel_scope.cancel()

    async def run(self, on_keys: Callable[[list[bytes]], None], on_listening: Callable[[], None]) -> None:
        """Listen on the channel, reconnecting after a loss: ``on_keys`` gets the keys of
        every payload, ``on_listening`` is called each time listening (re)starts, since
        whatever was committed while the feed was lost must be read from the table."""
        while True:
            try:
                await self._listen(on_keys, on_listening)
            except FEED_ERRORS as exc:
                if not self._lost:  # once per outage, not per attempt
                    self.counters["key_feed_losses"] += 1
                    log.warning("key feed %s lost (%s); every key is 'maybe' until it is back", self.channel, first_line(exc))
                else:
                    log.debug("key feed %s: still lost (%s)", self.channel, first_line(exc))
                self._lost = True
            except Exception:  # a bug here must cost queries (the filter untrusted), not the node
                log.exception("key feed %s failed; it starts again", self.channel)
                self._lost = True
            finally:
                self._current_until = 0.0
            await anyio.sleep(RETRY_DELAY)

    async def _listen(self, on_keys: Callable[[list[bytes]], None], on_listening: Callable[[], None]) -> None:
        with anyio.fail_after(CONNECT_TIMEOUT):
            conn = await asyncpg.connect(
                self._dsn, timeout=CONNECT_TIMEOUT, server_settings={"application_name": f"{APPLICATION_NAME} {self.channel}"}
            )
        last_beat = time.monotonic()

        def notified(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
            nonlocal last_beat
            if payload.startswith(self._beat_prefix):
                last_beat = time.monotonic()
                self._current_until = max(self._current_until, float(payload[len(self._beat_prefix) :]) + STALE_AFTER)
            elif not payload.startswith("beat "):
                try:
                    keys = [bytes.fromhex(k) for k in payload.split(",")]
                except ValueError:  # not the trigger's: someone else's use of the channel
                    log.debug("key feed %s: ignored a payload of %d characters", self.channel, len(payload))
                    return
                on_keys(keys)

        def closed(_conn: Any) -> None:
            self._current_until = 0.0  # at once, not a beat later

        try:
            conn.add_termination_listener(closed)
            await conn.add_listener(self.channel, notified)
            if self._lost:
                log.info("key feed %s listening again; its filter is rebuilt", self.channel)
                self._lost = False
            self.listens += 1
            self._listening.set()
            on_listening()
            while True:
                with anyio.fail_after(STALE_AFTER):
                    await conn.execute("SELECT pg_notify($1, $2)", self.channel, f"{self._beat_prefix}{time.monotonic()!r}")
                await anyio.sleep(BEAT)
                if time.monotonic() - last_beat > STALE_AFTER + BEAT:
                    raise FeedLost(f"no beat came back for {STALE_AFTER + BEAT:g} s")
        finally:
            with anyio.move_on_after(2, shield=True):
                try:
                    await conn.close()
                except FEED_ERRORS:
                    pass
            if not conn.is_closed():
                conn.terminate()
