"""Regression (issue 10): the relay's engine calls must carry a whole socket read.

pyOpenSSL enables SSL_MODE_ENABLE_PARTIAL_WRITE on every context, so one SSL_write encrypted
only the first 16 KiB record of the up-to-256 KiB chunk the relay hands it, and the rest was
silently dropped: a broker sending bulk data lost ~94 % of it on the way to the client (found by
tests/e2e/test_hostile.py's "client that never reads" case). The peer here is stdlib ``ssl``
over memory BIOs (a real TLS client, no sockets).
"""

from __future__ import annotations

import ssl

import pytest
from OpenSSL import SSL

from tests.certkit import Pki
from tlsgate.tls import engine


def _pair(pki: Pki, version: ssl.TLSVersion) -> tuple[engine.ServerSession, ssl.SSLObject,
                                                      ssl.MemoryBIO, ssl.MemoryBIO]:
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.use_certificate_chain_file(str(pki.server.cert))
    ctx.use_privatekey_file(str(pki.server.key))
    out: list[bytes] = []
    sess = engine.ServerSession(ctx, out.append)
    cctx = ssl.create_default_context(cafile=str(pki.ca_pem))
    cctx.minimum_version = cctx.maximum_version = version
    inc, outg = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = cctx.wrap_bio(inc, outg, server_hostname="localhost")
    for _ in range(10):
        try:
            client.do_handshake()
            break
        except ssl.SSLWantReadError:
            pass
        sess.feed(outg.read())
        sess.handshake()
        inc.write(b"".join(out))
        out.clear()
    sess.feed(outg.read())  # the client's Finished (TLS 1.3) / nothing more (TLS 1.2)
    sess.read_plain()
    inc.write(b"".join(out))
    return sess, client, inc, outg


def _read_all(client: ssl.SSLObject) -> bytes:
    got = bytearray()
    try:
        while True:
            got += client.read(1 << 20)
    except ssl.SSLWantReadError:
        pass
    return bytes(got)


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2],
                         ids=["tls1.3", "tls1.2"])
def test_encrypt_in_carries_a_whole_256k_read(pki: Pki, version: ssl.TLSVersion) -> None:
    sess, client, inc, _ = _pair(pki, version)
    for n in (1, 16384, 16385, 100_000, engine.BUF_SIZE):
        engine.INBUF[:n] = bytes([n % 251]) * n
        inc.write(sess.encrypt_in(n))
        assert _read_all(client) == bytes([n % 251]) * n, n


def test_encrypt_carries_more_than_one_record(pki: Pki) -> None:
    sess, client, inc, _ = _pair(pki, ssl.TLSVersion.TLSv1_3)
    data = bytes(range(256)) * 800  # 200 KiB
    inc.write(sess.encrypt(data))
    assert _read_all(client) == data


