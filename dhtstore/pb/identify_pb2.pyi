from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class Identify(_message.Message):
    __slots__ = ("protocolVersion", "agentVersion", "publicKey", "listenAddrs", "observedAddr", "protocols", "signedPeerRecord")
    PROTOCOLVERSION_FIELD_NUMBER: _ClassVar[int]
    AGENTVERSION_FIELD_NUMBER: _ClassVar[int]
    PUBLICKEY_FIELD_NUMBER: _ClassVar[int]
    LISTENADDRS_FIELD_NUMBER: _ClassVar[int]
    OBSERVEDADDR_FIELD_NUMBER: _ClassVar[int]
    PROTOCOLS_FIELD_NUMBER: _ClassVar[int]
    SIGNEDPEERRECORD_FIELD_NUMBER: _ClassVar[int]
    protocolVersion: str
    agentVersion: str
    publicKey: bytes
    listenAddrs: _containers.RepeatedScalarFieldContainer[bytes]
    observedAddr: bytes
    protocols: _containers.RepeatedScalarFieldContainer[str]
    signedPeerRecord: bytes
    def __init__(self, protocolVersion: _Optional[str] = ..., agentVersion: _Optional[str] = ..., publicKey: _Optional[bytes] = ..., listenAddrs: _Optional[_Iterable[bytes]] = ..., observedAddr: _Optional[bytes] = ..., protocols: _Optional[_Iterable[str]] = ..., signedPeerRecord: _Optional[bytes] = ...) -> None: ...
