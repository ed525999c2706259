"""The Trio peers of the transport benchmark: midswarm QUIC, trio-websocket, Trio TCP.

Servers echo (see :mod:`_transport_common` for the tiny protocol); clients run one
workload each and return a dict of results.  All three share the client code: a
*mailbox* is anything with ``send_message``/``receive_message`` — a
:class:`MessageStream` over a QUIC stream or a TCP connection, a WebSocket
connection, or one of many id-prefixed mailboxes multiplexed on one TCP or
WebSocket connection.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio
import trio_websocket
from _transport_common import (
    BULK_START,
    MAILBOX_ID,
    TOTAL,
    WS_MAX_MESSAGE,
    WS_RECEIVE_BUFFER,
    certs_paths,
    emit,
    latency_summary,
    now,
    payload,
)
from _transport_workloads import (
    AgentStages,
    HandshakeTally,
    Mailbox,
    bulk_result,
    handshake_modes,
    handshake_turns,
    mailbox_rounds,
    mailboxes_result,
    round_trip,
    send_bulk,
    time_round_trips,
)

from midswarm.transport import (
    ClientTLS,
    ConnectionClosed,
    MessageStream,
    ProtocolError,
    QuicConfig,
    QuicConnection,
    QuicStream,
    ServerTLS,
    SessionTicketStore,
    connect_quic,
    serve_quic,
    serve_streams,
)

HOST = "127.0.0.1"
_GONE = (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionClosed,
         trio_websocket.ConnectionClosed, ProtocolError)


def quic_config(params: dict[str, Any]) -> QuicConfig:
    return QuicConfig(max_datagram_size=int(params.get("max_datagram", 1452)),
                      handshake_timeout=float(params.get("handshake_timeout", 10.0)),
                      busy_poll=float(params.get("busy_poll", QuicConfig().busy_poll)))


# --- servers -----------------------------------------------------------------------

async def _echo(box: Mailbox) -> None:
    """Echo messages; after BULK_START count bytes until an empty message."""
    try:
        while True:
            msg = await box.receive_message()
            if msg == BULK_START:
                total = 0
                while True:
                    chunk = await box.receive_message()
                    if not chunk:
                        break
                    total += len(chunk)
                await box.send_message(TOTAL.pack(total))
            else:
                await box.send_message(msg)
    except (trio.EndOfChannel, *_GONE):
        pass


class _WsBox:
    """A whole WebSocket connection as one mailbox (a message is a frame)."""

    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self.ws = ws

    async def send_message(self, message: bytes) -> None:
        await self.ws.send_message(message)

    async def receive_message(self) -> bytes:
        msg = await self.ws.get_message()
        assert isinstance(msg, bytes)
        return msg


async def serve(kind: str, certs: str, params: dict[str, Any],
                task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Run the echo server of ``kind`` until cancelled; reports its port."""
    async with trio.open_nursery() as nursery:
        if kind == "midswarm":
            paths = certs_paths(certs)

            async def echo_stream(stream: QuicStream) -> None:
                await _echo(MessageStream(stream))

            async def handler(conn: QuicConnection) -> None:
                await serve_streams(conn, echo_stream)

            mutual = bool(params.get("mutual_tls"))
            tls = ServerTLS(paths["cert"], paths["key"], ca=paths["ca"] if mutual else None,
                            require_client_cert=mutual)
            listener = await nursery.start(serve_quic, handler, 0, HOST, tls,
                                           quic_config(params))
            task_status.started(listener.port)
        elif kind == "tcp":
            async def tcp_handler(stream: trio.SocketStream) -> None:
                await _echo(MessageStream(stream))

            listeners = await nursery.start(functools.partial(
                trio.serve_tcp, tcp_handler, 0, host=HOST, backlog=4096))
            task_status.started(listeners[0].socket.getsockname()[1])
        elif kind == "websocket":
            async def ws_handler(request: trio_websocket.WebSocketRequest) -> None:
                ws = await request.accept()
                await _echo(_WsBox(ws))

            server = await nursery.start(functools.partial(
                trio_websocket.serve_websocket, ws_handler, HOST, 0, None,
                receive_buffer_size=WS_RECEIVE_BUFFER, max_message_size=WS_MAX_MESSAGE))
            task_status.started(server.port)
        else:
            raise ValueError(f"not a Trio peer: {kind!r}")


# --- clients -----------------------------------------------------------------------

class _MuxBox:
    """One logical mailbox multiplexed on a connection by a 4-byte id prefix."""

    def __init__(self, mux: _Mux, mailbox_id: int) -> None:
        self._mux = mux
        self._prefix = MAILBOX_ID.pack(mailbox_id)
        self._send, self._recv = trio.open_memory_channel[bytes](1)

    async def send_message(self, message: bytes) -> None:
        await self._mux.box.send_message(self._prefix + message)

    async def receive_message(self) -> bytes:
        try:
            return await self._recv.receive()
        except trio.EndOfChannel:
            raise trio.BrokenResourceError("multiplexed connection ended") from None


