"""TLS settings, certificate checks and the development certificate authority.

QUIC always runs TLS 1.3.  aioquic verifies the *server's* chain on the client;
it does not verify a *client's* chain at all, so :func:`verify_client_certificate`
does that on the server after the handshake, with the ``cryptography`` X.509
verifier, and the connection is closed when it fails.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

__all__ = [
    "ServerTLS",
    "ClientTLS",
    "CertificateError",
    "make_dev_certs",
    "certificate_identity",
    "verify_client_certificate",
]

_PathLike = str | os.PathLike[str]


class CertificateError(Exception):
    """A peer certificate is missing, not signed by the configured CA, or names
    the wrong identity."""


def _path(p: _PathLike | None) -> str | None:
    return None if p is None else os.fspath(p)


@attrs.frozen
class ServerTLS:
    """Server side TLS: our certificate and key (PEM files).

    With ``require_client_cert=True`` every client must present a certificate
    signed by ``ca``; connections that do not are closed before any stream is
    accepted.  The verified identity is then :attr:`QuicConnection.peer_identity`.
    """

    cert: str = attrs.field(converter=_path)
    key: str = attrs.field(converter=_path)
    ca: str | None = attrs.field(default=None, converter=_path)
    require_client_cert: bool = False

    def __attrs_post_init__(self) -> None:
        if self.require_client_cert and self.ca is None:
            raise ValueError("require_client_cert=True needs ca= to verify clients against")
        for name in ("cert", "key", "ca"):
            value = getattr(self, name)
            if value is not None and not os.path.isfile(value):
                raise FileNotFoundError(f"ServerTLS {name}: no such file {value!r}")


@attrs.frozen
class ClientTLS:
    """Client side TLS: the CA that signed the server, and optionally our own
    certificate and key for mutual TLS.  ``server_name`` is checked against the
    server certificate (DNS name or IP address)."""

    ca: str = attrs.field(converter=_path)
    cert: str | None = attrs.field(default=None, converter=_path)
    key: str | None = attrs.field(default=None, converter=_path)
    server_name: str = "localhost"

    def __attrs_post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("ClientTLS needs both cert= and key=, or neither")
        for name in ("ca", "cert", "key"):
            value = getattr(self, name)
            if value is not None and not os.path.isfile(value):
                raise FileNotFoundError(f"ClientTLS {name}: no such file {value!r}")


def certificate_identity(cert: x509.Certificate) -> str:
    """The identity a certificate names: its first common name."""
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names:
        raise CertificateError("certificate has no common name")
    value = names[0].value
    return value if isinstance(value, str) else value.decode()


def _load_store(ca_file: str) -> Store:
    with open(ca_file, "rb") as f:
        return Store(x509.load_pem_x509_certificates(f.read()))


_STORES: dict[str, Store] = {}


def verify_client_certificate(cert: x509.Certificate | None,
                              chain: list[x509.Certificate], ca_file: str) -> str:
    """Verify a client's certificate against ``ca_file``; return its identity.

    Raises :class:`CertificateError` when there is no certificate or it does not
    chain to the CA (expired, wrong CA, wrong key usage, ...).
    """
    if cert is None:
        raise CertificateError("client presented no certificate")
    store = _STORES.get(ca_file)
    if store is None:
        store = _STORES[ca_file] = _load_store(ca_file)
    verifier = PolicyBuilder().store(store).build_client_verifier()
    try:
        verifier.verify(cert, chain)
    except VerificationError as exc:
        raise CertificateError(f"client certificate rejected: {exc}") from exc
    return certificate_identity(cert)


# --- development certificate authority -------------------------------------------

_VALIDITY = datetime.timedelta(days=825)


def _name(cn: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "midswarm development"),
        x509.NameAttribute(NameOID.COMMON_NAME, cn),
    ])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    data = key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _issue(cn: str, ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate,
           *, server: bool, sans: list[x509.GeneralName]) -> tuple[
               ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    usage = x509.oid.ExtendedKeyUsageOID.SERVER_AUTH if server else \
        x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=False,
            crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            ca_key.public_key()), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
    )
    return key, builder.sign(ca_key, hashes.SHA256())


def _agent_sans(agent_id: str) -> list[x509.GeneralName]:
    # The verifier insists on a SAN; a URI keeps the agent id out of DNS space.
    return [x509.UniformResourceIdentifier(f"midswarm://agent/{agent_id}")]


def make_dev_certs(directory: _PathLike, agents: list[str] | tuple[str, ...] = (),
                   coordinator_names: tuple[str, ...] = ("localhost",),
                   coordinator_ips: tuple[str, ...] = ("127.0.0.1", "::1")) -> Path:
    """Write a development CA and certificates into ``directory``.

    Creates ``ca.pem``/``ca.key`` (reused when already present, so more agents
    can be added later), ``coordinator.pem``/``coordinator.key`` valid for
    ``coordinator_names`` and ``coordinator_ips``, and ``<agent>.pem``/
    ``<agent>.key`` for each agent id, whose identity (common name) is the id.
    Keys are written with mode 0600.  Returns the directory.

    Raises :class:`ValueError` for an agent id that is empty, contains a path
    separator, or is named ``ca`` or ``coordinator``.
    """
    out = Path(directory)
    for agent in agents:
        if not agent or "/" in agent or "\\" in agent or agent in ("ca", "coordinator") \
                or agent.startswith("."):
            raise ValueError(f"invalid agent id {agent!r}")
    out.mkdir(parents=True, exist_ok=True)
    ca_pem, ca_key_path = out / "ca.pem", out / "ca.key"
    if ca_pem.exists() and ca_key_path.exists():
        ca_cert = x509.load_pem_x509_certificate(ca_pem.read_bytes())
        loaded = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{ca_key_path} is not an EC key")
        ca_key = loaded
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(_name("midswarm development CA"))
            .issuer_name(_name("midswarm development CA"))
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        _write_key(ca_key, ca_key_path)
        ca_pem.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))

    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in coordinator_names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in coordinator_ips]
    key, cert = _issue("coordinator", ca_key, ca_cert, server=True, sans=sans)
    _write_key(key, out / "coordinator.key")
    (out / "coordinator.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    for agent in agents:
        key, cert = _issue(agent, ca_key, ca_cert, server=False, sans=_agent_sans(agent))
        _write_key(key, out / f"{agent}.key")
        (out / f"{agent}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return out
