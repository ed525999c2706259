"""``transmit_together()``: writes to several connections leave back to back at
the block's end, each send's bookkeeping after all of them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from _helpers import client_tls, echo_handler, quic_server

from midswarm.transport import QuicStream, connect_quic, transmit_together
from midswarm.transport._endpoint import _Endpoint
from midswarm.transport._machine import Machine


@asynccontextmanager
async def two_echo_streams(certs: Path, log: list[tuple[str, int]]
                           ) -> AsyncIterator[list[QuicStream]]:
    """Two client connections to one echo server, a stream each, warmed up by
    one echo (so that their writes take the steady path); ``log`` is cleared
    of the warm-up.  The whole block must end within 30 s."""
    with trio.fail_after(30):
        async with quic_server(echo_handler, certs) as listener:
            async with connect_quic("127.0.0.1", listener.port, tls=client_tls(certs)) as a, \
                    connect_quic("127.0.0.1", listener.port, tls=client_tls(certs)) as b:
                streams = [await a.open_stream(), await b.open_stream()]
                for stream in streams:
                    await stream.send_all(b"warm")
                    assert await stream.receive_some() == b"warm"
                log.clear()
                yield streams


@pytest.fixture
def log(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """("send", endpoint id) for every socket hand-off, ("record", machine id)
    for every recorded fast-path packet, in order."""
    events: list[tuple[str, int]] = []
    send, record = _Endpoint.send_datagrams, Machine.ms_record

    def send_datagrams(self: _Endpoint, datagrams: list[tuple[bytes, Any]]) -> None:
        events.append(("send", id(self)))
        send(self, datagrams)

    def ms_record(self: Machine) -> None:
        if self.ms_unrecorded is not None:
            events.append(("record", id(self)))
        record(self)

    monkeypatch.setattr(_Endpoint, "send_datagrams", send_datagrams)
    monkeypatch.setattr(Machine, "ms_record", ms_record)
    return events


async def test_held_writes_leave_together_and_are_recorded_after(
        certs: Path, log: list[tuple[str, int]]) -> None:
    async with two_echo_streams(certs, log) as streams:
        with transmit_together():
            assert streams[0].send_all_nowait(b"one")
            assert streams[1].send_all_nowait(b"two")
            assert log == []  # nothing left yet
        kinds = [kind for kind, _ in log]
        assert kinds[:2] == ["send", "send"]
        assert len({who for _, who in log[:2]}) == 2  # one datagram per connection
        assert kinds[2:4] == ["record", "record"]
        assert await streams[0].receive_some() == b"one"
        assert await streams[1].receive_some() == b"two"


async def test_writes_without_a_block_are_sent_and_recorded_at_once(
        certs: Path, log: list[tuple[str, int]]) -> None:
    async with two_echo_streams(certs, log) as streams:
        assert streams[0].send_all_nowait(b"one")
        assert [kind for kind, _ in log] == ["send", "record"]
        assert await streams[0].receive_some() == b"one"


async def test_a_task_started_in_the_block_is_not_held(
        certs: Path, log: list[tuple[str, int]]) -> None:
    """A child inherits the block's context; its writes, after the block, go at once."""
    sent_at_once = []

    async def writer(stream: QuicStream) -> None:
        before = len(log)
        assert stream.send_all_nowait(b"later")
        sent_at_once.append(("send", id(stream._conn._endpoint)) in log[before:])

    async with two_echo_streams(certs, log) as streams:
        async with trio.open_nursery() as nursery:
            with transmit_together():
                nursery.start_soon(writer, streams[0])
        assert sent_at_once == [True]
        assert await streams[0].receive_some() == b"later"


async def test_nested_blocks_send_at_the_outer_end_even_when_it_raises(
        certs: Path, log: list[tuple[str, int]]) -> None:
    async with two_echo_streams(certs, log) as streams:
        with pytest.raises(RuntimeError, match="body failed"):
            with transmit_together():
                with transmit_together():
                    assert streams[0].send_all_nowait(b"inner")
                assert log == []
                assert streams[1].send_all_nowait(b"outer")
                raise RuntimeError("body failed")
        assert [kind for kind, _ in log][:2] == ["send", "send"]
        assert await streams[0].receive_some() == b"inner"
        assert await streams[1].receive_some() == b"outer"


async def test_two_writes_to_one_connection_share_the_end(
        certs: Path, log: list[tuple[str, int]]) -> None:
    async with two_echo_streams(certs, log) as streams:
        with transmit_together():
            assert streams[0].send_all_nowait(b"ab")
            assert streams[0].send_all_nowait(b"cd")
            assert log == []
        assert [kind for kind, _ in log] == ["send", "record"]  # one datagram for both
        received = b""
        while len(received) < 4:
            received += await streams[0].receive_some()
        assert received == b"abcd"
