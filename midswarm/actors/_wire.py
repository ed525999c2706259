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
would, and :func:`parse_request` / :func:`parse_reply` accept only envelopes
whose every field already has its final type and value.  Anything else goes
through the codec's :func:`~midswarm.transport.decode`, so what is accepted,
what it decodes to and the :class:`~midswarm.transport.ProtocolError` raised
for the rest are exactly the codec's.
"""

from __future__ import annotations

from typing import Any, Literal

import attrs

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


def encode_payload(obj: Any) -> tuple[str, bytes]:
    """``("message", envelope)`` for a registered message, else ``("data", msgpack)``.

    Raises :class:`TypeError` for what neither can carry.
    """
    if attrs.has(type(obj)):
        return "message", encode(obj)
    return "data", pack(obj)


def decode_payload(encoding: str, payload: bytes) -> Any:
    """Inverse of :func:`encode_payload`; raises :class:`ProtocolError`."""
    if encoding == "message":
        return decode(payload)
    return unpack(payload)


# ----------------------------------------------------------- the common shapes

def request_bytes(ask_id: int, kind: str, msg: Any) -> bytes:
    """``encode(ActorRequest(ask_id, kind, *encode_payload(msg)))``, built directly.

    ``ask_id`` and ``kind`` are the caller's own (not checked here).  Raises
    :class:`TypeError` for a message that cannot be encoded.
    """
    encoding, payload = encode_payload(msg)
    # The field order is ActorRequest's, as cattrs unstructures it.
    return pack([PROTOCOL_VERSION, _REQUEST_TAG,
                 {"id": ask_id, "kind": kind, "encoding": encoding, "payload": payload}])


def reply_bytes(ask_id: int, value: Any) -> bytes:
    """``encode(ActorReply(ask_id, True, *encode_payload(value)))``, built directly.

    Raises :class:`TypeError` (or :class:`ValueError`) for a value that cannot
    be encoded.
    """
    encoding, payload = encode_payload(value)
    return pack([PROTOCOL_VERSION, _REPLY_TAG,
                 {"id": ask_id, "ok": True, "encoding": encoding, "payload": payload,
                  "error": None}])


def _body(raw: bytes, tag: str, size: int) -> dict[str, Any] | None:
    """The body of a ``[version, tag, body]`` envelope with ``size`` fields, or
    ``None`` when the envelope is not of that plain shape."""
    env = unpack(raw)
    if (type(env) is list and len(env) == 3 and env[0] == PROTOCOL_VERSION
            and env[1] == tag and type(env[2]) is dict and len(env[2]) == size):
        return env[2]
    return None


def parse_request(raw: bytes) -> tuple[int, str, Any]:
    """``(id, kind, message)`` of an ``actor.request`` envelope.

    Raises :class:`ProtocolError` for anything that is not one, for an id
    that does not fit its kind (tells carry 0, asks a positive id), and for a
    payload that does not decode.
    """
    body = _body(raw, _REQUEST_TAG, 4)
    ask_id: Any
    kind: Any
    encoding: Any
    payload: Any
    if body is not None:
        ask_id = body.get("id")
        kind = body.get("kind")
        encoding = body.get("encoding")
        payload = body.get("payload")
        if not (type(ask_id) is int and (kind == "tell" or kind == "ask")
                and (encoding == "data" or encoding == "message") and type(payload) is bytes):
            body = None
    if body is None:
        req = decode(raw, ActorRequest)
        ask_id, kind, encoding, payload = req.id, req.kind, req.encoding, req.payload
    if (kind == "tell") != (ask_id == 0) or ask_id < 0:
        raise ProtocolError(f"actor.request: a {kind} cannot have id {ask_id}")
    return ask_id, kind, decode_payload(encoding, payload)


def parse_reply(raw: bytes) -> tuple[int, bool, BoxedError | None, str, bytes]:
    """``(id, ok, error, encoding, payload)`` of an ``actor.reply`` envelope.

    The value of a successful reply is ``decode_payload(encoding, payload)``,
    left to the caller (a late reply nobody waits for is not decoded at all).
    Raises :class:`ProtocolError` for anything that is not an ``actor.reply``.
    """
    body = _body(raw, _REPLY_TAG, 5)
    if body is not None:
        ask_id: Any = body.get("id")
        encoding: Any = body.get("encoding")
        payload: Any = body.get("payload")
        if (type(ask_id) is int and body.get("ok") is True and "error" in body
                and body["error"] is None
                and (encoding == "data" or encoding == "message") and type(payload) is bytes):
            return ask_id, True, None, encoding, payload
    reply = decode(raw, ActorReply)
    return reply.id, reply.ok, reply.error, reply.encoding, reply.payload
