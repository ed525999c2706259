"""The coordinator's side of one agent connection.

Theory of operation
-------------------
:func:`serve_connection` runs for every connection (QUIC or in-memory):

1. **Hello.**  The first stream the agent opens is the control stream; its
   first message must be :class:`AgentHello` -- or :class:`ClientHello`, from
   a program that submits work, whose connection is then served by
   :func:`~midswarm.swarm._gateway.serve_client` (same refusals, same
   identity rule; the rest of this list is about agents).  It is refused (with
   :class:`Refused` naming the reason, then the connection closes) when the
   bytes are not a hello, the protocol version differs, an agent type is
   unknown or repeated, the id does not match the identity the connection
   authenticated (mutual TLS, or the identity an in-memory pair was made
   with), or the id is already connected and that connection was heard
   from within two heartbeat intervals (that refusal carries
   ``retry_after``).  A connection of the same id silent for longer is
   taken over: it is ended and the newcomer welcomed (a restarted agent
   need not wait for the heartbeat timeout of its dead predecessor).
2. **Welcome.**  The coordinator claims the id, answers :class:`Welcome` with
   an actor name and initial parameters per type, then accepts one actor
   stream per type, each starting with :class:`StreamBind`.
3. **Session.**  Each actor stream becomes a :func:`~midswarm.actors.remote_ref`
   and a link (see :mod:`._proxy`) whose forwarding tasks run in the
   session's nursery; the links join delivery, a pattern matcher also joins
   the library.  Then the control loop runs: heartbeats both ways, acks of
   adaptation commands, :class:`ActorRestarted` notices.  The control
   stream's messages are checked against
   :data:`~midswarm.swarm._protocol.CONTROL_TRANSITIONS`.
4. **End.**  When the agent goes silent for ``heartbeat_timeout``, closes or
   breaks the control stream, breaks the protocol, is drained, or its
   process is seen to exit, the links leave delivery first (no new tasks),
   the connection closes (tasks in flight fail over to other agents) and the
   matcher's patterns go to the other members.
"""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

import trio

from ..actors import ActorError, remote_ref
from ..transport import (
    ConnectionClosed,
    MessageStream,
    ProtocolError,
    decode,
    encode,
)
from ._client_protocol import ClientHello
from ._errors import CONNECTION_ERRORS
from ._gateway import check_client_hello, serve_client
from ._protocol import (
    AGENT_TYPES,
    Ack,
    ActorRestarted,
    AgentHello,
    Heartbeat,
    Refused,
    StreamBind,
    Welcome,
    check_peer,
    next_control_state,
)
from ._proxy import RemoteActor

if TYPE_CHECKING:
    from ._coordinator import AgentRecord, Coordinator

__all__ = ["AgentSession", "serve_connection"]

log = logging.getLogger("midswarm.swarm")

_CLOSE_REFUSED = 0x10
_CLOSE_PROTOCOL = 0x11
_CLOSE_SILENT = 0x12
_CLOSE_DONE = 0x0



def check_hello(hello: AgentHello, identity: str | None, trusted: bool) -> str | None:
    """The reason to refuse ``hello``, or ``None`` (the id's liveness aside)."""
    reason = check_peer(hello.version, "agent", hello.agent_id, identity, trusted)
    if reason is not None:
        return reason
    if not hello.agent_types:
        return "agent_types is empty: an agent must host at least one actor"
    unknown = [t for t in hello.agent_types if t not in AGENT_TYPES]
    if unknown:
        return (f"unknown agent type(s) {', '.join(map(repr, unknown))} "
                f"(known: {', '.join(AGENT_TYPES)})")
    if len(set(hello.agent_types)) != len(hello.agent_types):
        return f"agent_types lists a type twice: {hello.agent_types!r}"
    return None


