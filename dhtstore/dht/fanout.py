"""One request to each of a set of peers, concurrently, each under its own timeout:
the step the generic algorithms take after ``find_closest_peers``."""

from __future__ import annotations

import logging

import anyio

from .. import amino
from ..errors import NetworkError
from ..network.api import KadMessenger
from ..types import Message, PeerInfo

log = logging.getLogger(__name__)


async def ask_each(
    messenger: KadMessenger,
    peers: list[PeerInfo],
    message: Message,
    timeout: float = amino.READ_MESSAGE_TIMEOUT,
) -> list[tuple[PeerInfo, Message]]:
    """The replies of the peers that answered, in the order of ``peers``."""
    replies: dict[int, Message] = {}

    async def ask(i: int, peer: PeerInfo) -> None:
        try:
            with anyio.fail_after(timeout):
                replies[i] = await messenger.request(peer, message)
        except (NetworkError, TimeoutError) as exc:
            log.debug("%s to %s failed: %s", message.type.name, peer.peer_id, exc)

    async with anyio.create_task_group() as tg:
        for i, peer in enumerate(peers):
            tg.start_soon(ask, i, peer)
    return [(peers[i], replies[i]) for i in sorted(replies)]


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
