"""The wire codec: attrs message classes <-> msgpack bytes, in one place.

Theory of operation
-------------------
Every message is an attrs class registered with :func:`message` under a short,
stable tag.  :func:`encode` wraps it in an envelope ``[version, tag, body]``
where ``body`` is the class unstructured by the one module-level cattrs
:data:`converter`.  :func:`decode` checks the envelope, looks the tag up and
structures the body back.  numpy arrays anywhere in a body (typed fields or
free-form ``Any`` values) travel as msgpack extension type 1 whose payload is
``[dtype, shape, bytes]``; they are checked (numeric dtype, byte count matching
the shape) before they are rebuilt.  Anything that does not fit raises
:class:`ProtocolError`, and nothing else.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar

import attrs
import cattrs
import msgpack
import numpy as np

from ._errors import ProtocolError

__all__ = [
    "PROTOCOL_VERSION",
    "converter",
    "message",
    "encode",
    "decode",
    "pack",
    "unpack",
    "registered_messages",
]

#: Version carried by every envelope.  A peer speaking another version is refused.
#: 2: a PatternMatchResult's matches travel as columns.
PROTOCOL_VERSION = 2

_ND_EXT = 1
# Object, void and the like cannot be rebuilt safely from bytes.
_ALLOWED_KINDS = frozenset("biufcmM")

T = TypeVar("T")

converter = cattrs.Converter()
converter.register_unstructure_hook(np.ndarray, lambda a: a)


def _structure_array(value: Any, _type: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"expected an array, got {type(value).__name__}") from exc


converter.register_structure_hook(np.ndarray, _structure_array)

_REGISTRY: dict[str, type] = {}
_TAGS: dict[type, str] = {}


def message(tag: str) -> Callable[[type[T]], type[T]]:
    """Class decorator: register an attrs class as a wire message under ``tag``."""

    def register(cls: type[T]) -> type[T]:
        if not attrs.has(cls):  # type: ignore[arg-type]
            raise TypeError(f"{cls.__name__} must be an attrs class")
        other = _REGISTRY.get(tag)
        if other is not None and other is not cls:
            raise ValueError(f"message tag {tag!r} is already used by {other.__name__}")
        _REGISTRY[tag] = cls
        _TAGS[cls] = tag
        return cls  # type: ignore[return-value]

    return register


def registered_messages() -> dict[str, type]:
    """A copy of the tag -> class registry."""
    return dict(_REGISTRY)


def _default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in _ALLOWED_KINDS:
            raise TypeError(f"arrays of dtype {obj.dtype} cannot be sent")
        a = obj if obj.flags.c_contiguous else np.ascontiguousarray(obj)
        # A flat uint8 view exports any dtype (datetimes too) and any shape
        # (empty, 0-d) as one buffer, without a copy.
        raw = a.reshape(-1).view(np.uint8).data
        return msgpack.ExtType(_ND_EXT, msgpack.packb([a.dtype.str, list(obj.shape), raw]))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (set, frozenset)):
        return list(obj)
    raise TypeError(f"cannot encode object of type {type(obj).__name__}")


def _ext_hook(code: int, data: bytes) -> Any:
    if code != _ND_EXT:
        raise ProtocolError(f"unknown msgpack extension type {code}")
    try:
        dtype_str, shape, raw = msgpack.unpackb(data)
        dtype = np.dtype(dtype_str)
    except Exception as exc:  # any malformation of the array header
        raise ProtocolError(f"malformed array header: {exc}") from exc
    if dtype.kind not in _ALLOWED_KINDS:
        raise ProtocolError(f"array dtype {dtype} is not allowed on the wire")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ProtocolError(f"malformed array shape {shape!r}")
    if not isinstance(raw, bytes):
        raise ProtocolError("array payload is not bytes")
    expected = math.prod(shape) * dtype.itemsize
    if expected != len(raw):
        raise ProtocolError(
            f"array of shape {tuple(shape)} and dtype {dtype} needs {expected} bytes, "
            f"got {len(raw)}")
    # Copy so receivers get an ordinary writable array.
    return np.frombuffer(raw, dtype=dtype).reshape(tuple(shape)).copy()


def pack(obj: Any) -> bytes:
    """msgpack ``obj`` (plain data, numpy arrays allowed anywhere)."""
    return msgpack.packb(obj, default=_default, use_bin_type=True)


def unpack(data: bytes | bytearray | memoryview) -> Any:
    """Inverse of :func:`pack`.  Raises :class:`ProtocolError` on malformed bytes."""
    try:
        return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False,
                               use_list=True)
    except ProtocolError:
        raise
    except Exception as exc:  # msgpack raises several unrelated types
        raise ProtocolError(f"malformed msgpack: {type(exc).__name__}: {exc}") from exc


def encode(msg: Any) -> bytes:
    """Encode a registered message class instance as an envelope."""
    tag = _TAGS.get(type(msg))
    if tag is None:
        raise TypeError(f"{type(msg).__name__} is not a registered message class")
    return pack([PROTOCOL_VERSION, tag, converter.unstructure(msg)])


def decode(data: bytes | bytearray | memoryview, expect: type[T] | None = None) -> Any:
    """Decode an envelope into its message object.

    With ``expect``, anything but an instance of that class is a
    :class:`ProtocolError`.  Every failure is a :class:`ProtocolError` whose
    message says what was wrong.
    """
    env = unpack(data)
    if not isinstance(env, list) or len(env) != 3:
        raise ProtocolError("envelope must be a 3-element array [version, tag, body]")
    version, tag, body = env
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            f"protocol version {version!r} is not supported (this side speaks "
            f"{PROTOCOL_VERSION})")
    if not isinstance(tag, str):
        raise ProtocolError(f"message tag must be a string, got {type(tag).__name__}")
    cls = _REGISTRY.get(tag)
    if cls is None:
        raise ProtocolError(f"unknown message type {tag!r}")
    if expect is not None and cls is not expect:
        raise ProtocolError(f"expected {_TAGS.get(expect, expect.__name__)!r}, got {tag!r}")
    try:
        return converter.structure(body, cls)
    except ProtocolError:
        raise
    except Exception as exc:  # cattrs groups, TypeError, ValueError ...
        detail = "; ".join(cattrs.transform_error(exc)) if isinstance(
            exc, cattrs.BaseValidationError) else str(exc)
        raise ProtocolError(f"bad {tag!r} message: {detail}") from exc
