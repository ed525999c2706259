"""The short paths of a stream-bound mailbox (``_wire.py``, ``_remote.py``, ``_serve.py``).

* the envelopes are built and matched as bytes: what comes out must be exactly
  what the codec writes and reads;
* on the calling side an asker reads its own reply when nobody else reads,
  and hands the read role on when it is done or cancelled;
* on the serving side an idle actor reads its stream itself, and gives the
  stream back whenever something else needs it.
"""

from __future__ import annotations

import random
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from midswarm.actors import (
    Actor,
    ActorFailed,
    ActorReply,
    ActorRequest,
    ActorStopped,
    ActorUnreachable,
    AskTimeout,
    Backoff,
    BoxedError,
    ChildSpec,
    _remote,
    _serve,
    open_supervisor,
    remote_ref,
    serve_actor,
)
from midswarm.actors._wire import (
    decode_payload,
    encode_payload,
    parse_reply,
    parse_request,
    reply_bytes,
    request_bytes,
)
from midswarm.transport import (
    MessageStream,
    ProtocolError,
    decode,
    encode,
    memory_connection_pair,
    message,
    pack,
)


@message("test.actors.paths.pair")
@attrs.frozen
class Pair:
    a: int
    b: str


# ------------------------------------------------------------------ envelopes

IDS = [0, 1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63]
PAYLOADS: list[Any] = [None, "x" * 300, {"k": list(range(70_000))}, Pair(3, "z"), b"\x00" * 255]


@pytest.mark.parametrize("ask_id", IDS)
@pytest.mark.parametrize("msg", PAYLOADS)
def test_envelopes_are_the_codecs_bytes(ask_id: int, msg: Any) -> None:
    encoding, payload = encode_payload(msg)
    for kind in ("tell", "ask"):
        raw = request_bytes(ask_id, kind, msg)
        assert raw == encode(ActorRequest(ask_id, kind, encoding, payload))
        if (kind == "tell") == (ask_id == 0):
            assert parse_request(raw) == (ask_id, kind, msg)
        else:
            with pytest.raises(ProtocolError, match="cannot have id"):
                parse_request(raw)
    raw = reply_bytes(ask_id, msg)
    assert raw == encode(ActorReply(ask_id, True, encoding, payload))
    assert parse_reply(raw) == (ask_id, True, None, encoding, payload)


def _reference_request(raw: bytes) -> tuple[int, str, Any]:
    req = decode(raw, ActorRequest)
    if (req.kind == "tell") != (req.id == 0) or req.id < 0:
        raise ProtocolError(f"actor.request: a {req.kind} cannot have id {req.id}")
    return req.id, req.kind, decode_payload(req.encoding, req.payload)


def _reference_reply(raw: bytes) -> tuple[int, bool, BoxedError | None, str, bytes]:
    reply = decode(raw, ActorReply)
    return reply.id, reply.ok, reply.error, reply.encoding, reply.payload


def _same(fast: Any, reference: Any, raw: bytes) -> None:
    """``fast(raw)`` and ``reference(raw)`` return equal values or raise the same
    ProtocolError."""
    try:
        expected = reference(raw)
    except ProtocolError as exc:
        with pytest.raises(ProtocolError) as info:
            fast(raw)
        assert str(info.value) == str(exc)
        return
    assert fast(raw) == expected


_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1), st.text(max_size=8),
                    st.binary(max_size=300), st.lists(st.integers(0, 3), max_size=3))
_FIELDS = st.sampled_from(["id", "kind", "encoding", "payload", "ok", "error", "extra"])


@settings(max_examples=400, deadline=None)
@given(version=st.sampled_from([1, 1, 1, 2]),
       tag=st.sampled_from(["actor.request", "actor.reply", "other"]),
       body=st.dictionaries(_FIELDS, _VALUES, max_size=6),
       canonical=st.sampled_from(["request", "reply", "none"]),
       ask_id=st.integers(0, 2**64 - 1), kind=st.sampled_from(["tell", "ask"]),
       data=st.binary(max_size=300), cut=st.integers(0, 400), flip=st.integers(0, 400))
