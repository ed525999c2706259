"""Data-parallel training through neural-trainer actors equals single-process Adam."""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import numpy as np
import pytest
import trio

from midswarm.actors import ActorRef, ChildSpec, open_supervisor
from midswarm.kernels import mlp
from midswarm.swarm._agents import NeuralTrainer
from midswarm.swarm._protocol import Gradients, TrainStep
from midswarm.swarm._training import ParameterServer, StaleGradientsError

LAYERS = [6, 16, 8, 1]


def scatter_over(refs: list[ActorRef]):  # type: ignore[no-untyped-def]
    """Send task i to trainer i mod len(refs), all at once; results in task order."""

    async def scatter(tasks: list[TrainStep]) -> Sequence[Gradients]:
        out: list[Gradients | None] = [None] * len(tasks)

        async def one(i: int) -> None:
            out[i] = await refs[i % len(refs)].ask(tasks[i])

        async with trio.open_nursery() as nursery:
            for i in range(len(tasks)):
                nursery.start_soon(one, i)
        return [g for g in out if g is not None]

    return scatter


def batches(seed: int, count: int, rows: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        x = rng.normal(size=(rows, LAYERS[0]))
        y = np.sin(x[:, :1]) + 0.1 * rng.normal(size=(rows, 1))
        out.append((x, y))
    return out


def reference(data: list[tuple[np.ndarray, np.ndarray]], seed: int, lr: float
              ) -> tuple[list[np.ndarray], list[float]]:
    params = mlp.init_params(LAYERS, seed)
    state = mlp.adam_init(params)
    losses = []
    for x, y in data:
        value, grads = mlp.loss_and_grads(params, x, y)
        losses.append(value)
        params, state = mlp.adam_step(params, grads, state, lr=lr)
    return params, losses


@pytest.mark.parametrize("shards", [1, 3, 4])
async def test_data_parallel_equals_single_process(shards: int) -> None:
    data = batches(11, 25, 37)  # 37 rows: shards of unequal sizes
    async with open_supervisor() as sup:
        refs = [await sup.start_child(ChildSpec(lambda i=i: NeuralTrainer(f"t{i}", {}),
                                                name=f"t{i}")) for i in range(3)]
        server = ParameterServer(scatter_over(refs), LAYERS, seed=4, lr=0.01, shards=shards)
        for x, y in data:
            await server.step(x, y)
    want, want_losses = reference(data, 4, 0.01)
    assert server.version == 25 and server.stale_rejected == 0
    for got, expected in zip(server.params, want, strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(server.losses, want_losses, rtol=1e-9)
    assert server.losses[-1] < server.losses[0]  # it learned something


async def test_stale_gradient_is_rejected_and_its_shard_recomputed() -> None:
    data = batches(2, 4, 20)
    calls: list[int] = []
    async with open_supervisor() as sup:
        refs = [await sup.start_child(ChildSpec(lambda: NeuralTrainer("t", {}), name="t"))]
        honest = scatter_over(refs)

        async def flaky(tasks: list[TrainStep]) -> Sequence[Gradients]:
            calls.append(len(tasks))
            out = list(await honest(tasks))
            if len(calls) == 2:  # second step: shard 1 answers for the previous version
                out[1] = attrs.evolve(out[1], model_version=out[1].model_version - 1)
            return out

        server = ParameterServer(flaky, LAYERS, seed=1, lr=0.01, shards=2)
        for x, y in data:
            await server.step(x, y)
    assert server.stale_rejected == 1
    assert calls == [2, 2, 1, 2, 2]  # the stale shard alone was sent again
    want, _ = reference(data, 1, 0.01)
    for got, expected in zip(server.params, want, strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)


async def test_persistently_stale_gradients_fail_the_step_and_leave_the_model() -> None:
    async def always_stale(tasks: list[TrainStep]) -> Sequence[Gradients]:
        out = []
        for t in tasks:
            value, grads = mlp.loss_and_grads(t.params, t.x, t.y)
            out.append(Gradients(t.model_version + 1, grads, t.x.shape[0], value))
        return out

    server = ParameterServer(always_stale, LAYERS, seed=1, shards=2, max_resends=2)
    before = [p.copy() for p in server.params]
    x, y = batches(0, 1, 10)[0]
    with pytest.raises(StaleGradientsError, match="after 2 resend"):
        await server.step(x, y)
    assert server.version == 0 and server.stale_rejected == 6
    for got, expected in zip(server.params, before, strict=True):
        np.testing.assert_array_equal(got, expected)


async def test_bad_batches_are_refused_before_anything_is_sent() -> None:
    sent: list[int] = []

    async def scatter(tasks: list[TrainStep]) -> Sequence[Gradients]:
        sent.append(len(tasks))
        return []

    server = ParameterServer(scatter, LAYERS, seed=0)
    with pytest.raises(ValueError, match="features"):
        await server.step(np.zeros((4, 5)), np.zeros(4))
    with pytest.raises(ValueError, match="y has 3 rows"):
        await server.step(np.zeros((4, 6)), np.zeros(3))
    with pytest.raises(ValueError, match="non-empty"):
        await server.step(np.zeros((0, 6)), np.zeros(0))
    assert sent == []
    with pytest.raises(ValueError, match="shards"):
        ParameterServer(scatter, LAYERS, shards=0)
    with pytest.raises(ValueError, match="lr"):
        ParameterServer(scatter, LAYERS, lr=-1.0)
