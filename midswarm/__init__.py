"""midswarm: a swarm of time-series agents coordinated over QUIC, on Trio.

The subpackages are usable on their own:

* :mod:`midswarm.transport` — QUIC on Trio (aioquic's sans-I/O core), message
  framing, the wire codec, TLS certificates, an in-memory transport;
* :mod:`midswarm.actors` — supervised Trio actors (OTP strategies) whose
  mailboxes can be bound to streams;
* :mod:`midswarm.kernels` — DTW, exact DTW k-NN search, LCSS, features, a small
  MLP, influence ranking (numba/numpy/scipy);
* :mod:`midswarm.reasoning` — ReasoningBank and PatternStore on SQLite;
* :mod:`midswarm.swarm` — coordinator, agents, the five agent behaviours,
  :func:`open_swarm`, the demo.

The most used names are available here too.  They are imported on first use,
so ``import midswarm`` stays cheap (the kernels pull in numba).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "transport": ("serve_quic", "connect_quic", "MessageStream", "QuicConfig", "ServerTLS",
                  "ClientTLS", "SessionTicketStore", "make_dev_certs", "memory_connection_pair",
                  "ProtocolError", "ConnectionClosed"),
    "actors": ("Actor", "ActorRef", "ChildSpec", "Backoff", "open_supervisor", "serve_actor",
               "remote_ref", "ActorFailed", "AskTimeout"),
    "kernels": ("dtw", "dtw_matrix", "dtw_knn", "lcss", "lcss_matrix", "features",
                "influence_rank"),
    "reasoning": ("PatternStore", "ReasoningBank", "Experience", "Verdict",
                  "AdaptationCommand"),
    "swarm": ("open_coordinator", "open_swarm", "run_agent", "Coordinator", "Swarm"),
}
_WHERE = {name: package for package, names in _EXPORTS.items() for name in names}

__all__ = ["__version__", *sorted(_WHERE)]


def __getattr__(name: str) -> Any:
    package = _WHERE.get(name)
    if package is None:
        raise AttributeError(f"module 'midswarm' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"midswarm.{package}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
