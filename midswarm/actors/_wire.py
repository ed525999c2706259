"""The envelopes that carry an actor's mailbox over a message stream.

Two message classes, registered with the transport codec under ``actor.*``
tags, travel over one :class:`~midswarm.transport.MessageStream`:

* :class:`ActorRequest` ``{id, kind, encoding, payload}``, client to server.
  ``kind`` is ``"tell"`` (``id`` 0, no reply) or ``"ask"`` (``id`` > 0, unique
  on the stream, answered exactly once unless the stream breaks).
* :class:`ActorReply` ``{id, ok, encoding, payload, error}``, server to client.
  ``ok`` false carries a :class:`BoxedError` instead of a payload.  A reply with
  ``id`` 0 is a notice that the served actor is gone for good; the server closes
  the stream after it.

A payload is either a registered message instance, sent as its own nested
envelope (``encoding="message"``, :func:`~midswarm.transport.encode`), or plain
msgpack data, numpy arrays included (``encoding="data"``,
:func:`~midswarm.transport.pack`).

Every request and every successful reply crosses this module once per ask, so
the common shapes skip the attrs/cattrs round: :func:`request_bytes` and
:func:`reply_bytes` build the very bytes :func:`~midswarm.transport.encode`
would, and :func:`parse_request` / :func:`parse_reply` recognise exactly those
bytes.  Anything else goes through the codec's
:func:`~midswarm.transport.decode`, so what is accepted, what it decodes to
and the :class:`~midswarm.transport.ProtocolError` raised for the rest are
exactly the codec's.
"""

from __future__ import annotations

import functools
from typing import Any, Literal

import attrs
import msgpack

from ..transport import PROTOCOL_VERSION, ProtocolError, decode, encode, message, pack, unpack
from ._errors import ActorFailed, ActorStopped, exception_type_name

__all__ = [
    "ActorRequest",
    "ActorReply",
    "BoxedError",
    "encode_payload",
    "decode_payload",
    "request_bytes",
    "reply_bytes",
    "parse_request",
    "parse_reply",
]

_KINDS = ("tell", "ask")
_ENCODINGS = ("message", "data", "")
_REQUEST_TAG = "actor.request"
_REPLY_TAG = "actor.reply"


@attrs.frozen
class BoxedError:
    """An :class:`ActorFailed` (``kind="failed"``) or :class:`ActorStopped`
    (``kind="stopped"``) on the wire."""

    kind: Literal["failed", "stopped"] = attrs.field(
        validator=attrs.validators.in_(("failed", "stopped")))
    actor: str
    exc_type: str = ""
    message: str = ""
    traceback: str = ""

    @classmethod
    def box(cls, error: BaseException, actor: str) -> BoxedError:
        if isinstance(error, ActorFailed):
            return cls("failed", error.actor, error.exc_type, error.message, error.traceback)
        if isinstance(error, ActorStopped):
            return cls("stopped", error.actor, "", error.reason)
        return cls("failed", actor, exception_type_name(error), str(error))

    def unbox(self) -> ActorFailed | ActorStopped:
        if self.kind == "stopped":
            return ActorStopped(self.actor, self.message)
        return ActorFailed(self.actor, self.exc_type, self.message, self.traceback)


@message(_REQUEST_TAG)
@attrs.frozen
class ActorRequest:
    id: int
    kind: str = attrs.field(validator=attrs.validators.in_(_KINDS))
    encoding: str = attrs.field(validator=attrs.validators.in_(_ENCODINGS[:2]))
    payload: bytes


@message(_REPLY_TAG)
@attrs.frozen
class ActorReply:
    id: int
    ok: bool
    encoding: str = attrs.field(default="", validator=attrs.validators.in_(_ENCODINGS))
    payload: bytes = b""
    error: BoxedError | None = None


#: Types that are never attrs classes: no need to ask attrs.
_PLAIN_TYPES = frozenset((dict, list, tuple, str, bytes, int, float, bool, type(None)))


