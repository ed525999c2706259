"""``midswarm coordinator``, ``midswarm agent`` and ``midswarm status``."""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import signal
import sys
from typing import Any

import trio

from .._util import open_service_nursery, use_batch_scheduling
from ..cli import command
from ..transport import ClientTLS, ConnectionClosed, ServerTLS, SessionTicketStore, converter
from ._config import ConfigError, SwarmConfig, check_composition, load_config
from ._errors import AgentRefused, ClientRefused

log = logging.getLogger("midswarm.swarm")

_EXIT_REFUSED = 3
_EXIT_USAGE = 2


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # aioquic logs every handshake at INFO.
    logging.getLogger("quic").setLevel(max(logging.WARNING, logging.getLogger().level))


def _config(path: str | None) -> SwarmConfig:
    return load_config(path) if path else SwarmConfig()


def _parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _parse_cpus(text: str) -> set[int]:
    parts = [part.strip() for part in text.split(",")]
    if not all(part.isdigit() for part in parts):
        raise argparse.ArgumentTypeError(f"expected CPU ids like 0,2, got {text!r}")
    return {int(part) for part in parts}


def _need(path: str, what: str) -> str:
    if not os.path.isfile(path):
        raise ConfigError(f"{what}: no such file {path!r} (make development certificates with "
                          f"`midswarm certs DIR --agents ...`)")
    return path


# --- midswarm coordinator ---------------------------------------------------------------


def _coordinator_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML config file ([coordinator], [agents], [parameters])")
    p.add_argument("--host", help="address to listen on (default: config, else 127.0.0.1)")
    p.add_argument("--port", type=int, help="UDP port (default: config, else 7400; 0 = any)")
    p.add_argument("--certs", help="directory with ca.pem and coordinator.pem/.key")
    p.add_argument("--store-dir", help="where the pattern library is kept (default: config, "
                                       "else a temporary directory)")
    p.add_argument("--no-client-certs", action="store_true",
                   help="do not require agent certificates (agent ids are then not verified)")
    p.add_argument("--spawn", action="store_true",
                   help="also start the config's [agents] composition as local agent "
                        "processes (their certificates must be in --certs)")
    p.add_argument("--status-interval", type=float, default=10.0,
                   help="seconds between status lines (0: none)")
    p.add_argument("--log-level", default="info")


def _status_line(coord: Any) -> str:
    agents = coord.agents
    connected = [a for a in agents.values() if a.state == "connected"]
    s = coord.stats
    return (f"{len(connected)}/{len(agents)} agents connected; tasks: {s.completed} done, "
            f"{s.failed} failed, {s.resent} re-sent, {s.duplicates} duplicates dropped; "
            f"{s.patterns} patterns; {s.verdicts} verdicts, {s.adaptations_acked} adaptations")


