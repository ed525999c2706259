"""Submitting work to a coordinator in another process: :func:`connect_coordinator`.

The protocol is in ``_client_protocol.py``, the coordinator's side in
``_gateway.py``.  Each call opens a request stream of its own, so calls run
concurrently over the one connection and cancelling a call resets just its
stream (the coordinator then abandons that request).

Sessions.  One task of the client's nursery owns the connection: it
connects, says hello, then watches the control stream until the session
ends.  Without ``reconnect`` that ends the client.  With it, the task
connects again after a backoff, resuming the TLS session (the hello in
0-RTT), until it succeeds, the coordinator refuses the client, or the block
is left; meanwhile a call waits up to ``reconnect_wait`` seconds for the new
session.  A call that was running when its connection broke raises
:class:`CoordinatorClosed` either way, since whether the coordinator did it
cannot be known; it is never re-sent.
"""

from __future__ import annotations

import logging
import random
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from ..actors import ActorFailed, ActorStopped, ActorUnreachable, AskTimeout, Backoff
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
                 nursery: trio.Nursery, *, reconnect_wait: float | None = None) -> None:
        self.client_id = client_id
        #: The coordinator's id, as its latest welcome gave it.
        self.coordinator_id = welcome.coordinator_id
        self._conn = conn
        self._nursery = nursery
        self._closed_reason: str | None = None
        self._closed_event = trio.Event()
        #: How long a call waits for a lost session to be replaced; ``None``:
        #: sessions are not replaced (a lost one closes the client).
        self._reconnect_wait = reconnect_wait
        #: Why the last session ended, while its replacement is awaited.
        self._lost: str | None = None
        self._changed = trio.Event()
        #: id(result) -> (a weak ref to it, its task id): the pattern-match
        #: answers this client may still report an outcome for.
        self._task_ids: dict[int, tuple[weakref.ref[PatternMatchResult], int]] = {}

    @property
    def closed(self) -> bool:
        """Whether the client is over for good: the block was left, or the
        session ended and is not being replaced (see ``reconnect``)."""
        return self._closed_reason is not None

    @property
    def connected(self) -> bool:
        """Whether a session with the coordinator is up now (``False`` while
        reconnecting, and once closed)."""
        return self._closed_reason is None and self._lost is None

    async def wait_closed(self) -> str:
        """Wait until the client is over (the coordinator shut down or the
        connection broke, and no reconnecting; or the block was left);
        return why."""
        await self._closed_event.wait()
        assert self._closed_reason is not None
        return self._closed_reason

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _close(self, reason: str) -> None:
        if self._closed_reason is None:
            self._closed_reason = reason
            self._closed_event.set()
            self._wake()

    def _session_lost(self, conn: Any, reason: str) -> None:
        """``conn``'s session is over; with reconnecting, calls now wait for
        the next one, else the client is closed."""
        if self._reconnect_wait is None:
            self._close(reason)
        elif conn is self._conn and self._lost is None and self._closed_reason is None:
            self._lost = reason
            self._wake()

    def _session_started(self, conn: Any, welcome: ClientWelcome) -> None:
        self._conn = conn
        self.coordinator_id = welcome.coordinator_id
        self._lost = None
        self._wake()

    async def _connection(self) -> Any:
        """The session's connection; while one is being replaced, waits for
        it (up to ``reconnect_wait`` seconds)."""
        if self._lost is not None and self._closed_reason is None:
            assert self._reconnect_wait is not None
            with trio.move_on_after(self._reconnect_wait):
                while self._lost is not None and self._closed_reason is None:
                    await self._changed.wait()
            if self._lost is not None and self._closed_reason is None:
                raise CoordinatorClosed(
                    f"no session with the coordinator ({self._lost}), and no new one "
                    f"within {self._reconnect_wait:g} s")
        if self._closed_reason is not None:
            raise self._closed_error()
        return self._conn

    def _broken(self, conn: Any, reason: str) -> CoordinatorClosed:
        """What a call raises when ``conn`` broke under it."""
        self._session_lost(conn, reason)
        if self._closed_reason is not None:
            return self._closed_error()
        return CoordinatorClosed(f"the connection to the coordinator broke ({reason}); "
                                 f"the call may or may not have run")

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
        conn = await self._connection()
        try:
            stream = await conn.open_stream()
        except ConnectionClosed as exc:
            raise self._broken(conn, str(exc)) from exc
        ms = MessageStream(stream)
        answered = False
        try:
            await ms.send_messages([encode(header or ClientRequest()), encode(body)])
            reply = decode(await ms.receive_message(), ClientReply)
            result = decode(await ms.receive_message()) if reply.ok else None
            answered = True
        except CONNECTION_ERRORS as exc:
            if conn.closed:
                raise self._broken(conn, str(conn.close_reason[1] or "the connection closed")
                                   ) from exc
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


