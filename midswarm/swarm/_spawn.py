"""Agent processes the coordinator starts and restarts itself.

Each spawned agent is an :class:`AgentProcess` actor, a child of the
coordinator's ``agent-processes`` supervisor (restart type ``transient``).
Starting an instance starts ``python -m midswarm agent ...`` and a watcher
task (in the coordinator's process nursery) that waits for the process to
exit.  When it does, the watcher ends that agent's session at once (so its
tasks fail over without waiting for a heartbeat timeout) and tells the
actor, which then fails -- so the supervisor restarts it, with backoff,
starting a new process -- unless the exit was a clean one (code 0, after a
drain), which stops it for good.  Stopping the actor terminates its process.

The agent's stdin is a pipe from this process and the agent is started with
``--exit-on-stdin-eof``: if the coordinator's process dies without cleaning
up, the pipe closes and the agents exit instead of reconnecting forever.  It
also runs with ``--batch-scheduling`` (Linux ``SCHED_BATCH``): it shares this
machine with the coordinator, whose every task passes through its event loop,
and an agent woken by a request should not take the coordinator's core
before the coordinator has sent the rest of a scatter and gone to wait.

Its stderr (its log) is this process's stderr, unless a log file is given:
then every line goes to that file (prefixed with the agent id) and only the
lines that matter here are passed on to this process's stderr -- log records
at ``echo_level`` or above (WARNING by default) and any line that is not a
log record at all (a traceback, a crashing interpreter's last words).
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from typing import IO, TYPE_CHECKING, Any

import trio

from ..actors import Actor, ActorError, ActorRef, ChildSpec

if TYPE_CHECKING:
    from ._coordinator import Coordinator

__all__ = ["AgentProcess", "SpawnedAgent", "pump_agent_output", "spawn_agent", "stop_all"]

log = logging.getLogger("midswarm.swarm")

_TERMINATE_GRACE = 3.0
# The start of a log record as ``midswarm agent`` writes it (``_cli._setup_logging``:
# "%(asctime)s %(name)s %(levelname)s %(message)s").
_LEVELS = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARNING": logging.WARNING,
           "ERROR": logging.ERROR, "CRITICAL": logging.CRITICAL}
_RECORD = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ \S+ (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")


class AgentProcessExited(Exception):
    """A spawned agent process exited with a non-zero code."""


class _Exited:
    __slots__ = ("pid", "returncode")

    def __init__(self, pid: int, returncode: int) -> None:
        self.pid = pid
        self.returncode = returncode


class SpawnedAgent:
    """The coordinator's record of one agent it spawned."""

    def __init__(self, agent_id: str, argv: list[str], env: dict[str, str],
                 log_file: str | None = None, echo_level: int = logging.WARNING) -> None:
        self.agent_id = agent_id
        self.argv = argv
        self.env = env
        #: Where the agent's stderr goes (None: this process's stderr).
        self.log_file = log_file
        self.echo_level = echo_level
        self.pid: int | None = None
        self.starts = 0
        self.last_returncode: int | None = None
        self.ref: ActorRef | None = None
        self.ref_ready = trio.Event()
        #: Set while no process of this agent is running.
        self.exited = trio.Event()
        self.exited.set()

    @property
    def restarts(self) -> int:
        return max(0, self.starts - 1)


class AgentProcess(Actor):
    """Owns one agent process; see the module docstring."""

    def __init__(self, coord: Coordinator, spawned: SpawnedAgent) -> None:
        self.coord = coord
        self.spawned = spawned
        self.process: trio.Process | None = None

    async def on_start(self) -> None:
        nursery = self.coord._process_nursery
        assert nursery is not None
        self.process = await nursery.start(_watch, self.coord, self.spawned)

    async def handle(self, msg: Any) -> Any:
        if not isinstance(msg, _Exited) or self.process is None \
                or msg.pid != self.process.pid:
            return None  # about an earlier process, or not for us
        if msg.returncode == 0:
            log.info("agent %s (pid %d) exited cleanly", self.spawned.agent_id, msg.pid)
            self.stop()
            return None
        raise AgentProcessExited(f"agent {self.spawned.agent_id} (pid {msg.pid}) exited with "
                                 f"code {msg.returncode}")

    async def on_stop(self) -> None:
        if self.process is not None:
            await _terminate(self.process)


async def _terminate(process: trio.Process) -> None:
    if process.returncode is not None:
        return
    process.terminate()
    with trio.move_on_after(_TERMINATE_GRACE):
        await process.wait()
    if process.returncode is None:
        process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()