def encode_payload(obj: Any) -> tuple[str, bytes]:
    """``("message", envelope)`` for a registered message, else ``("data", msgpack)``.

    Raises :class:`TypeError` for what neither can carry.
    """
    if type(obj) not in _PLAIN_TYPES and attrs.has(type(obj)):
        return "message", encode(obj)
    return "data", pack(obj)


def decode_payload(encoding: str, payload: bytes) -> Any:
    """Inverse of :func:`encode_payload`; raises :class:`ProtocolError`."""
    if encoding == "message":
        return decode(payload)
    return unpack(payload)


# ----------------------------------------------------------- the common shapes
#
# msgpack writes these envelopes as fixed byte strings around two variable
# parts, the id (a msgpack uint) and the payload (a msgpack bin): we write and
# match those byte strings directly.  msgpack itself writes exactly these
# bytes (tests check), so the peer cannot tell the difference.

_PACK = functools.partial(msgpack.packb, use_bin_type=True)
_REQUEST_HEAD = b"\x93" + _PACK(PROTOCOL_VERSION) + _PACK(_REQUEST_TAG) + b"\x84" + _PACK("id")
_REPLY_HEAD = b"\x93" + _PACK(PROTOCOL_VERSION) + _PACK(_REPLY_TAG) + b"\x85" + _PACK("id")
#: After the id: the fields up to the payload's bin header, by (kind, encoding).
_REQUEST_MIDDLE = {
    (kind, encoding): _PACK("kind") + _PACK(kind) + _PACK("encoding") + _PACK(encoding)
    + _PACK("payload")
    for kind in _KINDS for encoding in _ENCODINGS[:2]}
# Asks of plain data first: the shape to recognise in the fewest tries.
_REQUEST_MIDDLES = tuple(sorted(((mid, kind, encoding)
                                 for (kind, encoding), mid in _REQUEST_MIDDLE.items()),
                                key=lambda m: (m[1] != "ask", m[2] != "data")))
_REPLY_MIDDLE_ORDER = ("data", "message")
_REPLY_MIDDLE = {
    encoding: _PACK("ok") + _PACK(True) + _PACK("encoding") + _PACK(encoding) + _PACK("payload")
    for encoding in _ENCODINGS[:2]}
_REPLY_MIDDLES = tuple((_REPLY_MIDDLE[encoding], encoding) for encoding in _REPLY_MIDDLE_ORDER)
_REPLY_TAIL = _PACK("error") + _PACK(None)
_UINT_SIZES = {0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8}
_BIN_SIZES = {0xC4: 1, 0xC5: 2, 0xC6: 4}


def _uint(n: int) -> bytes:
    """``n`` (>= 0) as msgpack writes it: the shortest form."""
    if n < 0x80:
        return bytes((n,))
    return _PACK(n)


def _bin_header(n: int) -> bytes:
    if n < 0x100:
        return b"\xc4" + n.to_bytes(1, "big")
    if n < 0x10000:
        return b"\xc5" + n.to_bytes(2, "big")
    return b"\xc6" + n.to_bytes(4, "big")


def _uint_at(raw: bytes, pos: int) -> tuple[int, int]:
    """The msgpack unsigned int at ``raw[pos]`` and the position after it;
    ``(-1, 0)`` if there is none."""
    if pos >= len(raw):
        return -1, 0
    first = raw[pos]
    if first < 0x80:
        return first, pos + 1
    size = _UINT_SIZES.get(first)
    if size is None or pos + 1 + size > len(raw):
        return -1, 0
    return int.from_bytes(raw[pos + 1:pos + 1 + size], "big"), pos + 1 + size


def _bin_at(raw: bytes, pos: int, end: int) -> bytes | None:
    """The msgpack bin at ``raw[pos]`` that ends exactly at ``end``, else ``None``."""
    size = _BIN_SIZES.get(raw[pos]) if pos < end else None
    if size is None:
        return None
    start = pos + 1 + size
    if start > end or start + int.from_bytes(raw[pos + 1:start], "big") != end:
        return None
    return raw[start:end]


