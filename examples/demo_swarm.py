"""The demo swarm from Python: agent processes over QUIC on loopback.

Equivalent to ``midswarm demo``: starts a coordinator and one process per
agent (mutual TLS with throw-away development certificates), replays a
synthetic market through them for ``--duration`` seconds, printing a status
line every second and a summary at the end -- including how the pattern
matcher's forecasts did with the learning loop on and off, whatever that shows.

Run it with ``python examples/demo_swarm.py --duration 20``.
"""

from __future__ import annotations

import argparse

import trio

from midswarm.swarm import DemoOptions, run_demo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of replay")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic market")
    parser.add_argument("--spawn", choices=("process", "task"), default="process")
    args = parser.parse_args()
    options = DemoOptions(duration=args.duration, seed=args.seed, spawn=args.spawn,
                          agents={"pattern_matcher": 2, "feature_engineer": 1,
                                  "neural_trainer": 2, "correlator": 1, "reasoning_bank": 1})
    summary = trio.run(run_demo, options)
    on = [arm for arm in summary.arms if arm.name == "learning on"]
    if on and on[0].forecasts:
        print(f"(returned as data too: learning-on hit-rate {on[0].hit_rate:.3f})")


if __name__ == "__main__":
    main()
