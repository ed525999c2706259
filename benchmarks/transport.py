"""Side-by-side transport benchmark: midswarm QUIC vs aioquic asyncio, trio-websocket, Trio TCP.

Run from the repository root::

    python benchmarks/transport.py            # everything, a few minutes
    python benchmarks/transport.py --quick    # smoke run, everything shrunk
    python benchmarks/transport.py --only rtt,bulk --agents 200

Every measurement runs the server and the client in separate processes on
loopback (``_transport_peer.py``); this script only starts them, relays the
staging commands of the many-agents section and prints one table.  Sections:

``rtt``        400-byte request/reply on one stream or connection: p50, p99, and the
               CPU time client and server spent per round trip (Linux: both
               processes' threads, from /proc/PID/task/*/schedstat), which a
               busy host moves far less than it moves latency.  midswarm runs
               twice: with its defaults, and with busy polling off
               (``QuicConfig(busy_poll=0)``, both ends), which shows what that
               wait strategy buys; the peers block in the kernel as shipped.
``bulk``       one stream, client sends N MiB, server acknowledges the count: MB/s
               (QUIC at several ``max_datagram_size`` values).
``handshake``  connect -> first reply, fresh connections: full handshake, and for
               QUIC 0-RTT resumption with a session ticket (the two take turns
               against one server), and the ratio of their medians; midswarm
               also with mutual TLS (a client certificate, as the swarm's agents
               connect), against a server that requires and verifies one.
``agents``     many concurrent connections (default 1000, from 2 client processes)
               each doing 10 request/replies: handshakes/s, round trips/s, server
               memory per idle connection (VmRSS delta / connections).
``streams``    1000 concurrent mailboxes on one connection (QUIC: a stream each;
               TCP/WebSocket: multiplexed by a 4-byte id prefix), 20 round trips each.
``hol``        head-of-line blocking: the ``streams`` workload (100 mailboxes x 100)
               inside a network namespace that drops 2 % of packets (root, ``ip``
               and ``iptables`` needed; otherwise the section is skipped).

Only medians and percentiles are reported: these machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _transport_common import CLIENT_ID, KINDS, positive_int, rss_kib  # noqa: E402
from _transport_harness import (  # noqa: E402
    Bench,
    NamespaceUnavailable,
    PeerProcess,
    drops_since,
    lossy_namespace,
    netns_problem,
    udp_receive_drops,
)

SECTIONS = ("rtt", "bulk", "handshake", "agents", "streams", "hol")
QUIC_KINDS = ("midswarm", "aioquic")


# --- sections ------------------------------------------------------------------------

def with_midswarm_variant(kinds: tuple[str, ...], label: str, extra: dict[str, Any]
                          ) -> list[tuple[str, str, dict[str, Any]]]:
    """``(kind, label, extra params)`` runs of a section: each peer as shipped,
    and midswarm once more right after itself with ``extra`` given to its
    server and client, its rows tagged ``label``."""
    runs: list[tuple[str, str, dict[str, Any]]] = [(kind, "", {}) for kind in kinds]
    if "midswarm" in kinds:
        runs.insert(kinds.index("midswarm") + 1, ("midswarm", label, extra))
    return runs


def section_rtt(b: Bench, s: dict[str, Any]) -> None:
    params = {"size": 400, "warmup": s["rtt_warmup"], "count": s["rtt_count"],
              "time_limit": 60}
    # midswarm a second time with busy polling off (server and client), to show
    # what that wait strategy buys: the peers block in the kernel as they come.
    for kind, label, extra in with_midswarm_variant(b.kinds, ", busy_poll=0",
                                                    {"busy_poll": 0}):
        def run(kind: str = kind, extra: dict[str, Any] = extra) -> dict[str, Any]:
            with b.server(kind, extra) as (port, srv):
                return b.client(kind, "rtt", port, {**params, **extra, "server_pid": srv.pid})
        r = b.attempt(f"rtt {kind}{label}", run)
        if r is None:
            continue
        if r["timed_out"]:
            b.notes.append(f"rtt {kind}{label}: time limit hit after {r['count']} round trips")
        b.put(f"RTT 400 B{label}, p50 (us)", kind, r["p50_us"], higher_better=False)
        b.put(f"RTT 400 B{label}, p99 (us)", kind, r["p99_us"], higher_better=False)
        if "us_per_round_trip" in r:
            b.put(f"RTT 400 B{label}, CPU both sides (us)", kind, r["us_per_round_trip"],
                  higher_better=False)


def section_bulk(b: Bench, s: dict[str, Any]) -> None:
    sizes = s["datagram_sizes"]
    last = f"bulk 1 stream, datagram {sizes[-1]} (MB/s)"
    for kind in b.kinds:
        runs = [(size, f"bulk 1 stream, datagram {size} (MB/s)") for size in sizes] \
            if kind in QUIC_KINDS else [(None, last)]
        for size, row in runs:
            params: dict[str, Any] = {"mib": s["bulk_mib"], "time_limit": 60}
            if size is not None:
                params["max_datagram"] = size

            def run(kind: str = kind, params: dict[str, Any] = params) -> dict[str, Any]:
                with b.server(kind, params) as (port, _):
                    return b.client(kind, "bulk", port, params)
            r = b.attempt(f"bulk {kind} {size or ''}", run)
            if r is None:
                continue
            b.put(row, kind, "timeout" if r["timed_out"] else r["mb_per_s"],
                  higher_better=True)
    b.notes.append(f"bulk: {s['bulk_mib']} MiB in 64 KiB messages, MB = 10^6 bytes; "
                   "TCP and WebSocket have no datagram size (loopback MTU 65536): "
                   "shown on the last bulk row.")


def section_handshake(b: Bench, s: dict[str, Any]) -> None:
    count = s["handshakes"]
    # The swarm's own connections use mutual TLS (an agent proves its id with
    # a certificate); a resumed one skips both certificates.  Only midswarm
    # runs it: aioquic's server can ask for a client certificate (a switch
    # its code calls test-only) but does not verify it.
    for kind, label, extra in with_midswarm_variant(b.kinds, ", mutual TLS",
                                                  {"mutual_tls": True}):
        modes = ["full", "resumed"] if kind in QUIC_KINDS else ["full"]
        params = {"count": count, "modes": modes, "time_limit": 60, **extra}

        def run(kind: str = kind, params: dict[str, Any] = params,
                extra: dict[str, Any] = extra) -> dict[str, Any]:
            with b.server(kind, extra) as (port, _):
                return b.client(kind, "handshake", port, params)
        r = b.attempt(f"handshake {kind}{label}", run)
        if r is None:
            continue
        for mode in modes:
            what = "full handshake" if mode == "full" else "0-RTT resumed"
            b.put(f"connect->first reply, {what}{label}, p50 (ms)", kind,
                  r[mode]["p50_us"] / 1000, higher_better=False)
        if kind in QUIC_KINDS:
            b.put(f"0-RTT resumed / full handshake{label}, p50s", kind,
                  r["resumed"]["p50_us"] / r["full"]["p50_us"], higher_better=False)
            for mode in modes:
                b.notes.append(
                    f"handshake {kind}{label} {mode}: {r[mode]['connections']} connections, "
                    f"{r[mode]['resumed']} resumed, {r[mode]['early_data']} with 0-RTT "
                    "data accepted")
    b.notes.append("handshake: full and resumed connections take turns against one server "
                   "(one of each per round), so a drifting load hits both alike; TCP and "
                   "WebSocket run without TLS (plain ws://): they are a floor, not a "
                   "like-for-like peer.  Mutual TLS (the swarm's agents): midswarm only; "
                   "aioquic's server does not verify client certificates.")


def _agents_run(b: Bench, kind: str, s: dict[str, Any]) -> dict[str, Any]:
    n, procs = s["agents"], s["agent_procs"]
    per = [n // procs + (1 if i < n % procs else 0) for i in range(procs)]
    # Per stage (connect, round trips, close); an overloaded server makes QUIC
    # clients back off for seconds, and the partial counts are then reported.
    limit = float(s["agent_stage_limit"])
    params = {"rounds": 10, "size": 400, "time_limit": limit, "handshake_timeout": limit}
    with b.server(kind, {}) as (port, srv):
        time.sleep(0.5)
        base = rss_kib(srv.pid)
        clients = [PeerProcess(["client", kind, "agents", str(port), b.certs,
                                json.dumps({**params, "n": k})]) for k in per if k]
        try:
            for c in clients:
                c.expect("READY", 60)
            drops = udp_receive_drops()
            for c in clients:
                c.send("go")
            connected = [c.expect("CONNECTED", limit + 30) for c in clients]
            connect_drops = drops_since(drops)
            drops = udp_receive_drops()
            for c in clients:
                c.send("go")
            idle = [c.expect("IDLE", limit + 30) for c in clients]
            message_drops = drops_since(drops)
            time.sleep(0.5)
            idle_rss = rss_kib(srv.pid)
            for c in clients:
                c.send("close")
            results = [c.expect("RESULT", limit + 30) for c in clients]
        finally:
            for c in clients:
                c.stop()
    n_conn = sum(c["connected"] for c in connected)
    failed = sum(r["failed"] for r in results)
    failures = [f for r in results for f in r["failures"]]
    round_trips = sum(i["round_trips"] for i in idle)
    hs_span = max(c["t1"] for c in connected) - min(c["t0"] for c in connected)
    msg_span = max(i["t3"] for i in idle) - min(i["t2"] for i in idle)
    return {"connected": n_conn, "failed": failed, "failures": failures[:3],
            "handshakes_per_s": n_conn / hs_span if hs_span > 0 else None,
            "round_trips_per_s": round_trips / msg_span if msg_span > 0 else None,
            "round_trips": round_trips, "expected": n_conn * 10,
            "kib_per_conn": (idle_rss - base) / n_conn if n_conn else None,
            "p99_us": max(i["p99_us"] for i in idle),
            "drops": (connect_drops, message_drops)}


def section_agents(b: Bench, s: dict[str, Any]) -> None:
    n = s["agents"]
    for kind in b.kinds:
        r = b.attempt(f"agents {kind}", _agents_run, b, kind, s)
        if r is None:
            continue
        b.put(f"{n} agents: handshakes/s", kind, r["handshakes_per_s"], higher_better=True)
        b.put(f"{n} agents: round trips/s (10 each)", kind, r["round_trips_per_s"],
              higher_better=True)
        b.put(f"{n} agents: server KiB per idle connection", kind, r["kib_per_conn"],
              higher_better=False)
        connect_drops, message_drops = r["drops"]
        if kind in QUIC_KINDS and (connect_drops or message_drops):
            b.notes.append(f"agents {kind}: UDP datagrams dropped on full receive buffers "
                           f"(system-wide counter): {connect_drops} while connecting, "
                           f"{message_drops} during the round trips; p99 round trip "
                           f"{r['p99_us'] / 1e3:.0f} ms")
        if r["failed"] or r["connected"] < n or r["round_trips"] < r["expected"]:
            b.notes.append(f"agents {kind}: {r['connected']}/{n} connected, "
                           f"{r['round_trips']}/{r['expected']} round trips, "
                           f"{r['failed']} failed {r['failures']}")
    b.notes.append(f"agents: {n} connections from {s['agent_procs']} client processes, "
                   "opened all at once; memory = server VmRSS after the round trips "
                   "minus before the first connection, divided by connections.")


def _mailboxes(b: Bench, s: dict[str, Any], label: str, n: int, rounds: int,
               netns: str | None, limit: float) -> None:
    params = {"n": n, "rounds": rounds, "size": 400, "time_limit": limit}
    for kind in b.kinds:
        def run(kind: str = kind) -> dict[str, Any]:
            with b.server(kind, {}, netns) as (port, _):
                return b.client(kind, "mailboxes", port, params, netns)
        r = b.attempt(f"{label} {kind}", run)
        if r is None:
            continue
        b.put(f"{label}: round trips/s", kind, r["msgs_per_s"], higher_better=True)
        b.put(f"{label}: p50 (ms)", kind, r["p50_us"] / 1000, higher_better=False)
        b.put(f"{label}: p99 (ms)", kind, r["p99_us"] / 1000, higher_better=False)
        if r["timed_out"] or r["count"] < r["expected"]:
            b.notes.append(f"{label} {kind}: time limit {limit:.0f} s hit, "
                           f"{r['count']}/{r['expected']} round trips done")


def section_streams(b: Bench, s: dict[str, Any]) -> None:
    n = s["streams"]
    _mailboxes(b, s, f"{n} mailboxes on 1 conn", n, s["stream_rounds"], None, 20.0)
    b.notes.append("mailboxes: QUIC = one stream per mailbox (aioquic keeps its default "
                   "limit of 128 concurrent peer-opened streams, so the rest wait); "
                   "TCP/WebSocket = mailboxes multiplexed on one connection by id prefix.")


def section_hol(b: Bench, s: dict[str, Any]) -> None:
    loss = s["loss"]
    n, rounds = s["hol_mailboxes"], s["hol_rounds"]
    problem = netns_problem()
    if problem is None:
        try:
            with lossy_namespace(loss) as netns:
                _mailboxes(b, s, f"HOL {loss:.0%} loss, {n} mailboxes", n, rounds,
                           netns, 60.0)
        except NamespaceUnavailable as exc:
            problem = str(exc)
    if problem is not None:
        line = f"SKIPPED hol (head-of-line blocking under loss): {problem}"
        print(line, file=sys.stderr, flush=True)
        b.notes.append(line)
        return
    b.notes.append(f"hol: {n} mailboxes x {rounds} request/replies of 400 B in a network "
                   f"namespace dropping {loss:.0%} of packets (iptables statistic match "
                   "on lo); QUIC: a stream each, TCP/WebSocket: multiplexed.")


RUNNERS = {"rtt": section_rtt, "bulk": section_bulk, "handshake": section_handshake,
           "agents": section_agents, "streams": section_streams, "hol": section_hol}


# --- output --------------------------------------------------------------------------

def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def render(b: Bench) -> str:
    kinds = b.kinds
    peers = [k for k in kinds if k != "midswarm"]
    head = ["metric", *kinds, *[f"{p}/ms" for p in peers]] if "midswarm" in kinds \
        else ["metric", *kinds]
    body: list[list[str]] = []
    for row, values in b.rows.items():
        cells = [row, *[_fmt(values.get(k)) for k in kinds]]
        if "midswarm" in kinds:
            ours = values.get("midswarm")
            for p in peers:
                theirs = values.get(p)
                if isinstance(ours, (int, float)) and isinstance(theirs, (int, float)) \
                        and ours > 0 and theirs > 0:
                    ratio = ours / theirs if b.higher_is_better[row] else theirs / ours
                    cells.append(f"{ratio:.2f}")
                else:
                    cells.append("-")
        body.append(cells)
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(r, widths, strict=True)))
             for r in [head, *body]]
    rule = "-" * len(lines[0])
    return "\n".join([lines[0], rule, *lines[1:]])


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _git_revision() -> str:
    try:
        root = os.path.dirname(HERE)
        rev = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--",
                                "midswarm/transport"], capture_output=True, text=True,
                               check=True).stdout.strip()
        return rev + (" (midswarm/transport modified)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def settings(args: argparse.Namespace) -> dict[str, Any]:
    if args.quick:
        s = {"rtt_warmup": 50, "rtt_count": 300, "bulk_mib": 4,
             "datagram_sizes": [1452, 16383], "handshakes": 5, "agents": 100,
             "streams": 100, "stream_rounds": 5, "hol_mailboxes": 20, "hol_rounds": 20}
    else:
        s = {"rtt_warmup": 300, "rtt_count": 3000, "bulk_mib": 32,
             "datagram_sizes": [1452, 9000, 16383], "handshakes": 30, "agents": 1000,
             "streams": 1000, "stream_rounds": 20, "hol_mailboxes": 100, "hol_rounds": 100}
    for key in ("agents", "streams", "handshakes"):
        if getattr(args, key) is not None:
            s[key] = getattr(args, key)
    if args.datagram_sizes is not None:
        s["datagram_sizes"] = args.datagram_sizes
    s["agent_procs"] = args.agent_procs
    s["agent_stage_limit"] = 10.0 if args.quick else 30.0
    s["loss"] = args.loss
    return s


def _csv(choices: tuple[str, ...], what: str) -> Any:
    def parse(text: str) -> tuple[str, ...]:
        items = tuple(x.strip() for x in text.split(",") if x.strip())
        bad = [x for x in items if x not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(
                f"unknown {what} {bad or text!r}; choose from {','.join(choices)}")
        return items
    return parse


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from None
    bad = [x for x in sizes if not 1200 <= x <= 65527]
    if bad or not sizes:
        raise argparse.ArgumentTypeError(
            f"datagram sizes must be between 1200 and 65527, got {bad or text!r}")
    return sizes


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="shrink everything (smoke run)")
    ap.add_argument("--only", type=_csv(SECTIONS, "section"), default=SECTIONS,
                    help=f"comma-separated sections: {','.join(SECTIONS)}")
    ap.add_argument("--peers", type=_csv(KINDS, "peer"), default=KINDS,
                    help=f"comma-separated peers: {','.join(KINDS)}")
    ap.add_argument("--agents", type=positive_int, default=None,
                    help="concurrent connections in the agents section (default 1000)")
    ap.add_argument("--handshakes", type=positive_int, default=None,
                    help="connections of each kind in the handshake section (default 30)")
    ap.add_argument("--agent-procs", type=positive_int, default=2,
                    help="client processes sharing the agents (default 2)")
    ap.add_argument("--streams", type=positive_int, default=None,
                    help="concurrent mailboxes in the streams section (default 1000)")
    ap.add_argument("--datagram-sizes", type=_sizes, default=None,
                    help="comma-separated QUIC max_datagram_size values for the bulk "
                         "section (default 1452,9000,16383; aioquic builds broken packets "
                         "above 16383)")
    ap.add_argument("--loss", type=float, default=0.02,
                    help="packet drop probability in the hol section (default 0.02)")
    args = ap.parse_args(argv)
    if not 0 < args.loss < 1:
        ap.error(f"--loss must be between 0 and 1, got {args.loss}")
    s = settings(args)
    kinds = tuple(k for k in KINDS if k in args.peers)

    from midswarm.transport import make_dev_certs

    print(f"midswarm transport benchmark  {datetime.datetime.now().isoformat(' ', 'seconds')}")
    print(f"platform {platform.platform()}  cpus {os.cpu_count()}  "
          f"python {platform.python_version()}")
    print(f"aioquic {_version('aioquic')}  trio {_version('trio')}  "
          f"trio-websocket {_version('trio-websocket')}  midswarm git {_git_revision()}")
    print(f"mode {'quick' if args.quick else 'full'}  sections {','.join(args.only)}  "
          f"loopback, server and client in separate processes")
    sys.stdout.flush()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="msbench-") as tmp:
        certs = str(make_dev_certs(tmp, agents=[CLIENT_ID]))
        bench = Bench(certs, kinds)
        spent: list[str] = []
        for section in SECTIONS:
            if section in args.only:
                print(f"  running {section} ...", file=sys.stderr, flush=True)
                t0 = time.monotonic()
                RUNNERS[section](bench, s)
                spent.append(f"{section} {time.monotonic() - t0:.0f} s")
    print()
    print("ratio columns (<peer>/ms): how many times better midswarm is than that peer;"
          " > 1 = midswarm better.")
    print("  latency and memory rows: peer / midswarm;  rate rows: midswarm / peer.")
    print()
    print(render(bench))
    print()
    for note in bench.notes:
        print(f"* {note}")
    print(f"\ntotal time {time.monotonic() - started:.0f} s ({', '.join(spent)})")


if __name__ == "__main__":
    main()