def test_envelope_matching_agrees_with_the_codec(version: int, tag: str, body: dict[str, Any],
                                                 canonical: str, ask_id: int, kind: str,
                                                 data: bytes, cut: int, flip: int) -> None:
    """Well-formed envelopes, near misses (a byte cut off or changed) and
    arbitrary ones: the byte matching decides exactly like the codec."""
    if canonical == "request":
        raw = request_bytes(ask_id, kind, data)
    elif canonical == "reply":
        raw = reply_bytes(ask_id, data)
    else:
        raw = pack([version, tag, body])
    variants = [raw, raw[:cut], raw[:flip] + bytes([(raw[flip] + 1) % 256]) + raw[flip + 1:]
                if flip < len(raw) else raw + b"\x00"]
    for variant in variants:
        _same(parse_request, _reference_request, variant)
        _same(parse_reply, _reference_reply, variant)


# ------------------------------------------------------------------ calling side

async def _fake_server(stream: MessageStream, *, batch: int, seed: int,
                       answered: list[int] | None = None) -> None:
    """Read ``batch`` asks, answer them in a shuffled order, repeat until EOF."""
    rnd = random.Random(seed)
    held: list[tuple[int, Any]] = []
    async for raw in stream:
        ask_id, _kind, msg = parse_request(raw)
        held.append((ask_id, msg))
        if len(held) == batch:
            rnd.shuffle(held)
            for ask_id, msg in held:
                await stream.send_message(reply_bytes(ask_id, msg))
                if answered is not None:
                    answered.append(ask_id)
            held.clear()


@pytest.mark.parametrize("transport", ["quic-like", "trio-testing"])
async def test_concurrent_asks_get_their_own_replies_in_any_order(transport: str) -> None:
    if transport == "quic-like":  # a stream with non-blocking writes, like QuicStream
        client_conn, server_conn = memory_connection_pair()
        client = MessageStream(await client_conn.open_stream())
        server = MessageStream(await server_conn.accept_stream())
    else:
        a, b = trio.testing.memory_stream_pair()
        client, server = MessageStream(a), MessageStream(b)
    results: dict[int, Any] = {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: _fake_server(server, batch=8, seed=1))
        async with remote_ref(client) as ref:

            async def asker(i: int) -> None:
                for j in range(5):
                    results[i * 100 + j] = await ref.ask([i, j])

            async with trio.open_nursery() as askers:
                for i in range(8):
                    askers.start_soon(asker, i)
    assert results == {i * 100 + j: [i, j] for i in range(8) for j in range(5)}


async def test_an_asker_reads_its_own_reply_and_passes_the_role_on() -> None:
    a, b = trio.testing.memory_stream_pair()
    client, server = MessageStream(a), MessageStream(b)
    async with trio.open_nursery() as nursery:
        async with remote_ref(client) as ref:
            assert isinstance(ref, _remote.RemoteActorRef)
            await trio.testing.wait_all_tasks_blocked()
            assert ref._reader is _remote._BACKGROUND  # nobody asks: it reads

            got: list[Any] = []

            async def asker(i: int) -> None:
                got.append(await ref.ask(i))

            nursery.start_soon(asker, 1)
            await trio.testing.wait_all_tasks_blocked()
            first = ref._reader
            assert first is ref._pending[1]  # the asker took the role over
            nursery.start_soon(asker, 2)
            await trio.testing.wait_all_tasks_blocked()
            assert ref._reader is first  # the second one waits
            # Answer the second ask first: the first asker delivers it.
            for ask_id in (1, 2):
                assert parse_request(await server.receive_message()) == (ask_id, "ask", ask_id)
            await server.send_message(reply_bytes(2, 2))
            await trio.testing.wait_all_tasks_blocked()
            assert got == [2] and ref._reader is first
            await server.send_message(reply_bytes(1, 1))
            await trio.testing.wait_all_tasks_blocked()
            assert got == [2, 1]
            assert ref._reader is _remote._BACKGROUND  # back to the background reader
            # And it sees the served actor going away at once.
            notice = ActorReply(0, False, error=BoxedError("stopped", "svc", "", "removed"))
            await server.send_message(encode(notice))
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(ActorStopped, match="removed"):
                await ref.tell("x")
        nursery.cancel_scope.cancel()


