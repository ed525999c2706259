"""The wire codec and message framing, without a network: round trips of
registered messages and numpy arrays, and ProtocolError for every malformed input."""

from __future__ import annotations

import functools
import struct
from typing import Any

import attrs
import msgpack
import numpy as np
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from midswarm.transport import (
    PROTOCOL_VERSION,
    MessageStream,
    ProtocolError,
    decode,
    encode,
    memory_connection_pair,
    message,
    pack,
    unpack,
)

# --- test message classes (tags are namespaced so they cannot clash) --------------------


@message("test.transport.simple")
@attrs.frozen
class Simple:
    i: int
    f: float
    s: str
    b: bytes
    flag: bool
    items: list[int]
    mapping: dict[str, float]
    maybe: int | None = None


@message("test.transport.nested")
@attrs.frozen
class Nested:
    name: str
    inner: Simple
    many: list[Simple]


@message("test.transport.array")
@attrs.define(eq=False)
class WithArray:
    label: str
    data: np.ndarray
    extra: Any = None  # free-form: dicts and lists that may hold arrays


# --- strategies -----------------------------------------------------------------------

INT64 = st.integers(-(2**63), 2**63 - 1)
FLOAT = st.floats(allow_nan=False)

simple_messages = st.builds(
    Simple,
    i=st.integers(-(2**63), 2**64 - 1),
    f=FLOAT,
    s=st.text(),
    b=st.binary(),
    flag=st.booleans(),
    items=st.lists(INT64, max_size=10),
    mapping=st.dictionaries(st.text(max_size=8), FLOAT, max_size=5),
    maybe=st.none() | INT64,
)
nested_messages = st.builds(Nested, name=st.text(max_size=20), inner=simple_messages,
                            many=st.lists(simple_messages, max_size=3))


def _byte_orders(strategy: st.SearchStrategy[np.dtype]) -> st.SearchStrategy[np.dtype]:
    return strategy.flatmap(lambda d: st.sampled_from([d, d.newbyteorder(">")]))


ARRAY_DTYPES = st.one_of(
    hnp.boolean_dtypes(),
    _byte_orders(hnp.integer_dtypes(endianness="=")),
    _byte_orders(hnp.unsigned_integer_dtypes(endianness="=")),
    _byte_orders(hnp.floating_dtypes(endianness="=", sizes=(16, 32, 64))),
    _byte_orders(hnp.complex_number_dtypes(endianness="=")),
    hnp.datetime64_dtypes(endianness="="),
    hnp.timedelta64_dtypes(endianness="="),
)
# min_side=0 includes empty arrays; min_dims=0 includes 0-d arrays.
ARRAY_SHAPES = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)
arrays = ARRAY_DTYPES.flatmap(lambda dt: hnp.arrays(dt, ARRAY_SHAPES))

plain_scalars = st.none() | st.booleans() | INT64 | FLOAT | st.text(max_size=10) \
    | st.binary(max_size=10)
plain_values = st.recursive(
    plain_scalars | arrays,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=12,
)


def same_array(a: Any, b: Any) -> bool:
    """Same dtype, shape and bytes (so NaN, -0.0 and NaT compare as sent)."""
    return (isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape
            and np.ascontiguousarray(a).tobytes() == b.tobytes())