class _Mux:
    def __init__(self, box: Mailbox) -> None:
        self.box = box
        self._boxes: list[_MuxBox] = []

    def open(self) -> _MuxBox:
        mb = _MuxBox(self, len(self._boxes))
        self._boxes.append(mb)
        return mb

    async def run_reader(self) -> None:
        try:
            while True:
                msg = await self.box.receive_message()
                (mid,) = MAILBOX_ID.unpack_from(msg)
                # Request/reply keeps at most one reply in flight per mailbox.
                self._boxes[mid]._send.send_nowait(msg[4:])
        except (trio.EndOfChannel, *_GONE):
            pass
        finally:
            for mb in self._boxes:
                mb._send.close()


class Client:
    """A connection that hands out mailboxes."""

    def __init__(self, kind: str, *, conn: QuicConnection | None = None,
                 box: Mailbox | None = None, mux: _Mux | None = None) -> None:
        self.kind = kind
        self.conn = conn
        self._box = box
        self._mux = mux

    async def open_mailbox(self) -> Mailbox:
        if self.conn is not None:
            return MessageStream(await self.conn.open_stream())
        if self._mux is not None:
            return self._mux.open()
        if self._box is None:
            raise RuntimeError("this connection carries one mailbox; open it with mux=True")
        box, self._box = self._box, None
        return box


@asynccontextmanager
async def open_client(kind: str, port: int, certs: str, params: dict[str, Any], *,
                      tickets: SessionTicketStore | None = None,
                      wait_connected: bool = True, mux: bool = False) -> AsyncIterator[Client]:
    if kind == "midswarm":
        paths = certs_paths(certs)
        tls = (ClientTLS(paths["ca"], paths["client_cert"], paths["client_key"])
               if params.get("mutual_tls") else ClientTLS(paths["ca"]))
        async with connect_quic(HOST, port, tls=tls,
                                config=quic_config(params), session_tickets=tickets,
                                wait_connected=wait_connected) as conn:
            yield Client(kind, conn=conn)
        return
    box: Mailbox
    async with trio.open_nursery() as nursery:
        if kind == "tcp":
            stream = await trio.open_tcp_stream(HOST, port)
            box = MessageStream(stream)
            closer: Callable[[], Awaitable[None]] = stream.aclose
        elif kind == "websocket":
            ws = await trio_websocket.connect_websocket(
                nursery, HOST, port, "/", use_ssl=False,
                receive_buffer_size=WS_RECEIVE_BUFFER, max_message_size=WS_MAX_MESSAGE)
            box = _WsBox(ws)
            closer = ws.aclose
        else:
            raise ValueError(f"not a Trio peer: {kind!r}")
        try:
            if mux:
                m = _Mux(box)
                nursery.start_soon(m.run_reader)
                yield Client(kind, mux=m)
            else:
                yield Client(kind, box=box)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await closer()
            nursery.cancel_scope.cancel()


class _NotifyingTickets(SessionTicketStore):
    """A ticket store that lets the benchmark wait for the next ticket."""

    def __init__(self) -> None:
        super().__init__()
        self.received = 0
        self._event = trio.Event()

    def add(self, ticket: Any) -> None:
        super().add(ticket)
        self.received += 1
        self._event.set()
        self._event = trio.Event()

    async def wait_beyond(self, seen: int, timeout: float) -> bool:
        with trio.move_on_after(timeout):
            while self.received <= seen:
                await self._event.wait()
        return self.received > seen


async def run_rtt(kind: str, port: int, certs: str, p: dict[str, Any]) -> dict[str, Any]:
    msg = payload(int(p["size"]))
    lat: list[float] = []
    cpu: dict[str, float] = {}
    async with open_client(kind, port, certs, p) as client:
        box = await client.open_mailbox()
        with trio.move_on_after(float(p["time_limit"])) as scope:
            await time_round_trips(box, msg, int(p["warmup"]), int(p["count"]), lat,
                                   cpu, p.get("server_pid"))
    return {**latency_summary(lat), **cpu, "timed_out": scope.cancelled_caught}


async def run_bulk(kind: str, port: int, certs: str, p: dict[str, Any]) -> dict[str, Any]:
    done: tuple[int, float] | None = None
    async with open_client(kind, port, certs, p) as client:
        box = await client.open_mailbox()
        await round_trip(box, payload(400))  # connection and stream are up
        with trio.move_on_after(float(p["time_limit"])):
            done = await send_bulk(box, int(p["mib"]) << 20)
    return bulk_result(done)