async def test_ask_nowait_sends_at_once_and_hands_each_outcome_to_its_callback() -> None:
    client_conn, server_conn = memory_connection_pair()
    client = MessageStream(await client_conn.open_stream())
    server = MessageStream(await server_conn.accept_stream())
    got: dict[str, list[Any]] = {"a": [], "b": [], "c": [], "d": []}
    async with remote_ref(client) as ref:
        assert isinstance(ref, _remote.RemoteActorRef)
        ids = {name: ref.ask_nowait(name, got[name].append) for name in "abc"}
        assert ids == {"a": 1, "b": 2, "c": 3}
        # Each frame was written by the call itself, in call order.
        for ask_id, name in ((1, "a"), (2, "b"), (3, "c")):
            assert parse_request(await server.receive_message()) == (ask_id, "ask", name)
        assert ref.forget(3) and not ref.forget(3)
        boxed = BoxedError("failed", "svc", "ValueError", "bad input")
        await server.send_message(encode(ActorReply(2, False, error=boxed)))
        await server.send_message(reply_bytes(3, "late"))  # forgotten: dropped
        await server.send_message(reply_bytes(1, "A"))
        await trio.testing.wait_all_tasks_blocked()
        assert [r.unwrap() for r in got["a"]] == ["A"]
        (b,) = got["b"]
        with pytest.raises(ActorFailed, match="bad input"):
            b.unwrap()
        assert got["c"] == []
        # A callback ask and an awaiting asker share the stream: whoever
        # reads delivers both.
        ref.ask_nowait("d", got["d"].append)
        async with trio.open_nursery() as nursery:

            async def asker() -> None:
                assert await ref.ask("e") == "E"

            nursery.start_soon(asker)
            for ask_id, name in ((4, "d"), (5, "e")):
                assert parse_request(await server.receive_message()) == (ask_id, "ask", name)
            await server.send_message(reply_bytes(5, "E"))
            await server.send_message(reply_bytes(4, "D"))
        await trio.testing.wait_all_tasks_blocked()
        assert [r.unwrap() for r in got["d"]] == ["D"]
        assert not ref._pending
        # One left pending when the block exits fails with ActorUnreachable.
        ref.ask_nowait("f", got.setdefault("f", []).append)
    (f,) = got["f"]
    with pytest.raises(ActorUnreachable, match="exited"):
        f.unwrap()
    with pytest.raises(ActorUnreachable):
        ref.ask_nowait("g", got["f"].append)  # refused, nothing sent
    assert len(got["f"]) == 1


async def test_ask_nowait_declines_when_it_would_have_to_wait() -> None:
    # A stream without non-blocking writes, and a frame over the direct limit.
    a, b = trio.testing.memory_stream_pair()
    async with remote_ref(MessageStream(a)) as ref:
        assert isinstance(ref, _remote.RemoteActorRef)
        assert ref.ask_nowait("x", pytest.fail) is None
        assert not ref._pending and ref._next_id == 1  # nothing sent, no id used
    client_conn, server_conn = memory_connection_pair()
    async with remote_ref(MessageStream(await client_conn.open_stream())) as ref:
        assert isinstance(ref, _remote.RemoteActorRef)
        assert ref.ask_nowait(b"x" * (_remote._DIRECT_SEND_LIMIT + 1), pytest.fail) is None
        assert not ref._pending


async def test_a_broken_stream_fails_callback_asks_with_the_reason() -> None:
    client_conn, server_conn = memory_connection_pair()
    client = MessageStream(await client_conn.open_stream())
    server = MessageStream(await server_conn.accept_stream())
    got: list[Any] = []
    async with remote_ref(client) as ref:
        assert isinstance(ref, _remote.RemoteActorRef)
        ref.ask_nowait("x", got.append)
        await server.receive_message()
        await server.send_message(b"\x93garbage")  # not an envelope
        await trio.testing.wait_all_tasks_blocked()
        (result,) = got
        with pytest.raises(ActorUnreachable, match="protocol error"):
            result.unwrap()


