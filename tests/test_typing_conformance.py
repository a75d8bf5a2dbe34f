"""Each implementation assigned to the Protocol it implements, as go's
``var _ Iface = (*Impl)(nil)``: the type checker fails on this file when an
implementation drifts from its Protocol."""

from __future__ import annotations

from dhtstore.crypto.keys import PrivateKey
from dhtstore.network import api
from dhtstore.network.host import Host
from dhtstore.network.kadmessenger import LibP2PKadMessenger


def test_network_implementations_conform() -> None:
    host: api.Host = Host(PrivateKey.generate())
    messenger: api.KadMessenger = LibP2PKadMessenger(host)
    assert isinstance(messenger, api.KadMessenger)
