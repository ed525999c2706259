"""Error types shared by every transport."""

from __future__ import annotations


class ProtocolError(Exception):
    """Bytes on the wire did not form a valid midswarm message.

    Raised by the codec and by :class:`~midswarm.transport.MessageStream` for
    truncated, oversized or garbage frames, unknown message types, protocol
    version mismatches and ill-formed arrays.  The message says what was wrong.
    Only the offending stream is affected: the framing layer closes that stream
    and every other stream and connection keeps working.
    """


class ConnectionClosed(Exception):
    """Raised when opening or accepting a stream on a connection that has closed.

    ``error_code`` and ``reason`` are the values of the CONNECTION_CLOSE frame
    (sent or received), when there was one.
    """

    def __init__(self, reason: str = "", error_code: int = 0) -> None:
        super().__init__(f"connection closed (code {error_code}): {reason}" if reason or error_code
                         else "connection closed")
        self.reason = reason
        self.error_code = error_code
