"""The ``midswarm`` command line.

Subcommands register themselves in :data:`COMMANDS` so that each subpackage
keeps its own command code; this module only parses and dispatches.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Callable, Sequence

__all__ = ["main", "COMMANDS", "command"]

#: name -> (help, add_arguments, run)
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None],
                          Callable[[argparse.Namespace], int]]] = {}


def command(name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None]
            ) -> Callable[[Callable[[argparse.Namespace], int]],
                          Callable[[argparse.Namespace], int]]:
    """Register a subcommand."""

    def register(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        COMMANDS[name] = (help, add_arguments, run)
        return run

    return register


def _load_commands() -> None:
    # Importing registers the commands.
    from .transport import _cli as _transport_cli  # noqa: F401
    for name in ("midswarm.swarm._cli", "midswarm.swarm._demo_cli"):
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name)


def main(argv: Sequence[str] | None = None) -> int:
    _load_commands()
    parser = argparse.ArgumentParser(
        prog="midswarm", description="A swarm of time-series agents over QUIC, on Trio.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, add_arguments, _) in sorted(COMMANDS.items()):
        add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return COMMANDS[args.command][2](args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
