"""Delayed ACKs: an ACK waits up to 10 ms for data to ride on.

An agent's task usually takes longer than aioquic's 1 ms ACK delay; every
ACK-only packet sent while it works wakes the coordinator to read it.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import trio
from _helpers import quic_pair

from midswarm.transport import MessageStream, QuicConfig, QuicConnection, serve_streams
from midswarm.transport._endpoint import _Endpoint
from midswarm.transport._machine import _ACK_DELAY


async def _slow_echo(conn: QuicConnection) -> None:
    async def serve(stream: Any) -> None:
        messages = MessageStream(stream)
        async for request in messages:
            await trio.sleep(0.004)  # "the task": longer than 1 ms, shorter than the delay
            await messages.send_message(request)

    await serve_streams(conn, serve)


async def test_a_reply_within_the_ack_delay_carries_the_ack(
        certs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert 0.001 < _ACK_DELAY < 0.025  # longer than aioquic's, within max_ack_delay
    sent: Counter[str] = Counter()
    send_datagrams = _Endpoint.send_datagrams

    def counting(self: _Endpoint, datagrams: list[tuple[bytes, Any]]) -> None:
        sent["client" if self._connected else "server"] += len(datagrams)
        send_datagrams(self, datagrams)

    rounds = 50
    with trio.fail_after(30):
        async with quic_pair(_slow_echo, certs, QuicConfig()) as (_, conn):
            stream = MessageStream(await conn.open_stream())
            for _ in range(5):
                await stream.send_message(b"warm-up")
                await stream.receive_message()
            monkeypatch.setattr(_Endpoint, "send_datagrams", counting)
            for i in range(rounds):
                await stream.send_message(b"task %d" % i)
                assert await stream.receive_message() == b"task %d" % i
            counts = dict(sent)
            monkeypatch.undo()
    # With a 1 ms delay the server would send an ACK-only packet during every
    # task, then the reply: two datagrams a round.  (Slack for a slow machine
    # where a 4 ms sleep overruns the delay now and then.)
    assert rounds <= counts["server"] <= rounds * 5 // 4, counts
    assert rounds <= counts["client"] <= rounds * 5 // 4, counts