async def _watch_control(control: MessageStream) -> str:
    """Wait for the session on ``control`` to end; why it did."""
    try:
        await control.receive_message()
        return "the coordinator broke the protocol on the control stream"
    except ProtocolError as exc:
        return f"protocol error on the control stream: {exc}"
    except CONNECTION_ERRORS:
        return "the coordinator ended the session"


#: Between reconnection attempts: 0.2 s doubling to 10 s, +-30 %.
_RECONNECT_BACKOFF = Backoff(initial=0.2, maximum=10.0, multiplier=2.0, jitter=0.3)


@asynccontextmanager
async def _session(host: str, port: int, client_id: str, tls: ClientTLS,
                   config: QuicConfig | None, hello_timeout: float,
                   session_tickets: SessionTicketStore | None
                   ) -> AsyncIterator[tuple[Any, MessageStream, ClientWelcome]]:
    """A connection whose hello was welcomed: ``(conn, control stream, welcome)``."""
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
        yield conn, control, answer


async def _run_sessions(open_session: Any, client_id: str, nursery: trio.Nursery,
                        reconnect_wait: float | None, backoff: Backoff,
                        task_status: trio.TaskStatus[RemoteCoordinator | Exception]
                        ) -> None:
    """Own the client's sessions (see the module docstring).  Reports the
    client once the first hello was welcomed, or the exception that stopped
    the first session from starting (which the caller raises)."""
    client: RemoteCoordinator | None = None
    attempt = 0
    while True:
        try:
            async with open_session() as (conn, control, welcome):
                if client is None:
                    client = RemoteCoordinator(conn, client_id, welcome, nursery,
                                               reconnect_wait=reconnect_wait)
                    task_status.started(client)
                else:
                    client._session_started(conn, welcome)
                attempt = 0
                why = await _watch_control(control)
                client._session_lost(conn, why)
        except ClientRefused as exc:
            if client is None:
                task_status.started(exc)
                return
            client._close(f"the coordinator refused the client on reconnecting: {exc}")
            return
        except Exception as exc:  # any failure to connect is retried
            if client is None:
                task_status.started(exc)
                return
            why = f"reconnecting failed: {exc!r}"
            client._session_lost(client._conn, why)  # if the session was up
            log.debug("client %s: %s", client_id, why, exc_info=True)
        if client.closed:
            return
        attempt += 1
        delay = backoff.delay(attempt, random.random())
        log.warning("client %s: %s; reconnecting in %.2f s", client_id, why, delay)
        await trio.sleep(delay)


@asynccontextmanager
async def connect_coordinator(coordinator: tuple[str, int], client_id: str, *,
                              tls: ClientTLS, config: QuicConfig | None = None,
                              hello_timeout: float = 10.0,
                              session_tickets: SessionTicketStore | None = None,
                              reconnect: bool = False, reconnect_wait: float = 30.0,
                              backoff: Backoff = _RECONNECT_BACKOFF,
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

    ``reconnect``: when the session ends (the coordinator went away or
    restarted, the network broke), connect again, with ``backoff`` between
    attempts, for as long as the block lasts; a refusal on reconnecting (say
    the client's id was removed) closes the client.  Calls made meanwhile
    wait up to ``reconnect_wait`` seconds for the new session, then raise
    :class:`CoordinatorClosed`; calls that were running when the connection
    broke raise it at once and are not re-sent.  Without ``reconnect`` the
    end of the session closes the client (:meth:`RemoteCoordinator.wait_closed`).
    The first connection is never retried: its failure raises as above, so
    a wrong address or certificate shows at once.

    ``session_tickets``: a :class:`~midswarm.transport.SessionTicketStore`
    (in memory, or in a file to carry over to the next process) makes the
    next connection with it resume the TLS session, its hello in 0-RTT early
    data: a client that reconnects, or a short-lived program run again, is
    welcomed one round trip sooner (with ``reconnect`` and no store, an
    in-memory one is used).  Only the hello rides early -- the coordinator
    acts on it once the handshake has completed, so a replayed early flight
    does nothing -- and the block is entered after the handshake, so no
    request is ever sent as early data.
    """
    if reconnect_wait < 0:
        raise ValueError(f"reconnect_wait must be >= 0; got {reconnect_wait!r}")
    host, port = coordinator
    if reconnect and session_tickets is None:
        session_tickets = SessionTicketStore()

    def open_session() -> Any:
        return _session(host, port, client_id, tls, config, hello_timeout, session_tickets)

    failure: Exception | None = None
    async with trio.open_nursery() as nursery:
        started = await nursery.start(_run_sessions, open_session, client_id, nursery,
                                      reconnect_wait if reconnect else None, backoff)
        if isinstance(started, RemoteCoordinator):
            try:
                yield started
            finally:
                started._close("the client left")
                nursery.cancel_scope.cancel()
        else:
            failure = started
    if failure is not None:
        # Raised here, outside the nursery, as the exception itself.
        raise failure
