"""The swarm core over real QUIC in one process (agents as tasks with their own
certificates), the coordinator command, and config files."""

from __future__ import annotations

import functools
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio
from _helpers import coordinator_process

from midswarm.actors import Actor
from midswarm.swarm import (
    ConfigError,
    CoordinatorConfig,
    FeatureBlock,
    FeatureTask,
    SwarmConfig,
    load_config,
    open_coordinator,
    run_agent,
)
from midswarm.transport import ClientTLS, ServerTLS, SessionTicketStore


class Doubler(Actor):
    def __init__(self, agent_id: str, parameters: dict[str, Any]) -> None:
        self.agent_id = agent_id

    async def handle(self, msg: Any) -> Any:
        return FeatureBlock(names=[self.agent_id], values=np.asarray(msg.ohlcv) * 2)


def server_tls(certs: Path) -> ServerTLS:
    return ServerTLS(certs / "coordinator.pem", certs / "coordinator.key", ca=certs / "ca.pem",
                     require_client_cert=True)


def client_tls(certs: Path, agent: str) -> ClientTLS:
    return ClientTLS(certs / "ca.pem", cert=certs / f"{agent}.pem", key=certs / f"{agent}.key")


async def test_agent_reconnects_with_0rtt_resumption_over_quic(certs: Path) -> None:
    cfg = CoordinatorConfig(heartbeat_interval=0.5, heartbeat_timeout=5.0)
    async with open_coordinator(tls=server_tls(certs), config=cfg) as coord, \
            trio.open_nursery() as nursery:
        tickets = SessionTicketStore()
        assert coord.port is not None
        await nursery.start(functools.partial(
            run_agent, ("127.0.0.1", coord.port), "a1", ["feature_engineer"],
            tls=client_tls(certs, "a1"), factories={"feature_engineer": Doubler},
            session_tickets=tickets))
        await coord.wait_for_agents(["a1"], timeout=10)
        assert not coord.agents["a1"].resumed
        assert len(tickets) == 1
        block = await coord.submit(FeatureTask(ohlcv=np.ones((2, 5))))
        assert block.names == ["a1"] and block.values[0, 0] == 2

        session = coord._records["a1"].session
        assert session is not None
        session.end("test: the coordinator drops the connection")
        with trio.fail_after(20):
            while True:
                seen = coord.generation
                info = coord.agents["a1"]
                if info.sessions == 2 and info.state == "connected":
                    break
                await coord.wait_for_change(seen)
        # The identity came from the resumed ticket and still matched the hello.
        assert coord.agents["a1"].resumed
        conn = coord._records["a1"].session.conn  # type: ignore[union-attr]
        assert conn.early_data_accepted
        assert (await coord.submit(FeatureTask(ohlcv=np.ones((1, 5))))).names == ["a1"]
        await coord.shutdown()


async def test_agent_outlives_its_coordinator_and_joins_the_next_one(certs: Path) -> None:
    cfg = CoordinatorConfig(heartbeat_interval=0.2, heartbeat_timeout=2.0)
    port = 0
    async with trio.open_nursery() as nursery:
        with trio.CancelScope() as first:
            async with open_coordinator(tls=server_tls(certs), config=cfg) as coord:
                assert coord.port is not None
                port = coord.port
                await nursery.start(functools.partial(
                    run_agent, ("127.0.0.1", port), "a1", ["feature_engineer"],
                    tls=client_tls(certs, "a1"), factories={"feature_engineer": Doubler}))
                await coord.wait_for_agents(["a1"], timeout=10)
                first.cancel()  # the coordinator goes away without a drain
        # A new coordinator on the same port: the agent finds it by itself.
        async with open_coordinator(port=port, tls=server_tls(certs), config=cfg) as coord:
            await coord.wait_for_agents(["a1"], timeout=30)
            block = await coord.submit(FeatureTask(ohlcv=np.ones((1, 5))))
            assert block.names == ["a1"]
        # That coordinator drained it on the way out: the agent returned.


async def test_agent_without_a_valid_certificate_never_gets_a_session(
        certs: Path, tmp_path: Path) -> None:
    from midswarm.transport import make_dev_certs

    other = make_dev_certs(tmp_path / "other-ca", agents=["a1"])
    async with open_coordinator(tls=server_tls(certs)) as coord:
        assert coord.port is not None
        with pytest.raises(ConnectionError):
            await run_agent(("127.0.0.1", coord.port), "a1", ["feature_engineer"],
                            tls=ClientTLS(certs / "ca.pem", cert=other / "a1.pem",
                                          key=other / "a1.key"),
                            factories={"feature_engineer": Doubler}, reconnect=False)
        assert coord.agents == {}


def test_config_file_round_trip_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "swarm.toml"
    path.write_text("""
[coordinator]
port = 7411
certs = "certs"
credit = 8
task_timeout = 2.5

[agents]
pattern_matcher = 3
reasoning_bank = 1

[parameters.pattern_matcher]
k = 12
""")
    cfg = load_config(path)
    assert cfg.port == 7411 and cfg.certs == str(tmp_path / "certs")
    assert cfg.coordinator.credit == 8 and cfg.coordinator.task_timeout == 2.5
    assert cfg.agents == {"pattern_matcher": 3, "reasoning_bank": 1}
    assert cfg.parameters == {"pattern_matcher": {"k": 12}}
    for text, message in [
            ("[coordinator]\ncredit = 0\n", "credit must be an int >= 1"),
            ("[coordinator]\ncredits = 2\n", "unknown key(s) in [coordinator]: credits"),
            ("[agents]\njuggler = 1\n", "unknown agent type 'juggler'"),
            ("[agents]\npattern_matcher = -1\n", "must be an int >= 0"),
            ("[swarm]\n", "unknown table(s) swarm"),
            ("[coordinator\n", "not valid TOML"),
            ("[coordinator]\nheartbeat_timeout = 0.5\n", "must be longer than")]:
        path.write_text(text)
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")
                           .replace("[", r"\[").replace("]", r"\]")) as info:
            load_config(path)
        assert str(path) in str(info.value)
    assert SwarmConfig().agents["pattern_matcher"] == 2


async def test_coordinator_command_serves_agents_and_drains_them_on_sigint(certs: Path) -> None:
    async with coordinator_process(certs) as (proc, port):
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                await nursery.start(functools.partial(
                    run_agent, ("127.0.0.1", port), "a2", ["feature_engineer"],
                    tls=client_tls(certs, "a2"), factories={"feature_engineer": Doubler}))
                proc.send_signal(signal.SIGINT)
                # run_agent returns by itself: the coordinator drained it.
            assert await proc.wait() == 0


def test_agent_command_rejects_bad_arguments(certs: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "midswarm", "agent", "--coordinator", "127.0.0.1:1",
         "--id", "nobody", "--types", "correlator", "--certs", str(certs)],
        capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "nobody.pem" in out.stderr
    out = subprocess.run(
        [sys.executable, "-m", "midswarm", "agent", "--coordinator", "127.0.0.1:1",
         "--id", "a1", "--types", "correlator", "--certs", str(certs), "--cpus", "0,x"],
        capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "expected CPU ids like 0,2" in out.stderr