async def run_handshake(kind: str, port: int, certs: str,
                        p: dict[str, Any]) -> dict[str, Any]:
    modes = handshake_modes(p)
    if "resumed" in modes and kind != "midswarm":
        raise ValueError(f"{kind} has no 0-RTT resumption")
    msg = payload(400)
    store = _NotifyingTickets() if "resumed" in modes else None
    if store is not None:
        async with open_client(kind, port, certs, p, tickets=store) as client:
            await round_trip(await client.open_mailbox(), msg)
            if not await store.wait_beyond(0, 5.0):
                raise RuntimeError("the server issued no session ticket")
    tally = HandshakeTally(modes)
    deadline = trio.current_time() + float(p["time_limit"])
    for mode in handshake_turns(modes, int(p["count"])):
        if trio.current_time() > deadline:
            break
        resumed = mode == "resumed"
        tickets = store if resumed else None
        seen = tickets.received if tickets is not None else 0
        t0 = time.perf_counter()
        async with open_client(kind, port, certs, p, tickets=tickets,
                               wait_connected=not resumed) as client:
            box = await client.open_mailbox()
            await box.send_message(msg)
            await box.receive_message()
            elapsed = time.perf_counter() - t0
            conn = client.conn
            if conn is not None:
                await conn.wait_handshake()
            tally.add(mode, elapsed, conn is not None and conn.session_resumed,
                      conn is not None and conn.early_data_accepted)
            if tickets is not None:
                # Keep the next connection resumable: the server's tickets are single use.
                await tickets.wait_beyond(seen, 2.0)
    return tally.result()


async def run_mailboxes(kind: str, port: int, certs: str,
                        p: dict[str, Any]) -> dict[str, Any]:
    """``n`` concurrent mailboxes on one connection, ``rounds`` round trips each."""
    n, rounds, size = int(p["n"]), int(p["rounds"]), int(p["size"])
    lat: list[float] = []
    async with open_client(kind, port, certs, p, mux=kind != "midswarm") as client:
        boxes = [await client.open_mailbox() for _ in range(n)]

        async def one(box: Mailbox, i: int) -> None:
            await mailbox_rounds(box, i, size, rounds, lat)
            if isinstance(box, MessageStream):
                await box.aclose()

        t0 = time.perf_counter()
        with trio.move_on_after(float(p["time_limit"])) as scope:
            async with trio.open_nursery() as nursery:
                for i, box in enumerate(boxes):
                    nursery.start_soon(one, box, i)
        elapsed = time.perf_counter() - t0
    return mailboxes_result(lat, elapsed, n * rounds, scope.cancelled_caught)


# --- many agents: staged by the orchestrator over stdin/stdout ----------------------

class _StdinLines:
    def __init__(self) -> None:
        self._stream = trio.lowlevel.FdStream(os.dup(0))
        self._buf = bytearray()

    async def expect(self, word: str) -> None:
        while b"\n" not in self._buf:
            data = await self._stream.receive_some(4096)
            if not data:
                raise RuntimeError(f"stdin closed while waiting for {word!r}")
            self._buf += data
        line, _, rest = bytes(self._buf).partition(b"\n")
        self._buf = bytearray(rest)
        if line.decode().strip() != word:
            raise RuntimeError(f"expected {word!r} on stdin, got {line!r}")


async def run_agents(kind: str, port: int, certs: str, p: dict[str, Any]) -> None:
    """Open ``n`` connections, each doing ``rounds`` request/replies, in stages.

    READY -> (go) -> connect all -> CONNECTED -> (go) -> messages -> IDLE ->
    (close) -> RESULT.  Every stage is bounded by ``time_limit``.
    """
    stages = AgentStages(int(p["n"]), int(p["rounds"]), int(p["size"]), trio.Event)
    limit = float(p["time_limit"])
    stdin = _StdinLines()

    @asynccontextmanager
    async def open_mailbox() -> AsyncIterator[Mailbox]:
        async with open_client(kind, port, certs, p) as client:
            yield await client.open_mailbox()

    emit("READY")
    await stdin.expect("go")
    async with trio.open_nursery() as nursery:
        t0 = now()
        for i in range(stages.n):
            nursery.start_soon(stages.agent, i, open_mailbox, (OSError, *_GONE))
        with trio.move_on_after(limit):
            await stages.all_connected.wait()
        emit("CONNECTED", stages.connected_line(t0))
        await stdin.expect("go")
        t2 = now()
        stages.start_messages.set()
        with trio.move_on_after(limit):
            await stages.all_done.wait()
        emit("IDLE", stages.idle_line(t2, now()))
        await stdin.expect("close")
        stages.close_all.set()
        nursery.cancel_scope.deadline = trio.current_time() + limit
    emit("RESULT", stages.result_line())


CLIENT_SECTIONS = {"rtt": run_rtt, "bulk": run_bulk, "handshake": run_handshake,
                   "mailboxes": run_mailboxes}
