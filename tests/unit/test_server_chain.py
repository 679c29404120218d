"""The server's certificate chain is completed once, when the context is built
(tlsgate.tls.unbound.build_cert_chain), not by OpenSSL in every handshake.

With a certfile that holds only the leaf, OpenSSL builds the chain to send from the verify store
(``cacertfile``) in each handshake -- an X509_verify_cert of our own certificate per client,
~70 µs with the issuer in the store. tlsgate builds it at load time instead; what a client
receives must not change. Each test compares the chain a real client (pyOpenSSL over memory
BIOs) receives with the chain OpenSSL's per-handshake building sends (the build switched off).
"""

from __future__ import annotations

import contextlib
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL

from tests.certkit import Pki
from tlsgate.config.schema import ServerSslOptions
from tlsgate.tls import unbound
from tlsgate.tls.context import ServerContext, build_server_context


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


def _received_chain(ctx: ServerContext, server_name: str | None = None) -> list[bytes]:
    """Handshake a pyOpenSSL client (no client certificate) with ``ctx``; the certificates
    the server sent, leaf first, as DER."""
    srv = SSL.Connection(ctx.ctx, None)
    srv.set_accept_state()
    cctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    cctx.set_verify(SSL.VERIFY_NONE)
    cli = SSL.Connection(cctx, None)
    if server_name:
        cli.set_tlsext_host_name(server_name.encode())
    cli.set_connect_state()
    for _ in range(10):
        for a, b in ((cli, srv), (srv, cli)):
            with contextlib.suppress(SSL.WantReadError):
                a.do_handshake()
            with contextlib.suppress(SSL.WantReadError):
                b.bio_write(a.bio_read(65536))
        if cli.get_peer_certificate() is not None and srv.get_cipher_name():
            break
    chain = cli.get_peer_cert_chain(as_cryptography=True)
    assert chain, "the handshake did not complete"
    return [_der(c) for c in chain]


def _leaf_only(pki: Pki, tmp_path: Path) -> Path:
    path = tmp_path / "leaf-only.pem"
    path.write_bytes(pki.server.issued.cert_pem())
    return path


def _ca_bundle(pki: Pki, tmp_path: Path) -> Path:
    """Root and intermediate in one cacertfile (how operators often ship the CA set)."""
    path = tmp_path / "ca-bundle.pem"
    assert pki.intermediate is not None
    path.write_bytes(pki.intermediate.cert_pem() + Path(pki.ca_pem).read_bytes())
    return path


def _both_ways(monkeypatch: pytest.MonkeyPatch, opts: ServerSslOptions,
               server_name: str | None = None) -> tuple[list[bytes], list[bytes], ServerContext]:
    """(chain sent with the build at load time, chain sent with OpenSSL's per-handshake
    building, the context built the first way)."""
    built = build_server_context(opts, "listeners.ssl.t")
    ours = _received_chain(built, server_name)
    with monkeypatch.context() as m:
        m.setattr(unbound, "build_cert_chain", lambda ctx: False)
        per_handshake = _received_chain(build_server_context(opts, "listeners.ssl.t"),
                                        server_name)
    return ours, per_handshake, built


