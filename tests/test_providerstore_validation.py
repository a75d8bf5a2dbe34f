"""Helpers the provider stores share: key text."""

from __future__ import annotations

import base58
from hypothesis import given
from hypothesis import strategies as st

from dhtstore.providerstore.validation import base58btc


@given(st.binary(max_size=80))
def test_key_text_is_base58btc(data: bytes) -> None:
    assert base58btc(data) == base58.b58encode(data).decode()
