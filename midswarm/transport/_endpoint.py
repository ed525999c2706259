"""One UDP socket and the QUIC connections behind it (:class:`_Endpoint`).

An endpoint's receiver task waits until the socket is readable, then drains
every queued datagram without blocking, feeds each to its connection and pumps
each touched connection once — so a burst of datagrams costs one wake-up, not
one per datagram.  Sends never block: a datagram the kernel cannot take right
now is queued, in order, and a flusher task writes the queue when the socket
becomes writable.  A server endpoint routes by destination connection ID,
following the IDs each connection issues and retires.

:func:`serve_quic` and :func:`connect_quic` (``_connect.py``) open endpoints.
"""

from __future__ import annotations

import errno
import logging
import math
import socket
import struct
import sys
from collections import deque
from collections.abc import Callable
from typing import Any

import trio

from ._busypoll import busy_poller, real_time
from ._quic import QuicConnection

__all__: list[str] = []

log = logging.getLogger("midswarm.transport")

_RECV_BATCH = 256
_UDP_SEGMENT = 103  # Linux; the socket module does not name it
_GSO_MAX_SEGMENTS = 64
_GSO_MAX_BYTES = 65000


class _Endpoint:
    """One UDP socket and the connections behind it."""

    def __init__(self, sock: socket.socket, *, connected: bool, gso: bool = True,
                 busy_poll: float = 0.0) -> None:
        self.sock = sock
        #: Seconds to poll the socket after frequent traffic (``_busypoll.py``).
        self._busy_poll = busy_poll
        self._connected = connected
        self.routes: dict[bytes, QuicConnection] = {}
        self._cids: dict[QuicConnection, set[bytes]] = {}
        self._pending: deque[tuple[bytes, Any]] = deque()
        self._flush_lot = trio.lowlevel.ParkingLot()
        self.on_refused: Callable[[], None] | None = None
        #: Set when the kernel refused a datagram as too large for the path.
        self.oversized = False
        #: Send runs of datagrams with one GSO ``sendmsg`` (Linux UDP_SEGMENT).
        self.gso = gso and hasattr(socket, "SOL_UDP") and sys.platform == "linux"

    # --- sending ------------------------------------------------------------------

    def send_datagrams(self, datagrams: list[tuple[bytes, Any]]) -> None:
        if self._pending:
            self._pending.extend(datagrams)
            return
        sock = self.sock
        connected = self._connected
        n = len(datagrams)
        i = 0
        while i < n:
            data, addr = datagrams[i]
            try:
                if self.gso and n - i > 1:
                    sent = self._send_segmented(datagrams, i)
                    if sent:
                        i += sent
                        continue
                if connected:
                    sock.send(data)
                else:
                    sock.sendto(data, addr)
            except BlockingIOError:
                self._pending.extend(datagrams[i:])
                self._flush_lot.unpark()
                return
            except OSError as exc:
                # ECONNREFUSED from an earlier ICMP error, EMSGSIZE, ...: UDP is
                # lossy by contract and QUIC recovers from a lost datagram.
                if exc.errno == errno.EMSGSIZE:
                    self.oversized = True
                self._socket_error(exc)
            i += 1

    def _send_segmented(self, datagrams: list[tuple[bytes, Any]], start: int) -> int:
        """Send a run of same-size datagrams to one address in one ``sendmsg``
        with UDP generic segmentation offload; the kernel cuts it into
        datagrams.  Returns how many were sent, 0 if the run is too short or
        the kernel refuses GSO (then GSO is switched off for good)."""
        size = len(datagrams[start][0])
        addr = datagrams[start][1]
        end = start + 1
        total = size
        n = len(datagrams)
        while (end < n and end - start < _GSO_MAX_SEGMENTS and datagrams[end][1] == addr
               and total + size <= _GSO_MAX_BYTES):
            length = len(datagrams[end][0])
            if length > size:
                break
            total += length
            end += 1
            if length < size:
                break  # only the last segment may be shorter
        if end - start < 2:
            return 0
        payload = b"".join(d for d, _ in datagrams[start:end])
        control = [(socket.SOL_UDP, _UDP_SEGMENT, struct.pack("=H", size))]
        try:
            if self._connected:
                self.sock.sendmsg([payload], control)
            else:
                self.sock.sendmsg([payload], control, 0, addr)
        except OSError as exc:
            if exc.errno in (errno.EIO, errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP):
                self.gso = False  # no offload on this path: plain sends from now on
                return 0
            raise
        return end - start

    def _socket_error(self, exc: OSError) -> None:
        if exc.errno == errno.ECONNREFUSED and self.on_refused is not None:
            self.on_refused()
        else:
            log.debug("UDP send/receive error ignored: %s", exc)

    async def run_flusher(self) -> None:
        sock = self.sock
        pending = self._pending
        while True:
            if not pending:
                await self._flush_lot.park()
                continue
            await trio.lowlevel.wait_writable(sock)
            while pending:
                data, addr = pending[0]
                try:
                    if self._connected:
                        sock.send(data)
                    else:
                        sock.sendto(data, addr)
                except BlockingIOError:
                    break
                except OSError as exc:
                    self._socket_error(exc)
                pending.popleft()

    # --- receiving ----------------------------------------------------------------

    async def run_receiver(self, on_datagram: Callable[[bytes, Any, float],
                                                       QuicConnection | None]) -> None:
        sock = self.sock
        touched: dict[QuicConnection, None] = {}
        window = self._busy_poll
        poller = busy_poller() if window > 0 else None
        last_end = -math.inf
        poll = False
        while True:
            first = None
            if poll:
                assert poller is not None
                first = await poller.poll(sock)
            if first is None:
                await trio.lowlevel.wait_readable(sock)
            start = real_time()
            now = trio.current_time()
            if first is not None:
                conn = on_datagram(first[0], first[1], now)
                if conn is not None:
                    touched[conn] = None
            for _ in range(_RECV_BATCH):
                try:
                    data, addr = sock.recvfrom(65536)
                except BlockingIOError:
                    break
                except OSError as exc:
                    self._socket_error(exc)
                    continue
                conn = on_datagram(data, addr, now)
                if conn is not None:
                    touched[conn] = None
            for conn in touched:
                conn._process_received()
            touched.clear()
            if poller is not None:
                # Poll (or keep the run's poller going) only while traffic is
                # frequent: this batch came within the window of the last one.
                end = real_time()
                poll = start - last_end <= window
                last_end = end
                if poll:
                    poller.extend(end + window)

    # --- routing (server) -----------------------------------------------------------

    def route_add(self, cid: bytes, conn: QuicConnection) -> None:
        self.routes[cid] = conn
        self._cids.setdefault(conn, set()).add(cid)

    def route_remove(self, cid: bytes) -> None:
        conn = self.routes.pop(cid, None)
        if conn is not None:
            self._cids.get(conn, set()).discard(cid)

    def connection_terminated(self, conn: QuicConnection) -> None:
        for cid in self._cids.pop(conn, ()):
            if self.routes.get(cid) is conn:
                del self.routes[cid]
