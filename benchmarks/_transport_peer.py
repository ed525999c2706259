"""Process entry point of the transport benchmark's servers and clients.

    python _transport_peer.py server KIND CERTS PARAMS_JSON
    python _transport_peer.py client KIND SECTION PORT CERTS PARAMS_JSON

A server prints ``PORT {"port": N}`` once listening and runs until its stdin is
closed.  A client runs one section and prints ``RESULT {...}`` (the ``agents``
section also prints intermediate lines and reads commands from stdin).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

from _transport_common import KINDS, emit


def _server(kind: str, certs: str, params: dict[str, Any]) -> None:
    if kind == "aioquic":
        import _transport_aioquic

        asyncio.run(_transport_aioquic.serve_until_stdin_closes(certs, params))
        return
    import _transport_trio
    import trio

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(_transport_trio.serve, kind, certs, params)
            emit("PORT", {"port": port})
            stdin = trio.lowlevel.FdStream(os.dup(0))
            while await stdin.receive_some(4096):
                pass
            nursery.cancel_scope.cancel()

    trio.run(main)


def _client(kind: str, section: str, port: int, certs: str, params: dict[str, Any]) -> None:
    if kind == "aioquic":
        import _transport_aioquic as peer

        if section == "agents":
            asyncio.run(peer.run_agents(port, certs, params))
        else:
            emit("RESULT", asyncio.run(peer.CLIENT_SECTIONS[section](port, certs, params)))
        return
    import _transport_trio as trio_peer
    import trio

    if section == "agents":
        trio.run(trio_peer.run_agents, kind, port, certs, params)
    else:
        emit("RESULT", trio.run(trio_peer.CLIENT_SECTIONS[section], kind, port, certs, params))


def main(argv: list[str]) -> None:
    if len(argv) >= 1 and argv[0] == "server" and len(argv) == 4:
        _, kind, certs, params = argv
        if kind not in KINDS:
            raise SystemExit(f"unknown kind {kind!r}; expected one of {KINDS}")
        _server(kind, certs, json.loads(params))
    elif len(argv) >= 1 and argv[0] == "client" and len(argv) == 6:
        _, kind, section, port, certs, params = argv
        if kind not in KINDS:
            raise SystemExit(f"unknown kind {kind!r}; expected one of {KINDS}")
        _client(kind, section, int(port), certs, json.loads(params))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
