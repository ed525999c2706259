"""QUIC on Trio, framing and the wire codec.

The QUIC layer drives aioquic's sans-I/O state machine from Trio tasks (see
``_driver.py`` for the theory of operation).  :class:`MessageStream` frames whole
messages over any Trio stream; the codec turns attrs message classes into
msgpack bytes and back.
"""

from ._codec import PROTOCOL_VERSION, converter, decode, encode, message, pack, unpack
from ._config import MAX_DATAGRAM_SIZE, QuicConfig
from ._connect import QuicListener, connect_quic, serve_quic
from ._driver import transmit_together
from ._errors import ConnectionClosed, ProtocolError
from ._framing import DEFAULT_MAX_MESSAGE_SIZE, FRAMING_ERROR_CODE, MessageStream
from ._memory import MemoryConnection, MemoryStream, memory_connection_pair
from ._quic import QuicConnection
from ._serve import serve_streams
from ._stream import QuicStream
from ._tickets import SessionTicketStore
from ._tls import (
    CertificateError,
    ClientTLS,
    ServerTLS,
    certificate_identity,
    make_dev_certs,
)

__all__ = [
    "PROTOCOL_VERSION",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "MAX_DATAGRAM_SIZE",
    "FRAMING_ERROR_CODE",
    "CertificateError",
    "ClientTLS",
    "ConnectionClosed",
    "MemoryConnection",
    "MemoryStream",
    "MessageStream",
    "ProtocolError",
    "QuicConfig",
    "QuicConnection",
    "QuicListener",
    "QuicStream",
    "ServerTLS",
    "SessionTicketStore",
    "certificate_identity",
    "connect_quic",
    "converter",
    "decode",
    "encode",
    "make_dev_certs",
    "memory_connection_pair",
    "message",
    "pack",
    "serve_quic",
    "serve_streams",
    "transmit_together",
    "unpack",
]
