"""The engine's encrypt paths carry plaintext larger than one TLS record, whole.

Regression (found by the interop matrix, issue 11): pyOpenSSL enables
SSL_MODE_ENABLE_PARTIAL_WRITE on every context, with which SSL_write returns after the first
16 KiB record even into a memory BIO; ``encrypt_in`` dropped the rest, so a broker->client
PUBLISH above 16 KiB never arrived. The peer here is the stdlib ``ssl`` module over memory BIOs
(a real TLS client, no sockets).
"""

from __future__ import annotations

import os
import ssl

import pytest
from OpenSSL import SSL

from tests.certkit import Pki
from tlsgate.tls.engine import INBUF, ServerSession


def _pump(client: ssl.SSLObject, c_in: ssl.MemoryBIO, c_out: ssl.MemoryBIO,
          server: ServerSession, to_client: list[bytes]) -> None:
    """Run the handshake to completion, moving bytes between the two ends."""
    for _ in range(20):
        try:
            client.do_handshake()
            done = True
        except ssl.SSLWantReadError:
            done = False
        data = c_out.read()
        if data:
            server.feed(data)
            server.handshake()
        for chunk in to_client:
            c_in.write(chunk)
        to_client.clear()
        if done:
            # TLS 1.3: the server's tickets follow its Finished; let the client read them.
            return
    raise AssertionError("handshake did not finish")


@pytest.fixture(params=["tls1.2", "tls1.3"])
def pair(request: pytest.FixtureRequest, pki: Pki
         ) -> tuple[ServerSession, ssl.SSLObject, ssl.MemoryBIO, list[bytes]]:
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)  # pyOpenSSL's defaults, PARTIAL_WRITE included
    ctx.use_certificate_chain_file(str(pki.server.cert))
    ctx.use_privatekey_file(str(pki.server.key))
    to_client: list[bytes] = []
    server = ServerSession(ctx, to_client.append)
    cctx = ssl.create_default_context(cafile=str(pki.ca_pem))
    version = ssl.TLSVersion.TLSv1_2 if request.param == "tls1.2" else ssl.TLSVersion.TLSv1_3
    cctx.minimum_version = cctx.maximum_version = version
    c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = cctx.wrap_bio(c_in, c_out, server_hostname="localhost")
    _pump(client, c_in, c_out, server, to_client)
    return server, client, c_in, to_client


def _read_all(client: ssl.SSLObject, want: int) -> bytes:
    got = bytearray()
    while len(got) < want:
        try:
            chunk = client.read(65536)
        except ssl.SSLWantReadError:
            break
        if not chunk:
            break
        got += chunk
    return bytes(got)


@pytest.mark.parametrize("size", [1, 16384, 16385, 70_000, 256 * 1024])
def test_encrypt_in_sends_everything(size: int, pair: tuple[ServerSession, ssl.SSLObject,
                                                             ssl.MemoryBIO, list[bytes]]) -> None:
    server, client, c_in, _ = pair
    payload = os.urandom(size)
    INBUF[:size] = payload
    c_in.write(server.encrypt_in(size))
    assert _read_all(client, size) == payload


def test_encrypt_sends_everything(pair: tuple[ServerSession, ssl.SSLObject, ssl.MemoryBIO,
                                              list[bytes]]) -> None:
    server, client, c_in, _ = pair
    payload = os.urandom(100_000)
    c_in.write(server.encrypt(payload))
    assert _read_all(client, len(payload)) == payload
