"""UDP socket helpers: resolving a peer, socket settings (no fragmentation,
large buffers), and the path's largest datagram."""

from __future__ import annotations

import socket
from typing import Any

import trio

from ._config import MAX_DATAGRAM_SIZE

__all__ = ["MIN_DATAGRAM_SIZE", "forbid_fragmentation", "path_max_datagram_size",
           "max_datagram_to", "resolve_udp", "tune_socket"]

# Linux socket options the socket module does not name.
_IP_MTU_DISCOVER, _IP_MTU, _IPV6_MTU_DISCOVER, _IPV6_MTU, _PMTUDISC_DO = 10, 14, 23, 24, 2
MIN_DATAGRAM_SIZE = 1200
_SOCKET_BUFFER = 4 << 20


async def resolve_udp(host: str, port: int) -> list[Any]:
    """``getaddrinfo`` for a UDP peer.  A numeric address resolves at once
    without a scheduling round (trio's ``getaddrinfo`` spends one even then,
    on every connection's path); a name goes to trio's resolver thread.
    Raises :class:`OSError` (``socket.gaierror``) for a name that does not
    resolve; a checkpoint for cancellation."""
    await trio.lowlevel.checkpoint_if_cancelled()
    try:
        return socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM,
                                  flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV)
    except socket.gaierror:
        return await trio.socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)


def tune_socket(sock: socket.socket) -> None:
    """Non-blocking, no fragmentation, 4 MiB buffers (as far as the kernel allows)."""
    sock.setblocking(False)
    forbid_fragmentation(sock)
    for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, _SOCKET_BUFFER)
        except OSError:
            pass  # the kernel caps it; the default still works


def forbid_fragmentation(sock: socket.socket) -> None:
    """Set DF: oversized datagrams fail with EMSGSIZE instead of fragmenting."""
    try:
        if sock.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_MTU_DISCOVER, _PMTUDISC_DO)
        else:
            sock.setsockopt(socket.IPPROTO_IP, _IP_MTU_DISCOVER, _PMTUDISC_DO)
    except OSError:
        pass  # not Linux: the kernel fragments, which still delivers


def path_max_datagram_size(sock: socket.socket) -> int:
    """The largest QUIC datagram for a *connected* UDP socket's path: the
    kernel's path MTU less IP and UDP headers, within [1200, MAX_DATAGRAM_SIZE]."""
    try:
        if sock.family == socket.AF_INET6:
            mtu = sock.getsockopt(socket.IPPROTO_IPV6, _IPV6_MTU) - 48
        else:
            mtu = sock.getsockopt(socket.IPPROTO_IP, _IP_MTU) - 28
    except OSError:
        return MIN_DATAGRAM_SIZE
    return max(MIN_DATAGRAM_SIZE, min(mtu, MAX_DATAGRAM_SIZE))


def max_datagram_to(family: int, addr: Any) -> int:
    """:func:`path_max_datagram_size` towards ``addr``, from a throwaway socket."""
    probe = socket.socket(family, socket.SOCK_DGRAM)
    try:
        forbid_fragmentation(probe)
        probe.connect(addr)
        return path_max_datagram_size(probe)
    except OSError:
        return MIN_DATAGRAM_SIZE
    finally:
        probe.close()
