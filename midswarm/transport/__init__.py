"""QUIC on Trio, framing and the wire codec."""

from ._codec import PROTOCOL_VERSION, converter, decode, encode, message, pack, unpack
from ._errors import ConnectionClosed, ProtocolError
from ._framing import DEFAULT_MAX_MESSAGE_SIZE, FRAMING_ERROR_CODE, MessageStream

__all__ = [
    "PROTOCOL_VERSION",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "FRAMING_ERROR_CODE",
    "ConnectionClosed",
    "MessageStream",
    "ProtocolError",
    "converter",
    "decode",
    "encode",
    "message",
    "pack",
    "unpack",
]
