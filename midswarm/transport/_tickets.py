"""TLS session tickets: the client's store (for 0-RTT resumption) and the server's.

A client keeps the newest ticket per server name, in memory and optionally in a
file (written atomically, mode 0600), with the key-share group that server
chose (a resumed connection offers only that group's share).  A server keeps
the tickets it issued, each usable once (the simplest defence against replay
of 0-RTT data), together with the client identity verified on the connection
that earned it — resumption skips certificates, so that identity is what a
resumed connection is.
"""

from __future__ import annotations

import datetime
import os
import tempfile
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import msgpack
from aioquic.tls import CipherSuite, SessionTicket

__all__ = ["SessionTicketStore"]


def _ticket_to_plain(t: SessionTicket) -> list[object]:
    return [t.age_add, int(t.cipher_suite), t.not_valid_after.timestamp(),
            t.not_valid_before.timestamp(), t.resumption_secret, t.server_name, t.ticket,
            t.max_early_data_size, [[k, v] for k, v in t.other_extensions]]


#: Index of the key-share group after a ticket's fields in the file (files
#: written before it was kept have no such field).
_GROUP_FIELD = 9


def _ticket_from_plain(p: list[Any]) -> SessionTicket:
    def ts(x: float) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(float(x), datetime.UTC)

    return SessionTicket(
        age_add=int(p[0]), cipher_suite=CipherSuite(p[1]), not_valid_after=ts(p[2]),
        not_valid_before=ts(p[3]), resumption_secret=bytes(p[4]), server_name=str(p[5]),
        ticket=bytes(p[6]), max_early_data_size=p[7],
        other_extensions=[(int(k), bytes(v)) for k, v in p[8]],
    )


class SessionTicketStore:
    """Client-side store of session tickets, keyed by server name.

    Pass one store to every :func:`connect_quic` call that should resume: the
    first connection earns a ticket, later ones resume with 0-RTT.  With
    ``path``, tickets are also kept in that file across processes; a corrupt or
    unreadable file is ignored (a full handshake follows), never fatal.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self._tickets: dict[str, SessionTicket] = {}
        self._groups: dict[str, int] = {}
        self._path = Path(path) if path is not None else None
        if self._path is not None and self._path.exists():
            try:
                raw = msgpack.unpackb(self._path.read_bytes(), raw=False)
                for name, plain in raw.items():
                    self._tickets[name] = _ticket_from_plain(plain)
                    if len(plain) > _GROUP_FIELD and plain[_GROUP_FIELD] is not None:
                        self._groups[name] = int(plain[_GROUP_FIELD])
            except Exception:  # a damaged cache only costs a full handshake
                self._tickets.clear()
                self._groups.clear()

    def get(self, server_name: str) -> SessionTicket | None:
        ticket = self._tickets.get(server_name)
        if ticket is not None and not ticket.is_valid:
            del self._tickets[server_name]
            return None
        return ticket

    def add(self, ticket: SessionTicket) -> None:
        if ticket.server_name is None:
            return
        self._tickets[ticket.server_name] = ticket
        if self._path is not None:
            self._save()

    def key_share_group(self, server_name: str) -> int | None:
        """The TLS key-share group ``server_name`` chose on the connection that
        earned its ticket, or ``None`` if not known."""
        return self._groups.get(server_name)

    def note_key_share_group(self, server_name: str, group: int | None) -> None:
        """Remember (``None``: forget) the group ``server_name`` chose; saved
        with the next ticket."""
        if group is None:
            self._groups.pop(server_name, None)
        else:
            self._groups[server_name] = group

    def __len__(self) -> int:
        return len(self._tickets)

    def _save(self) -> None:
        assert self._path is not None
        data = msgpack.packb({k: [*_ticket_to_plain(v), self._groups.get(k)]
                              for k, v in self._tickets.items()}, use_bin_type=True)
        self._path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self._path.parent, prefix=".tickets-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(tmp, 0o600)
            os.replace(tmp, self._path)
        except BaseException:
            os.unlink(tmp)
            raise


class _ServerTickets:
    """Tickets a server issued: single use, bounded in number and age."""

    def __init__(self, capacity: int = 20000) -> None:
        self._capacity = capacity
        # ticket bytes -> [SessionTicket, verified identity or None, issued at]
        self._entries: OrderedDict[bytes, list[object]] = OrderedDict()

    def add(self, ticket: SessionTicket, holder: list[object],
            identity: str | None = None) -> None:
        entry: list[object] = [ticket, identity, time.monotonic()]
        self._entries[ticket.ticket] = entry
        holder.append(entry)
        while len(self._entries) > self._capacity:
            self._entries.popitem(last=False)

    def pop(self, label: bytes) -> tuple[SessionTicket, str | None] | None:
        entry = self._entries.pop(label, None)
        if entry is None:
            return None
        ticket = entry[0]
        assert isinstance(ticket, SessionTicket)
        identity = entry[1]
        return ticket, identity if isinstance(identity, str) else None