@pytest.fixture(scope="module")
def pki2(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki-intermediate"), intermediate=True)


def test_leaf_only_with_the_root_in_cacertfile(pki: Pki, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The mutual-TLS set-up of the seed: certfile = server leaf, cacertfile = the CA that
    issued it. OpenSSL's automatic chain sends leaf + root; so does the chain built once."""
    opts = ServerSslOptions(certfile=str(_leaf_only(pki, tmp_path)), keyfile=str(pki.server.key),
                            cacertfile=str(pki.ca_pem), verify="verify_peer")
    ours, per_handshake, ctx = _both_ways(monkeypatch, opts)
    assert ours == per_handshake == [pki.server.issued.cert_der(), _der(pki.ca.cert)]
    assert unbound.chain_certs_of(ctx.ctx) == [_der(pki.ca.cert)]


def test_leaf_only_with_intermediate_and_root_in_cacertfile(
        pki2: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert pki2.intermediate is not None
    opts = ServerSslOptions(certfile=str(_leaf_only(pki2, tmp_path)),
                            keyfile=str(pki2.server.key),
                            cacertfile=str(_ca_bundle(pki2, tmp_path)), verify="verify_peer")
    ours, per_handshake, ctx = _both_ways(monkeypatch, opts)
    assert ours == per_handshake == [pki2.server.issued.cert_der(),
                                     _der(pki2.intermediate.cert), _der(pki2.ca.cert)]
    assert unbound.chain_certs_of(ctx.ctx) == [_der(pki2.intermediate.cert), _der(pki2.ca.cert)]


def test_a_chain_in_the_certfile_is_sent_as_it_is(pki2: Pki, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Leaf + intermediate in the file: that is the chain, the store's root is not added, and
    the context's chain is left alone (OpenSSL uses the file's certificates)."""
    assert pki2.intermediate is not None
    opts = ServerSslOptions(certfile=str(pki2.server.cert), keyfile=str(pki2.server.key),
                            cacertfile=str(_ca_bundle(pki2, tmp_path)), verify="verify_peer")
    ours, per_handshake, ctx = _both_ways(monkeypatch, opts)
    assert ours == per_handshake == [pki2.server.issued.cert_der(), _der(pki2.intermediate.cert)]
    assert unbound.chain_certs_of(ctx.ctx) is None


def test_leaf_only_without_a_store_sends_the_leaf(pki: Pki, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """One-way TLS with a leaf-only file: nothing to add. The context still records an empty
    chain, which is what stops OpenSSL from searching the store in every handshake."""
    opts = ServerSslOptions(certfile=str(_leaf_only(pki, tmp_path)), keyfile=str(pki.server.key))
    ours, per_handshake, ctx = _both_ways(monkeypatch, opts)
    assert ours == per_handshake == [pki.server.issued.cert_der()]
    assert unbound.chain_certs_of(ctx.ctx) == []


def test_sni_certificates_are_completed_too(pki: Pki, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    other = pki.issue_server("sni-other", ["other.example"])
    leaf = tmp_path / "sni-leaf.pem"
    leaf.write_bytes(other.issued.cert_pem())
    opts = ServerSslOptions(certfile=str(pki.server.cert), keyfile=str(pki.server.key),
                            cacertfile=str(pki.ca_pem), verify="verify_peer",
                            sni=[{"server_name": "other.example", "certfile": str(leaf),
                                  "keyfile": str(other.key)}])
    ours, per_handshake, ctx = _both_ways(monkeypatch, opts, "other.example")
    assert ours == per_handshake == [other.issued.cert_der(), _der(pki.ca.cert)]
    assert unbound.chain_certs_of(ctx.sni["other.example"]) == [_der(pki.ca.cert)]


# -- the same for tlsgate's client certificate (TLS towards the broker or the auth server) -----
def _client_chain_seen_by_server(pki: Pki, tls: ssl.SSLContext) -> list[bytes]:
    """Handshake the client context with a pyOpenSSL server that asks for a certificate; the
    client's certificates as the server received them, leaf first, DER."""
    sctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    sctx.use_certificate_chain_file(str(pki.server.cert))
    sctx.use_privatekey_file(str(pki.server.key))
    sctx.set_verify(SSL.VERIFY_PEER, lambda *_: True)
    srv = SSL.Connection(sctx, None)
    srv.set_accept_state()
    cin, cout = ssl.MemoryBIO(), ssl.MemoryBIO()
    cli = tls.wrap_bio(cin, cout, server_hostname="localhost")
    for _ in range(10):
        with contextlib.suppress(ssl.SSLWantReadError):
            cli.do_handshake()
        data = cout.read()
        if data:
            srv.bio_write(data)
        with contextlib.suppress(SSL.WantReadError):
            srv.do_handshake()
        with contextlib.suppress(SSL.WantReadError):
            cin.write(srv.bio_read(65536))
        if srv.get_peer_certificate() is not None:
            break
    leaf = srv.get_peer_certificate(as_cryptography=True)
    assert leaf is not None, "the server got no client certificate"
    rest = srv.get_peer_cert_chain(as_cryptography=True) or []  # server side: without the leaf
    return [_der(leaf), *(_der(c) for c in rest)]


def test_a_leaf_only_client_certificate_gets_its_chain_once(
        pki2: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """[upstreams.*.ssl] / [authentication.ssl] with a certfile holding the client leaf alone
    and cacertfile holding its issuers: the broker receives the same chain as with OpenSSL's
    per-handshake building, which tlsgate no longer does for every connection."""
    import ctypes

    from tlsgate.config.schema import ClientSslOptions
    from tlsgate.tls import client_context

    assert pki2.intermediate is not None
    leaf = tmp_path / "client-leaf.pem"
    leaf.write_bytes(pki2.client.issued.cert_pem())
    opts = ClientSslOptions(cacertfile=str(_ca_bundle(pki2, tmp_path)), certfile=str(leaf),
                            keyfile=str(pki2.client.key))
    built = client_context.build_client_tls(opts, "upstreams.default.ssl").context
    native = client_context._native()
    assert native is not None
    ptr = client_context._ctx_pointer(native, built)
    sk = ctypes.c_void_p()
    native.SSL_CTX_ctrl(ptr, 115, 0, ctypes.addressof(sk))  # SSL_CTX_get0_chain_certs
    assert sk.value, "the chain was not built when the context was"
    ours = _client_chain_seen_by_server(pki2, built)
    with monkeypatch.context() as m:
        m.setattr(client_context, "complete_chain", lambda ctx: False)
        per_handshake = _client_chain_seen_by_server(
            pki2, client_context.build_client_tls(opts, "upstreams.default.ssl").context)
    assert ours == per_handshake == [pki2.client.issued.cert_der(),
                                     _der(pki2.intermediate.cert), _der(pki2.ca.cert)]
