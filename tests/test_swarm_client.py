"""Remote clients of a coordinator (``connect_coordinator``) over real QUIC:
agents and the client as tasks of this process, each with its own certificate."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio
from _helpers import coordinator_process

from midswarm.actors import Actor, ActorFailed, Backoff
from midswarm.swarm import (
    ClientRefused,
    ConfigError,
    Coordinator,
    CoordinatorClosed,
    CoordinatorConfig,
    FeatureBlock,
    FeatureTask,
    PatternMatchResult,
    PatternMatchTask,
    RemoteCoordinator,
    RemoteError,
    TaskTimeout,
    connect_coordinator,
    load_config,
    open_coordinator,
    run_agent,
)
from midswarm.swarm._client import rebuild_error
from midswarm.swarm._client_protocol import (
    ClientHello,
    ClientReply,
    ClientRequest,
    ClientWelcome,
    PatternIds,
)
from midswarm.transport import (
    DEFAULT_MAX_MESSAGE_SIZE,
    FRAMING_ERROR_CODE,
    PROTOCOL_VERSION,
    ClientTLS,
    MessageStream,
    ProtocolError,
    ServerTLS,
    SessionTicketStore,
    connect_quic,
    decode,
    encode,
    memory_connection_pair,
)


class Features(Actor):
    """A feature engineer that doubles its input, sleeps when told to
    (``params["sleep"]``) and fails when told to (``params["fail"]``)."""

    def __init__(self, agent_id: str, parameters: dict[str, Any]) -> None:
        self.agent_id = agent_id

    async def handle(self, msg: Any) -> Any:
        if msg.params.get("fail"):
            raise ValueError("told to fail")
        await trio.sleep(msg.params.get("sleep", 0))
        return FeatureBlock(names=[self.agent_id], values=np.asarray(msg.ohlcv) * 2)


def tls_for(certs: Path, name: str) -> ClientTLS:
    return ClientTLS(certs / "ca.pem", cert=certs / f"{name}.pem", key=certs / f"{name}.key")


@asynccontextmanager
async def coordinator_with(certs: Path, agents: dict[str, list[str]],
                           factories: dict[str, Any] | None = None,
                           config: CoordinatorConfig | None = None
                           ) -> AsyncIterator[Coordinator]:
    """A coordinator on loopback QUIC (client certificates required) and
    ``agents`` (id -> types) connected to it as tasks of this process."""
    tls = ServerTLS(certs / "coordinator.pem", certs / "coordinator.key", ca=certs / "ca.pem",
                    require_client_cert=True)
    async with open_coordinator(tls=tls, config=config) as coord, \
            trio.open_nursery() as nursery:
        assert coord.port is not None
        for agent_id, types in agents.items():
            await nursery.start(functools.partial(
                run_agent, ("127.0.0.1", coord.port), agent_id, types,
                tls=tls_for(certs, agent_id), factories=factories))
        await coord.wait_for_agents(list(agents), timeout=60)
        yield coord
        await coord.shutdown()
        nursery.cancel_scope.cancel()


def address(coord: Coordinator) -> tuple[str, int]:
    assert coord.port is not None
    return ("127.0.0.1", coord.port)


async def test_a_client_submits_maps_and_reads_status(certs: Path) -> None:
    async with coordinator_with(certs, {"a1": ["feature_engineer"]},
                                {"feature_engineer": Features}) as coord, \
            connect_coordinator(address(coord), "a2", tls=tls_for(certs, "a2")) as client:
        assert client.coordinator_id == coord.coordinator_id
        block = await client.submit(FeatureTask(ohlcv=np.ones((2, 5))))
        assert block.names == ["a1"] and block.values.shape == (2, 5)
        assert np.all(block.values == 2)

        tasks = [FeatureTask(ohlcv=np.full((1, 5), float(i))) for i in range(40)]
        ordered = await client.gather(tasks, concurrency=8)
        assert [float(b.values[0, 0]) for b in ordered] == [2.0 * i for i in range(40)]
        unordered = [b async for b in client.map(tasks, concurrency=16)]
        assert sorted(float(b.values[0, 0]) for b in unordered) == [2.0 * i for i in range(40)]

        report = await client.status()
        assert report.coordinator_id == coord.coordinator_id
        assert report.agents["a1"].state == "connected"
        assert report.agents["a1"].types == ("feature_engineer",)
        assert report.stats.completed == 81 == coord.stats.completed


async def test_failures_come_back_as_the_same_exceptions(certs: Path) -> None:
    async with coordinator_with(certs, {"a1": ["feature_engineer"]},
                                {"feature_engineer": Features}) as coord, \
            connect_coordinator(address(coord), "a2", tls=tls_for(certs, "a2")) as client:
        with pytest.raises(TaskTimeout) as timeout:
            await client.submit(FeatureTask(np.ones((1, 5)), {"sleep": 5}), timeout=0.2)
        assert timeout.value.timeout == 0.2
        with pytest.raises(ActorFailed) as failed:
            await client.submit(FeatureTask(np.ones((1, 5)), {"fail": True}))
        assert failed.value.exc_type == "ValueError" and failed.value.message == "told to fail"
        with pytest.raises(KeyError, match="not a pending prediction"):
            await client.report_outcome(424242, 1.0)
        with pytest.raises(ValueError, match="finite"):
            await client.report_outcome(1, float("nan"))
        with pytest.raises(TypeError, match="task message"):
            await client.submit("not a task")
        # The session survived every failure.
        assert (await client.submit(FeatureTask(np.ones((1, 5))))).names == ["a1"]


def test_unknown_or_misfitting_errors_become_remote_errors() -> None:
    err = rebuild_error(ClientReply(False, error_type="ZeroDivisionError", message="boom"))
    assert isinstance(err, RemoteError) and "ZeroDivisionError: boom" in str(err)
    # A known class whose arguments do not fit is not guessed at.
    err = rebuild_error(ClientReply(False, error_type="TaskTimeout", message="x", args=["a"]))
    assert isinstance(err, RemoteError) and err.error_type == "TaskTimeout"
    err = rebuild_error(ClientReply(False, error_type="TaskTimeout", message="", args=[7, 0.5]))
    assert isinstance(err, TaskTimeout) and err.task_id == 7


async def test_a_reply_of_the_wrong_class_is_a_protocol_error() -> None:
    # A stand-in coordinator (an isolated unit: the in-memory transport) that
    # answers a status query with pattern ids.
    client_end, server_end = memory_connection_pair("c1")

    async def wrong_answer() -> None:
        ms = MessageStream(await server_end.accept_stream())
        await ms.receive_message()
        await ms.receive_message()
        await ms.send_message(encode(ClientReply(True)))
        await ms.send_message(encode(PatternIds([1, 2])))
        await ms.send_eof()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wrong_answer)
        client = RemoteCoordinator(client_end, "c1", ClientWelcome("stand-in"), nursery)
        with pytest.raises(ProtocolError, match="expected StatusReport in reply to "
                                                "StatusQuery, got PatternIds"):
            await client.status()


async def test_the_learning_loop_from_a_client(certs: Path) -> None:
    rng = np.random.default_rng(5)
    async with coordinator_with(certs, {"a1": ["pattern_matcher", "reasoning_bank"]}) as coord, \
            connect_coordinator(address(coord), "a2", tls=tls_for(certs, "a2")) as client:
        vectors = rng.standard_normal((60, 24)).cumsum(axis=1)
        ids = await client.add_patterns(vectors, rng.standard_normal(60))
        assert len(ids) == 60 and len(set(ids)) == 60
        result = await client.submit(PatternMatchTask(vectors[7] + 0.01))
        assert isinstance(result, PatternMatchResult)
        assert result.matches[0].pattern_id == ids[7]
        task_id = client.task_id_of(result)
        assert task_id is not None
        verdicts = await client.report_outcome(result, 0.25)
        assert len(verdicts) == 1
        assert client.task_id_of(result) is None
        with pytest.raises(KeyError):  # reported once only, on either side
            await client.report_outcome(result, 0.25)
        with pytest.raises(KeyError):
            await client.report_outcome(task_id, 0.25)
        assert coord.stats.experiences == 1
        again = await client.submit(PatternMatchTask(vectors[8] + 0.01))
        for bad in (True, float("nan"), "0.1"):  # refused as by a local report
            with pytest.raises(ValueError, match="actual must be a finite number"):
                await client.report_outcome(again, bad)  # type: ignore[arg-type]
        assert client.task_id_of(again) is not None  # still pending
        assert len(await client.report_outcome(again, -0.5)) == 1


async def test_a_client_id_not_matching_its_certificate_is_refused(certs: Path) -> None:
    async with coordinator_with(certs, {}) as coord:
        with pytest.raises(ClientRefused, match="does not match the identity"):
            async with connect_coordinator(address(coord), "a1", tls=tls_for(certs, "a2")):
                pass  # pragma: no cover
        async with connect_quic("127.0.0.1", address(coord)[1], tls=tls_for(certs, "a2")) as conn:
            control = MessageStream(await conn.open_stream())
            await control.send_message(encode(ClientHello("a2", version=PROTOCOL_VERSION + 1)))
            refused = decode(await control.receive_message())
            assert "protocol version" in refused.reason
        # The coordinator still takes well-behaved clients.
        async with connect_coordinator(address(coord), "a2", tls=tls_for(certs, "a2")) as client:
            assert (await client.status()).agents == {}


async def test_only_the_listed_clients_may_submit(certs: Path, tmp_path: Path) -> None:
    config = CoordinatorConfig(clients=["a2"])
    async with coordinator_with(certs, {}, config=config) as coord:
        with pytest.raises(ClientRefused, match="'a1' may not submit work"):
            async with connect_coordinator(address(coord), "a1", tls=tls_for(certs, "a1")):
                pass  # pragma: no cover
        async with connect_coordinator(address(coord), "a2", tls=tls_for(certs, "a2")) as client:
            assert (await client.status()).stats.submitted == 0
    toml = tmp_path / "swarm.toml"
    toml.write_text('[coordinator]\nclients = ["trader1", "desk2"]\n')
    assert load_config(toml).coordinator.clients == ("trader1", "desk2")
    toml.write_text('[coordinator]\nclients = "trader1"\n')
    with pytest.raises(ConfigError, match="clients must be a list"):
        load_config(toml)


async def test_a_malformed_request_resets_only_its_stream(certs: Path) -> None:
    async with coordinator_with(certs, {"a1": ["feature_engineer"]},
                                {"feature_engineer": Features}) as coord, \
            connect_coordinator(address(coord), "a2", tls=tls_for(certs, "a2")) as client:
        conn = client._conn
        for body in (b"\x92garbage", encode(ClientHello("a2"))):
            ms = MessageStream(await conn.open_stream())
            await ms.send_message(encode(ClientRequest()))
            await ms.send_message(body)
            with pytest.raises(trio.BrokenResourceError) as broken:
                await ms.receive_message()
            assert broken.value.error_code == FRAMING_ERROR_CODE  # type: ignore[attr-defined]
        assert (await client.submit(FeatureTask(np.ones((1, 5))))).names == ["a1"]
        assert not client.closed


async def test_a_cancelled_submit_is_abandoned_on_the_coordinator(
        certs: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="midswarm.swarm")
    async with coordinator_with(certs, {"a1": ["feature_engineer"]},
                                {"feature_engineer": Features}) as coord, \
            connect_coordinator(address(coord), "a2", tls=tls_for(certs, "a2")) as client:
        await cancel_a_submit_and_see_it_abandoned(client, "a2", caplog)


async def test_a_cancelled_submit_is_abandoned_over_a_stream_without_callbacks(
        certs: Path, caplog: pytest.LogCaptureFixture) -> None:
    # An in-memory client connection: its streams have no readable callback,
    # so the coordinator watches a request's stream with a task instead.
    caplog.set_level(logging.DEBUG, logger="midswarm.swarm")
    async with coordinator_with(certs, {"a1": ["feature_engineer"]},
                                {"feature_engineer": Features}) as coord, \
            trio.open_nursery() as nursery:
        client_end, server_end = memory_connection_pair(client_identity="m1",
                                                        server_identity=coord.coordinator_id)
        coord.attach(server_end)
        control = MessageStream(await client_end.open_stream())
        await control.send_message(encode(ClientHello("m1")))
        welcome = decode(await control.receive_message(), ClientWelcome)
        client = RemoteCoordinator(client_end, "m1", welcome, nursery)
        await cancel_a_submit_and_see_it_abandoned(client, "m1", caplog)
        client_end.close(0, "")


async def cancel_a_submit_and_see_it_abandoned(client: RemoteCoordinator, client_id: str,
                                               caplog: pytest.LogCaptureFixture) -> None:
    """A submit cancelled on the client is abandoned on the coordinator, and
    the next one is served."""
    with trio.move_on_after(0.3) as scope:
        await client.submit(FeatureTask(np.ones((1, 5)), {"sleep": 1.0}))
    assert scope.cancelled_caught
    with trio.fail_after(5):
        while f"client {client_id} abandoned a FeatureTask request" not in caplog.text:
            await trio.sleep(0.01)
    assert (await client.submit(FeatureTask(np.ones((1, 5))))).names == ["a1"]


async def test_shutdown_finishes_requests_in_flight_then_ends_the_session(
        certs: Path) -> None:
    stop = trio.Event()
    async with trio.open_nursery() as nursery:

        async def run_coordinator(task_status: trio.TaskStatus[Coordinator]) -> None:
            async with coordinator_with(certs, {"a1": ["feature_engineer"]},
                                        {"feature_engineer": Features}) as coord:
                task_status.started(coord)
                await stop.wait()

        coord = await nursery.start(run_coordinator)
        async with connect_coordinator(address(coord), "a2", tls=tls_for(certs, "a2")) as client:
            results: list[Any] = []
            async with trio.open_nursery() as requests:

                async def slow() -> None:
                    results.append(await client.submit(
                        FeatureTask(np.ones((1, 5)), {"sleep": 0.5})))

                requests.start_soon(slow)
                await trio.sleep(0.2)
                await coord.shutdown()  # graceful: the task in flight finishes
            assert [r.names for r in results] == [["a1"]]
            with pytest.raises(CoordinatorClosed, match="shutting down"):
                await client.submit(FeatureTask(np.ones((1, 5))))
            assert not client.closed
            stop.set()  # the coordinator goes away: the client's session ends
            with trio.fail_after(10):
                assert "ended the session" in await client.wait_closed()
            assert client.closed
            with pytest.raises(CoordinatorClosed, match="session is over"):
                await client.submit(FeatureTask(np.ones((1, 5))))


async def test_work_submitted_to_a_coordinator_process_and_its_status_command(
        certs: Path) -> None:
    async with coordinator_process(certs) as (proc, port), trio.open_nursery() as nursery:
        await nursery.start(functools.partial(
            run_agent, ("127.0.0.1", port), "a1", ["feature_engineer"],
            tls=tls_for(certs, "a1"), factories={"feature_engineer": Features}))
        async with connect_coordinator(("127.0.0.1", port), "a2",
                                       tls=tls_for(certs, "a2")) as client:
            assert "a1" in (await client.status()).agents  # run_agent started: welcomed
            blocks = await client.gather([FeatureTask(np.full((1, 5), 3.0))] * 5)
            assert [b.names for b in blocks] == [["a1"]] * 5
        command = [sys.executable, "-m", "midswarm", "status", "--coordinator",
                   f"127.0.0.1:{port}", "--certs", str(certs)]
        out = await trio.run_process([*command, "--id", "a2", "--json"], capture_stdout=True)
        report = json.loads(out.stdout)
        assert report["coordinator_id"] == "coordinator"
        assert report["agents"]["a1"]["state"] == "connected"
        assert report["stats"]["completed"] == 5
        tickets = certs / "a2.tickets"
        for _ in range(2):  # each run keeps a ticket for the next (resumption: test below)
            text = await trio.run_process([*command, "--id", "a2", "--tickets", str(tickets)],
                                          capture_stdout=True)
            assert b"1/1 agents connected; tasks: 5 done" in text.stdout
            assert SessionTicketStore(tickets).get("localhost") is not None
        refused = await trio.run_process([*command, "--id", "nobody"], capture_stderr=True,
                                         check=False)
        assert refused.returncode == 2 and b"nobody.pem" in refused.stderr
        nursery.cancel_scope.cancel()


async def test_a_library_larger_than_a_message_goes_in_several_requests(certs: Path) -> None:
    rng = np.random.default_rng(6)
    dim = 64
    rows = (DEFAULT_MAX_MESSAGE_SIZE // (8 * dim)) * 5 // 4  # 20 MiB of float64
    vectors = rng.standard_normal((rows, dim))
    outcomes = rng.standard_normal(rows)
    async with coordinator_with(certs, {"a1": ["pattern_matcher"]}) as coord, \
            connect_coordinator(address(coord), "a2", tls=tls_for(certs, "a2")) as client:
        ids = await client.add_patterns(vectors, outcomes)
        assert len(ids) == rows and ids == sorted(ids) and len(set(ids)) == rows
        assert sum(coord.shard_sizes().values()) == rows
        # The last row's pattern is found where it was put.
        result = await client.submit(PatternMatchTask(vectors[-1]))
        assert result.matches[0].pattern_id == ids[-1]


async def test_bad_patterns_from_a_client_store_nothing(certs: Path) -> None:
    rng = np.random.default_rng(7)
    async with coordinator_with(certs, {"a1": ["pattern_matcher"]}) as coord, \
            connect_coordinator(address(coord), "a2", tls=tls_for(certs, "a2")) as client:
        await client.add_patterns(rng.standard_normal((10, 16)), rng.standard_normal(10))
        with pytest.raises(ValueError, match="one value per pattern"):
            await client.add_patterns(rng.standard_normal((10, 16)), rng.standard_normal(9))
        with pytest.raises(ValueError, match="finite"):
            await client.add_patterns(np.full((3, 16), np.nan), np.zeros(3))
        with pytest.raises(ValueError, match="length 24, the library holds length 16"):
            await client.add_patterns(rng.standard_normal((10, 24)), rng.standard_normal(10))
        assert sum(coord.shard_sizes().values()) == 10


async def test_a_client_with_a_ticket_resumes_and_says_hello_in_early_data(
        certs: Path) -> None:
    store = SessionTicketStore()
    async with coordinator_with(certs, {"a1": ["feature_engineer"]}) as coord:
        for attempt in range(3):
            async with connect_coordinator(address(coord), "a2", tls=tls_for(certs, "a2"),
                                           session_tickets=store) as client:
                conn = client._conn
                assert conn.session_resumed == (attempt > 0)
                assert conn.early_data_accepted == (attempt > 0)
                block = await client.submit(FeatureTask(np.full((30, 5), 1.0 + attempt)))
                assert isinstance(block, FeatureBlock)
                assert "a1" in (await client.status()).agents
        assert coord.stats.completed == 3
        # A store holding a ticket the coordinator never issued: the hello
        # still arrives (0-RTT refused, resent after a full handshake).
        ticket = store.get("localhost")
        assert ticket is not None
        stale = SessionTicketStore()
        stale.add(dataclasses.replace(ticket, ticket=b"forged" + ticket.ticket[6:]))
        async with connect_coordinator(address(coord), "a2", tls=tls_for(certs, "a2"),
                                       session_tickets=stale) as client:
            assert not client._conn.session_resumed
            assert (await client.status()).coordinator_id == coord.config.coordinator_id


# --- reconnecting ------------------------------------------------------------------------

FAST_BACKOFF = Backoff(initial=0.05, maximum=0.2)


def coordinator_tls(certs: Path) -> ServerTLS:
    return ServerTLS(certs / "coordinator.pem", certs / "coordinator.key", ca=certs / "ca.pem",
                     require_client_cert=True)


async def serve_until(certs: Path, config: CoordinatorConfig, port: int, stop: trio.Event, *,
                      task_status: trio.TaskStatus[Coordinator] = trio.TASK_STATUS_IGNORED
                      ) -> None:
    """A coordinator on ``port`` (0: any) until ``stop`` is set."""
    async with open_coordinator(port, tls=coordinator_tls(certs), config=config) as coord:
        task_status.started(coord)
        await stop.wait()


async def until_disconnected(client: RemoteCoordinator) -> None:
    while client.connected:
        await client._changed.wait()


async def test_a_reconnecting_client_outlives_a_coordinator_restart(certs: Path) -> None:
    """With ``reconnect`` the client connects again when its coordinator
    comes back on the same port, and a call made while none runs waits for
    it.  A coordinator that then refuses the client closes it for good."""
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            stop_first = trio.Event()
            first = await nursery.start(functools.partial(
                serve_until, certs, CoordinatorConfig(coordinator_id="first"), 0, stop_first))
            assert first.port is not None
            port = first.port
            async with connect_coordinator(("127.0.0.1", port), "a2", tls=tls_for(certs, "a2"),
                                           reconnect=True, backoff=FAST_BACKOFF) as client:
                assert (await client.status()).coordinator_id == "first"
                stop_first.set()
                await until_disconnected(client)
                assert not client.closed
                stop_second = trio.Event()

                async def second_later() -> None:
                    await trio.sleep(0.5)  # a few failed attempts first
                    await nursery.start(functools.partial(
                        serve_until, certs, CoordinatorConfig(coordinator_id="second"), port,
                        stop_second))

                nursery.start_soon(second_later)
                assert (await client.status()).coordinator_id == "second"
                assert client.connected and client.coordinator_id == "second"

                stop_second.set()
                await until_disconnected(client)
                nursery.start_soon(functools.partial(
                    serve_until, certs, CoordinatorConfig(coordinator_id="third",
                                                          clients=["someone-else"]),
                    port, trio.Event()))
                reason = await client.wait_closed()
                assert "refused the client on reconnecting" in reason
                assert "'a2' may not submit work" in reason
                with pytest.raises(CoordinatorClosed, match="refused the client"):
                    await client.status()
            nursery.cancel_scope.cancel()


async def test_calls_wait_for_a_new_session_only_so_long(certs: Path) -> None:
    """A coordinator that does not come back: calls raise CoordinatorClosed
    after ``reconnect_wait``, the client keeps trying, and leaving the block
    stops it."""
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            stop = trio.Event()
            coord = await nursery.start(functools.partial(
                serve_until, certs, CoordinatorConfig(), 0, stop))
            async with connect_coordinator(address(coord), "a2", tls=tls_for(certs, "a2"),
                                           reconnect=True, reconnect_wait=0.3,
                                           backoff=FAST_BACKOFF) as client:
                await client.status()
                stop.set()
                await until_disconnected(client)
                start = trio.current_time()
                with pytest.raises(CoordinatorClosed, match="no new one within 0.3 s"):
                    await client.status()
                assert trio.current_time() - start >= 0.3
                assert not client.closed
            assert client.closed and "the client left" in await client.wait_closed()


async def test_a_call_running_when_the_connection_breaks_is_not_resent(certs: Path) -> None:
    """The connection breaks under a running call: it raises CoordinatorClosed
    (whether the coordinator did the work cannot be known) and is not sent
    again; the client reconnects, resuming its TLS session, and goes on."""
    async with coordinator_with(certs, {"a1": ["feature_engineer"]},
                                {"feature_engineer": Features}) as coord:
        async with connect_coordinator(address(coord), "a2", tls=tls_for(certs, "a2"),
                                       reconnect=True, backoff=FAST_BACKOFF) as client:
            first_conn = client._conn
            assert not first_conn.session_resumed
            with trio.fail_after(30):
                async with trio.open_nursery() as nursery:

                    async def slow() -> None:
                        with pytest.raises(CoordinatorClosed, match="may or may not have run"):
                            await client.submit(FeatureTask(np.ones((1, 5)), {"sleep": 0.5}))

                    nursery.start_soon(slow)
                    await trio.sleep(0.1)
                    await first_conn.aclose()
                block = await client.submit(FeatureTask(np.ones((1, 5))))
                assert isinstance(block, FeatureBlock)
                assert client._conn is not first_conn and client._conn.session_resumed
            assert coord.stats.submitted == 2  # the broken call was not sent again
