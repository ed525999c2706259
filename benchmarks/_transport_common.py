"""Shared pieces of the transport benchmark: wire conventions, statistics, result lines.

Every peer speaks the same tiny application protocol on each stream (QUIC), or
connection (TCP, WebSocket):

* messages are length-prefixed (4-byte big-endian length) on byte streams; a
  WebSocket message is already a frame and carries no extra prefix;
* the server echoes every message back unchanged;
* the message :data:`BULK_START` switches that stream to bulk mode: the server then
  only counts payload bytes until an empty message arrives, and answers with the
  8-byte big-endian total.

Multiplexed mailboxes (several logical mailboxes on one TCP or WebSocket
connection) put a 4-byte mailbox id in front of each payload; the server echoes
the whole message, so it needs no mode for that.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import struct
import sys
import time
from collections.abc import Sequence
from typing import Any

BULK_START = b"\x00BULK"
HEADER = struct.Struct(">I")
TOTAL = struct.Struct(">Q")
MAILBOX_ID = struct.Struct(">I")
#: Payload of one bulk message: with its 4-byte header one frame is exactly 64 KiB.
BULK_CHUNK = 65532
#: Trio-websocket reads this much at a time in our peers (its default is 4 KiB);
#: the same size MessageStream reads.
WS_RECEIVE_BUFFER = 256 * 1024
WS_MAX_MESSAGE = 1 << 20
ALPN_AIOQUIC = "midswarm-bench"

KINDS = ("midswarm", "aioquic", "websocket", "tcp")


def now() -> float:
    """Seconds on CLOCK_MONOTONIC: comparable between processes on one machine."""
    return time.monotonic()


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of an already sorted sequence."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[rank - 1]


def latency_summary(samples: list[float]) -> dict[str, float]:
    """p50/p99 in microseconds and the sample count."""
    s = sorted(samples)
    return {"p50_us": percentile(s, 50) * 1e6, "p99_us": percentile(s, 99) * 1e6,
            "count": len(s)}


def emit(tag: str, payload: dict[str, Any] | None = None) -> None:
    """Write one protocol line (``TAG {json}``) to stdout for the orchestrator."""
    line = tag if payload is None else f"{tag} {json.dumps(payload)}"
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def payload(size: int, seed: int = 0) -> bytes:
    """Deterministic incompressible-looking bytes (never equal to BULK_START)."""
    block = bytes((i * 131 + seed * 17 + 7) & 0xFF for i in range(256))
    data = (block * (size // 256 + 1))[:size]
    assert data != BULK_START
    return data


def rss_kib(pid: int) -> int:
    """Resident set size of process ``pid`` in KiB, from /proc/<pid>/status."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS line for pid {pid}")


def cpu_seconds(pid: int) -> float | None:
    """CPU time used so far by all threads of process ``pid`` (Linux
    ``schedstat``, nanosecond resolution); ``None`` where that cannot be read."""
    total = 0
    try:
        for thread in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{thread}/schedstat") as f:
                total += int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return total / 1e9


#: The client identity of the mutual-TLS handshakes (a certificate in the certs directory).
CLIENT_ID = "bench-agent"


def certs_paths(certs: str) -> dict[str, str]:
    return {"ca": os.path.join(certs, "ca.pem"),
            "cert": os.path.join(certs, "coordinator.pem"),
            "key": os.path.join(certs, "coordinator.key"),
            "client_cert": os.path.join(certs, f"{CLIENT_ID}.pem"),
            "client_key": os.path.join(certs, f"{CLIENT_ID}.key")}


class FrameParser:
    """Split a byte stream into length-prefixed frames (used by the asyncio peer)."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        buf += data
        out: list[bytes] = []
        pos = 0
        n_buf = len(buf)
        while n_buf - pos >= 4:
            (n,) = HEADER.unpack_from(buf, pos)
            end = pos + 4 + n
            if end > n_buf:
                break
            out.append(bytes(buf[pos + 4:end]))
            pos = end
        if pos:
            del buf[:pos]
        return out


def frame(message: bytes) -> bytes:
    return HEADER.pack(len(message)) + message


def positive_int(text: str) -> int:
    """An ``argparse`` type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value
