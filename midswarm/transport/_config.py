"""Tunable QUIC settings."""

from __future__ import annotations

import attrs

__all__ = ["QuicConfig", "MAX_DATAGRAM_SIZE"]

#: The largest datagram aioquic builds correctly (2-byte varint frame lengths).
MAX_DATAGRAM_SIZE = 16383


def _positive(_inst: object, attribute: attrs.Attribute, value: float) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name} must be positive, got {value!r}")


@attrs.frozen(kw_only=True)
class QuicConfig:
    """QUIC connection settings shared by :func:`serve_quic` and :func:`connect_quic`.

    The defaults suit a swarm on loopback or a LAN.  aioquic's own defaults are
    changed where they do not fit a long-lived agent connection: the number of
    peer-opened streams is raised from 128 (and replenished as streams finish, so
    it bounds *concurrent* streams rather than streams over a lifetime), keep-alive
    pings are sent (aioquic sends none by itself) and the idle timeout is long.
    """

    #: Largest UDP payload we send.  ``None`` (the default) discovers it from the
    #: path MTU the kernel knows for the peer's address (1472 on a 1500-byte
    #: Ethernet path, the maximum on loopback) and lowers it if the kernel later
    #: learns of a smaller MTU (EMSGSIZE).  1200 is always safe on the Internet.
    #: At most 16383: aioquic writes frame lengths in two bytes, and larger
    #: packets fail to parse at the peer.
    max_datagram_size: int | None = None
    #: ``"reno"`` or ``"cubic"``.
    congestion_control: str = attrs.field(
        default="reno", validator=attrs.validators.in_(("reno", "cubic")))
    #: Per-stream receive window in bytes: how much a peer may send on one stream
    #: before our reader consumes it.  Bounds each stream's receive buffer.
    stream_receive_window: int = attrs.field(default=1 << 20, validator=_positive)
    #: Initial connection-wide receive window.  It grows as data arrives; what a
    #: connection buffers is bounded by the per-stream windows.
    connection_receive_window: int = attrs.field(default=8 << 20, validator=_positive)
    #: ``send_all`` waits while more than this many bytes of a stream are queued
    #: for sending but not yet acknowledged.  Bounds each stream's send buffer.
    stream_send_watermark: int = attrs.field(default=1 << 20, validator=_positive)
    #: Streams the peer may have open at once (each direction counted separately).
    max_concurrent_streams: int = attrs.field(default=4096, validator=_positive)
    #: Seconds between keep-alive PINGs when the connection is otherwise quiet;
    #: ``None`` disables them.
    keep_alive_interval: float | None = 10.0
    #: Seconds without any packet from the peer before the connection is dropped.
    idle_timeout: float = attrs.field(default=300.0, validator=_positive)
    #: Seconds :func:`connect_quic` waits for the handshake before giving up.
    handshake_timeout: float = attrs.field(default=10.0, validator=_positive)
    #: Send bursts of datagrams with UDP generic segmentation offload (one
    #: ``sendmsg`` for up to 64 datagrams) where the kernel supports it; falls
    #: back to one send per datagram by itself.
    gso: bool = True
    #: Seconds an endpoint keeps polling its socket, instead of blocking, after
    #: datagrams that came at short intervals (see ``_busypoll.py``): it trades
    #: CPU time in those gaps for a round trip about twice as fast.  Traffic
    #: with longer gaps costs nothing; one endpoint per Trio run polls at a
    #: time.  ``0`` disables it.
    busy_poll: float = attrs.field(default=0.0003, validator=attrs.validators.ge(0))
    #: ALPN protocol we offer and require.
    alpn: str = "midswarm/1"
    #: First RTT estimate before any sample (aioquic's default, 100 ms, slows loopback
    #: loss recovery).
    initial_rtt: float = attrs.field(default=0.01, validator=_positive)

    def __attrs_post_init__(self) -> None:
        if self.max_datagram_size is not None and not (
                1200 <= self.max_datagram_size <= MAX_DATAGRAM_SIZE):
            raise ValueError(f"max_datagram_size must be between 1200 and {MAX_DATAGRAM_SIZE}, "
                             f"got {self.max_datagram_size}")
        if self.keep_alive_interval is not None and self.keep_alive_interval <= 0:
            raise ValueError("keep_alive_interval must be positive or None")