async def test_a_cancelled_reader_loses_no_other_askers_reply(autojump_clock: Any) -> None:
    a, b = trio.testing.memory_stream_pair()
    client, server = MessageStream(a), MessageStream(b)
    outcomes: dict[str, Any] = {}
    async with remote_ref(client) as ref:
        assert isinstance(ref, _remote.RemoteActorRef)

        async def asker(name: str, timeout: float | None) -> None:
            try:
                outcomes[name] = await ref.ask(name, timeout=timeout)
            except AskTimeout as exc:
                outcomes[name] = exc

        async with trio.open_nursery() as nursery:
            nursery.start_soon(asker, "a", 1.0)  # reads, then times out
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(asker, "b", None)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(asker, "c", None)
            await trio.testing.wait_all_tasks_blocked()
            for _ in range(3):
                await server.receive_message()
            await trio.sleep(2)  # "a" times out while holding the role
            assert isinstance(outcomes["a"], AskTimeout)
            assert ref._reader is ref._pending[2]  # "b", the oldest, reads now
            # The late reply to "a", then the other two out of order.
            for ask_id, name in ((1, "a"), (3, "c"), (2, "b")):
                await server.send_message(reply_bytes(ask_id, name))
        assert outcomes["b"] == "b" and outcomes["c"] == "c"
        assert not ref._pending


async def test_a_failed_send_wakes_the_asker_that_reads() -> None:
    """The stream's sending side breaks while an asker waits on its receiving
    side (which stays quiet): the asker fails at once, with the send's error."""
    client_conn, server_conn = memory_connection_pair()
    stream = await client_conn.open_stream()

    def cut(*_args: Any) -> Any:
        raise trio.BrokenResourceError("the wire is cut")

    failures: list[BaseException] = []
    with trio.fail_after(5):
        async with remote_ref(MessageStream(stream)) as ref:

            async def asker() -> None:
                try:
                    await ref.ask("never answered")
                except ActorUnreachable as exc:
                    failures.append(exc)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(asker)
                await trio.testing.wait_all_tasks_blocked()
                assert isinstance(ref, _remote.RemoteActorRef)
                assert ref._reader is ref._pending[1]
                stream.send_all = stream.send_all_nowait = cut  # type: ignore[method-assign]
                with pytest.raises(ActorUnreachable, match="while sending.*wire is cut"):
                    await ref.tell("x")
    assert len(failures) == 1 and "wire is cut" in str(failures[0])


async def test_a_cancelled_tell_sends_nothing() -> None:
    client_conn, server_conn = memory_connection_pair()
    client = MessageStream(await client_conn.open_stream())
    server = MessageStream(await server_conn.accept_stream())
    async with remote_ref(client) as ref:
        with trio.CancelScope() as scope:
            scope.cancel()
            await ref.tell("cancelled before it was written")
        await ref.tell("sent")
        assert parse_request(await server.receive_message()) == (0, "tell", "sent")


# ------------------------------------------------------------------ serving side


class Recorder(Actor):
    """Answers ``[source, seq]`` asks with themselves and checks the order per source."""

    def __init__(self) -> None:
        self.last: dict[str, int] = {}
        self.log: list[Any] = []

    async def handle(self, msg: Any) -> Any:
        if msg == "crash":
            raise ValueError("crash requested")
        if msg == "log":
            return self.log
        source, seq = msg
        assert seq > self.last.get(source, -1), (source, seq)
        self.last[source] = seq
        self.log.append(msg)
        return msg


async def _served_pair(nursery: trio.Nursery, local: Any) -> MessageStream:
    client_conn, server_conn = memory_connection_pair()
    client = MessageStream(await client_conn.open_stream())
    nursery.start_soon(serve_actor, local, MessageStream(await server_conn.accept_stream()))
    return client