async def _run_coordinator(args: argparse.Namespace, cfg: SwarmConfig) -> int:
    from ._coordinator import open_coordinator
    from ._embed import agent_ids

    certs = args.certs or cfg.certs
    if certs is None:
        raise ConfigError("--certs DIR is required (or coordinator.certs in the config)")
    ca = os.path.join(certs, "ca.pem")
    tls = ServerTLS(_need(os.path.join(certs, "coordinator.pem"), "coordinator certificate"),
                    _need(os.path.join(certs, "coordinator.key"), "coordinator key"),
                    ca=None if args.no_client_certs else _need(ca, "CA certificate"),
                    require_client_cert=not args.no_client_certs)
    host = args.host or cfg.host
    port = cfg.port if args.port is None else args.port
    store_dir = args.store_dir or cfg.store_dir
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with open_coordinator(port=port, host=host, tls=tls, store_dir=store_dir,
                                    config=cfg.coordinator, parameters=cfg.parameters) as coord:
            print(f"coordinator {cfg.coordinator.coordinator_id!r} listening on "
                  f"{coord.host}:{coord.port} (UDP/QUIC, client certificates "
                  f"{'not ' if args.no_client_certs else ''}required)", flush=True)
            if args.spawn:
                ids = agent_ids(check_composition(cfg.agents))
                threads = max(1, (os.cpu_count() or 1) // max(1, len(ids)))
                for agent_id, agent_type in ids.items():
                    await coord.spawn_agent(agent_id, [agent_type], certs, threads=threads)
            async with open_service_nursery() as nursery:
                if args.status_interval > 0:
                    nursery.start_soon(_report_status, coord, args.status_interval)
                async for signum in signals:
                    log.info("signal %d: draining agents and shutting down", signum)
                    nursery.cancel_scope.cancel()
                    break
    return 0


async def _report_status(coord: Any, interval: float) -> None:
    while True:
        await trio.sleep(interval)
        log.info("%s", _status_line(coord))


@command("coordinator", "Run a swarm coordinator that agents connect to over QUIC.",
         _coordinator_args)
def coordinator(args: argparse.Namespace) -> int:
    _setup_logging(args.log_level)
    try:
        cfg = _config(args.config)
        return trio.run(_run_coordinator, args, cfg)
    except (ConfigError, FileNotFoundError) as exc:
        print(f"midswarm coordinator: {exc}", file=sys.stderr)
        return _EXIT_USAGE


# --- midswarm agent -------------------------------------------------------------------


def _peer_args(p: argparse.ArgumentParser, kind: str) -> None:
    """The arguments of a command that connects to a coordinator as ``kind``."""
    p.add_argument("--coordinator", required=True, type=_parse_address, metavar="HOST:PORT",
                   help="the coordinator's address")
    p.add_argument("--id", required=True, dest=f"{kind}_id",
                   help=f"{kind} id (must match the certificate's name)")
    p.add_argument("--certs", required=True,
                   help="directory with ca.pem and <id>.pem/<id>.key")
    p.add_argument("--server-name", default="localhost",
                   help="name the coordinator's certificate must carry (default localhost)")
    p.add_argument("--tickets", metavar="FILE",
                   help="file to keep TLS session tickets in: later connections, in this "
                        "run or the next, resume with 0-RTT")


def _agent_args(p: argparse.ArgumentParser) -> None:
    _peer_args(p, "agent")
    p.add_argument("--types", required=True,
                   help="comma-separated agent types, e.g. pattern_matcher,correlator")
    p.add_argument("--config", help="TOML config file; its [parameters] are local defaults")
    p.add_argument("--no-reconnect", action="store_true",
                   help="exit when the connection is lost instead of reconnecting")
    p.add_argument("--exit-on-stdin-eof", action="store_true",
                   help="exit when stdin closes (used by a parent that spawned this agent)")
    p.add_argument("--cpus", type=_parse_cpus, metavar="LIST",
                   help="run only on these CPUs (comma-separated ids, e.g. 0,2; Linux)")
    p.add_argument("--batch-scheduling", action="store_true",
                   help="run under Linux's SCHED_BATCH policy: never preempt another process "
                        "on waking up (used for agents spawned beside their coordinator)")
    p.add_argument("--log-level", default="info")


def _client_tls(certs: str, ident: str, server_name: str, what: str) -> ClientTLS:
    return ClientTLS(_need(os.path.join(certs, "ca.pem"), "CA certificate"),
                     cert=_need(os.path.join(certs, f"{ident}.pem"), f"{what} certificate"),
                     key=_need(os.path.join(certs, f"{ident}.key"), f"{what} key"),
                     server_name=server_name)


async def _watch_stdin(scope: trio.CancelScope) -> None:
    stream = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    async with stream:
        while await stream.receive_some(4096):
            pass
    log.info("stdin closed: the parent is gone; exiting")
    scope.cancel()


async def _run_agent(args: argparse.Namespace, cfg: SwarmConfig) -> int:
    from ._agent_host import run_agent

    if args.cpus is not None:
        try:
            os.sched_setaffinity(0, args.cpus)
        except (AttributeError, OSError) as exc:
            raise ConfigError(f"--cpus {','.join(map(str, sorted(args.cpus)))}: "
                              f"cannot run on those CPUs ({exc})") from None
    if args.batch_scheduling and not use_batch_scheduling():
        log.info("--batch-scheduling: SCHED_BATCH is not available here; running as usual")
    tls = _client_tls(args.certs, args.agent_id, args.server_name, "agent")
    tickets = SessionTicketStore(args.tickets) if args.tickets else None
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with open_service_nursery() as nursery:
            async def stop_on_signal() -> None:
                async for signum in signals:
                    log.info("signal %d: stopping", signum)
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(stop_on_signal)
            if args.exit_on_stdin_eof:
                nursery.start_soon(_watch_stdin, nursery.cancel_scope)
            await run_agent(args.coordinator, args.agent_id, args.types, tls=tls,
                            parameters=cfg.parameters, session_tickets=tickets,
                            reconnect=not args.no_reconnect)
            nursery.cancel_scope.cancel()
    return 0


@command("agent", "Run an agent: connect to a coordinator and host actors of the given types.",
         _agent_args)
def agent(args: argparse.Namespace) -> int:
    _setup_logging(args.log_level)
    try:
        cfg = _config(args.config)
        return trio.run(functools.partial(_run_agent, args, cfg))
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"midswarm agent: {exc}", file=sys.stderr)
        return _EXIT_USAGE
    except AgentRefused as exc:
        print(f"midswarm agent: {exc}", file=sys.stderr)
        return _EXIT_REFUSED
    except ConnectionError as exc:
        print(f"midswarm agent: {exc}", file=sys.stderr)
        return 1


# --- midswarm status ------------------------------------------------------------------


def _status_args(p: argparse.ArgumentParser) -> None:
    _peer_args(p, "client")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def _format_status(report: Any) -> str:
    lines = [f"coordinator {report.coordinator_id!r}: {_status_line(report)}"]
    for agent_id, info in sorted(report.agents.items()):
        busy = sum(info.in_flight.values())
        lines.append(f"  {agent_id:<16} {info.state:<12} {','.join(info.types):<32} "
                     f"in flight {busy}, done {info.completed}, failed {info.failed}, "
                     f"sessions {info.sessions}, restarts {info.restarts}")
    return "\n".join(lines)


async def _run_status(args: argparse.Namespace) -> int:
    from ._client import connect_coordinator

    tls = _client_tls(args.certs, args.client_id, args.server_name, "client")
    tickets = SessionTicketStore(args.tickets) if args.tickets else None
    async with connect_coordinator(args.coordinator, args.client_id, tls=tls,
                                   session_tickets=tickets) as client:
        report = await client.status()
    if args.json:
        print(json.dumps(converter.unstructure(report), indent=2, sort_keys=True))
    else:
        print(_format_status(report))
    return 0


@command("status", "Ask a running coordinator for its agents and counters (as a client).",
         _status_args)
def status(args: argparse.Namespace) -> int:
    _setup_logging("warning")
    try:
        return trio.run(_run_status, args)
    except (ConfigError, FileNotFoundError) as exc:
        print(f"midswarm status: {exc}", file=sys.stderr)
        return _EXIT_USAGE
    except ClientRefused as exc:
        print(f"midswarm status: {exc}", file=sys.stderr)
        return _EXIT_REFUSED
    except (ConnectionError, ConnectionClosed, TimeoutError) as exc:
        print(f"midswarm status: {exc}", file=sys.stderr)
        return 1