class AgentSession:
    """One connected agent: its control stream, links and heartbeat state."""

    def __init__(self, coord: Coordinator, conn: Any, hello: AgentHello, record: AgentRecord,
                 control: MessageStream, number: int) -> None:
        self.coord = coord
        self.conn = conn
        self.hello = hello
        self.record = record
        self.agent_id = hello.agent_id
        self.types = list(hello.agent_types)
        self.control = control
        self.number = number
        pid = hello.capabilities.get("pid")
        self.pid = pid if isinstance(pid, int) and not isinstance(pid, bool) else None
        self.state = "AWAIT_WELCOME"
        self.links: dict[str, RemoteActor] = {}
        self.binds: dict[str, MessageStream] = {}
        self.assignments = {t: f"{self.agent_id}/{t}" for t in self.types}
        self.connected_at = trio.current_time()
        self.last_heard = self.connected_at
        self.end_reason = ""
        self._acks: dict[tuple[str, int], trio.Event] = {}
        self._stop = trio.CancelScope()
        self.draining = False
        #: True once the links are registered and the library joined.
        self.ready = False
        #: Set once the session is over and cleaned up after.
        self.ended = trio.Event()

    # -- control stream ---------------------------------------------------------------

    async def send_control(self, msg: Any) -> None:
        """Send on the control stream (checked against the transition table).

        Raises :class:`ProtocolError` for a message the state does not allow,
        and the stream's errors.
        """
        self.state = next_control_state(self.state, "coordinator", msg)
        await self.control.send_message(encode(msg))

    def expect_ack(self, kind: str, ident: int) -> trio.Event:
        event = self._acks[(kind, ident)] = trio.Event()
        return event

    def forget_ack(self, kind: str, ident: int) -> None:
        self._acks.pop((kind, ident), None)

    def end(self, reason: str, code: int = _CLOSE_DONE) -> None:
        """End the session: close the connection (pending asks fail over)."""
        if not self.end_reason:
            self.end_reason = reason
        for link in self.links.values():
            self.coord._dispatcher.remove(link)
        try:
            self.conn.close(code, reason)
        except Exception:  # closing twice, or a half-dead connection
            pass
        self._stop.cancel()

    async def _bind_streams(self) -> None:
        while len(self.binds) < len(self.assignments):
            stream = await self.conn.accept_stream()
            ms = MessageStream(stream)
            bind = decode(await ms.receive_message(), StreamBind)
            if bind.agent_id != self.agent_id:
                raise ProtocolError(f"StreamBind for agent {bind.agent_id!r} on the connection "
                                    f"of {self.agent_id!r}")
            expected = self.assignments.get(bind.agent_type)
            if expected is None:
                raise ProtocolError(f"StreamBind for type {bind.agent_type!r}, which the hello "
                                    f"did not list")
            if bind.actor_name != expected:
                raise ProtocolError(f"StreamBind names actor {bind.actor_name!r}; the welcome "
                                    f"assigned {expected!r}")
            if bind.agent_type in self.binds:
                raise ProtocolError(f"a second stream bound for {bind.agent_type!r}")
            self.binds[bind.agent_type] = ms

    async def run(self) -> None:
        """Bind the actor streams, then serve the control stream until the end."""
        coord = self.coord
        try:
            with trio.fail_after(coord.config.hello_timeout):
                await self._bind_streams()
        except trio.TooSlowError:
            self.end("the agent did not bind its actor streams in time", _CLOSE_PROTOCOL)
            return
        except ProtocolError as exc:
            self.end(f"protocol error: {exc}", _CLOSE_PROTOCOL)
            return
        except CONNECTION_ERRORS as exc:
            self.end(f"connection lost while binding: {exc!r}")
            return
        try:
            async with trio.open_nursery() as nursery:
                async with AsyncExitStack() as refs:
                    for agent_type in self.types:
                        name = self.assignments[agent_type]
                        ref = await refs.enter_async_context(
                            remote_ref(self.binds[agent_type], name=name))
                        self.links[agent_type] = RemoteActor(
                            self.agent_id, agent_type, name, ref, coord.config.credit,
                            nursery, coord._dispatcher.credit_freed)
                    with self._stop:
                        await self.register()
                        nursery.start_soon(self._send_heartbeats)
                        await self._control_loop()
                    self.end(self.end_reason or "session over")
                    nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await self.unregister()

    async def register(self) -> None:
        """Join delivery (and the library, for a matcher)."""
        coord, session = self.coord, self
        for agent_type, link in session.links.items():
            if agent_type == "pattern_matcher":
                continue
            coord._dispatcher.add(link)
        matcher = session.links.get("pattern_matcher")
        if matcher is not None:
            coord._dispatcher.add(matcher)  # for pinned calls and credit accounting
            await coord._library.join(matcher)
            session.record.parameters.setdefault("pattern_matcher", {})
            try:
                current = await coord._dispatcher.call(matcher, "parameters",
                                                      coord.config.task_timeout)
                if isinstance(current, dict):
                    session.record.parameters["pattern_matcher"] = dict(current)
            except ActorError as exc:
                log.info("%s did not report its parameters: %s", matcher.name, exc)
        session.ready = True
        coord._membership_changed()

    async def unregister(self) -> None:
        """Leave delivery and the library."""
        coord, session = self.coord, self
        record = session.record
        for link in session.links.values():
            coord._dispatcher.remove(link)
            record.completed += link.completed
            record.failed += link.failed
            link.completed = link.failed = 0
        coord._membership_changed()
        matcher = session.links.get("pattern_matcher")
        if matcher is not None:
            if coord.closing:
                coord._library.forget(matcher)
            else:
                with trio.move_on_after(coord.config.task_timeout):
                    await coord._library.leave(matcher)
                coord._library.forget(matcher)  # if leaving timed out

    async def _send_heartbeats(self) -> None:
        interval = self.coord.config.heartbeat_interval
        seq = 0
        while True:
            await trio.sleep(interval)
            seq += 1
            in_flight = sum(link.in_flight for link in self.links.values())
            try:
                await self.send_control(Heartbeat(seq, trio.current_time(), in_flight))
            except CONNECTION_ERRORS:
                return
            except ProtocolError:
                return  # the state moved on (closing)

    async def _control_loop(self) -> None:
        timeout = self.coord.config.heartbeat_timeout
        while True:
            with trio.move_on_after(timeout) as silent:
                try:
                    raw = await self.control.receive_message()
                except trio.EndOfChannel:
                    self.end_reason = self.end_reason or "the agent closed its control stream"
                    return
                except ProtocolError as exc:
                    self.end(f"protocol error on the control stream: {exc}", _CLOSE_PROTOCOL)
                    return
                except (trio.BrokenResourceError, trio.ClosedResourceError,
                        ConnectionClosed) as exc:
                    self.end_reason = self.end_reason or f"connection lost: {exc}"
                    return
            if silent.cancelled_caught:
                self.end(f"no heartbeat for {timeout:g} s", _CLOSE_SILENT)
                return
            self.last_heard = trio.current_time()
            try:
                msg = decode(raw)
                self.state = next_control_state(self.state, "agent", msg)
            except ProtocolError as exc:
                self.end(f"protocol error on the control stream: {exc}", _CLOSE_PROTOCOL)
                return
            if isinstance(msg, Ack):
                event = self._acks.pop((msg.kind, msg.id), None)
                if event is not None:
                    event.set()
            elif isinstance(msg, ActorRestarted):
                self.record.actor_restarts += 1
                link = self.links.get(msg.agent_type)
                if link is not None:
                    self.coord._actor_restarted(link)
            # Heartbeats only prove liveness.


