"""The coordinator's side of a client connection (see ``_client_protocol.py``).

:func:`serve_client` runs once :func:`~midswarm.swarm._session.serve_connection`
has read a :class:`ClientHello` on the connection's first stream and checked it
(:func:`check_client_hello`): it answers :class:`ClientWelcome`, then serves every
request stream the client opens, each in its own task, until the client
closes its control stream or the connection, or the coordinator shuts down.

A request runs the coordinator's own method (``submit``, ``add_patterns``,
``report_outcome``, or a status snapshot) while a watcher reads the rest of
the stream: the client must send nothing more until it has its reply, so
anything the watcher sees -- the end of the stream, a reset, another message
-- means the client gave the request up, and it is cancelled (a ``submit``
cancelled this way is abandoned exactly as a cancelled local call is).  A
malformed request resets its stream with a reason; the connection and its
other requests are not touched.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import trio

from ..transport import (
    MessageStream,
    ProtocolError,
    decode,
    encode,
    serve_streams,
)
from ._client_protocol import (
    REQUESTS,
    AddPatterns,
    ClientHello,
    ClientReply,
    ClientRequest,
    ClientWelcome,
    PatternIds,
    ReportOutcome,
    StatusQuery,
    StatusReport,
)
from ._errors import CONNECTION_ERRORS
from ._protocol import PatternMatchResult, Verdicts, check_peer

if TYPE_CHECKING:
    from ._coordinator import Coordinator

__all__ = ["check_client_hello", "failure_reply", "serve_client"]

log = logging.getLogger("midswarm.swarm")


#: An exception argument that crosses the wire as it is; others go as text.
_PLAIN = (type(None), bool, int, float, str)


def check_client_hello(coord: Coordinator, hello: ClientHello, identity: str | None,
                       trusted: bool) -> str | None:
    """The reason to refuse ``hello`` (see ``check_peer``; an id not in the
    config's ``clients``; a coordinator shutting down), or ``None``."""
    reason = check_peer(hello.version, "client", hello.client_id, identity, trusted)
    allowed = coord.config.clients
    if reason is None and allowed is not None and hello.client_id not in allowed:
        reason = f"client id {hello.client_id!r} may not submit work to this coordinator"
    if reason is None and coord.closing:
        reason = "the coordinator is shutting down"
    return reason


def failure_reply(exc: BaseException) -> ClientReply:
    """``exc`` boxed for the client (see :class:`ClientReply`)."""
    args = [a if isinstance(a, _PLAIN) else str(a) for a in exc.args]
    return ClientReply(False, error_type=type(exc).__name__, message=str(exc), args=args)


async def serve_client(coord: Coordinator, conn: Any, control: MessageStream,
                       hello: ClientHello) -> None:
    """Serve one client connection until it ends.  Never raises for anything
    the client does; the caller closes the connection afterwards."""
    client_id = hello.client_id
    try:
        await control.send_message(encode(ClientWelcome(coord.config.coordinator_id)))
    except CONNECTION_ERRORS:
        return
    log.info("client %s connected", client_id)
    reason = "closed by the client"
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_streams, conn, _serve_request, coord, client_id)
        try:
            raw = await control.receive_message()
            reason = f"protocol error: {type(decode(raw)).__name__} on the control stream"
        except ProtocolError as exc:
            reason = f"protocol error on the control stream: {exc}"
        except CONNECTION_ERRORS:
            pass
        nursery.cancel_scope.cancel()
    log.info("client %s disconnected: %s", client_id, reason)


async def _serve_request(stream: Any, coord: Coordinator, client_id: str) -> None:
    ms = MessageStream(stream)
    header: ClientRequest | None = None
    try:
        try:
            # A request's two messages come in one packet: usually both are
            # here when its stream is accepted.
            header = decode(ms.receive_message_nowait(), ClientRequest)
            body = decode(ms.receive_message_nowait())
        except trio.WouldBlock:
            with trio.fail_after(coord.config.hello_timeout):
                if header is None:
                    header = decode(await ms.receive_message(), ClientRequest)
                body = decode(await ms.receive_message())
        if type(body) not in REQUESTS:
            names = ", ".join(sorted(cls.__name__ for cls in REQUESTS))
            raise ProtocolError(f"a request body must be one of {names}; got "
                                f"{type(body).__name__}")
    except ProtocolError as exc:
        log.info("client %s: bad request: %s", client_id, exc)
        await ms.abort_framing(str(exc))
        return
    except trio.TooSlowError:
        await ms.abort_framing("the request was not sent in time")
        return
    except trio.EndOfChannel:
        await ms.abort_framing("the stream ended before the request was whole")
        return
    except CONNECTION_ERRORS:
        return
    reply: ClientReply | None = None
    result: Any = None
    with trio.CancelScope() as abandoned:
        async with _watch_abandon(ms, abandoned):
            try:
                reply, result = await _run(coord, header, body)
            except Exception as exc:
                reply = failure_reply(exc)
    if reply is None:  # the scope was cancelled: the client gave the request up
        log.debug("client %s abandoned a %s request", client_id, type(body).__name__)
        return
    try:
        # The reply, its result and the FIN: one packet for a small result.
        await ms.send_messages([encode(reply), encode(result)] if reply.ok else [encode(reply)],
                               eof=True)
    except CONNECTION_ERRORS:
        return
    except TypeError as exc:  # a result the codec cannot carry: a bug, say so
        log.error("client %s: cannot encode the result: %s", client_id, exc)
        await ms.abort_framing(f"the result cannot be encoded: {exc}")


@asynccontextmanager
async def _watch_abandon(ms: MessageStream, scope: trio.CancelScope) -> AsyncIterator[None]:
    """Cancel ``scope`` if anything arrives on the request's stream while the
    block runs -- more data, its end, a reset: the client gave the request up
    (it sends nothing more until it has its reply).  A QUIC stream says so
    from its receive processing; others need a task reading."""
    set_callback = getattr(ms.stream, "set_readable_callback", None)
    if set_callback is None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_read_until_anything, ms, scope)
            yield
            nursery.cancel_scope.cancel()
        return
    set_callback(scope.cancel)
    try:
        try:
            ms.receive_message_nowait()
            scope.cancel()  # a third message
        except trio.WouldBlock:
            pass
        except (ProtocolError, trio.EndOfChannel, *CONNECTION_ERRORS):
            scope.cancel()
        yield
    finally:
        set_callback(None)


async def _read_until_anything(ms: MessageStream, scope: trio.CancelScope) -> None:
    try:
        await ms.receive_message()
    except (ProtocolError, *CONNECTION_ERRORS):
        pass
    scope.cancel()


async def _run(coord: Coordinator, header: ClientRequest, body: Any) -> tuple[ClientReply, Any]:
    if isinstance(body, AddPatterns):
        ids = await coord.add_patterns(body.vectors, body.outcomes)
        return ClientReply(True), PatternIds([int(i) for i in ids])
    if isinstance(body, ReportOutcome):
        verdicts = await coord.report_outcome(body.task_id, body.actual)
        return ClientReply(True), Verdicts(verdicts)
    if isinstance(body, StatusQuery):
        return ClientReply(True), StatusReport(coord.config.coordinator_id, coord.agents,
                                               coord.stats)
    result = await coord.submit(body, timeout=header.timeout, agent=header.agent)
    task_id = 0
    if isinstance(result, PatternMatchResult):
        task_id = coord._predictions.task_id_of(result) or 0
    return ClientReply(True, task_id=task_id), result