async def test_the_idle_actor_reads_its_stream_and_is_interrupted_by_its_mailbox() -> None:
    async with open_supervisor(backoff=Backoff(initial=0)) as sup:
        local = await sup.start_child(ChildSpec(Recorder, name="rec", mailbox_size=0))
        async with trio.open_nursery() as nursery:
            client = await _served_pair(nursery, local)
            async with remote_ref(client) as ref:
                assert await ref.ask(["s", 0]) == ["s", 0]
                await trio.testing.wait_all_tasks_blocked()
                server = local.feed
                assert isinstance(server, _serve._StreamServer)
                assert server.role == "actor" and local.pulling  # waits on the stream
                # A local message (mailbox of size 0: the sender waits for the
                # actor to take it) interrupts the actor's read.
                assert await local.ask(["l", 0]) == ["l", 0]
                await local.tell(["l", 1])
                assert server.role == "reader" and server.cooldown > 0
                # The stream is served by the reader task meanwhile, in order.
                for seq in range(1, 40):
                    assert await ref.ask(["s", seq]) == ["s", seq]
                await trio.testing.wait_all_tasks_blocked()
                assert server.role == "actor"  # taken back after the pause
                # Interleaved sources, each in order.
                async with trio.open_nursery() as users:
                    async def stream_user() -> None:
                        for seq in range(40, 100):
                            await ref.tell(["s", seq])

                    async def local_user() -> None:
                        for seq in range(2, 60):
                            assert await local.ask(["l", seq]) == ["l", seq]

                    users.start_soon(stream_user)
                    users.start_soon(local_user)
                log = await ref.ask("log")
                assert [m for m in log if m[0] == "s"] == [["s", i] for i in range(100)]
                assert [m for m in log if m[0] == "l"] == [["l", i] for i in range(60)]
            nursery.cancel_scope.cancel()


async def test_a_crash_on_a_request_the_actor_read_itself() -> None:
    async with open_supervisor(backoff=Backoff(initial=0)) as sup:
        local = await sup.start_child(ChildSpec(Recorder, name="rec"))
        async with trio.open_nursery() as nursery:
            client = await _served_pair(nursery, local)
            async with remote_ref(client) as ref:
                assert await ref.ask(["s", 0]) == ["s", 0]
                await trio.testing.wait_all_tasks_blocked()
                assert local.feed.role == "actor"
                with pytest.raises(ActorFailed, match="crash requested"):
                    await ref.ask("crash")
                await ref.tell("crash")  # a crash by tell, too
                # The restarted instance serves the same stream, in order.
                for seq in range(1, 20):
                    assert await ref.ask(["s", seq]) == ["s", seq]
                await trio.testing.wait_all_tasks_blocked()
                assert local.feed.role == "actor"
            nursery.cancel_scope.cancel()
        assert sup.children()[0].restarts == 2


async def test_the_stream_ending_while_the_actor_reads_it() -> None:
    returned = trio.Event()
    async with open_supervisor() as sup:
        local = await sup.start_child(ChildSpec(Recorder, name="rec"))
        client_conn, server_conn = memory_connection_pair()

        async def serve() -> None:
            await serve_actor(local, MessageStream(await server_conn.accept_stream()))
            returned.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            async with remote_ref(MessageStream(await client_conn.open_stream())) as ref:
                assert await ref.ask(["s", 0]) == ["s", 0]
                await trio.testing.wait_all_tasks_blocked()
                assert local.feed.role == "actor"
            await returned.wait()  # the actor met the end and handed it over
            assert local.feed is None
            assert await local.ask(["l", 0]) == ["l", 0]  # the actor goes on