def _echo(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


async def pump_agent_output(stream: trio.abc.ReceiveStream, agent_id: str, log_file: IO[str],
                            echo_level: int = logging.WARNING,
                            echo: Any = _echo) -> None:
    """Copy an agent's stderr to ``log_file`` until EOF, line by line, each
    line prefixed with ``agent_id``; pass to ``echo`` (default: this process's
    stderr) the log records at ``echo_level`` or above and every line that is
    not a log record (tracebacks, output of a crash), so that no error is lost.
    """
    def emit(raw: bytes) -> None:
        text = raw.decode("utf-8", errors="replace").rstrip("\r")
        line = f"{agent_id} | {text}"
        log_file.write(line + "\n")
        record = _RECORD.match(text)
        if record is None or _LEVELS[record.group(1)] >= echo_level:
            echo(line)

    pending = b""
    async for chunk in stream:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for raw in lines:
            emit(raw)
        log_file.flush()
    if pending:
        emit(pending)
        log_file.flush()


async def _watch(coord: Coordinator, spawned: SpawnedAgent,
                 task_status: trio.TaskStatus[trio.Process]) -> None:
    log_file: IO[str] | None = None
    if spawned.log_file is not None:
        # Appends of whole lines: the agents of a swarm can share one file.
        log_file = open(spawned.log_file, "a", encoding="utf-8")  # noqa: SIM115
    try:
        process = await trio.lowlevel.open_process(
            spawned.argv, stdin=subprocess.PIPE, env=spawned.env,
            stderr=None if log_file is None else subprocess.PIPE)
    except BaseException:
        if log_file is not None:
            log_file.close()
        raise
    spawned.pid = process.pid
    spawned.starts += 1
    spawned.exited = trio.Event()
    task_status.started(process)
    try:
        async with trio.open_nursery() as pumps:
            pumped = trio.Event()
            if log_file is None:
                pumped.set()
            else:
                assert process.stderr is not None
                pumps.start_soon(_pump, process.stderr, spawned, log_file, pumped)
            returncode = await process.wait()
            # Its last words (a traceback, say) before the news of its exit.
            with trio.move_on_after(1.0):
                await pumped.wait()
            pumps.cancel_scope.cancel()
        spawned.last_returncode = returncode
        spawned.exited.set()
        log.log(logging.INFO if returncode == 0 else logging.WARNING,
                "agent process %s (pid %d) exited with code %d", spawned.agent_id,
                process.pid, returncode)
        coord._agent_process_exited(spawned.agent_id, process.pid)
        await spawned.ref_ready.wait()
        assert spawned.ref is not None
        try:
            await spawned.ref.tell(_Exited(process.pid, returncode))
        except ActorError:
            pass  # the actor was stopped meanwhile
    finally:
        if process.returncode is None:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()
        if process.stdin is not None:
            with trio.CancelScope(shield=True):
                await process.stdin.aclose()
        if log_file is not None:
            log_file.close()
        spawned.exited.set()


async def _pump(stream: trio.abc.ReceiveStream, spawned: SpawnedAgent, log_file: IO[str],
                done: trio.Event) -> None:
    try:
        async with stream:
            await pump_agent_output(stream, spawned.agent_id, log_file, spawned.echo_level)
    finally:
        done.set()


async def spawn_agent(coord: Coordinator, agent_id: str, types: list[str], certs: str,
                      server_name: str, extra_args: list[str], threads: int | None,
                      log_file: str | None = None, echo_level: int = logging.WARNING) -> None:
    """See :meth:`Coordinator.spawn_agent`."""
    from ._agent_host import _check_types
    from ._agents import AGENT_FACTORIES

    if coord.port is None:
        raise RuntimeError("spawn_agent() needs a coordinator listening on QUIC (tls=...)")
    if not agent_id or "/" in agent_id or agent_id.startswith("-"):
        raise ValueError(f"invalid agent id {agent_id!r}")
    _check_types(types, AGENT_FACTORIES)
    for name in ("ca.pem", f"{agent_id}.pem", f"{agent_id}.key"):
        if not os.path.isfile(os.path.join(certs, name)):
            raise FileNotFoundError(f"spawn_agent: {os.path.join(certs, name)} is missing "
                                    f"(make it with `midswarm certs {certs} --agents {agent_id}`)")
    host = coord.host or "127.0.0.1"
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    argv = [sys.executable, "-m", "midswarm", "agent", "--coordinator", f"{host}:{coord.port}",
            "--id", agent_id, "--types", ",".join(types), "--certs", certs,
            "--server-name", server_name, "--exit-on-stdin-eof", "--batch-scheduling",
            *extra_args]
    env = dict(os.environ)
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be an int >= 1, got {threads!r}")
        env["NUMBA_NUM_THREADS"] = str(threads)
        # Agents sharing a host: idle OpenMP workers should sleep, not spin on
        # cores their neighbours need.
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if log_file is not None:
        directory = os.path.dirname(os.path.abspath(log_file))
        if not os.path.isdir(directory):
            raise FileNotFoundError(f"spawn_agent: log_file {log_file!r}: no directory "
                                    f"{directory!r}")
    spawned = SpawnedAgent(agent_id, argv, env, log_file, echo_level)
    from ._coordinator import AgentRecord

    record = coord._records.get(agent_id)
    if record is None:
        record = coord._records[agent_id] = AgentRecord(agent_id, list(types))
    record.process = spawned
    assert coord._processes is not None
    spawned.ref = await coord._processes.start_child(ChildSpec(
        lambda: AgentProcess(coord, spawned), name=f"process:{agent_id}", restart="transient",
        shutdown=_TERMINATE_GRACE + 1.0, mailbox_size=8))
    spawned.ref_ready.set()


async def stop_all(coord: Coordinator, grace: float) -> None:
    """Stop every spawned agent process: give drained agents ``grace`` seconds
    to exit by themselves, then terminate those still running."""
    sup = coord._processes
    if sup is None or not sup.running:
        return
    spawned = [r.process for r in coord._records.values() if r.process is not None]
    with trio.move_on_after(grace):
        for agent in spawned:
            await agent.exited.wait()
    for status in reversed(sup.children()):
        try:
            await sup.stop_child(status.name)
        except (KeyError, ActorError):
            pass
