"""Serving every stream a peer opens."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import trio

from ._errors import ConnectionClosed

__all__ = ["serve_streams"]


class _Acceptor(Protocol):
    async def accept_stream(self) -> Any: ...

    def accept_stream_nowait(self) -> Any: ...


async def serve_streams(conn: _Acceptor, serve_stream: Callable[..., Awaitable[object]],
                        *args: Any) -> None:
    """Run ``serve_stream(stream, *args)`` in its own task for every stream the
    peer opens on ``conn`` (a :class:`QuicConnection` or :class:`MemoryConnection`);
    return once the connection is closed and every such task has finished.

    A burst of new streams is taken in one scheduling round
    (``accept_stream_nowait``), so a peer opening a thousand streams at once does
    not wait a round per stream.  An exception in a ``serve_stream`` task
    propagates (cancelling the others), as in any nursery.
    """
    async with trio.open_nursery() as nursery:
        while True:
            try:
                stream = await conn.accept_stream()
                while True:
                    nursery.start_soon(serve_stream, stream, *args)
                    stream = conn.accept_stream_nowait()
            except trio.WouldBlock:
                continue
            except ConnectionClosed:
                return
