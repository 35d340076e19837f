"""The upstream pool over TLS (an `https://` endpoint, e.g. a remote OpenAI-compatible server): a real TLS server
on loopback with a certificate made for the test by openssl."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shared.h1client import Origin, UpstreamPool
from tests.harness import require_binary

ANSWER = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"ok":true}'


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    openssl = require_binary("openssl", "openssl")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subject = ["-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"]
    files = ["-keyout", str(key), "-out", str(cert)]
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", *subject, *files],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


class TlsEndpoint:
    """Answers every request on every connection with ANSWER; records connections and request heads."""

    def __init__(self) -> None:
        self.connections = 0
        self.heads: list[bytes] = []
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ),
                    0,
                )
                await reader.readexactly(length)
                self.heads.append(head)
                writer.write(ANSWER)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def endpoint(certificate: tuple[Path, Path]) -> AsyncIterator[TlsEndpoint]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    served = TlsEndpoint()
    server = await asyncio.start_server(served.handle, "127.0.0.1", 0, ssl=context)
    served.port = server.sockets[0].getsockname()[1]
    async with server:
        yield served


async def test_https_endpoint_is_reached_over_tls_and_the_connection_is_kept(
    endpoint: TlsEndpoint, certificate: tuple[Path, Path]
) -> None:
    trust = ssl.create_default_context(cafile=str(certificate[0]))
    pool = UpstreamPool(keepalive_s=30, ssl_context=trust)
    origin = Origin.parse(f"https://127.0.0.1:{endpoint.port}/api")
    try:
        for _ in range(2):
            response = await pool.request(
                origin, "POST", "/v1/chat/completions", [("Content-Type", "application/json")], b"{}",
                connect_timeout_s=10, head_timeout_s=10, read_timeout_s=10,
            )  # fmt: skip
            assert response.status == 200
            body = response.read_nowait() or await response.readany()
            assert body == b'{"ok":true}'
            assert response.at_eof()
            response.release()
        assert endpoint.connections == 1  # the TLS handshake is paid once, not per request
        assert endpoint.heads[0].startswith(b"POST /api/v1/chat/completions HTTP/1.1\r\n")
        assert f"\r\nHost: 127.0.0.1:{endpoint.port}\r\n".encode() in endpoint.heads[0]
    finally:
        await pool.close()


async def test_an_untrusted_certificate_is_refused_as_a_connection_error(endpoint: TlsEndpoint) -> None:
    pool = UpstreamPool(keepalive_s=30)  # the system's trust store: the test's certificate is not in it
    origin = Origin.parse(f"https://127.0.0.1:{endpoint.port}")
    try:
        with pytest.raises(ssl.SSLCertVerificationError) as caught:
            await pool.request(
                origin, "POST", "/v1/chat/completions", [], b"{}",
                connect_timeout_s=10, head_timeout_s=10, read_timeout_s=10,
            )  # fmt: skip
        # An OSError: the router reports the endpoint unreachable and fails over, never a 500.
        assert isinstance(caught.value, OSError)
        assert pool.open_connections == 0
    finally:
        await pool.close()
