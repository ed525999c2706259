"""Busy polling: a Trio run that has just seen frequent traffic stays awake
for a moment instead of blocking in ``epoll_wait``.

Theory of operation
-------------------
On the machines we measure on, most of a small round trip's cost is not the
work of sending and receiving but the waking up: a process that blocked for a
few hundred microseconds resumes on a core whose caches and branch predictors
hold someone else's state, and every step of the receive path then costs
several times what it costs warm (aioquic's packet decryption, profiled in
session 8: 2.8 us in a loop, about 12 us after a block).  Busy polling -- the
idea behind Linux's ``SO_BUSY_POLL`` and the spinning idle strategies of
low-latency messaging libraries -- trades CPU time during short gaps for that
latency.

After an endpoint's receiver has handled a batch of datagrams, it polls its
socket without blocking, yielding to the Trio scheduler between polls, until
a datagram arrives or ``QuicConfig.busy_poll`` seconds have passed; only then
does it block.  Each yield makes Trio run its other tasks and call
``epoll_wait`` with a zero timeout, so while one receiver polls, the whole run
stays awake: every other socket, timer and task is served as usual, and
sooner than from a blocked loop.

The rules, each for a reason:

================================  =============================================
rule                              reason
================================  =============================================
poll only after a short gap       a receiver polls after a batch only if that
                                  batch came within the window of the one
                                  before: traffic that arrives rarely (a
                                  coordinator waiting milliseconds for a
                                  computation) costs no CPU at all
one poller per Trio run           one polling task keeps the whole run awake;
                                  a second would only burn more CPU.  Others
                                  extend the poller's window instead
the window is on the real clock   Trio's clock may be a ``MockClock``, which
                                  does not advance while a task is runnable
every poll is a checkpoint        cancellation works at once; other tasks run
every poll yields the core        ``sched_yield``: with more runnable threads
                                  than cores (agents computing beside the
                                  coordinator), a poller must not hold a core
                                  someone with work is waiting for (session
                                  8, 3 processes on 2 cores, a 2 ms window:
                                  2.6 ms per swarm task without, 1.0 with)
an error ends the poll            the blocking path reports socket errors
``busy_poll=0`` disables it       for hosts where idle CPU matters more
================================  =============================================

The window is short (300 us by default) because a poll pays only when the
peer answers within it: a round trip of two processes on loopback.  Longer
windows buy nothing where the gaps are computations, and on a host with more
busy processes than cores they cost the others CPU.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

import trio

__all__ = ["BusyPoller", "busy_poller", "real_time"]

#: The real clock the window is measured on.
real_time = time.perf_counter
#: Lets a runnable thread waiting for this core go first (where the OS has it).
_yield_core = getattr(os, "sched_yield", lambda: None)


class BusyPoller:
    """The one busy-polling receiver of a Trio run, and how long it polls."""

    __slots__ = ("polling", "until")

    def __init__(self) -> None:
        #: Whether a receiver is polling now.
        self.polling = False
        #: Real-clock time (``time.perf_counter``) when polling stops.
        self.until = 0.0

    def extend(self, until: float) -> None:
        """Keep the run awake until at least ``until``."""
        if until > self.until:
            self.until = until

    async def poll(self, sock: socket.socket) -> tuple[bytes, Any] | None:
        """Poll ``sock`` for a datagram until the window closes.

        Returns the first datagram (as ``recvfrom`` does), or ``None`` when the
        window closed, when another receiver is polling already, or when the
        socket reported an error (the caller's blocking path reads and reports
        it).  Each poll but the first is a checkpoint: raises
        :class:`trio.Cancelled` when cancelled.
        """
        if self.polling:
            return None
        self.polling = True
        try:
            while True:
                try:
                    return sock.recvfrom(65536)
                except BlockingIOError:
                    pass
                except OSError:
                    return None
                if real_time() >= self.until:
                    return None
                _yield_core()
                await trio.lowlevel.checkpoint()
        finally:
            self.polling = False


_POLLER: trio.lowlevel.RunVar[BusyPoller] = trio.lowlevel.RunVar("midswarm_busy_poller")


def busy_poller() -> BusyPoller:
    """This Trio run's :class:`BusyPoller`."""
    try:
        return _POLLER.get()
    except LookupError:
        poller = BusyPoller()
        _POLLER.set(poller)
        return poller
