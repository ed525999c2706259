"""Replies handed over by a QUIC stream (``QuicStream.set_readable_callback``).

While nobody asks, a :func:`remote_ref` over a QUIC stream delivers each reply
from the connection's receive processing itself, and its background reader
only waits for the stream to become unusable.  Also the transport pieces that
make it possible: ``receive_some_nowait`` and ``receive_message_nowait``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from _helpers import quic_pair

from midswarm.actors import ActorFailed, ActorUnreachable, BoxedError, _remote, remote_ref
from midswarm.actors._wire import ActorReply, parse_request, reply_bytes
from midswarm.transport import (
    MessageStream,
    ProtocolError,
    QuicConfig,
    QuicConnection,
    QuicStream,
    encode,
)


@asynccontextmanager
async def stream_pair(certs: Path) -> AsyncIterator[tuple[QuicStream, QuicStream]]:
    """A client QUIC stream and the server's end of it (real UDP, loopback)."""
    send, receive = trio.open_memory_channel[QuicStream](1)

    async def handler(conn: QuicConnection) -> None:
        await send.send(await conn.accept_stream())
        await trio.sleep_forever()

    with trio.fail_after(20):
        async with quic_pair(handler, certs, QuicConfig()) as (_, conn):
            client = await conn.open_stream()
            await client.send_all(b"")  # make the stream known to the server
            await MessageStream(client).send_message(b"hello")
            server = await receive.receive()
            assert await MessageStream(server).receive_message() == b"hello"
            yield client, server


async def test_receive_nowait_takes_what_arrived_and_never_waits(certs: Path) -> None:
    async with stream_pair(certs) as (client, server):
        woken: list[int] = []
        client.set_readable_callback(lambda: woken.append(len(client._rbuf)))
        with pytest.raises(trio.WouldBlock):
            client.receive_some_nowait()
        messages = MessageStream(client)
        with pytest.raises(trio.WouldBlock):
            messages.receive_message_nowait()
        frame = MessageStream(server)
        await frame.send_message(b"x" * 3000)  # more than one datagram
        with trio.fail_after(5):
            while len(client._rbuf) < 3004:
                await trio.sleep(0.001)
        assert woken and woken[-1] == 3004  # called with the data in the buffer
        assert messages.receive_message_nowait() == b"x" * 3000
        with pytest.raises(trio.WouldBlock):
            messages.receive_message_nowait()
        await server.send_eof()
        with trio.fail_after(5):
            while not client._eof:
                await trio.sleep(0.001)
        with pytest.raises(trio.EndOfChannel):
            messages.receive_message_nowait()
        assert client.receive_some_nowait() == b""


async def test_an_oversized_frame_found_without_waiting(certs: Path) -> None:
    async with stream_pair(certs) as (client, server):
        messages = MessageStream(client, max_message_size=100)
        await MessageStream(server).send_message(b"y" * 500)
        with trio.fail_after(5):
            while not client._rbuf:
                await trio.sleep(0.001)
        with pytest.raises(ProtocolError, match="exceeds max_message_size=100"):
            messages.receive_message_nowait()
        await messages.abort_framing("test")
        with pytest.raises(trio.ClosedResourceError):
            client.receive_some_nowait()


async def _answer(server: MessageStream, *pairs: tuple[int, Any]) -> None:
    for ask_id, value in pairs:
        await server.send_message(reply_bytes(ask_id, value))


