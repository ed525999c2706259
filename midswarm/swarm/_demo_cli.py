"""``midswarm demo``: replay a market through a live swarm (see :mod:`._demo`)."""

from __future__ import annotations

import argparse
import logging
import sys

import trio

from ..cli import command
from ._config import ConfigError, load_config
from ._demo import DemoOptions, run_demo
from ._market import MarketDataError
from ._protocol import AGENT_TYPES

_EXIT_USAGE = 2


def parse_agents(text: str) -> dict[str, int]:
    """``"pattern_matcher=3,neural_trainer=2"`` -> ``{"pattern_matcher": 3, ...}``.

    Types not named get 0 agents.  Raises :class:`argparse.ArgumentTypeError`
    naming the bad entry.
    """
    out: dict[str, int] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, sep, count = item.partition("=")
        name = name.strip()
        if not sep or not count.strip().isdigit():
            raise argparse.ArgumentTypeError(
                f"expected TYPE=COUNT, got {item!r}")
        if name not in AGENT_TYPES:
            raise argparse.ArgumentTypeError(
                f"unknown agent type {name!r} (known: {', '.join(AGENT_TYPES)})")
        out[name] = int(count)
    if not out:
        raise argparse.ArgumentTypeError("no TYPE=COUNT given")
    return {t: out.get(t, 0) for t in AGENT_TYPES}


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number of seconds > 0, got {text!r}")
    return value


def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--duration", type=_seconds, default=20.0,
                   help="seconds of replay once the swarm is up (default 20)")
    p.add_argument("--data", metavar="FILE.csv",
                   help="bars to replay: a CSV file with a header naming timestamp, open, "
                        "high, low, close, volume and optionally asset (default: a "
                        "synthetic market)")
    p.add_argument("--skip-bad-rows", action="store_true",
                   help="leave out bad CSV rows (listed by line) instead of refusing the file")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic market and MLP")
    p.add_argument("--config", metavar="FILE.toml",
                   help="swarm config ([coordinator], [agents], [parameters])")
    p.add_argument("--agents", type=parse_agents, metavar="TYPE=N,...",
                   help="composition, e.g. pattern_matcher=2,feature_engineer=1,"
                        "neural_trainer=2,correlator=1,reasoning_bank=1")
    p.add_argument("--no-learning", action="store_true",
                   help="no learning loop: run only the fixed-parameter arm, report no outcomes")
    p.add_argument("--spawn", choices=("process", "task"), default="process",
                   help="agents as processes over QUIC on loopback (default) or as tasks "
                        "of this process over the in-memory transport")
    p.add_argument("--status-interval", type=_seconds, default=1.0,
                   help="seconds between status lines (default 1)")
    p.add_argument("--assets", type=int, default=3, help="synthetic assets (default 3)")
    p.add_argument("--bars", type=int, default=6000, help="synthetic bars per asset")
    p.add_argument("--store-dir", help="keep the pattern library, ReasoningBank and agent logs "
                                       "here (default: a temporary directory, kept when "
                                       "agents are processes)")
    p.add_argument("--verbose", action="store_true",
                   help="show every log line of the agents and coordinator (default: only "
                        "warnings and errors; agent processes log to agents.log in the store "
                        "directory)")


def _setup_logging(verbose: bool) -> None:
    # The same format as agent processes (midswarm agent), so lines read alike.
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # aioquic logs every handshake at INFO.
    logging.getLogger("quic").setLevel(logging.WARNING)


@command("demo", "Replay a market through a live swarm: pattern matching, the learning loop, "
                 "online training, strategy correlation.", _demo_args)
def demo(args: argparse.Namespace) -> int:
    _setup_logging(args.verbose)
    try:
        config = load_config(args.config) if args.config else None
        options = DemoOptions(
            duration=args.duration, seed=args.seed, data=args.data,
            skip_bad_rows=args.skip_bad_rows, agents=args.agents,
            learning=not args.no_learning, spawn=args.spawn, config=config,
            status_interval=args.status_interval, assets=args.assets, bars=args.bars,
            store_dir=args.store_dir, verbose=args.verbose)
        trio.run(run_demo, options)
    except (MarketDataError, ConfigError, ValueError, OSError) as exc:
        print(f"midswarm demo: {exc}", file=sys.stderr)
        return _EXIT_USAGE
    return 0