def same_value(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray):
        return same_array(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(
            same_value(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(
            same_value(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


# --- round trips ----------------------------------------------------------------------

CODEC = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@CODEC
@given(simple_messages)
def test_simple_message_round_trip(msg: Simple) -> None:
    assert decode(encode(msg)) == msg
    assert decode(encode(msg), expect=Simple) == msg


@CODEC
@given(nested_messages)
def test_nested_message_round_trip(msg: Nested) -> None:
    back = decode(encode(msg))
    assert back == msg
    assert isinstance(back.inner, Simple)


@CODEC
@given(st.text(max_size=10), arrays, plain_values)
def test_message_with_arrays_round_trip(label: str, data: np.ndarray, extra: Any) -> None:
    back = decode(encode(WithArray(label, data, extra)), expect=WithArray)
    assert back.label == label
    assert same_array(data, back.data)
    assert back.data.flags.writeable
    assert same_value(extra, back.extra)


@CODEC
@given(arrays)
def test_array_round_trip(a: np.ndarray) -> None:
    assert same_array(a, unpack(pack(a)))


@CODEC
@given(plain_values)
def test_plain_values_round_trip(value: Any) -> None:
    assert same_value(value, unpack(pack(value)))


@pytest.mark.parametrize("view", [
    lambda a: a.T,
    lambda a: a[::2, 1:],
    lambda a: a[:, ::-1],
    lambda a: a[:0],
])
def test_non_contiguous_arrays_round_trip_by_value(view: Any) -> None:
    base = np.arange(48, dtype=np.float64).reshape(6, 8)
    a = view(base)
    back = unpack(pack(a))
    assert back.dtype == a.dtype and back.shape == a.shape
    assert np.array_equal(back, a)


def test_numpy_scalars_and_sets_become_plain_values() -> None:
    assert unpack(pack({"x": np.float32(1.5), "n": np.int64(-3), "s": {1}})) == \
        {"x": 1.5, "n": -3, "s": [1]}


def test_envelope_carries_the_protocol_version() -> None:
    msg = Simple(1, 2.0, "s", b"b", True, [1], {"k": 1.0})
    version, tag, _ = msgpack.unpackb(encode(msg))
    assert version == PROTOCOL_VERSION
    assert tag == "test.transport.simple"


# --- what cannot be sent --------------------------------------------------------------


def test_unsendable_values_raise_type_error() -> None:
    with pytest.raises(TypeError, match="not a registered message"):
        encode(attrs.make_class("Unregistered", ["x"])(1))
    with pytest.raises(TypeError, match="dtype object"):
        pack(np.array([object()]))
    with pytest.raises(TypeError, match="cannot encode"):
        pack(object())


def test_message_decorator_checks_its_class() -> None:
    with pytest.raises(TypeError, match="attrs class"):
        message("test.transport.plain")(type("Plain", (), {}))
    with pytest.raises(ValueError, match="already used"):
        message("test.transport.simple")(attrs.make_class("Other", ["x"]))


# --- malformed bytes: always ProtocolError ----------------------------------------------


@CODEC
@given(simple_messages | nested_messages, st.data())
def test_truncated_envelope_raises_protocol_error(msg: Any, data: st.DataObject) -> None:
    raw = encode(msg)
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(ProtocolError):
        decode(raw[:cut])


@CODEC
@given(plain_values, st.data())
def test_truncated_pack_raises_protocol_error(value: Any, data: st.DataObject) -> None:
    raw = pack(value)
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(ProtocolError):
        unpack(raw[:cut])


@CODEC
@given(simple_messages, st.binary(min_size=1, max_size=8))
def test_trailing_bytes_raise_protocol_error(msg: Simple, junk: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode(encode(msg) + junk)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_never_raises_anything_but_protocol_error(garbage: bytes) -> None:
    try:
        decoded = decode(garbage)
    except ProtocolError:
        pass
    else:  # astronomically unlikely, but then it must be a real message
        assert isinstance(decoded, (Simple, Nested, WithArray)) or attrs.has(type(decoded))
    try:
        unpack(garbage)
    except ProtocolError:
        pass


def _ext(payload: Any, code: int = 1) -> bytes:
    return msgpack.packb(msgpack.ExtType(code, msgpack.packb(payload)))


def _envelope(body: Any, *, version: Any = PROTOCOL_VERSION,
              tag: Any = "test.transport.simple") -> bytes:
    return msgpack.packb([version, tag, body])


GOOD_BODY = {"i": 1, "f": 1.0, "s": "s", "b": b"b", "flag": True, "items": [],
             "mapping": {}, "maybe": None}

MALFORMED_UNPACK = {
    "empty": b"",
    "reserved byte": b"\xc1",
    "array32 claiming 4G items": b"\xdd\xff\xff\xff\xff",
    "map32 claiming 4G pairs": b"\xdf\xff\xff\xff\xff",
    "bin32 claiming 4 GB": b"\xc6\xff\xff\xff\xff" + b"x" * 10,
    "str32 claiming 4 GB": b"\xdb\xff\xff\xff\xff" + b"x" * 10,
    "invalid utf-8": b"\xa2\xff\xfe",
    "unknown extension type": _ext(b"x", code=5),
    "array header not a list": _ext("nope"),
    "array header too short": _ext(["<f8", [1]]),
    "unknown dtype": _ext(["zz9", [1], b"\0" * 8]),
    "object dtype": _ext(["|O", [1], b"\0" * 8]),
    "void dtype": _ext(["|V8", [1], b"\0" * 8]),
    "negative dimension": _ext(["<f8", [-1], b""]),
    "shape not a list": _ext(["<f8", 3, b"\0" * 24]),
    "float dimension": _ext(["<f8", [1.0], b"\0" * 8]),
    "payload not bytes": _ext(["<f8", [1], "12345678"]),
    "too few bytes": _ext(["<f8", [3], b"\0" * 16]),
    "too many bytes": _ext(["<f8", [1], b"\0" * 16]),
    "huge shape, tiny payload": _ext(["<f8", [2**40, 2**40], b"\0" * 8]),
}


@pytest.mark.parametrize("raw", MALFORMED_UNPACK.values(), ids=MALFORMED_UNPACK.keys())
def test_malformed_bytes_raise_protocol_error(raw: bytes) -> None:
    with pytest.raises(ProtocolError):
        unpack(raw)
    with pytest.raises(ProtocolError):
        decode(raw)


MALFORMED_ENVELOPES = {
    "not a list": (msgpack.packb({"v": 1}), "3-element"),
    "two elements": (msgpack.packb([PROTOCOL_VERSION, "test.transport.simple"]), "3-element"),
    "other version": (_envelope(GOOD_BODY, version=PROTOCOL_VERSION + 1), "version"),
    "version as text": (_envelope(GOOD_BODY, version="1"), "version"),
    "tag not text": (_envelope(GOOD_BODY, tag=7), "tag"),
    "unknown tag": (_envelope(GOOD_BODY, tag="test.transport.nope"), "unknown message"),
    "body not a map": (_envelope([1, 2, 3]), "test.transport.simple"),
    "missing field": (_envelope({k: v for k, v in GOOD_BODY.items() if k != "i"}), "simple"),
    "wrong field type": (_envelope({**GOOD_BODY, "i": "one"}), "simple"),
    "wrong nested type": (_envelope({"name": "n", "inner": 3, "many": []},
                                    tag="test.transport.nested"), "nested"),
    "bad array in typed field": (_envelope({"label": "x", "data": {"a": 1}},
                                           tag="test.transport.array"), "array"),
}


@pytest.mark.parametrize(("raw", "says"), MALFORMED_ENVELOPES.values(),
                         ids=MALFORMED_ENVELOPES.keys())
def test_malformed_envelopes_raise_protocol_error_saying_why(raw: bytes, says: str) -> None:
    with pytest.raises(ProtocolError, match=says):
        decode(raw)


def test_unexpected_message_type_raises_protocol_error() -> None:
    raw = encode(Simple(1, 2.0, "s", b"b", True, [1], {"k": 1.0}))
    with pytest.raises(ProtocolError, match="expected"):
        decode(raw, expect=Nested)


# --- framing over an in-memory stream ----------------------------------------------------

messages_lists = st.lists(st.binary(max_size=3000), max_size=20)


@settings(max_examples=40, deadline=None)
@given(messages_lists, st.lists(st.integers(1, 700), min_size=1, max_size=10))
async def test_framing_round_trip_whatever_the_chunking(msgs: list[bytes],
                                                        cuts: list[int]) -> None:
    """Messages survive any split of the byte stream into pieces."""
    raw_send, raw_recv = trio.testing.memory_stream_pair()
    wire = b"".join(struct.pack(">I", len(m)) + m for m in msgs)
    receiver = MessageStream(raw_recv)
    got: list[bytes] = []

    async def feed() -> None:
        pos, i = 0, 0
        while pos < len(wire):
            n = cuts[i % len(cuts)]
            await raw_send.send_all(wire[pos:pos + n])
            pos += n
            i += 1
        await raw_send.send_eof()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(feed)
            got = [m async for m in receiver]
    assert got == msgs


async def test_framing_send_and_receive_over_a_stream_pair() -> None:
    left, right = trio.testing.memory_stream_pair()
    a, b = MessageStream(left), MessageStream(right)
    msgs = [b"", b"x", b"y" * 70_000, bytes(range(256))]
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            async def send() -> None:
                for m in msgs:
                    await a.send_message(m)
                await a.send_eof()
            nursery.start_soon(send)
            assert [m async for m in b] == msgs
        with pytest.raises(trio.EndOfChannel):
            await b.receive_message()


async def test_concurrent_senders_never_interleave_frames() -> None:
    left, right = trio.testing.memory_stream_pair()
    a, b = MessageStream(left), MessageStream(right)
    expected = {bytes([t]) * (1000 + 40_000 * (t % 3)) for t in range(8)}
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for m in expected:
                nursery.start_soon(a.send_message, m)
            got = {await b.receive_message() for _ in expected}
    assert got == expected


async def test_oversized_frame_raises_protocol_error_and_closes_stream() -> None:
    left, right = trio.testing.memory_stream_pair()
    receiver = MessageStream(right, max_message_size=1000)
    with trio.fail_after(10):
        await left.send_all(struct.pack(">I", 1001) + b"z" * 10)
        with pytest.raises(ProtocolError, match="1001"):
            await receiver.receive_message()
        # The stream was closed: the peer cannot keep sending.
        with pytest.raises(trio.BrokenResourceError):
            await left.send_all(b"more")


async def test_frame_cut_by_eof_raises_protocol_error() -> None:
    left, right = trio.testing.memory_stream_pair()
    receiver = MessageStream(right)
    with trio.fail_after(10):
        await left.send_all(struct.pack(">I", 100) + b"only ten b")
        await left.send_eof()
        with pytest.raises(ProtocolError, match="inside a frame"):
            await receiver.receive_message()


async def test_header_cut_by_eof_raises_protocol_error() -> None:
    left, right = trio.testing.memory_stream_pair()
    receiver = MessageStream(right)
    with trio.fail_after(10):
        await left.send_all(b"\0\0")
        await left.send_eof()
        with pytest.raises(ProtocolError):
            await receiver.receive_message()


async def test_sending_an_oversized_message_raises_and_sends_nothing() -> None:
    left, right = trio.testing.memory_stream_pair()
    sender, receiver = MessageStream(left, max_message_size=100), MessageStream(right)
    with trio.fail_after(10):
        with pytest.raises(ValueError, match="max_message_size"):
            await sender.send_message(b"x" * 101)
        await sender.send_message(b"fits")
        assert await receiver.receive_message() == b"fits"


@pytest.mark.parametrize("size", [0, -1, 2**32])
def test_message_stream_checks_max_size(size: int) -> None:
    with pytest.raises(ValueError, match="max_message_size"):
        MessageStream(trio.testing.memory_stream_pair()[0], max_message_size=size)


def test_default_max_message_size_is_16_mib() -> None:
    ms = MessageStream(trio.testing.memory_stream_pair()[0])
    assert ms.max_message_size == 16 * 1024 * 1024


async def test_send_messages_over_a_plain_stream_sends_them_then_half_closes() -> None:
    # A stream without send_all(eof=) (Trio's): the frames, then send_eof().
    left, right = trio.testing.memory_stream_pair()
    a, b = MessageStream(left), MessageStream(right)
    msgs = [b"header", b"", b"z" * 70_000]  # the last alone passes the coalescing size
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(functools.partial(a.send_messages, msgs, eof=True))
            assert [m async for m in b] == msgs
        with pytest.raises(trio.ClosedResourceError):
            await a.send_message(b"after the end")


async def test_send_messages_with_one_too_large_sends_none() -> None:
    left, right = trio.testing.memory_stream_pair()
    sender, receiver = MessageStream(left, max_message_size=100), MessageStream(right)
    with trio.fail_after(10):
        with pytest.raises(ValueError, match="max_message_size"):
            await sender.send_messages([b"fits", b"x" * 101], eof=True)
        await sender.send_messages([b"next", b"one"])
        assert await receiver.receive_message() == b"next"
        assert await receiver.receive_message() == b"one"


async def test_send_messages_eof_needs_a_half_closeable_stream() -> None:
    send_stream, receive_stream = trio.testing.memory_stream_one_way_pair()
    sender, receiver = MessageStream(send_stream), MessageStream(receive_stream)
    with trio.fail_after(10):
        with pytest.raises(TypeError, match="cannot half-close"):
            await sender.send_messages([b"a"], eof=True)
        assert await receiver.receive_message() == b"a"  # the frames went first


async def test_send_messages_on_memory_transport_half_closes_with_the_data() -> None:
    left, right = memory_connection_pair()
    with trio.fail_after(10):
        stream = await left.open_stream()
        await MessageStream(stream).send_messages([b"request", b"body"], eof=True)
        peer = MessageStream(await right.accept_stream())
        assert [m async for m in peer] == [b"request", b"body"]
        with pytest.raises(trio.ClosedResourceError):
            await stream.send_all(b"more")
