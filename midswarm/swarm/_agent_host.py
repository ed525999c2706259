"""The agent: connect, say hello, host actors on their streams, reconnect.

Theory of operation
-------------------
:func:`run_agent` loops over *sessions*, one per connection to the
coordinator:

0. Warm up: have numba load the hosted behaviours' kernels (see
   :mod:`._agent_warmup`), once per run, so that the coordinator's first
   tasks meet an agent in its steady state.
1. Connect (QUIC with :class:`~midswarm.transport.ClientTLS`, or any
   connection factory), open the control stream, send :class:`AgentHello`,
   read :class:`Welcome` or :class:`Refused`.
2. Start one actor per hosted type under a local supervisor, built by the
   type's factory (:data:`~midswarm.swarm._agents.AGENT_FACTORIES` unless
   ``factories`` overrides it) with the welcome's parameters for that type
   (the coordinator's, adaptations included, over the local ``parameters``).
   For each actor open a stream, send :class:`StreamBind`, and serve the
   actor's mailbox on it with :func:`~midswarm.actors.serve_actor`.  Actors
   are fresh in every session: a pattern matcher's shard is whatever the
   coordinator sends it now, so no stale shard survives a reconnect.
3. Serve the control stream: heartbeats both ways; an
   :class:`AdaptationCommand` is asked of the pattern matcher (so it is
   applied, within the matcher's bounds, before the :class:`Ack` goes back)
   and the new parameters are kept for the actor's restarts; :class:`Drain`
   is acknowledged and the session then ends when the coordinator closes the
   connection.  When the local supervisor restarts an actor, an
   :class:`ActorRestarted` notice tells the coordinator (it re-sends a
   matcher's shard).
4. After a drain, return.  After a lost connection (or a coordinator silent
   for five heartbeat intervals), reconnect with exponential backoff and
   jitter.

0-RTT: with a ticket from an earlier connection, the next connection resumes
the TLS session and the hello rides in 0-RTT early data.  A hello is not
idempotent, but the coordinator only acts on a connection once its handshake
has completed -- a replayed early flight never completes one (the replayer
cannot finish the handshake, and the server's tickets are single use) -- so
sending it early is safe.  If a resumed attempt fails before its welcome, the
agent stops resuming and connects with full handshakes from then on.
"""

from __future__ import annotations

import logging
import os
import platform
import random
import socket
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import trio

from .._util import flatten_errors
from ..actors import (
    ActorError,
    ActorRef,
    Backoff,
    ChildSpec,
    RestartIntensityExceeded,
    SupervisionEvent,
    open_supervisor,
    serve_actor,
)
from ..transport import (
    PROTOCOL_VERSION,
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
from ._agent_warmup import warm_up_agent
from ._errors import AgentRefused
from ._protocol import (
    AGENT_TYPES,
    Ack,
    ActorRestarted,
    AdaptationCommand,
    AgentHello,
    Drain,
    Heartbeat,
    Refused,
    StreamBind,
    Welcome,
    next_control_state,
)

__all__ = ["run_agent"]

log = logging.getLogger("midswarm.swarm.agent")

ConnectionFactory = Callable[[], AbstractAsyncContextManager[Any]]

_CONNECTION_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionClosed,
                      trio.EndOfChannel, OSError, trio.TooSlowError, ProtocolError)
_DEFAULT_BACKOFF = Backoff(initial=0.2, maximum=10.0, multiplier=2.0, jitter=0.3,
                           reset_after=30.0)
_HELLO_TIMEOUT = 15.0


class _SessionOver(Exception):
    def __init__(self, drained: bool, reason: str, welcomed: bool) -> None:
        super().__init__(reason)
        self.drained = drained
        self.reason = reason
        self.welcomed = welcomed


def _check_types(types: Iterable[str], factories: Mapping[str, Any]) -> list[str]:
    if isinstance(types, str):
        types = [t.strip() for t in types.split(",") if t.strip()]
    out = list(types)
    if not out:
        raise ValueError("types must name at least one agent type")
    for agent_type in out:
        if agent_type not in AGENT_TYPES:
            raise ValueError(f"types: unknown agent type {agent_type!r} "
                             f"(known: {', '.join(AGENT_TYPES)})")
        if agent_type not in factories:
            raise ValueError(f"types: no factory for {agent_type!r}")
    if len(set(out)) != len(out):
        raise ValueError(f"types: a type is listed twice: {out!r}")
    return out


