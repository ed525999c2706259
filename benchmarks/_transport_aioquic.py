"""The aioquic peer of the transport benchmark: aioquic's own asyncio driver.

The server is a :class:`QuicConnectionProtocol` subclass that parses
length-prefixed messages from ``StreamDataReceived`` events and echoes them
(aioquic's ``datagram_received`` transmits after the events are handled).  The
client is another subclass: each mailbox is one stream, written with
``send_stream_data`` followed by ``transmit()``, read from a per-stream frame
parser woken by the events.  Defaults are aioquic's own except the ALPN, the
certificates and ``max_datagram_size``.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

from _transport_common import (
    ALPN_AIOQUIC,
    BULK_START,
    TOTAL,
    FrameParser,
    certs_paths,
    emit,
    frame,
    latency_summary,
    now,
    payload,
)
from _transport_workloads import (
    AgentStages,
    HandshakeTally,
    bulk_result,
    handshake_modes,
    handshake_turns,
    mailbox_rounds,
    mailboxes_result,
    round_trip,
    send_bulk,
    time_round_trips,
)
from aioquic.asyncio import QuicConnectionProtocol, connect, serve
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.tls import SessionTicket

HOST = "127.0.0.1"


# --- server ------------------------------------------------------------------------

class EchoServerProtocol(QuicConnectionProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._parsers: dict[int, FrameParser] = {}
        self._bulk: dict[int, int] = {}

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if not isinstance(event, events.StreamDataReceived):
            return
        sid = event.stream_id
        parser = self._parsers.get(sid)
        if parser is None:
            parser = self._parsers[sid] = FrameParser()
        quic = self._quic
        bulk = self._bulk
        for msg in parser.feed(event.data):
            total = bulk.get(sid)
            if total is not None:
                if msg:
                    bulk[sid] = total + len(msg)
                else:
                    del bulk[sid]
                    quic.send_stream_data(sid, frame(TOTAL.pack(total)))
            elif msg == BULK_START:
                bulk[sid] = 0
            else:
                quic.send_stream_data(sid, frame(msg))
        if event.end_stream:
            quic.send_stream_data(sid, b"", end_stream=True)
            del self._parsers[sid]
            bulk.pop(sid, None)


async def _stdin_eof() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while await reader.read(4096):
        pass


async def serve_until_stdin_closes(certs: str, params: dict[str, Any]) -> None:
    paths = certs_paths(certs)
    config = QuicConfiguration(is_client=False, alpn_protocols=[ALPN_AIOQUIC],
                               max_datagram_size=int(params.get("max_datagram", 1452)))
    config.load_cert_chain(paths["cert"], paths["key"])
    tickets: dict[bytes, SessionTicket] = {}
    server = await serve(
        HOST, 0, configuration=config, create_protocol=EchoServerProtocol,
        session_ticket_fetcher=lambda label: tickets.pop(label, None),
        session_ticket_handler=lambda t: tickets.__setitem__(t.ticket, t))
    transport = server._transport
    assert transport is not None
    emit("PORT", {"port": transport.get_extra_info("sockname")[1]})
    try:
        await _stdin_eof()
    finally:
        server.close()


# --- client ------------------------------------------------------------------------

class _Box:
    """One stream as a mailbox."""

    def __init__(self, proto: ClientProtocol, stream_id: int) -> None:
        self._proto = proto
        self._sid = stream_id
        self._parser = FrameParser()
        self._ready: deque[bytes] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._gone = False

    async def send_message(self, message: bytes) -> None:
        self._proto._quic.send_stream_data(self._sid, frame(message))
        self._proto.transmit()

    async def receive_message(self) -> bytes:
        while not self._ready:
            if self._gone:
                raise ConnectionError("stream or connection ended")
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return self._ready.popleft()

    def close(self) -> None:
        self._proto._quic.send_stream_data(self._sid, b"", end_stream=True)
        self._proto.transmit()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _feed(self, data: bytes, end: bool) -> None:
        self._ready.extend(self._parser.feed(data))
        self._gone = self._gone or end
        self._wake()


class ClientProtocol(QuicConnectionProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._boxes: dict[int, _Box] = {}
        self.handshake: events.HandshakeCompleted | None = None
        self._handshake_waiter = asyncio.get_running_loop().create_future()

    def open_mailbox(self) -> _Box:
        sid = self._quic.get_next_available_stream_id()
        # aioquic hands out the same id until the stream exists: an empty write
        # creates it (nothing is sent for it yet).
        self._quic.send_stream_data(sid, b"")
        box = self._boxes[sid] = _Box(self, sid)
        return box

    async def handshake_done(self) -> events.HandshakeCompleted | None:
        await asyncio.shield(self._handshake_waiter)
        return self.handshake

    def quic_event_received(self, event: events.QuicEvent) -> None:
        kind = type(event)
        if kind is events.StreamDataReceived:
            box = self._boxes.get(event.stream_id)  # type: ignore[attr-defined]
            if box is not None:
                box._feed(event.data, event.end_stream)  # type: ignore[attr-defined]
        elif kind is events.HandshakeCompleted:
            self.handshake = event  # type: ignore[assignment]
            if not self._handshake_waiter.done():
                self._handshake_waiter.set_result(None)
        elif kind is events.ConnectionTerminated:
            for box in self._boxes.values():
                box._gone = True
                box._wake()
            if not self._handshake_waiter.done():
                self._handshake_waiter.set_result(None)


class _Tickets:
    def __init__(self) -> None:
        self.latest: SessionTicket | None = None
        self.received = 0
        self._event = asyncio.Event()

    def add(self, ticket: SessionTicket) -> None:
        self.latest = ticket
        self.received += 1
        self._event.set()
        self._event = asyncio.Event()

    async def wait_beyond(self, seen: int, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self.received <= seen:
                    await self._event.wait()
        return self.received > seen


@contextlib.asynccontextmanager
async def open_client(port: int, certs: str, p: dict[str, Any], *,
                      tickets: _Tickets | None = None,
                      wait_connected: bool = True) -> AsyncIterator[ClientProtocol]:
    config = QuicConfiguration(is_client=True, alpn_protocols=[ALPN_AIOQUIC],
                               max_datagram_size=int(p.get("max_datagram", 1452)),
                               server_name="localhost")
    config.load_verify_locations(certs_paths(certs)["ca"])
    if tickets is not None:
        config.session_ticket = tickets.latest
    async with connect(HOST, port, configuration=config, create_protocol=ClientProtocol,
                       session_ticket_handler=tickets.add if tickets is not None else None,
                       wait_connected=wait_connected) as proto:
        assert isinstance(proto, ClientProtocol)
        yield proto


@contextlib.contextmanager
def _bounded() -> Any:
    """Swallow the TimeoutError of an ``asyncio.timeout`` inside; yields a dict whose
    ``timed_out`` says whether it fired (like ``trio.move_on_after``)."""
    flag = {"timed_out": False}
    try:
        yield flag
    except TimeoutError:
        flag["timed_out"] = True


async def run_rtt(port: int, certs: str, p: dict[str, Any]) -> dict[str, Any]:
    msg = payload(int(p["size"]))
    lat: list[float] = []
    cpu: dict[str, float] = {}
    async with open_client(port, certs, p) as proto:
        box = proto.open_mailbox()
        with _bounded() as flag:
            async with asyncio.timeout(float(p["time_limit"])):
                await time_round_trips(box, msg, int(p["warmup"]), int(p["count"]), lat,
                                       cpu, p.get("server_pid"))
    return {**latency_summary(lat), **cpu, **flag}


async def run_bulk(port: int, certs: str, p: dict[str, Any]) -> dict[str, Any]:
    done: tuple[int, float] | None = None
    async with open_client(port, certs, p) as proto:
        box = proto.open_mailbox()
        await round_trip(box, payload(400))
        with _bounded():
            async with asyncio.timeout(float(p["time_limit"])):
                done = await send_bulk(box, int(p["mib"]) << 20)
    return bulk_result(done)


async def run_handshake(port: int, certs: str, p: dict[str, Any]) -> dict[str, Any]:
    modes = handshake_modes(p)
    msg = payload(400)
    store = _Tickets() if "resumed" in modes else None
    if store is not None:
        async with open_client(port, certs, p, tickets=store) as proto:
            await round_trip(proto.open_mailbox(), msg)
            if not await store.wait_beyond(0, 5.0):
                raise RuntimeError("the server issued no session ticket")
    tally = HandshakeTally(modes)
    deadline = time.monotonic() + float(p["time_limit"])
    for mode in handshake_turns(modes, int(p["count"])):
        if time.monotonic() > deadline:
            break
        resumed = mode == "resumed"
        tickets = store if resumed else None
        seen = tickets.received if tickets is not None else 0
        t0 = time.perf_counter()
        async with open_client(port, certs, p, tickets=tickets,
                               wait_connected=not resumed) as proto:
            box = proto.open_mailbox()
            await box.send_message(msg)
            await box.receive_message()
            elapsed = time.perf_counter() - t0
            done = await proto.handshake_done()
            tally.add(mode, elapsed, done is not None and done.session_resumed,
                      done is not None and done.early_data_accepted)
            if tickets is not None:
                await tickets.wait_beyond(seen, 2.0)
    return tally.result()


async def run_mailboxes(port: int, certs: str, p: dict[str, Any]) -> dict[str, Any]:
    n, rounds, size = int(p["n"]), int(p["rounds"]), int(p["size"])
    lat: list[float] = []
    async with open_client(port, certs, p) as proto:
        boxes = [proto.open_mailbox() for _ in range(n)]

        async def one(box: _Box, i: int) -> None:
            await mailbox_rounds(box, i, size, rounds, lat)
            box.close()

        t0 = time.perf_counter()
        with _bounded() as flag:
            async with asyncio.timeout(float(p["time_limit"])), asyncio.TaskGroup() as tg:
                for i, box in enumerate(boxes):
                    tg.create_task(one(box, i))
        elapsed = time.perf_counter() - t0
    return mailboxes_result(lat, elapsed, n * rounds, flag["timed_out"])


async def run_agents(port: int, certs: str, p: dict[str, Any]) -> None:
    """Same stages as the Trio version (see ``_transport_trio.run_agents``)."""
    stages = AgentStages(int(p["n"]), int(p["rounds"]), int(p["size"]), asyncio.Event)
    limit = float(p["time_limit"])
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)

    async def expect(word: str) -> None:
        line = (await stdin.readline()).decode().strip()
        if line != word:
            raise RuntimeError(f"expected {word!r} on stdin, got {line!r}")

    @contextlib.asynccontextmanager
    async def open_mailbox() -> AsyncIterator[_Box]:
        async with open_client(port, certs, p) as proto:
            yield proto.open_mailbox()

    async def bounded_wait(event: asyncio.Event) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(limit):
                await event.wait()

    emit("READY")
    await expect("go")
    t0 = now()
    tasks = [asyncio.create_task(stages.agent(i, open_mailbox, (OSError, ConnectionError)))
             for i in range(stages.n)]
    await bounded_wait(stages.all_connected)
    emit("CONNECTED", stages.connected_line(t0))
    await expect("go")
    t2 = now()
    stages.start_messages.set()
    await bounded_wait(stages.all_done)
    emit("IDLE", stages.idle_line(t2, now()))
    await expect("close")
    stages.close_all.set()
    _, pending = await asyncio.wait(tasks, timeout=limit)
    for task in pending:
        task.cancel()
    emit("RESULT", stages.result_line())


CLIENT_SECTIONS = {"rtt": run_rtt, "bulk": run_bulk, "handshake": run_handshake,
                   "mailboxes": run_mailboxes}