async def test_replies_are_delivered_by_the_stream_while_nobody_asks(certs: Path) -> None:
    async with stream_pair(certs) as (client, raw_server):
        server = MessageStream(raw_server)
        got: list[Any] = []
        async with remote_ref(MessageStream(client), name="svc") as ref:
            assert isinstance(ref, _remote.RemoteActorRef) and ref._handed
            await trio.testing.wait_all_tasks_blocked()
            assert ref._reader is _remote._BACKGROUND
            for i in range(3):
                ref.ask_nowait(i, got.append)
            for i in range(3):
                assert parse_request(await server.receive_message()) == (i + 1, "ask", i)
            boxed = BoxedError("failed", "svc", "ValueError", "no")
            await _answer(server, (2, "two"), (1, "one"))
            await server.send_message(encode(ActorReply(3, False, error=boxed)))
            with trio.fail_after(5):
                while len(got) < 3:
                    await trio.sleep(0.001)
            assert [r.unwrap() for r in got[:2]] == ["two", "one"]
            with pytest.raises(ActorFailed, match="no"):
                got[2].unwrap()
            # An awaiting asker takes the read role and reads for itself; the
            # role comes back to the background, which takes any reply that
            # arrived meanwhile.
            async with trio.open_nursery() as nursery:
                answers: list[Any] = []

                async def asker() -> None:
                    answers.append(await ref.ask("a"))

                nursery.start_soon(asker)
                await trio.testing.wait_all_tasks_blocked()
                assert ref._reader is ref._pending[4]
                ref.ask_nowait("b", got.append)
                assert parse_request(await server.receive_message())[2] == "a"
                assert parse_request(await server.receive_message())[2] == "b"
                await _answer(server, (4, "A"), (5, "B"))
            assert answers == ["A"]
            with trio.fail_after(5):
                while len(got) < 4:
                    await trio.sleep(0.001)
            assert got[3].unwrap() == "B"
            await trio.testing.wait_all_tasks_blocked()
            assert ref._reader is _remote._BACKGROUND and not ref._pending


@pytest.mark.parametrize("how", ["eof", "garbage", "reset"])
async def test_an_unusable_stream_breaks_a_handed_over_ref(certs: Path, how: str) -> None:
    async with stream_pair(certs) as (client, raw_server):
        server = MessageStream(raw_server)
        got: list[Any] = []
        async with remote_ref(MessageStream(client), name="svc") as ref:
            assert isinstance(ref, _remote.RemoteActorRef) and ref._handed
            ref.ask_nowait("q", got.append)
            await server.receive_message()
            if how == "eof":
                await raw_server.send_eof()
                reason = "closed the stream"
            elif how == "garbage":
                await server.send_message(b"\x93not an envelope")
                reason = "protocol error"
            else:
                await raw_server.abort(7)
                reason = "broke"
            with trio.fail_after(5):
                while not got:
                    await trio.sleep(0.001)
            with pytest.raises(ActorUnreachable, match=reason):
                got[0].unwrap()
            with pytest.raises(ActorUnreachable, match=reason):
                await ref.ask("after")


async def test_a_stream_read_only_from_its_callback_keeps_its_window_open(
        certs: Path) -> None:
    """Far more than the stream's receive window (1 MiB), taken only with
    receive_some_nowait from inside the receive processing (which must not
    transmit from there): the window is still granted back, so nothing stalls."""
    async with stream_pair(certs) as (client, server):
        total = 0

        def take() -> None:
            nonlocal total
            try:
                while True:
                    total += len(client.receive_some_nowait())
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # a callback must not raise: not even at the end

        client.set_readable_callback(take)
        with trio.fail_after(20):
            for _ in range(64):
                await server.send_all(b"z" * 65536)  # 4 MiB in all
            while total < 64 * 65536:
                await trio.sleep(0.001)
        assert total == 64 * 65536


async def test_a_reply_that_cannot_be_delivered_breaks_only_its_ref(
        certs: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with stream_pair(certs) as (client, raw_server):
        server = MessageStream(raw_server)
        got: list[Any] = []

        def explode(result: Any) -> None:
            got.append(result)
            raise RuntimeError("a callback that raises")

        async with remote_ref(MessageStream(client), name="svc") as ref:
            assert isinstance(ref, _remote.RemoteActorRef)
            ref.ask_nowait("q", explode)
            ref.ask_nowait("r", got.append)
            await server.receive_message()
            await server.receive_message()
            await _answer(server, (1, "Q"))
            with trio.fail_after(5):
                while len(got) < 2:
                    await trio.sleep(0.001)
            assert got[0].unwrap() == "Q"
            with pytest.raises(ActorUnreachable, match="a callback that raises"):
                got[1].unwrap()
        # The connection itself is fine: a new stream on it still works.
        conn = client.connection
        other = MessageStream(await conn.open_stream())
        await other.send_message(b"still here")
    assert "delivering a reply from svc failed" in caplog.text
