"""Process and environment plumbing of the transport benchmark.

:class:`PeerProcess` starts one ``_transport_peer.py`` server or client (optionally
inside a network namespace) and reads its ``TAG {json}`` lines; :class:`Bench`
collects table rows; :func:`lossy_namespace` makes the lossy loopback of the
head-of-line section; :func:`udp_receive_drops` reads the kernel's drop counter.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import IO, Any

HERE = os.path.dirname(os.path.abspath(__file__))
PEER = os.path.join(HERE, "_transport_peer.py")


class PeerProcess:
    """One server or client process speaking the line protocol of ``_transport_peer``."""

    def __init__(self, args: list[str], netns: str | None = None) -> None:
        prefix = ["ip", "netns", "exec", netns] if netns else []
        self._stderr: IO[bytes] = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, PEER, *args], cwd=HERE,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr)
        self.pid = self.proc.pid
        self._buf = b""
        self.label = " ".join(args[:3])

    def stderr_tail(self, lines: int = 15) -> str:
        self._stderr.seek(0)
        text = self._stderr.read().decode(errors="replace").strip().splitlines()
        return "\n".join(text[-lines:])

    def expect(self, tag: str, timeout: float) -> dict[str, Any]:
        """Wait for the line ``TAG {json}``; raise RuntimeError on exit or timeout."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self._buf:
                line, _, self._buf = self._buf.partition(b"\n")
                word, _, rest = line.decode().partition(" ")
                if word == tag:
                    return json.loads(rest) if rest else {}
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"{self.label}: no {tag} within {timeout:.0f} s\n"
                                   f"{self.stderr_tail()}")
            ready, _, _ = select.select([fd], [], [], remaining)
            if ready:
                data = os.read(fd, 65536)
                if not data:
                    rc = self.proc.wait()
                    raise RuntimeError(f"{self.label}: exited ({rc}) before {tag}\n"
                                       f"{self.stderr_tail()}")
                self._buf += data

    def send(self, word: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(word.encode() + b"\n")
        self.proc.stdin.flush()

    def stop(self, timeout: float = 10.0) -> None:
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._stderr.close()


class Bench:
    def __init__(self, certs: str, kinds: tuple[str, ...]) -> None:
        self.certs = certs
        self.kinds = kinds
        #: row label -> kind -> value (number, or a string such as "timeout")
        self.rows: dict[str, dict[str, Any]] = {}
        self.higher_is_better: dict[str, bool] = {}
        self.notes: list[str] = []

    def put(self, row: str, kind: str, value: Any, *, higher_better: bool) -> None:
        self.rows.setdefault(row, {})[kind] = value
        self.higher_is_better[row] = higher_better

    @contextlib.contextmanager
    def server(self, kind: str, params: dict[str, Any],
               netns: str | None = None) -> Iterator[tuple[int, PeerProcess]]:
        srv = PeerProcess(["server", kind, self.certs, json.dumps(params)], netns)
        try:
            port = int(srv.expect("PORT", 60)["port"])
            yield port, srv
        finally:
            srv.stop()

    def client(self, kind: str, section: str, port: int, params: dict[str, Any],
               netns: str | None = None) -> dict[str, Any]:
        cli = PeerProcess(["client", kind, section, str(port), self.certs,
                           json.dumps(params)], netns)
        try:
            return cli.expect("RESULT", float(params.get("time_limit", 60)) + 60)
        finally:
            cli.stop()

    def attempt(self, what: str, fn: Any, *args: Any) -> Any:
        """Run one measurement; a failure becomes a note, not the end of the run."""
        try:
            return fn(*args)
        except RuntimeError as exc:
            self.notes.append(f"{what} FAILED: {exc}")
            print(f"  {what} FAILED (see notes)", file=sys.stderr)
            return None


def udp_receive_drops() -> int | None:
    """System-wide count of UDP datagrams dropped for a full receive buffer."""
    try:
        with open("/proc/net/snmp") as f:
            rows = [line.split() for line in f if line.startswith("Udp:")]
        return int(rows[1][rows[0].index("RcvbufErrors")])
    except (OSError, IndexError, ValueError):
        return None


def drops_since(start: int | None) -> int | None:
    end = udp_receive_drops()
    return None if start is None or end is None else end - start


def netns_problem() -> str | None:
    if os.geteuid() != 0:
        return "not running as root"
    missing = [t for t in ("ip", "iptables") if shutil.which(t) is None]
    if missing:
        return f"{' and '.join(missing)} not found"
    return None


class NamespaceUnavailable(Exception):
    """The lossy network namespace could not be set up."""


@contextlib.contextmanager
def lossy_namespace(loss: float) -> Iterator[str]:
    """A network namespace whose loopback drops ``loss`` of incoming packets.

    Raises :class:`NamespaceUnavailable` when a setup command fails; the
    namespace is deleted on the way out in every case.
    """
    name = f"msbench{os.getpid()}"
    setup = [
        ["ip", "netns", "add", name],
        ["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"],
        ["ip", "netns", "exec", name, "iptables", "-A", "INPUT", "-m", "statistic",
         "--mode", "random", "--probability", str(loss), "-j", "DROP"],
    ]
    try:
        for i, cmd in enumerate(setup):
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                if i == 0:
                    name = ""  # nothing to delete
                raise NamespaceUnavailable(
                    f"{' '.join(cmd)} failed: {done.stderr.strip() or done.returncode}")
        yield name
    finally:
        if name:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
