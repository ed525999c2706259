"""Submitting work to a coordinator in another process: :func:`connect_coordinator`.

The protocol is in ``_client_protocol.py``, the coordinator's side in
``_gateway.py``.  Each call opens a request stream of its own, so calls run
concurrently over the one connection and cancelling a call resets just its
stream (the coordinator then abandons that request).
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from ..actors import ActorFailed, ActorStopped, ActorUnreachable, AskTimeout
from ..reasoning import Verdict
from ..transport import (
    ClientTLS,
    ConnectionClosed,
    MessageStream,
    ProtocolError,
    QuicConfig,
    SessionTicketStore,
    connect_quic,
    decode,
    encode,
)
from ._client_protocol import (
    REQUESTS,
    AddPatterns,
    ClientHello,
    ClientReply,
    ClientRequest,
    ClientWelcome,
    ReportOutcome,
    StatusQuery,
    StatusReport,
)
from ._errors import (
    CONNECTION_ERRORS,
    ClientRefused,
    CoordinatorClosed,
    NoAgentAvailable,
    RemoteError,
    SwarmError,
    TaskTimeout,
    TaskUndeliverable,
)
from ._learning import check_actual, prediction_task_id
from ._mapping import TaskMapping
from ._protocol import TASK_AGENT_TYPES, PatternMatchResult, Refused
from ._scatter import check_patterns, patterns_per_message

__all__ = ["RemoteCoordinator", "connect_coordinator"]

log = logging.getLogger("midswarm.swarm")

#: Reset code of a request stream whose call was cancelled.
_ABANDONED = 0x20

#: Exceptions rebuilt from a failed reply by their name and arguments; the
#: swarm's and actor runtime's errors, and the built-in ones the
#: coordinator's methods raise for bad arguments.
_REBUILT: dict[str, type[BaseException]] = {cls.__name__: cls for cls in (
    TaskTimeout, NoAgentAvailable, TaskUndeliverable, CoordinatorClosed, SwarmError,
    ActorFailed, ActorStopped, ActorUnreachable, AskTimeout,
    KeyError, ValueError, TypeError, LookupError, TimeoutError)}


def rebuild_error(reply: ClientReply) -> BaseException:
    """The exception a failed :class:`ClientReply` stands for."""
    cls = _REBUILT.get(reply.error_type)
    if cls is not None:
        try:
            return cls(*reply.args)
        except Exception:  # arguments that do not fit: say what it was instead
            pass
    return RemoteError(reply.error_type, reply.message)


class RemoteCoordinator(TaskMapping):
    """A coordinator in another process, reached over QUIC; get one from
    :func:`connect_coordinator`.  Its methods mirror
    :class:`~midswarm.swarm.Coordinator`'s and raise the same exceptions,
    plus :class:`CoordinatorClosed` once the connection is gone."""

    def __init__(self, conn: Any, client_id: str, welcome: ClientWelcome,
                 nursery: trio.Nursery) -> None:
        self.client_id = client_id
        self.coordinator_id = welcome.coordinator_id
        self._conn = conn
        self._nursery = nursery
        self._closed_reason: str | None = None
        self._closed_event = trio.Event()
        #: id(result) -> (a weak ref to it, its task id): the pattern-match
        #: answers this client may still report an outcome for.
        self._task_ids: dict[int, tuple[weakref.ref[PatternMatchResult], int]] = {}

    @property
    def closed(self) -> bool:
        """Whether the coordinator ended the session (or the connection broke)."""
        return self._closed_reason is not None

    async def wait_closed(self) -> str:
        """Wait until the session is over (the coordinator shut down, the
        connection broke, or the block was left); return why."""
        await self._closed_event.wait()
        assert self._closed_reason is not None
        return self._closed_reason

    def _close(self, reason: str) -> None:
        if self._closed_reason is None:
            self._closed_reason = reason
            self._closed_event.set()

    def _closed_error(self) -> CoordinatorClosed:
        reason = self._closed_reason
        if reason is None:
            code, text = self._conn.close_reason
            reason = f"the connection closed ({text or code})"
        return CoordinatorClosed(f"the coordinator session is over: {reason}")

    def _map_nursery(self) -> trio.Nursery:
        if self._closed_reason is not None:
            raise self._closed_error()
        return self._nursery

    # -- requests ---------------------------------------------------------------------

    async def _request(self, body: Any, header: ClientRequest | None = None
                       ) -> tuple[ClientReply, Any]:
        if self._closed_reason is not None:
            raise self._closed_error()
        try:
            stream = await self._conn.open_stream()
        except ConnectionClosed as exc:
            self._close(str(exc))
            raise self._closed_error() from exc
        ms = MessageStream(stream)
        answered = False
        try:
            await ms.send_messages([encode(header or ClientRequest()), encode(body)])
            reply = decode(await ms.receive_message(), ClientReply)
            result = decode(await ms.receive_message()) if reply.ok else None
            answered = True
        except CONNECTION_ERRORS as exc:
            if self._conn.closed:
                self._close(str(self._conn.close_reason[1] or "the connection closed"))
                raise self._closed_error() from exc
            raise CoordinatorClosed(f"the coordinator dropped the request: {exc!r}") from exc
        finally:
            with trio.CancelScope(shield=True):
                if answered:
                    await ms.aclose()
                else:
                    await stream.abort(_ABANDONED, "request abandoned")
        if not reply.ok:
            raise rebuild_error(reply)
        expected = REQUESTS[type(body)]
        if expected is not None and not isinstance(result, expected):
            raise ProtocolError(f"expected {expected.__name__} in reply to "
                                f"{type(body).__name__}, got {type(result).__name__}")
        return reply, result

    async def submit(self, task: Any, *, timeout: float | None = None,
                     agent: str | None = None) -> Any:
        """Have the coordinator's agents do ``task``; see
        :meth:`Coordinator.submit`.  ``timeout`` is applied by the coordinator.
        Cancelling the call resets its request stream, and the coordinator
        abandons the task as it would a cancelled local call."""
        if type(task) not in TASK_AGENT_TYPES:
            names = ", ".join(cls.__name__ for cls in TASK_AGENT_TYPES)
            raise TypeError(f"submit() takes a task message ({names}), "
                            f"got {type(task).__name__}")
        reply, result = await self._request(task, ClientRequest(timeout, agent))
        if isinstance(result, PatternMatchResult) and reply.task_id:
            self._remember(result, reply.task_id)
        return result

    def _remember(self, result: PatternMatchResult, task_id: int) -> None:
        key = id(result)

        def forget(_ref: Any) -> None:
            self._task_ids.pop(key, None)

        self._task_ids[key] = (weakref.ref(result, forget), task_id)

    def task_id_of(self, result: PatternMatchResult) -> int | None:
        """The coordinator's task id of a pattern-match answer this client got
        (``None`` if it is not one, or its outcome was reported)."""
        entry = self._task_ids.get(id(result))
        if entry is None or entry[0]() is not result:
            return None
        return entry[1]

    async def add_patterns(self, vectors: Any, outcomes: Any) -> list[int]:
        """Add patterns to the coordinator's library; see :meth:`Coordinator.add_patterns`.

        A library of any size goes in requests of a few MiB each, one after
        another; the ids come back in row order.  Shapes and values are
        checked here first, and a pattern length unlike the library's fails
        the first request, so bad input stores nothing.  Should a later
        request fail (the connection lost, say), the rows sent before it are
        stored and stay stored: the error says how many.
        """
        vecs, outs = check_patterns(vectors, outcomes)
        step = patterns_per_message(vecs.shape[1])
        ids: list[int] = []
        for start in range(0, len(vecs), step):
            try:
                _, added = await self._request(AddPatterns(vecs[start:start + step],
                                                           outs[start:start + step]))
            except Exception as exc:
                if ids:
                    exc.add_note(f"the first {len(ids)} of {len(vecs)} patterns were added "
                                 f"(ids {ids[0]}..{ids[-1]}) before this failure")
                raise
            ids.extend(added.ids)
        return ids

    async def report_outcome(self, prediction: PatternMatchResult | int, actual: float
                             ) -> list[Verdict]:
        """Close the learning loop for one answer of :meth:`submit` (the result,
        or its task id); see :meth:`Coordinator.report_outcome`.  Raises
        :class:`KeyError` for a result this client did not get or already
        reported."""
        value = check_actual(actual)
        task_id = prediction_task_id(prediction, self.task_id_of,
                                     "client (already reported, or not from its submit)")
        _, verdicts = await self._request(ReportOutcome(task_id, value))
        if isinstance(prediction, PatternMatchResult):
            self._task_ids.pop(id(prediction), None)
        return list(verdicts.verdicts)

    async def status(self) -> StatusReport:
        """The coordinator's agents (as :attr:`Coordinator.agents`) and counters
        (as :attr:`Coordinator.stats`), a snapshot."""
        _, report = await self._request(StatusQuery())
        return report


async def _watch_control(control: MessageStream, client: RemoteCoordinator) -> None:
    try:
        await control.receive_message()
        reason = "the coordinator broke the protocol on the control stream"
    except ProtocolError as exc:
        reason = f"protocol error on the control stream: {exc}"
    except CONNECTION_ERRORS:
        reason = "the coordinator ended the session"
    client._close(reason)


@asynccontextmanager
async def connect_coordinator(coordinator: tuple[str, int], client_id: str, *,
                              tls: ClientTLS, config: QuicConfig | None = None,
                              hello_timeout: float = 10.0,
                              session_tickets: SessionTicketStore | None = None,
                              ) -> AsyncIterator[RemoteCoordinator]:
    """Connect to a running coordinator (``midswarm coordinator``, or a program's
    :func:`open_coordinator`) to submit work:
    ``async with connect_coordinator((host, port), "trader-1", tls=...) as coord``.

    ``tls`` is a :class:`~midswarm.transport.ClientTLS`; when the coordinator
    requires client certificates (its default), the certificate's identity
    must be ``client_id`` (``midswarm certs DIR --agents trader-1`` makes
    one).  Raises :class:`ClientRefused` if the coordinator refuses the
    hello, :class:`~midswarm.transport.ConnectionClosed` if the connection
    cannot be made, and :class:`TimeoutError` if no answer comes within
    ``hello_timeout`` seconds.  Leaving the block closes the connection;
    calls still running then raise :class:`CoordinatorClosed`.

    ``session_tickets``: a :class:`~midswarm.transport.SessionTicketStore`
    (in memory, or in a file to carry over to the next process) makes the
    next connection with it resume the TLS session, its hello in 0-RTT early
    data: a client that reconnects, or a short-lived program run again, is
    welcomed one round trip sooner.  Only the hello rides early -- the
    coordinator acts on it once the handshake has completed, so a replayed
    early flight does nothing -- and the block is entered after the
    handshake, so no request is ever sent as early data.
    """
    host, port = coordinator
    early = session_tickets is not None and session_tickets.get(tls.server_name) is not None
    async with connect_quic(host, port, tls=tls, config=config, session_tickets=session_tickets,
                            wait_connected=not early) as conn:
        control = MessageStream(await conn.open_stream())
        with trio.move_on_after(hello_timeout) as scope:
            await control.send_message(encode(ClientHello(client_id)))
            answer = decode(await control.receive_message())
        if scope.cancelled_caught:
            raise TimeoutError(f"the coordinator did not answer the hello within "
                               f"{hello_timeout:g} s")
        if isinstance(answer, Refused):
            raise ClientRefused(answer.reason)
        if not isinstance(answer, ClientWelcome):
            raise ProtocolError(f"expected ClientWelcome or Refused, got "
                                f"{type(answer).__name__}")
        # Requests may be replayed if sent early; the welcome follows the
        # handshake on the coordinator's side, so this returns at once.
        await conn.wait_handshake()
        log.info("client %s connected to coordinator %s%s", client_id, answer.coordinator_id,
                 " (resumed)" if conn.session_resumed else "")
        async with trio.open_nursery() as nursery:
            client = RemoteCoordinator(conn, client_id, answer, nursery)
            nursery.start_soon(_watch_control, control, client)
            try:
                yield client
            finally:
                client._close("the client left")
                nursery.cancel_scope.cancel()

