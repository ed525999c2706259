"""serve_actor / remote_ref over real QUIC streams between two processes.

Real UDP on loopback and real time (the other process does not follow our
clock), so every wait is bounded by ``trio.fail_after``.  The serving process is
this file run as a script: ``python test_actors_quic.py serve CERTDIR`` prints
its port and serves a supervised actor on every stream a client opens.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio
import trio.testing
from _helpers import client_tls, quic_server, serve_streams

from midswarm.actors import (
    Actor,
    ActorFailed,
    ActorRef,
    ActorUnreachable,
    Backoff,
    ChildSpec,
    open_supervisor,
    remote_ref,
    serve_actor,
)
from midswarm.transport import MessageStream, QuicConnection, QuicStream, connect_quic


class Service(Actor):
    instances = 0

    def __init__(self) -> None:
        Service.instances += 1
        self.instance = Service.instances
        self.n = 0

    async def handle(self, msg: Any) -> Any:
        if isinstance(msg, np.ndarray):
            return msg.sum(axis=0)
        if msg == "pid":
            return os.getpid()
        if msg == "instance":
            return self.instance
        if msg == "get":
            return self.n
        if msg == "crash":
            raise ZeroDivisionError("crashed on purpose")
        self.n += 1
        return None


async def _serve_process(certs: Path) -> None:
    """The other process: one supervised actor, bound to every incoming stream."""
    async with open_supervisor(backoff=Backoff(initial=0.001), max_restarts=100) as sup:
        ref = await sup.start_child(ChildSpec(Service, name="svc"))

        async def handler(conn: QuicConnection) -> None:
            await serve_streams(conn, functools.partial(_serve_one, ref))

        async with quic_server(handler, certs) as listener:
            print(listener.port, flush=True)
            await trio.sleep_forever()


async def _serve_one(ref: Any, stream: QuicStream) -> None:
    try:
        await serve_actor(ref, MessageStream(stream))
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the client went away


@asynccontextmanager
async def serving_process(certs: Path) -> AsyncIterator[int]:
    proc = await trio.lowlevel.open_process(
        [sys.executable, __file__, "serve", str(certs)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = b""
        with trio.fail_after(30):
            while not line.endswith(b"\n"):
                chunk = await proc.stdout.receive_some(64)
                if not chunk:
                    raise RuntimeError("the serving process exited before printing its port")
                line += chunk
        yield int(line)
    finally:
        proc.terminate()
        with trio.move_on_after(10):
            await proc.wait()


@asynccontextmanager
async def remote_service(certs: Path, port: int
                         ) -> AsyncIterator[tuple[QuicConnection, ActorRef]]:
    """A QUIC connection to the serving process on ``port`` and a remote ref to its
    actor on a first stream."""
    async with connect_quic("127.0.0.1", port, tls=client_tls(certs)) as conn:
        stream = await conn.open_stream()
        async with remote_ref(MessageStream(stream), name="svc") as ref:
            yield conn, ref


async def test_remote_ref_over_quic_between_processes(certs: Path) -> None:
    async with serving_process(certs) as port:
        with trio.fail_after(30):
            async with remote_service(certs, port) as (conn, ref):
                other_pid = await ref.ask("pid")
                assert other_pid != os.getpid()
                for _ in range(100):
                    await ref.tell("incr")
                assert await ref.ask("get") == 100
                data = np.arange(20.0).reshape(4, 5)
                assert (await ref.ask(data) == data.sum(axis=0)).all()
                assert await ref.ask("instance") == 1

                # A crash on the serving side comes back boxed, with the
                # traceback text from the other process...
                with pytest.raises(ActorFailed) as info:
                    await ref.ask("crash")
                assert info.value.actor == "svc"
                assert info.value.exc_type == "ZeroDivisionError"
                assert info.value.message == "crashed on purpose"
                assert "ZeroDivisionError: crashed on purpose" in info.value.traceback
                # ...and the supervisor there restarts the actor behind the
                # same mailbox: this stream stays bound to the new instance.
                assert await ref.ask("instance") == 2
                assert await ref.ask("get") == 0
                await ref.tell("crash")  # a crash by tell, too
                assert await ref.ask("instance") == 3

                # A second stream reaches the same supervised actor.
                second = await conn.open_stream()
                async with remote_ref(MessageStream(second), name="svc") as ref2:
                    await ref2.tell("incr")
                    assert await ref2.ask("get") == 1  # ordered on ref2's stream
                    assert await ref2.ask("instance") == 3


async def test_pending_ask_fails_when_the_serving_process_dies(certs: Path) -> None:
    async with serving_process(certs) as port:
        with trio.fail_after(30):
            async with remote_service(certs, port) as (conn, ref):
                pid = await ref.ask("pid")
                os.kill(pid, 9)
                # No reply can come; the connection's idle timeout ends it
                # (configured long by default), so close it ourselves as a
                # supervisor would on a missed heartbeat.
                async with trio.open_nursery() as nursery:
                    failures: list[BaseException] = []

                    async def asker() -> None:
                        try:
                            await ref.ask("get")
                        except ActorUnreachable as exc:
                            failures.append(exc)

                    nursery.start_soon(asker)
                    await trio.testing.wait_all_tasks_blocked(0.01)
                    conn.close(0, "peer presumed dead")
                assert len(failures) == 1


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "serve":
        trio.run(_serve_process, Path(sys.argv[2]))
    else:
        raise SystemExit(f"usage: {sys.argv[0]} serve CERTDIR")


if __name__ == "__main__":
    main()