class _Agent:
    def __init__(self, connect: ConnectionFactory | None, address: tuple[str, int] | None,
                 agent_id: str, types: list[str], tls: ClientTLS | None,
                 parameters: Mapping[str, Mapping[str, Any]], factories: Mapping[str, Any],
                 quic_config: QuicConfig | None, tickets: SessionTicketStore | None,
                 capabilities: Mapping[str, Any]) -> None:
        self.connect_factory = connect
        self.address = address
        self.agent_id = agent_id
        self.types = types
        self.tls = tls
        self.local_parameters = {t: dict(p) for t, p in parameters.items()}
        self.factories = factories
        self.quic_config = quic_config
        self.tickets = tickets
        self.resume = tickets is not None
        self.capabilities = dict(capabilities)
        #: Type -> parameters a (re)started actor is built with.
        self.current: dict[str, dict[str, Any]] = {}
        self.state = "AWAIT_HELLO"
        self.sessions = 0

    # -- connecting ---------------------------------------------------------------------

    def _connect(self) -> tuple[AbstractAsyncContextManager[Any], bool]:
        """A connection context and whether the hello goes out as early data."""
        if self.connect_factory is not None:
            return self.connect_factory(), False
        assert self.address is not None and self.tls is not None
        tickets = self.tickets if self.resume else None
        early = tickets is not None and tickets.get(self.tls.server_name) is not None
        host, port = self.address
        return connect_quic(host, port, tls=self.tls, config=self.quic_config,
                            session_tickets=tickets, wait_connected=not early), early

    async def _send_control(self, control: MessageStream, msg: Any) -> None:
        self.state = next_control_state(self.state, "agent", msg)
        await control.send_message(encode(msg))

    # -- one session --------------------------------------------------------------------

    async def session(self, task_status: Any) -> None:
        """One connection, start to end; raises :class:`_SessionOver` or
        :class:`AgentRefused`."""
        context, early = self._connect()
        welcomed = False
        try:
            async with context as conn:
                control = MessageStream(await conn.open_stream())
                self.state = "AWAIT_HELLO"
                hello = AgentHello(self.agent_id, list(self.types), self.capabilities,
                                   PROTOCOL_VERSION)
                await self._send_control(control, hello)
                with trio.fail_after(_HELLO_TIMEOUT):
                    reply = decode(await control.receive_message())
                self.state = next_control_state(self.state, "coordinator", reply)
                if isinstance(reply, Refused):
                    raise AgentRefused(reply.reason, reply.retry_after)
                assert isinstance(reply, Welcome)
                welcomed = True
                self.sessions += 1
                drained = await self._serve(conn, control, reply, task_status)
                raise _SessionOver(drained, "drained" if drained else "connection lost", True)
        except (AgentRefused, _SessionOver):
            raise
        except BaseExceptionGroup as group:
            leaves = flatten_errors(group)
            refused = [e for e in leaves if isinstance(
                e, AgentRefused | _SessionOver | RestartIntensityExceeded)]
            if refused:
                raise refused[0] from None
            if all(isinstance(e, _CONNECTION_ERRORS) for e in leaves):
                self._after_failure(early, welcomed)
                raise _SessionOver(False, "; ".join(map(repr, leaves)), welcomed) from None
            raise
        except _CONNECTION_ERRORS as exc:
            self._after_failure(early, welcomed)
            raise _SessionOver(False, repr(exc), welcomed) from None

    def _after_failure(self, early: bool, welcomed: bool) -> None:
        if early and not welcomed and self.resume:
            log.warning("agent %s: resumed (0-RTT) connection failed before the welcome; "
                        "using full handshakes from now on", self.agent_id)
            self.resume = False

    async def _serve(self, conn: Any, control: MessageStream, welcome: Welcome,
                     task_status: Any) -> bool:
        missing = [t for t in self.types if t not in welcome.stream_assignments]
        if missing:
            raise ProtocolError(f"the welcome assigns no actor to {', '.join(missing)}")
        notices_send, notices_recv = trio.open_memory_channel[ActorRestarted](64)
        names = {welcome.stream_assignments[t]: t for t in self.types}

        def observe(event: SupervisionEvent) -> None:
            if event.kind == "restarted" and event.child in names:
                try:
                    notices_send.send_nowait(ActorRestarted(names[event.child], event.child,
                                                            event.restart_count))
                except trio.WouldBlock:
                    log.warning("agent %s: dropped a restart notice", self.agent_id)
            elif event.kind == "failed":
                log.warning("agent %s: actor %s failed: %s", self.agent_id, event.child,
                            event.exception)

        refs: dict[str, ActorRef] = {}
        async with open_supervisor(name=f"agent:{self.agent_id}", max_restarts=10,
                                   within=10.0, observer=observe) as sup:
            async with trio.open_nursery() as nursery:
                for agent_type in self.types:
                    params = dict(self.local_parameters.get(agent_type, {}))
                    params.update(welcome.parameters.get(agent_type, {}))
                    self.current[agent_type] = params
                    name = welcome.stream_assignments[agent_type]
                    refs[agent_type] = await sup.start_child(ChildSpec(
                        self._factory(agent_type), name=name, shutdown=5.0))
                    stream = MessageStream(await conn.open_stream())
                    await stream.send_message(encode(StreamBind(self.agent_id, agent_type,
                                                                name)))
                    nursery.start_soon(self._serve_actor, refs[agent_type], stream)
                if self.sessions == 1:
                    task_status.started()
                log.info("agent %s: connected, hosting %s", self.agent_id, ", ".join(self.types))
                nursery.start_soon(self._heartbeats, control, welcome.heartbeat_interval)
                nursery.start_soon(self._notices, control, notices_recv)
                drained = await self._control(control, refs, welcome.heartbeat_interval,
                                              nursery)
                nursery.cancel_scope.cancel()
        return drained

    def _factory(self, agent_type: str) -> Callable[[], Any]:
        make = self.factories[agent_type]

        def build() -> Any:
            return make(self.agent_id, dict(self.current[agent_type]))

        return build

    async def _serve_actor(self, ref: ActorRef, stream: MessageStream) -> None:
        try:
            await serve_actor(ref, stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the connection went away: the control loop notices too
        except ProtocolError as exc:
            log.error("agent %s: protocol error on the stream of %s: %s", self.agent_id,
                      ref.name, exc)
        except ActorError as exc:
            log.error("agent %s: actor %s is gone: %s", self.agent_id, ref.name, exc)

    async def _heartbeats(self, control: MessageStream, interval: float) -> None:
        seq = 0
        while True:
            seq += 1
            try:
                await self._send_control(control, Heartbeat(seq, trio.current_time()))
            except (trio.BrokenResourceError, trio.ClosedResourceError, ProtocolError):
                return
            await trio.sleep(interval)

    async def _notices(self, control: MessageStream,
                       notices: trio.MemoryReceiveChannel[ActorRestarted]) -> None:
        async for notice in notices:
            try:
                await self._send_control(control, notice)
            except (trio.BrokenResourceError, trio.ClosedResourceError, ProtocolError):
                return

    async def _control(self, control: MessageStream, refs: dict[str, ActorRef],
                       interval: float, nursery: trio.Nursery) -> bool:
        """Serve the control stream; returns whether the session was drained."""
        silence = max(5 * interval, 2.0)
        while True:
            with trio.move_on_after(silence) as silent:
                try:
                    raw = await control.receive_message()
                except (trio.EndOfChannel, trio.BrokenResourceError, trio.ClosedResourceError,
                        ConnectionClosed):
                    return self.state == "DRAINING"
            if silent.cancelled_caught:
                log.warning("agent %s: no heartbeat from the coordinator for %g s",
                            self.agent_id, silence)
                return False
            msg = decode(raw)
            self.state = next_control_state(self.state, "coordinator", msg)
            if isinstance(msg, AdaptationCommand):
                nursery.start_soon(self._adapt, control, refs, msg)
            elif isinstance(msg, Drain):
                log.info("agent %s: draining (%s)", self.agent_id, msg.reason)
                try:
                    await self._send_control(control, Ack("drain", 0))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return True
            # Heartbeats only prove the coordinator is alive.

    async def _adapt(self, control: MessageStream, refs: dict[str, ActorRef],
                     command: AdaptationCommand) -> None:
        matcher = refs.get("pattern_matcher")
        if matcher is None:
            log.warning("agent %s: adaptation %d for a pattern matcher it does not host",
                        self.agent_id, command.id)
        else:
            try:
                params = await matcher.ask(command, timeout=30.0)
            except ActorError as exc:
                log.error("agent %s: adaptation %d failed: %s", self.agent_id, command.id, exc)
                return
            if isinstance(params, dict):
                self.current["pattern_matcher"] = dict(params)
            log.info("agent %s: applied adaptation %d: %s", self.agent_id, command.id,
                     ", ".join(f"{c.parameter} {c.current:g} -> {c.suggested:g}"
                               for c in command.changes))
        try:
            await self._send_control(control, Ack("adaptation", command.id))
        except (trio.BrokenResourceError, trio.ClosedResourceError, ProtocolError):
            pass


async def run_agent(coordinator: tuple[str, int] | ConnectionFactory, agent_id: str,
                    types: Iterable[str], *, tls: ClientTLS | None = None,
                    parameters: Mapping[str, Mapping[str, Any]] | None = None,
                    factories: Mapping[str, Callable[[str, dict[str, Any]], Any]] | None = None,
                    quic_config: QuicConfig | None = None,
                    session_tickets: SessionTicketStore | None = None,
                    reconnect: bool = True, backoff: Backoff = _DEFAULT_BACKOFF,
                    capabilities: Mapping[str, Any] | None = None,
                    warm_up: bool = True,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Run an agent until the coordinator drains it (see the module docstring).

    ``coordinator`` is ``(host, port)`` -- then ``tls`` is required, with the
    agent's certificate for a coordinator that checks client certificates --
    or a zero-argument callable returning an async context manager that
    yields a connection (``open_stream``/``accept_stream``/``close``).
    ``types`` lists the hosted agent types (or is a comma-separated string).
    ``session_tickets`` (default: a fresh in-memory store) enables session
    resumption with the hello in 0-RTT on reconnects.  With ``warm_up``
    (the default) the hosted behaviours' kernels are loaded first, before
    the first connection (see :mod:`._agent_warmup`); the hello then carries
    the seconds that took as ``capabilities["warm_up_s"]``.  Use
    ``await nursery.start(run_agent, ...)`` (with :func:`functools.partial`
    for the keywords) to wait until the first welcome.

    Returns after the coordinator drained the agent.  Raises
    :class:`AgentRefused` for a refusal that retrying cannot fix,
    :class:`ValueError` / :class:`TypeError` for bad arguments, and -- with
    ``reconnect=False`` -- :class:`ConnectionError` when the connection fails
    or is lost.  Cancel it to stop the agent at once.
    """
    if not isinstance(agent_id, str) or not agent_id:
        raise ValueError(f"agent_id must be a non-empty string, got {agent_id!r}")
    if factories is None:
        from ._agents import AGENT_FACTORIES

        factories = AGENT_FACTORIES
    type_list = _check_types(types, factories)
    address: tuple[str, int] | None = None
    connect: ConnectionFactory | None = None
    if callable(coordinator):
        connect = coordinator
    else:
        try:
            host, port = coordinator
        except (TypeError, ValueError):
            raise TypeError(f"coordinator must be (host, port) or a connection factory, "
                            f"got {coordinator!r}") from None
        if tls is None:
            raise TypeError("a QUIC coordinator address needs tls=ClientTLS(...)")
        address = (str(host), int(port))
    caps: dict[str, Any] = {"pid": os.getpid(), "host": socket.gethostname(),
                            "python": platform.python_version()}
    if warm_up:
        took = await warm_up_agent(agent_id, type_list, factories)
        caps["warm_up_s"] = round(sum(took.values()), 4)
    caps.update(capabilities or {})
    agent = _Agent(connect, address, agent_id, type_list, tls, parameters or {}, factories,
                   quic_config, session_tickets if session_tickets is not None
                   else SessionTicketStore() if address is not None else None, caps)
    failures = 0
    while True:
        started = trio.current_time()
        try:
            await agent.session(task_status)
        except AgentRefused as refused:
            if refused.retry_after is None or not reconnect:
                raise
            log.warning("agent %s: %s; retrying in %g s", agent_id, refused, refused.retry_after)
            await trio.sleep(refused.retry_after * (1 + 0.2 * random.random()))
            continue
        except RestartIntensityExceeded as exc:
            # The actors keep crashing: start over with fresh ones.
            over = _SessionOver(False, f"actors gave up: {exc}", True)
            if not reconnect:
                raise
            failures += 1
            delay = backoff.delay(failures, random.random())
            log.error("agent %s: %s; reconnecting in %.2f s", agent_id, over.reason, delay)
            await trio.sleep(delay)
        except _SessionOver as over:
            if over.drained:
                log.info("agent %s: drained by the coordinator; stopping", agent_id)
                return
            if not reconnect:
                raise ConnectionError(f"agent {agent_id}: {over.reason}") from None
            if trio.current_time() - started >= backoff.reset_after:
                failures = 0
            failures += 1
            delay = backoff.delay(failures, random.random())
            log.warning("agent %s: %s; reconnecting in %.2f s", agent_id, over.reason, delay)
            await trio.sleep(delay)


@asynccontextmanager
async def memory_connector(coord: Any, agent_id: str) -> AsyncIterator[Any]:
    """One in-memory connection to ``coord`` for ``agent_id`` (used by open_swarm)."""
    from ..transport import memory_connection_pair

    client, server = memory_connection_pair(client_identity=agent_id,
                                            server_identity=coord.coordinator_id)
    coord.attach(server)
    try:
        yield client
    finally:
        client.close(0, "")
