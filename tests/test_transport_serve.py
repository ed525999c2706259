"""serve_streams: every stream the peer opens gets its own task, bursts included,
on either kind of connection."""

from __future__ import annotations

import trio

from midswarm.transport import MessageStream, memory_connection_pair, serve_streams


async def _echo(stream: trio.abc.HalfCloseableStream, tag: bytes) -> None:
    ms = MessageStream(stream)
    async for msg in ms:
        await ms.send_message(tag + msg)
    await ms.send_eof()


async def test_serve_streams_serves_a_burst_and_returns_on_close() -> None:
    client, server = memory_connection_pair("a1")
    returned = trio.Event()

    async def serve() -> None:
        await serve_streams(server, _echo, b">")
        returned.set()

    replies: dict[int, list[bytes]] = {}
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)

            async def one(i: int) -> None:
                ms = MessageStream(await client.open_stream())
                await ms.send_message(b"%d" % i)
                await ms.send_eof()
                replies[i] = [msg async for msg in ms]

            async with trio.open_nursery() as streams:
                for i in range(300):  # opened in one scheduling round
                    streams.start_soon(one, i)
            assert not returned.is_set()
            client.close()
            await returned.wait()
    assert replies == {i: [b">%d" % i] for i in range(300)}


async def test_send_message_nowait_sends_whole_frames_or_nothing() -> None:
    client, server = memory_connection_pair("a1", buffer_chunks=2)
    sender = MessageStream(await client.open_stream())
    receiver = MessageStream(await server.accept_stream())
    assert sender.send_message_nowait(b"one")
    assert sender.send_message_nowait(b"two")
    # The peer has two unread chunks: a third would have to wait.
    assert not sender.send_message_nowait(b"three")
    assert await receiver.receive_message() == b"one"
    assert sender.send_message_nowait(b"three")
    assert [await receiver.receive_message() for _ in range(2)] == [b"two", b"three"]
    # A stream without a non-blocking write never claims to have sent.
    plain = MessageStream(trio.testing.memory_stream_pair()[0])
    assert not plain.send_message_nowait(b"x")
    await sender.aclose()
    try:
        sender.send_message_nowait(b"late")
    except trio.ClosedResourceError:
        pass
    else:
        raise AssertionError("expected ClosedResourceError")