async def _refuse(control: MessageStream, conn: Any, reason: str,
                  retry_after: float | None = None) -> None:
    log.warning("refused a connection: %s", reason)
    try:
        with trio.move_on_after(2.0):
            await control.send_message(encode(Refused(reason, retry_after)))
            # Give the refusal a chance to leave before the connection closes.
            await control.send_eof()
            await control.receive_message()
    except (*CONNECTION_ERRORS, ProtocolError, TypeError):
        pass
    conn.close(_CLOSE_REFUSED, reason[:200])


async def serve_connection(coord: Coordinator, conn: Any, trusted_identity: bool) -> None:
    """Serve one agent connection until it ends (see the module docstring).

    Never raises for anything the agent does; the connection is closed on return.
    """
    try:
        await _serve(coord, conn, trusted_identity)
    except CONNECTION_ERRORS as exc:
        log.info("agent connection lost during hello: %r", exc)
    finally:
        try:
            conn.close(_CLOSE_DONE, "")
        except Exception:
            pass


async def _serve(coord: Coordinator, conn: Any, trusted: bool) -> None:
    cfg = coord.config
    with trio.move_on_after(cfg.hello_timeout) as hello_scope:
        control = MessageStream(await conn.accept_stream())
        raw = await control.receive_message()
        # A hello may arrive as 0-RTT early data, which an attacker could replay;
        # act on it only once the handshake has completed (a replayed flight
        # never completes one).  In-memory connections are complete from birth.
        wait_handshake = getattr(conn, "wait_handshake", None)
        if wait_handshake is not None:
            await wait_handshake()
    if hello_scope.cancelled_caught:
        conn.close(_CLOSE_PROTOCOL, "no hello in time")
        return
    try:
        hello = decode(raw)
        if not isinstance(hello, AgentHello | ClientHello):
            raise ProtocolError(f"got {type(hello).__name__}")
    except ProtocolError as exc:
        await _refuse(control, conn, "the first message must be a valid AgentHello "
                                     f"or ClientHello: {exc}")
        return
    if isinstance(hello, ClientHello):
        reason = check_client_hello(coord, hello, conn.peer_identity, trusted)
        if reason is not None:
            await _refuse(control, conn, reason)
            return
        await serve_client(coord, conn, control, hello)
        return
    reason = check_hello(hello, conn.peer_identity, trusted)
    if reason is not None:
        await _refuse(control, conn, reason)
        return
    if coord.closing:
        await _refuse(control, conn, "the coordinator is shutting down", cfg.heartbeat_timeout)
        return
    record = coord._record_for(hello)
    previous = record.session
    if previous is not None:
        # A restarted agent may say hello before its old connection is known
        # to be dead.  An old session still heard from is a live duplicate;
        # one silent for two heartbeats is taken over.
        silent = trio.current_time() - previous.last_heard
        if silent < 2 * cfg.heartbeat_interval:
            await _refuse(control, conn, f"agent id {hello.agent_id!r} is already connected",
                          2 * cfg.heartbeat_interval)
            return
        previous.end(f"superseded by a new connection after {silent:.1f} s of silence")
        with trio.move_on_after(cfg.task_timeout):
            await previous.ended.wait()
        if record.session is not None:
            await _refuse(control, conn, f"agent id {hello.agent_id!r} is still connected",
                          2 * cfg.heartbeat_interval)
            return
    record.sessions += 1
    session = AgentSession(coord, conn, hello, record, control, record.sessions)
    record.session = session  # claimed before any await: a second hello is refused
    try:
        welcome = Welcome(cfg.coordinator_id, dict(session.assignments),
                          coord._parameters_for(record, session.types),
                          heartbeat_interval=cfg.heartbeat_interval)
        try:
            session.state = next_control_state("AWAIT_HELLO", "agent", hello)
            await session.send_control(welcome)
        except CONNECTION_ERRORS:
            return
        log.info("agent %s connected (%s), session %d", hello.agent_id,
                 ", ".join(session.types), session.number)
        await session.run()
    finally:
        if record.session is session:
            record.session = None
            record.disconnected_at = trio.current_time()
            record.last_end_reason = session.end_reason
            coord._membership_changed()
        session.ended.set()
        log.info("agent %s disconnected: %s", hello.agent_id, session.end_reason or "closed")

