"""The client workloads of the transport benchmark, written once for both event loops.

The Trio peers (:mod:`_transport_trio`) and the asyncio peer
(:mod:`_transport_aioquic`) time the same request/reply patterns.  What is
measured lives here: these coroutines await only a mailbox's
``send_message``/``receive_message`` and an event's ``wait``, so the same code
runs under ``trio.run`` and ``asyncio.run``.  Connecting, time limits and task
groups stay with each peer.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from typing import Any, Generic, Protocol, TypeVar

from _transport_common import (
    BULK_CHUNK,
    BULK_START,
    TOTAL,
    cpu_seconds,
    latency_summary,
    now,
    payload,
)


class Mailbox(Protocol):
    async def send_message(self, message: bytes) -> None: ...
    async def receive_message(self) -> bytes: ...


class Event(Protocol):
    """``trio.Event`` or ``asyncio.Event``."""

    def set(self) -> None: ...
    async def wait(self) -> Any: ...


E = TypeVar("E", bound=Event)


async def round_trip(box: Mailbox, msg: bytes) -> float:
    """Seconds for one message and its echo.  Raises RuntimeError on a short echo."""
    t0 = time.perf_counter()
    await box.send_message(msg)
    reply = await box.receive_message()
    dt = time.perf_counter() - t0
    if len(reply) != len(msg):
        raise RuntimeError(f"echo of {len(msg)} bytes came back as {len(reply)} bytes")
    return dt


async def time_round_trips(box: Mailbox, msg: bytes, warmup: int, count: int,
                           into: list[float], cpu: dict[str, float] | None = None,
                           server_pid: int | None = None) -> None:
    """``warmup`` untimed round trips, then ``count`` timed ones appended to ``into``
    (appended as they happen, so a time limit keeps what was measured).

    With ``cpu`` (and the server's ``server_pid``), ``cpu["us_per_round_trip"]``
    is set at the end to the CPU time both processes, this one and the
    server, spent per timed round trip: a measure of work done that, unlike
    latency, hardly moves with the other load of a shared machine."""
    start: float | None = None
    for i in range(warmup + count):
        if i == warmup and cpu is not None and server_pid is not None:
            start = _cpu_both(server_pid)
        dt = await round_trip(box, msg)
        if i >= warmup:
            into.append(dt)
    if start is not None and count:  # start is set only with cpu and server_pid
        assert cpu is not None and server_pid is not None
        end = _cpu_both(server_pid)
        if end is not None:
            cpu["us_per_round_trip"] = (end - start) / count * 1e6


def _cpu_both(server_pid: int) -> float | None:
    mine, server = cpu_seconds(os.getpid()), cpu_seconds(server_pid)
    return None if mine is None or server is None else mine + server


async def send_bulk(box: Mailbox, total: int) -> tuple[int, float]:
    """Switch the stream to bulk mode, send at least ``total`` bytes in BULK_CHUNK
    messages and wait for the server's count; returns ``(bytes sent, seconds)``.
    Raises RuntimeError if the server counted a different number of bytes."""
    chunk = payload(BULK_CHUNK, seed=3)
    sent = 0
    t0 = time.perf_counter()
    await box.send_message(BULK_START)
    while sent < total:
        await box.send_message(chunk)
        sent += len(chunk)
    await box.send_message(b"")
    (counted,) = TOTAL.unpack(await box.receive_message())
    elapsed = time.perf_counter() - t0
    if counted != sent:
        raise RuntimeError(f"server counted {counted} bytes, client sent {sent}")
    return sent, elapsed


def bulk_result(done: tuple[int, float] | None) -> dict[str, Any]:
    """The ``bulk`` result line from :func:`send_bulk`'s result, ``None`` if timed out."""
    if done is None:
        return {"timed_out": True, "mb_per_s": None}
    sent, elapsed = done
    return {"timed_out": False, "mb_per_s": sent / elapsed / 1e6, "bytes": sent}


HANDSHAKE_MODES = ("full", "resumed")


def handshake_modes(p: dict[str, Any]) -> list[str]:
    """The ``handshake`` section's ``modes`` parameter, checked."""
    modes = list(p.get("modes", ["full"]))
    if not modes or any(m not in HANDSHAKE_MODES for m in modes) or len(set(modes)) < len(modes):
        raise ValueError(f"handshake modes must be distinct ones of {HANDSHAKE_MODES}, "
                         f"got {modes!r}")
    return modes


def handshake_turns(modes: list[str], count: int) -> Iterator[str]:
    """The order connections are made in: ``count`` rounds of one connection
    per mode, the order reversed every other round.  Full and resumed
    connections take turns against one server so that load drifting on a
    shared machine hits both alike (their ratio is the figure that matters),
    and neither always follows the other."""
    for i in range(count):
        yield from (modes if i % 2 == 0 else reversed(modes))


class HandshakeTally:
    """Connect->first-reply times per mode, and what the handshakes did."""

    def __init__(self, modes: list[str]) -> None:
        self.times: dict[str, list[float]] = {m: [] for m in modes}
        self.resumed = dict.fromkeys(modes, 0)
        self.early = dict.fromkeys(modes, 0)

    def add(self, mode: str, elapsed: float, resumed: bool, early: bool) -> None:
        self.times[mode].append(elapsed)
        self.resumed[mode] += resumed
        self.early[mode] += early

    def result(self) -> dict[str, Any]:
        """The ``handshake`` result line: one summary per mode."""
        return {m: {**latency_summary(t), "resumed": self.resumed[m],
                    "early_data": self.early[m], "connections": len(t)}
                for m, t in self.times.items()}


async def mailbox_rounds(box: Mailbox, seed: int, size: int, rounds: int,
                         into: list[float]) -> None:
    """``rounds`` round trips of a ``size``-byte message, timings appended to ``into``."""
    msg = payload(size, seed=seed)
    for _ in range(rounds):
        into.append(await round_trip(box, msg))


def mailboxes_result(lat: list[float], elapsed: float, expected: int,
                     timed_out: bool) -> dict[str, Any]:
    return {**latency_summary(lat), "msgs_per_s": len(lat) / elapsed,
            "expected": expected, "timed_out": timed_out}


class AgentStages(Generic[E]):
    """The ``agents`` section: ``n`` agents, each on its own connection, in stages.

    Each :meth:`agent` opens its mailbox and counts as connected, waits for
    ``start_messages``, does ``rounds`` round trips and counts as done, then
    holds its connection until ``close_all``.  ``all_connected`` / ``all_done``
    are set once every agent has connected (or failed) / finished (or failed).
    ``make_event`` is ``trio.Event`` or ``asyncio.Event``; the peer runs the
    agents in its own task group and bounds every wait.
    """

    def __init__(self, n: int, rounds: int, size: int, make_event: Callable[[], E]) -> None:
        self.n, self.rounds, self.size = n, rounds, size
        self.connected_at: list[float] = []
        self.failures: list[str] = []
        self.lat: list[float] = []
        self.all_connected, self.start_messages, self.all_done, self.close_all = (
            make_event(), make_event(), make_event(), make_event())
        self._counts = {"connected": 0, "done": 0}

    def _bump(self, counter: str, target: E) -> None:
        self._counts[counter] += 1
        if self._counts[counter] == self.n:
            target.set()

    async def agent(self, i: int, open_mailbox: Callable[[], AbstractAsyncContextManager[Mailbox]],
                    failures: tuple[type[BaseException], ...]) -> None:
        """Agent ``i`` on the mailbox ``open_mailbox()`` yields; an exception of a
        type in ``failures`` is recorded as a failed agent, not raised."""
        connected = finished = False
        try:
            async with open_mailbox() as box:
                self.connected_at.append(now())
                connected = True
                self._bump("connected", self.all_connected)
                await self.start_messages.wait()
                await mailbox_rounds(box, i, self.size, self.rounds, self.lat)
                finished = True
                self._bump("done", self.all_done)
                await self.close_all.wait()
        except failures as exc:
            self.failures.append(f"{type(exc).__name__}: {exc}")
        finally:
            if not connected:
                self._bump("connected", self.all_connected)
            if not finished:
                self._bump("done", self.all_done)

    def connected_line(self, t0: float) -> dict[str, Any]:
        """The CONNECTED line; ``t0`` is when the agents were started."""
        return {"t0": t0, "t1": max(self.connected_at, default=t0),
                "connected": len(self.connected_at), "failed": len(self.failures),
                "failures": self.failures[:3]}

    def idle_line(self, t2: float, t3: float) -> dict[str, Any]:
        """The IDLE line; messages started at ``t2`` and were done (or timed out) at ``t3``."""
        return {"t2": t2, "t3": t3, "round_trips": len(self.lat), **latency_summary(self.lat)}

    def result_line(self) -> dict[str, Any]:
        return {"failed": len(self.failures), "failures": self.failures[:3]}
