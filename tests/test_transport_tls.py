"""TLS: mutual authentication, identities, refusals, resumption with identity,
and the certificate helpers' argument checks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from _helpers import client_tls, echo_roundtrip, quic_server, read_to_eof, server_tls
from cryptography import x509

from midswarm.transport import (
    ClientTLS,
    ConnectionClosed,
    QuicConnection,
    QuicListener,
    ServerTLS,
    SessionTicketStore,
    certificate_identity,
    connect_quic,
    make_dev_certs,
)


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second, unrelated development CA issuing the same names."""
    return make_dev_certs(tmp_path_factory.mktemp("other-ca"), agents=["a1"])


class IdentityServer:
    """Records each connection's verified identity, then echoes one stream."""

    def __init__(self) -> None:
        self.identities: list[str | None] = []
        self.resumed: list[bool] = []

    async def handle(self, conn: QuicConnection) -> None:
        self.identities.append(conn.peer_identity)
        self.resumed.append(conn.session_resumed)
        stream = await conn.accept_stream()
        await stream.send_all(await read_to_eof(stream))
        await stream.send_eof()
        try:
            await conn.accept_stream()  # until the client leaves
        except ConnectionClosed:
            pass


@asynccontextmanager
async def mtls_server(certs: Path) -> AsyncIterator[tuple[IdentityServer, QuicListener]]:
    server = IdentityServer()
    async with quic_server(server.handle, certs, tls=server_tls(certs, mutual=True)) as listener:
        yield server, listener


async def assert_refused(port: int, tls: ClientTLS, server: IdentityServer,
                         session_tickets: SessionTicketStore | None = None) -> None:
    """The connection must fail: either ``connect_quic`` raises ConnectionClosed, or
    (TLS 1.3 lets a client finish its side of the handshake before the server has
    checked the client's certificate) the server closes it before any handler runs."""
    handlers_before = len(server.identities)
    with trio.fail_after(10):
        try:
            async with connect_quic("127.0.0.1", port, tls=tls,
                                    session_tickets=session_tickets) as conn:
                stream = await conn.open_stream()
                with pytest.raises((trio.BrokenResourceError, ConnectionClosed)):
                    await stream.send_all(b"let me in")
                    await stream.send_eof()
                    await stream.receive_some()
                assert conn.closed
                assert conn.close_reason[0] != 0
        except ConnectionClosed:
            pass
    assert len(server.identities) == handlers_before, "the handler ran for a refused client"


async def assert_handshake_fails(certs: Path, tls: ClientTLS) -> None:
    """``connect_quic`` itself must raise ConnectionClosed, and no handler runs."""
    with trio.fail_after(20):
        async with mtls_server(certs) as (server, listener):
            with pytest.raises(ConnectionClosed):
                async with connect_quic("127.0.0.1", listener.port, tls=tls):
                    pass
    assert server.identities == []


@pytest.mark.parametrize("agent", ["a1", "a2"])
async def test_mutual_tls_gives_verified_identity(certs: Path, agent: str) -> None:
    tls = client_tls(certs, agent)
    with trio.fail_after(10):
        async with mtls_server(certs) as (server, listener):
            async with connect_quic("127.0.0.1", listener.port, tls=tls) as conn:
                assert conn.peer_identity == "coordinator"
                assert await echo_roundtrip(conn, b"hi") == b"hi"
    assert server.identities == [agent]


async def test_client_without_certificate_is_refused(certs: Path) -> None:
    with trio.fail_after(20):
        async with mtls_server(certs) as (server, listener):
            await assert_refused(listener.port, client_tls(certs), server)
            # The server keeps serving authenticated clients.
            async with connect_quic("127.0.0.1", listener.port,
                                    tls=client_tls(certs, "a1")) as conn:
                assert await echo_roundtrip(conn, b"ok") == b"ok"
    assert server.identities == ["a1"]


async def test_client_certificate_from_another_ca_is_refused(certs: Path,
                                                             other_ca: Path) -> None:
    tls = ClientTLS(certs / "ca.pem", cert=other_ca / "a1.pem", key=other_ca / "a1.key")
    with trio.fail_after(20):
        async with mtls_server(certs) as (server, listener):
            await assert_refused(listener.port, tls, server)


async def test_server_certificate_used_as_client_certificate_is_refused(certs: Path) -> None:
    # Same CA, but the coordinator certificate is for server authentication only.
    tls = ClientTLS(certs / "ca.pem", cert=certs / "coordinator.pem",
                    key=certs / "coordinator.key")
    with trio.fail_after(20):
        async with mtls_server(certs) as (server, listener):
            await assert_refused(listener.port, tls, server)