async def test_garbage_met_by_the_actor_is_raised_by_serve_actor() -> None:
    errors: list[BaseException] = []
    async with open_supervisor() as sup:
        local = await sup.start_child(ChildSpec(Recorder, name="rec"))
        client_conn, server_conn = memory_connection_pair()
        client = MessageStream(await client_conn.open_stream())

        async def serve() -> None:
            try:
                await serve_actor(local, MessageStream(await server_conn.accept_stream()))
            except ProtocolError as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            await client.send_message(request_bytes(1, "ask", ["s", 0]))
            assert parse_reply(await client.receive_message())[0] == 1
            await trio.testing.wait_all_tasks_blocked()
            assert local.feed.role == "actor"
            await client.send_message(b"\xc1 not msgpack")
        assert len(errors) == 1 and "malformed msgpack" in str(errors[0])
        assert local.feed is None
        assert await local.ask(["l", 0]) == ["l", 0]


async def test_cancelling_serve_actor_frees_the_actor() -> None:
    async with open_supervisor() as sup:
        local = await sup.start_child(ChildSpec(Recorder, name="rec"))
        client_conn, server_conn = memory_connection_pair()
        async with trio.open_nursery() as nursery:
            serve_scope = trio.CancelScope()

            async def serve() -> None:
                with serve_scope:
                    await serve_actor(local, MessageStream(await server_conn.accept_stream()))

            nursery.start_soon(serve)
            async with remote_ref(MessageStream(await client_conn.open_stream())) as ref:
                assert await ref.ask(["s", 0]) == ["s", 0]
                await trio.testing.wait_all_tasks_blocked()
                assert local.feed.role == "actor" and local.pulling
                serve_scope.cancel()
                await trio.testing.wait_all_tasks_blocked()
                assert local.feed is None and not local.pulling
                assert await local.ask(["l", 0]) == ["l", 0]
                with pytest.raises(ActorUnreachable):
                    await ref.ask(["s", 1])


async def test_removing_the_actor_while_it_reads_its_stream(autojump_clock: Any) -> None:
    """The ask that finds the actor gone is answered with the refusal, and the
    served stream ends (it used to wait forever for that ask's slot)."""
    returned = trio.Event()
    async with open_supervisor() as sup:
        local = await sup.start_child(ChildSpec(Recorder, name="rec"))
        client_conn, server_conn = memory_connection_pair()

        async def serve() -> None:
            try:
                await serve_actor(local, MessageStream(await server_conn.accept_stream()))
            except trio.BrokenResourceError:
                pass  # the client may be gone before the notice is written
            returned.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            async with remote_ref(MessageStream(await client_conn.open_stream()),
                                  name="rec") as ref:
                assert await ref.ask(["s", 0]) == ["s", 0]
                await trio.testing.wait_all_tasks_blocked()
                assert local.pulling
                await sup.stop_child("rec")
                assert not local.pulling
                with pytest.raises(ActorStopped, match="stop_child"):
                    await ref.ask(["s", 1])
                with trio.fail_after(1):
                    await returned.wait()


async def test_buffered_requests_do_not_starve_other_tasks() -> None:
    """Many requests arrive in one read: the actor still yields between them."""
    a, b = trio.testing.memory_stream_pair()
    client, server = MessageStream(a), MessageStream(b)
    order: list[str] = []

    class Quick(Actor):
        async def handle(self, msg: Any) -> Any:  # never checkpoints
            order.append("actor")

    async with open_supervisor() as sup:
        local = await sup.start_child(ChildSpec(Quick, name="quick"))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_actor, local, server)
            await client.send_message(request_bytes(1, "ask", 0))
            await client.receive_message()
            await trio.testing.wait_all_tasks_blocked()
            assert local.feed.role == "actor"
            order.clear()
            # 50 tells in one chunk of bytes.
            await a.send_all(b"".join(
                len(f).to_bytes(4, "big") + f for f in [request_bytes(0, "tell", i)
                                                        for i in range(50)]))

            async def other() -> None:
                for _ in range(20):
                    order.append("other")
                    await trio.lowlevel.cancel_shielded_checkpoint()

            nursery.start_soon(other)
            await trio.testing.wait_all_tasks_blocked()
            assert order.count("actor") == 50
            first_other = order.index("other")
            assert first_other < 5  # not after all 50
            nursery.cancel_scope.cancel()
