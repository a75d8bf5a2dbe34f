"""One request to each of a set of peers, concurrently, each under its own timeout:
the step the generic algorithms take after ``find_closest_peers``, and the PUT_VALUE
and ADD_PROVIDER sends that follow a lookup."""

from __future__ import annotations

import logging
from collections.abc import Callable

import anyio

from .. import amino
from ..errors import NetworkError
from ..network.api import KadMessenger
from ..types import Message, MessageType, PeerInfo, Record
from .results import ValueSearch

log = logging.getLogger(__name__)

ReplyHandler = Callable[[PeerInfo, Message], bool]
"""Called with each reply as it arrives; returns True when the goal is met (stop)."""


async def ask_each(
    messenger: KadMessenger,
    peers: list[PeerInfo],
    message: Message,
    on_reply: ReplyHandler,
    timeout: float = amino.READ_MESSAGE_TIMEOUT,
) -> None:
    """Send ``message`` to every peer at once and hand each reply to ``on_reply``; when
    it returns True the requests still in flight are cancelled. A peer that fails or
    stays silent past ``timeout`` is left out."""
    async with anyio.create_task_group() as tg:

        async def ask(peer: PeerInfo) -> None:
            try:
                with anyio.fail_after(timeout):
                    reply = await messenger.request(peer, message)
            except (NetworkError, TimeoutError) as exc:
                log.debug("%s to %s failed: %s", message.type.name, peer.peer_id, exc)
                return
            if on_reply(peer, reply):
                tg.cancel_scope.cancel()

        for peer in peers:
            tg.start_soon(ask, peer)


async def put_record(
    messenger: KadMessenger, peers: list[PeerInfo], record: Record, timeout: float = amino.PUT_OPERATION_TIMEOUT
) -> int:
    """PUT_VALUE ``record`` to each peer; returns how many echoed it back (accepted it)."""
    accepted = 0

    def on_reply(_peer: PeerInfo, reply: Message) -> bool:
        nonlocal accepted
        if reply.record is not None and reply.record.value == record.value:
            accepted += 1
        return False

    await ask_each(messenger, peers, Message(MessageType.PUT_VALUE, key=record.key, record=record), on_reply, timeout)
    return accepted


async def correct_holders(
    messenger: KadMessenger,
    search: ValueSearch,
    closest: list[PeerInfo],
    deadline: float,
    put_timeout: float = amino.PUT_OPERATION_TIMEOUT,
) -> tuple[int, int]:
    """The stale-holder update after a lookup that ran to its end: the best record to
    each of ``closest`` that did not return it, every PUT_VALUE ending by ``deadline``
    (anyio clock). Returns (PUT_VALUEs sent, accepted)."""
    stale = search.stale(closest)
    remaining = deadline - anyio.current_time()
    if search.best is None or not stale or remaining <= 0:
        return 0, 0
    record = Record(search.key, search.best)
    return len(stale), await put_record(messenger, stale, record, min(put_timeout, remaining))


async def send_each(
    messenger: KadMessenger,
    peers: list[PeerInfo],
    message: Message,
    timeout: float = amino.PUT_OPERATION_TIMEOUT,
) -> int:
    """Send ``message`` (no reply expected) to each peer; returns how many sends succeeded."""
    sent = 0

    async def send(peer: PeerInfo) -> None:
        nonlocal sent
        try:
            with anyio.fail_after(timeout):
                await messenger.send(peer, message)
            sent += 1
        except (NetworkError, TimeoutError) as exc:
            log.debug("%s to %s failed: %s", message.type.name, peer.peer_id, exc)

    async with anyio.create_task_group() as tg:
        for peer in peers:
            tg.start_soon(send, peer)
    return sent