def request_bytes(ask_id: int, kind: str, msg: Any,
                  encoded: tuple[str, bytes] | None = None) -> bytes:
    """``encode(ActorRequest(ask_id, kind, *encode_payload(msg)))``, built directly.

    ``ask_id`` (>= 0) and ``kind`` are the caller's own (not checked here);
    ``encoded``, when given, is ``encode_payload(msg)`` computed by the caller.
    Raises :class:`TypeError` for a message that cannot be encoded.
    """
    encoding, payload = encode_payload(msg) if encoded is None else encoded
    return b"".join((_REQUEST_HEAD, _uint(ask_id), _REQUEST_MIDDLE[kind, encoding],
                     _bin_header(len(payload)), payload))


def reply_bytes(ask_id: int, value: Any) -> bytes:
    """``encode(ActorReply(ask_id, True, *encode_payload(value)))``, built directly.

    Raises :class:`TypeError` (or :class:`ValueError`) for a value that cannot
    be encoded.
    """
    encoding, payload = encode_payload(value)
    return b"".join((_REPLY_HEAD, _uint(ask_id), _REPLY_MIDDLE[encoding],
                     _bin_header(len(payload)), payload, _REPLY_TAIL))


def _match_request(raw: bytes) -> tuple[int, str, str, bytes] | None:
    """``(id, kind, encoding, payload)`` of a request written like
    :func:`request_bytes` writes them, else ``None``."""
    if not raw.startswith(_REQUEST_HEAD):
        return None
    ask_id, pos = _uint_at(raw, len(_REQUEST_HEAD))
    if ask_id < 0:
        return None
    for middle, kind, encoding in _REQUEST_MIDDLES:
        if raw.startswith(middle, pos):
            payload = _bin_at(raw, pos + len(middle), len(raw))
            if payload is None:
                return None
            return ask_id, kind, encoding, payload
    return None


def _match_reply(raw: bytes) -> tuple[int, str, bytes] | None:
    """``(id, encoding, payload)`` of a successful reply written like
    :func:`reply_bytes` writes them, else ``None``."""
    if not (raw.startswith(_REPLY_HEAD) and raw.endswith(_REPLY_TAIL)):
        return None
    ask_id, pos = _uint_at(raw, len(_REPLY_HEAD))
    if ask_id < 0:
        return None
    for middle, encoding in _REPLY_MIDDLES:
        if raw.startswith(middle, pos):
            payload = _bin_at(raw, pos + len(middle), len(raw) - len(_REPLY_TAIL))
            if payload is None:
                return None
            return ask_id, encoding, payload
    return None


def parse_request(raw: bytes) -> tuple[int, str, Any]:
    """``(id, kind, message)`` of an ``actor.request`` envelope.

    Raises :class:`ProtocolError` for anything that is not one, for an id
    that does not fit its kind (tells carry 0, asks a positive id), and for a
    payload that does not decode.
    """
    fields = _match_request(raw)
    if fields is None:
        req = decode(raw, ActorRequest)
        fields = req.id, req.kind, req.encoding, req.payload
    ask_id, kind, encoding, payload = fields
    if (kind == "tell") != (ask_id == 0) or ask_id < 0:
        raise ProtocolError(f"actor.request: a {kind} cannot have id {ask_id}")
    return ask_id, kind, decode_payload(encoding, payload)


def parse_reply(raw: bytes) -> tuple[int, bool, BoxedError | None, str, bytes]:
    """``(id, ok, error, encoding, payload)`` of an ``actor.reply`` envelope.

    The value of a successful reply is ``decode_payload(encoding, payload)``,
    left to the caller (a late reply nobody waits for is not decoded at all).
    Raises :class:`ProtocolError` for anything that is not an ``actor.reply``.
    """
    fields = _match_reply(raw)
    if fields is not None:
        return fields[0], True, None, fields[1], fields[2]
    reply = decode(raw, ActorReply)
    return reply.id, reply.ok, reply.error, reply.encoding, reply.payload
