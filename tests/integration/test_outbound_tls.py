"""The guarded path connects to the checked address but speaks to the name: TLS SNI, the
certificate check and the Host header all carry the name the URL gave (a real TLS server on
127.0.0.2 with a certificate for ``images.test``, which a resolver the test controls maps)."""

from __future__ import annotations

import datetime
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from imagestudio.errors import UnsafeURL
from imagestudio.security.http import Outbound, OutboundPolicy
from imagestudio.security.netguard import system_resolve
from testkit.canary import ScriptedResolver

NAME = "images.test"


def _certificate(tmp: Path) -> tuple[Path, Path, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, NAME)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(NAME)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(pem)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path, pem


@dataclass
class TLSServer:
    port: int
    ca: bytes
    sni: list[str | None] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSServer]:
    cert, key, pem = _certificate(tmp_path_factory.mktemp("tls"))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.2", 0))
    listener.settimeout(0.1)
    server = TLSServer(listener.getsockname()[1], pem)
    context.sni_callback = lambda sock, name, ctx: server.sni.append(name)  # type: ignore[assignment,misc,return-value]
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                raw, _ = listener.accept()
            except TimeoutError:
                continue
            try:
                with context.wrap_socket(raw, server_side=True) as conn:
                    request = conn.recv(65536).decode("latin-1")
                    host = next(
                        (
                            line.split(":", 1)[1].strip()
                            for line in request.split("\r\n")
                            if line.lower().startswith("host:")
                        ),
                        "",
                    )
                    server.hosts.append(host)
                    body = host.encode()
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: "
                        + str(len(body)).encode()
                        + b"\r\n\r\n"
                        + body
                    )
            except (OSError, ssl.SSLError):
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server
    stop.set()
    thread.join(5)
    listener.close()


async def test_sni_certificate_and_host_keep_the_name(tls_server: TLSServer) -> None:
    resolver = ScriptedResolver({NAME: [["127.0.0.2"]]}, system_resolve)
    client_context = ssl.create_default_context(cadata=tls_server.ca.decode())
    outbound = Outbound(
        OutboundPolicy.of([f"127.0.0.2:{tls_server.port}"], resolver), ssl_context=client_context
    )
    try:
        answer = await outbound.request("GET", f"https://{NAME}:{tls_server.port}/")
    finally:
        await outbound.aclose()
    assert answer.status == 200
    assert answer.body == f"{NAME}:{tls_server.port}".encode()  # the Host header
    assert tls_server.sni[-1] == NAME  # the TLS server name, not 127.0.0.2
    assert resolver.calls == [NAME]  # resolved once, by the guarded path


async def test_a_name_resolving_to_a_refused_address_gets_no_handshake(
    tls_server: TLSServer,
) -> None:
    before = len(tls_server.sni)
    resolver = ScriptedResolver({NAME: [["127.0.0.2"]]}, system_resolve)
    outbound = Outbound(OutboundPolicy.of([], resolver))  # 127.0.0.2 not allow-listed
    try:
        with pytest.raises(UnsafeURL, match="non-public address"):
            await outbound.request("GET", f"https://{NAME}:{tls_server.port}/")
    finally:
        await outbound.aclose()
    assert len(tls_server.sni) == before
