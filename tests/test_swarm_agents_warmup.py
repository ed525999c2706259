"""Agents warm their kernels up before they say hello (see ``_agent_warmup``)."""

from __future__ import annotations

import functools
import logging
import subprocess
import sys
import textwrap
from typing import Any

import numpy as np
import pytest
import trio
import trio.testing

from midswarm.actors import Actor
from midswarm.swarm import FeatureBlock, FeatureTask, open_coordinator, run_agent
from midswarm.swarm._agent_host import memory_connector


class Gated(Actor):
    """A feature engineer whose warm-up waits for the test to open ``gate``."""

    gate: trio.Event | None = None
    warmed = 0

    def __init__(self, agent_id: str, parameters: dict[str, Any]) -> None:
        self.agent_id = agent_id

    @classmethod
    async def warm_up(cls) -> None:
        assert cls.gate is not None
        await cls.gate.wait()
        cls.warmed += 1

    async def handle(self, msg: Any) -> Any:
        assert isinstance(msg, FeatureTask)
        return FeatureBlock(names=[self.agent_id], values=np.asarray(msg.ohlcv) + 1)


class Broken(Gated):
    @classmethod
    async def warm_up(cls) -> None:
        raise RuntimeError("no kernels today")


def capabilities(coord: Any, agent_id: str) -> dict[str, Any]:
    session = coord._records[agent_id].session
    assert session is not None
    return dict(session.hello.capabilities)


async def test_an_agent_says_hello_only_after_its_warm_up() -> None:
    Gated.gate, Gated.warmed = trio.Event(), 0
    async with open_coordinator() as coord, trio.open_nursery() as nursery:
        nursery.start_soon(functools.partial(
            run_agent, functools.partial(memory_connector, coord, "w1"), "w1",
            ["feature_engineer"], factories={"feature_engineer": Gated}))
        await trio.testing.wait_all_tasks_blocked()
        assert coord.connected() == [] and "w1" not in coord.agents  # no hello yet
        Gated.gate.set()
        await coord.wait_for_agents(["w1"], timeout=10)
        assert Gated.warmed == 1
        assert capabilities(coord, "w1")["warm_up_s"] >= 0
        block = await coord.submit(FeatureTask(ohlcv=np.zeros((1, 5))))
        assert block.names == ["w1"] and block.values.tolist() == [[1.0] * 5]
        nursery.cancel_scope.cancel()


async def test_warm_up_can_be_turned_off() -> None:
    Gated.gate, Gated.warmed = trio.Event(), 0  # never set: a warm-up would hang
    async with open_coordinator() as coord, trio.open_nursery() as nursery:
        nursery.start_soon(functools.partial(
            run_agent, functools.partial(memory_connector, coord, "w2"), "w2",
            ["feature_engineer"], factories={"feature_engineer": Gated}, warm_up=False))
        await coord.wait_for_agents(["w2"], timeout=10)
        assert Gated.warmed == 0 and "warm_up_s" not in capabilities(coord, "w2")
        nursery.cancel_scope.cancel()


async def test_a_failed_warm_up_is_logged_and_the_agent_still_serves(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="midswarm.swarm.agent")
    async with open_coordinator() as coord, trio.open_nursery() as nursery:
        nursery.start_soon(functools.partial(
            run_agent, functools.partial(memory_connector, coord, "w3"), "w3",
            ["feature_engineer"], factories={"feature_engineer": Broken}))
        await coord.wait_for_agents(["w3"], timeout=10)
        block = await coord.submit(FeatureTask(ohlcv=np.zeros((1, 5))))
        assert block.names == ["w3"]
        nursery.cancel_scope.cancel()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("warming up feature_engineer failed" in m and "no kernels today" in m
               for m in warnings), warnings


# In a fresh process (this one may have loaded the kernels already): after the
# warm-ups, real-size tasks of every behaviour must not make numba load or
# compile any new version of any kernel.
_COVERAGE = textwrap.dedent("""
    import sys
    import numba
    import numpy as np
    import trio
    from midswarm.kernels import mlp
    from midswarm.swarm._agent_util import wire_copy
    from midswarm.swarm._agents import AGENT_FACTORIES
    from midswarm.swarm._market import synthetic_market
    from midswarm.swarm._protocol import (CorrelationTask, FeatureTask, PatternLibraryAdd,
                                          PatternMatchTask, TrainStep)

    def versions():
        return {f"{name}.{attr}": len(obj.overloads)
                for name, module in list(sys.modules.items()) if name.startswith("midswarm")
                for attr, obj in vars(module).items()
                if isinstance(obj, numba.core.dispatcher.Dispatcher)}

    async def main():
        for factory in AGENT_FACTORIES.values():
            if hasattr(factory, "warm_up"):
                await factory.warm_up()
        warm = versions()
        assert sum(warm.values()) > 10, warm  # the warm-ups did load kernels
        rng = np.random.default_rng(1)
        params = {"k": 10, "window": 4, "similarity_threshold": 0.6,
                  "confidence_threshold": 0.4}
        matcher = AGENT_FACTORIES["pattern_matcher"]("m", params)
        walks = np.cumsum(rng.normal(size=(1200, 24)), axis=1)
        for start in range(0, 1200, 40):
            rows = slice(start, start + 40)
            await matcher.handle(wire_copy(PatternLibraryAdd(
                walks[rows], rng.normal(0, 0.01, 40), np.arange(1200)[rows])))
            await matcher.handle(wire_copy(PatternMatchTask(
                window=walks[start] + 0.1, horizon=8, params=dict(params))))
        bars = synthetic_market(2, assets=1, bars=200).bars["A0"]
        engineer = AGENT_FACTORIES["feature_engineer"]("f", {})
        for end in range(64, 200, 17):
            await engineer.handle(wire_copy(FeatureTask(ohlcv=bars[end - 64:end])))
        trainer = AGENT_FACTORIES["neural_trainer"]("t", {})
        await trainer.handle(wire_copy(TrainStep(
            4, rng.normal(size=(128, 7)), rng.normal(size=128), mlp.init_params([7, 16, 1], 3))))
        correlator = AGENT_FACTORIES["correlator"]("c", {})
        await correlator.handle(wire_copy(CorrelationTask(
            strategies=np.sign(rng.normal(size=(6, 128))), names=list("abcdef"),
            epsilon=0.5, window=16)))
        new = {k: (warm.get(k, 0), v) for k, v in versions().items() if v != warm.get(k, 0)}
        print("new kernel versions:", new)

    trio.run(main)
""")


def test_warm_ups_load_every_kernel_version_real_tasks_use() -> None:
    proc = subprocess.run([sys.executable, "-c", _COVERAGE], capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "new kernel versions: {}" in proc.stdout, proc.stdout
