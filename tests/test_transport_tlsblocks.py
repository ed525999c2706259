"""The class-based TLS block helpers (``_tlsblocks``) against aioquic's own:
every handshake message of real handshakes (mutual TLS, then a resumed one
with early data) parses to the same object and serialises to the same bytes
with either set, and malformed blocks fail the same way."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aioquic.tls as tls
import pytest
import trio
from _helpers import client_tls, echo_handler, echo_roundtrip, quic_server, server_tls
from aioquic.buffer import Buffer

from midswarm.transport import SessionTicketStore, connect_quic
from midswarm.transport._tlsblocks import ORIGINALS, REPLACEMENTS

CODECS: dict[int, tuple[str, str]] = {
    tls.HandshakeType.CLIENT_HELLO: ("pull_client_hello", "push_client_hello"),
    tls.HandshakeType.SERVER_HELLO: ("pull_server_hello", "push_server_hello"),
    tls.HandshakeType.NEW_SESSION_TICKET: ("pull_new_session_ticket",
                                           "push_new_session_ticket"),
    tls.HandshakeType.ENCRYPTED_EXTENSIONS: ("pull_encrypted_extensions",
                                             "push_encrypted_extensions"),
    tls.HandshakeType.CERTIFICATE: ("pull_certificate", "push_certificate"),
    tls.HandshakeType.CERTIFICATE_REQUEST: ("pull_certificate_request",
                                            "push_certificate_request"),
    tls.HandshakeType.CERTIFICATE_VERIFY: ("pull_certificate_verify",
                                           "push_certificate_verify"),
    tls.HandshakeType.FINISHED: ("pull_finished", "push_finished"),
}


def use(monkeypatch: pytest.MonkeyPatch, helpers: dict[str, Any]) -> None:
    for name, helper in helpers.items():
        monkeypatch.setattr(tls, name, helper)


def parse(kind: int, data: bytes) -> Any:
    return getattr(tls, CODECS[kind][0])(Buffer(data=data))


def serialise(kind: int, message: Any) -> bytes:
    buf = Buffer(capacity=65536)
    getattr(tls, CODECS[kind][1])(buf, message)
    return buf.data


@pytest.fixture
def messages(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[int, bytes]]]:
    """Every handshake message a TLS context in this process receives."""
    seen: list[tuple[int, bytes]] = []
    handle = tls.Context._handle_reassembled_message

    def recording(self: tls.Context, message_type: int, input_buf: Buffer,
                  output_buf: Any) -> None:
        seen.append((message_type, input_buf.data_slice(0, input_buf.capacity)))
        handle(self, message_type, input_buf, output_buf)

    monkeypatch.setattr(tls.Context, "_handle_reassembled_message", recording)
    yield seen


async def test_real_handshake_messages_match_aioquic_helpers(
        certs: Path, messages: list[tuple[int, bytes]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert tls.push_block is REPLACEMENTS["push_block"]  # installed on import
    store = SessionTicketStore()
    with trio.fail_after(20):
        async with quic_server(echo_handler, certs, tls=server_tls(certs, mutual=True)) as lst:
            for early in (False, True):
                async with connect_quic("127.0.0.1", lst.port, tls=client_tls(certs, "a1"),
                                        session_tickets=store,
                                        wait_connected=not early) as conn:
                    assert await echo_roundtrip(conn, b"x") == b"x"
                    await conn.wait_handshake()
                    assert conn.session_resumed == early
    kinds = {kind for kind, _ in messages}
    assert kinds == set(CODECS), kinds
    for kind, data in messages:
        use(monkeypatch, ORIGINALS)
        theirs = parse(kind, data)
        their_bytes = serialise(kind, theirs)
        use(monkeypatch, REPLACEMENTS)
        ours = parse(kind, data)
        assert ours == theirs
        assert serialise(kind, ours) == their_bytes
        if kind != tls.HandshakeType.CLIENT_HELLO:  # (a PSK hello's binder is patched in)
            assert their_bytes == data


@pytest.mark.parametrize("helpers", [ORIGINALS, REPLACEMENTS], ids=["aioquic", "ours"])
def test_malformed_blocks_fail_alike(monkeypatch: pytest.MonkeyPatch,
                                     helpers: dict[str, Any]) -> None:
    use(monkeypatch, helpers)
    extensions = tls.EncryptedExtensions(alpn_protocol="midswarm/1", early_data=True)
    good = serialise(tls.HandshakeType.ENCRYPTED_EXTENSIONS, extensions)
    assert parse(tls.HandshakeType.ENCRYPTED_EXTENSIONS, good) == extensions
    # One byte more inside the message than its extensions account for.
    length = int.from_bytes(good[1:4], "big") + 1
    padded = good[:1] + length.to_bytes(3, "big") + good[4:] + b"\x00"
    with pytest.raises(tls.AlertDecodeError):
        parse(tls.HandshakeType.ENCRYPTED_EXTENSIONS, padded)
    # A block longer than the data.
    with pytest.raises(tls.BufferReadError):
        tls.pull_opaque(Buffer(data=b"\x05abc"), 1)
    with pytest.raises(tls.BufferReadError):
        parse(tls.HandshakeType.ENCRYPTED_EXTENSIONS, good[:-1])


@pytest.mark.parametrize("helpers", [ORIGINALS, REPLACEMENTS], ids=["aioquic", "ours"])
def test_exception_inside_a_block_propagates_and_writes_no_length(
        monkeypatch: pytest.MonkeyPatch, helpers: dict[str, Any]) -> None:
    use(monkeypatch, helpers)
    buf = Buffer(capacity=16)
    buf.push_bytes(b"\xee\xee")  # where the length would go
    buf.seek(0)
    with pytest.raises(KeyError):
        with tls.push_block(buf, 2):
            buf.push_bytes(b"abc")
            raise KeyError("body")
    assert buf.tell() == 5
    assert buf.data_slice(0, 2) == b"\xee\xee"
    with tls.push_extension(buf, 0x1234):
        buf.push_bytes(b"z")
    assert buf.data_slice(5, 10) == b"\x12\x34\x00\x01z"
