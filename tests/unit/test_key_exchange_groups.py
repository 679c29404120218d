"""ssl_options.groups: which key exchange groups a listener accepts, with real handshakes
between tlsgate's ServerSession and real clients over memory BIOs (the bundled OpenSSL 4 through
pyOpenSSL, which can offer the ML-KEM hybrid; CPython's ssl on the system OpenSSL)."""

from __future__ import annotations

from typing import Any

import pytest
from OpenSSL import SSL
from OpenSSL._util import lib as _lib

from tests.certkit import Pki
from tlsgate.config.schema import ServerSslOptions
from tlsgate.tls.context import ContextError, build_server_context
from tlsgate.tls.engine import HandshakeError, ServerSession


def _server(pki: Pki, **opts: Any) -> tuple[ServerSession, list[bytes]]:
    o = ServerSslOptions(certfile=str(pki.server.cert), keyfile=str(pki.server.key), **opts)
    sent: list[bytes] = []
    ctx = build_server_context(o, "listeners.ssl.t")
    return ServerSession(ctx.ctx, sent.append), sent


def _handshake(pki: Pki, client_groups: str, **opts: Any) -> str:
    """Run a full TLS 1.3 handshake; returns the group the server negotiated."""
    sess, sent = _server(pki, **opts)
    cctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    assert _lib.SSL_CTX_set1_curves_list(cctx._context, client_groups.encode()) == 1
    cli = SSL.Connection(cctx, None)
    cli.set_connect_state()
    for _ in range(10):
        try:
            cli.do_handshake()
            cdone = True
        except SSL.WantReadError:
            cdone = False
        try:
            data = cli.bio_read(65536)
        except SSL.WantReadError:
            data = b""
        sdone = False
        if data:
            sess.feed(data)
            sdone = sess.handshake()
        for b in sent:
            cli.bio_write(b)
        sent.clear()
        if cdone and sdone:
            break
    name = sess.group  # what the gate records (the access log's group=)
    assert name is not None, "handshake did not finish"
    return name


def test_default_prefers_the_post_quantum_hybrid(pki: Pki) -> None:
    assert _handshake(pki, "X25519MLKEM768:X25519") == "X25519MLKEM768"
    assert _handshake(pki, "X25519") == "x25519"  # classic clients still work


def test_groups_limit_what_the_listener_accepts(pki: Pki) -> None:
    assert _handshake(pki, "X25519MLKEM768:X25519", groups=["X25519", "P-256"]) == "x25519"
    assert _handshake(pki, "P-256", groups=["X25519", "P-256"]) == "secp256r1"
    with pytest.raises(HandshakeError):  # nothing in common
        _handshake(pki, "X25519MLKEM768", groups=["X25519", "P-256"])


def test_groups_apply_to_sni_certificates_too(pki: Pki) -> None:
    sni = [{"server_name": "other.example", "certfile": str(pki.server.cert),
            "keyfile": str(pki.server.key)}]
    with pytest.raises(HandshakeError):
        _handshake(pki, "X25519MLKEM768", groups=["X25519"], sni=sni)


def test_an_unknown_group_is_a_config_error_naming_the_key(pki: Pki) -> None:
    with pytest.raises(ContextError) as e:
        _server(pki, groups=["X25519", "curve-that-does-not-exist"])
    text = str(e.value)
    assert "listeners.ssl.t.ssl_options.groups" in text
    assert "curve-that-does-not-exist" in text


def test_groups_accepts_a_comma_separated_string(pki: Pki) -> None:
    o = ServerSslOptions(certfile=str(pki.server.cert), keyfile=str(pki.server.key),
                         groups="X25519, P-256")  # type: ignore[arg-type]
    assert o.groups == ["X25519", "P-256"]