async def test_wrong_server_name_is_refused(certs: Path) -> None:
    tls = ClientTLS(certs / "ca.pem", cert=certs / "a1.pem", key=certs / "a1.key",
                    server_name="not-the-server")
    await assert_handshake_fails(certs, tls)


async def test_server_from_untrusted_ca_is_refused(certs: Path, other_ca: Path) -> None:
    tls = ClientTLS(other_ca / "ca.pem", cert=certs / "a1.pem", key=certs / "a1.key")
    await assert_handshake_fails(certs, tls)


async def test_server_name_may_be_an_ip_address(certs: Path) -> None:
    tls = ClientTLS(certs / "ca.pem", cert=certs / "a1.pem", key=certs / "a1.key",
                    server_name="127.0.0.1")
    with trio.fail_after(10):
        async with mtls_server(certs) as (server, listener):
            async with connect_quic("127.0.0.1", listener.port, tls=tls) as conn:
                assert await echo_roundtrip(conn, b"ip") == b"ip"
    assert server.identities == ["a1"]


async def test_resumed_mutual_tls_connection_keeps_identity(certs: Path) -> None:
    stores = {agent: SessionTicketStore() for agent in ("a1", "a2")}
    with trio.fail_after(20):
        async with mtls_server(certs) as (server, listener):
            for _ in range(2):
                for agent, store in stores.items():
                    async with connect_quic("127.0.0.1", listener.port,
                                            tls=client_tls(certs, agent),
                                            session_tickets=store) as conn:
                        assert await echo_roundtrip(conn, agent.encode()) == agent.encode()
    assert server.identities == ["a1", "a2", "a1", "a2"]
    assert server.resumed == [False, False, True, True]


async def test_resumption_carries_identity_and_tickets_are_single_use(certs: Path) -> None:
    """Resumption skips certificates: a fresh ticket earned by a1 resumes as a1
    even without a certificate, but a used ticket is refused, so the client falls
    back to a full handshake and, having no certificate, is refused."""
    store = SessionTicketStore()
    a1 = client_tls(certs, "a1")
    no_cert = client_tls(certs)
    with trio.fail_after(20):
        async with mtls_server(certs) as (server, listener):
            async with connect_quic("127.0.0.1", listener.port, tls=a1,
                                    session_tickets=store) as conn:
                assert await echo_roundtrip(conn, b"x") == b"x"
            ticket = store.get("localhost")
            assert ticket is not None
            async with connect_quic("127.0.0.1", listener.port, tls=no_cert,
                                    session_tickets=store) as conn:
                assert conn.session_resumed
                assert await echo_roundtrip(conn, b"y") == b"y"
            replay = SessionTicketStore()
            replay.add(ticket)  # already used by the connection above
            await assert_refused(listener.port, no_cert, server, session_tickets=replay)
    assert server.identities == ["a1", "a1"]
    assert server.resumed == [False, True]


# --- certificate helpers ----------------------------------------------------------------


def test_dev_certs_identities(certs: Path) -> None:
    for name, identity in [("coordinator", "coordinator"), ("a1", "a1"), ("a2", "a2")]:
        cert = x509.load_pem_x509_certificate((certs / f"{name}.pem").read_bytes())
        assert certificate_identity(cert) == identity
        assert (certs / f"{name}.key").stat().st_mode & 0o777 == 0o600


def test_dev_certs_reuse_the_ca(tmp_path: Path) -> None:
    make_dev_certs(tmp_path, agents=["a1"])
    ca = (tmp_path / "ca.pem").read_bytes()
    make_dev_certs(tmp_path, agents=["a3"])
    assert (tmp_path / "ca.pem").read_bytes() == ca
    assert (tmp_path / "a1.pem").exists() and (tmp_path / "a3.pem").exists()


@pytest.mark.parametrize("bad", ["", "ca", "coordinator", "x/y", ".hidden", "a\\b"])
def test_dev_certs_reject_bad_agent_ids(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError, match="invalid agent id"):
        make_dev_certs(tmp_path, agents=[bad])


def test_tls_settings_check_their_arguments(certs: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="ca="):
        ServerTLS(certs / "coordinator.pem", certs / "coordinator.key", require_client_cert=True)
    with pytest.raises(FileNotFoundError, match="key"):
        ServerTLS(certs / "coordinator.pem", tmp_path / "missing.key")
    with pytest.raises(ValueError, match="both cert= and key="):
        ClientTLS(certs / "ca.pem", cert=certs / "a1.pem")
    with pytest.raises(FileNotFoundError, match="ca"):
        ClientTLS(tmp_path / "missing.pem")
