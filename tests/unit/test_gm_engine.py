"""The 国密 engine (tlsgate.tls.gm) and SM2 PKI (tlsgate.tls.gm_certs).

Interoperability is proven with an independent peer: ``tests/gmclient.py``, Tongsuo's own client
side on a real socket in a separate process, against ``GmTestServer`` below, a blocking-socket
loop around ``GmSession`` that stands in for the gateway until the gateway drives GM listeners
(a stand-in for tlsgate's own I/O loop, not for any peer). Non-GM clients are the real
``openssl s_client``. The broker in the example test is a real mosquitto.
"""

from __future__ import annotations

import json
import os
import queue
import select
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tlsgate.config.schema import GmSslOptions
from tlsgate.tls.context import ContextError
from tlsgate.tls.engine import IN_VIEW, INBUF
from tlsgate.tls.gm import (
    GmConfigError,
    GmServerContext,
    GmSession,
    GmUnavailableError,
    HandshakeError,
    TlsError,
    _lib,
    build_gm_context,
    library_info,
)
from tlsgate.tls.gm_certs import GmCertError, Sm2Dir, init_sm2_dir

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent
GMCLIENT = TESTS / "gmclient.py"
from tests import gmclient  # noqa: E402  (tests/gmclient.py: the independent Tongsuo client)


# ------------------------------------------------------------------------------------------
# fixtures
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Sm2Dir:
    return init_sm2_dir(tmp_path_factory.mktemp("sm2"), ["localhost", "127.0.0.1"],
                        ["dev1"], days=30)


@pytest.fixture(scope="session")
def rogue(tmp_path_factory: pytest.TempPathFactory) -> Sm2Dir:
    """A second, unrelated SM2 CA with its own server and client pairs."""
    return init_sm2_dir(tmp_path_factory.mktemp("rogue"), ["localhost"], ["mallory"], days=30)


def opts(pki: Sm2Dir, **kw: Any) -> GmSslOptions:
    base: dict[str, Any] = dict(
        sign_certfile=str(pki.server.sign_cert), sign_keyfile=str(pki.server.sign_key),
        enc_certfile=str(pki.server.enc_cert), enc_keyfile=str(pki.server.enc_key))
    base.update(kw)
    return GmSslOptions(**base)


def mutual(pki: Sm2Dir, **kw: Any) -> GmSslOptions:
    return opts(pki, verify="verify_peer", cacertfile=str(pki.ca_cert),
                fail_if_no_peer_cert=True, **kw)


class GmTestServer:
    """Accept loop + one thread per connection driving a GmSession over a blocking socket.

    Echoes what it decrypts in upper case, or relays it to ``upstream`` (host, port). Every
    connection's outcome goes to ``results``: a dict with version, cipher, server_name,
    peer_cert_der, or error.
    """

    def __init__(self, ctx: GmServerContext, upstream: tuple[str, int] | None = None) -> None:
        self.ctx = ctx
        self.upstream = upstream
        self.results: queue.Queue[dict[str, Any]] = queue.Queue()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self._stop = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(15)
        sent: list[bytes] = []

        def send(data: bytes) -> None:
            sent.append(data)
            conn.sendall(data)

        s = self.ctx.new_session(send)
        res: dict[str, Any] = {}
        try:
            while True:
                mark = len(sent)
                try:
                    if s.handshake():
                        break
                except HandshakeError:
                    res["alert"] = b"".join(sent[mark:])
                    raise
                data = conn.recv(65536)
                if not data:
                    res["error"] = "EOF during handshake"
                    return
                s.feed(data)
            cert = s.peer_certificate()
            res.update(version=s.version, cipher=s.cipher, server_name=s.server_name,
                       peer_cert_der=s.peer_cert_der, alpn=s.alpn, reused=s.session_reused,
                       cert_cn=cn_of(cert.public_bytes(serialization.Encoding.DER))
                       if cert else None, chain_len=len(s.peer_chain()))
            if self.upstream:
                self._relay(conn, s)
            else:
                self._echo(conn, s)
        except HandshakeError as exc:
            res["error"] = exc.reason
        except (TlsError, OSError) as exc:
            res["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            conn.close()
            s.free()
            self.results.put(res)

    def _echo(self, conn: socket.socket, s: GmSession) -> None:
        while True:
            data = conn.recv(65536)
            if not data:
                return
            s.feed(data)
            pt = s.read_plain()
            if pt:
                conn.sendall(s.encrypt(pt.upper()))
            if s.peer_closed:
                s.close_notify()
                return

    def _relay(self, conn: socket.socket, s: GmSession) -> None:
        assert self.upstream
        up = socket.create_connection(self.upstream, timeout=15)
        try:
            while True:
                r, _, _ = select.select([conn, up], [], [], 15)
                if not r:
                    return
                if conn in r:
                    data = conn.recv(65536)
                    if not data:
                        return
                    s.feed(data)
                    pt = s.read_plain()
                    if pt:
                        up.sendall(pt)
                    if s.peer_closed:
                        return
                if up in r:
                    n = up.recv_into(IN_VIEW)  # the gateway's path: INBUF -> encrypt_in
                    if not n:
                        s.close_notify()
                        return
                    conn.sendall(s.encrypt_in(n))
        finally:
            up.close()

    def result(self) -> dict[str, Any]:
        return self.results.get(timeout=20)

    def close(self) -> None:
        self._stop = True
        self.sock.close()


@pytest.fixture
def serve() -> Iterator[Any]:
    servers: list[GmTestServer] = []

    def start(o: GmSslOptions, upstream: tuple[str, int] | None = None) -> GmTestServer:
        srv = GmTestServer(GmServerContext.build(o), upstream)
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.close()


def client(port: int, protocol: str, *args: Any) -> dict[str, Any]:
    """Run tests/gmclient.py in its own process; its JSON result."""
    proc = subprocess.run([sys.executable, str(GMCLIENT), "--connect", f"127.0.0.1:{port}",
                           "--protocol", protocol, *(str(a) for a in args)],
                          capture_output=True, text=True, timeout=60)
    lines = proc.stdout.strip().splitlines()
    assert lines, f"gmclient printed nothing; stderr: {proc.stderr}"
    out: dict[str, Any] = json.loads(lines[-1])
    assert (proc.returncode == 0) == out["ok"], (proc.returncode, out)
    return out


def client_pair_args(p: Any) -> list[str]:
    return ["--sign-cert", str(p.sign_cert), "--sign-key", str(p.sign_key),
            "--enc-cert", str(p.enc_cert), "--enc-key", str(p.enc_key)]


def cn_of(der: bytes) -> str:
    cert = x509.load_der_x509_certificate(der)
    return str(cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value)


# ------------------------------------------------------------------------------------------
# handshakes with the independent Tongsuo client
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("protocol,cipher,needs_client_cert", [
    ("tlcp", "ECC-SM2-SM4-GCM-SM3", False),
    ("tlcp", "ECC-SM2-SM4-CBC-SM3", False),
    ("tlcp", "ECDHE-SM2-SM4-GCM-SM3", True),   # TLCP's ECDHE needs the client's enc cert
    ("tlcp", "ECDHE-SM2-SM4-CBC-SM3", True),
    ("tls13", "TLS_SM4_GCM_SM3", False),
    ("tls13", "TLS_SM4_CCM_SM3", False),
])
def test_gm_client_completes_handshake_verifies_server_and_exchanges_data(
        pki: Sm2Dir, serve: Any, protocol: str, cipher: str, needs_client_cert: bool) -> None:
    srv = serve(mutual(pki) if needs_client_cert else opts(pki))
    extra = client_pair_args(pki.clients["dev1"]) if needs_client_cert else []
    if protocol == "tls13" and needs_client_cert:
        extra = extra[:4]
    out = client(srv.port, protocol, "--cipher", cipher, "--cafile", str(pki.ca_cert),
                 "--verify-name", "localhost", "--servername", "localhost",
                 "--send", "hello 国密", "--expect", len("HELLO 国密".encode()), *extra)
    assert out["ok"], out
    assert out["version"] == ("NTLSv1.1" if protocol == "tlcp" else "TLSv1.3")
    assert out["cipher"] == cipher
    assert out["verify_result"] == 0 and out["verify"] == "ok"
    assert out["peer_subject"] == "/CN=localhost"
    assert out["received"] == "HELLO 国密"
    res = srv.result()
    assert "error" not in res, res
    assert res["version"] == ("TLCP" if protocol == "tlcp" else "TLSv1.3")
    assert res["cipher"] == cipher
    assert res["server_name"] == "localhost"
    assert res["alpn"] is None


@pytest.mark.parametrize("protocol", ["tlcp", "tls13"])
def test_mutual_gm_tls_exposes_the_client_sign_certificate(pki: Sm2Dir, serve: Any,
                                                           protocol: str) -> None:
    srv = serve(mutual(pki))
    pair = client_pair_args(pki.clients["dev1"])
    out = client(srv.port, protocol, "--cafile", pki.ca_cert, "--send", "x", "--expect", 1,
                 *(pair if protocol == "tlcp" else pair[:4]))
    assert out["ok"], out
    res = srv.result()
    assert res["peer_cert_der"] is not None, res
    assert cn_of(res["peer_cert_der"]) == "dev1" and res["cert_cn"] == "dev1"
    assert res["chain_len"] == 2  # dev1, then the SM2 CA
    # the SIGN certificate, not the enc one
    sign_der = x509.load_pem_x509_certificate(pki.clients["dev1"].sign_cert.read_bytes()) \
        .public_bytes(serialization.Encoding.DER)
    assert res["peer_cert_der"] == sign_der


@pytest.mark.parametrize("protocol", ["tlcp", "tls13"])
def test_mutual_refuses_client_without_certificate(pki: Sm2Dir, serve: Any,
                                                   protocol: str) -> None:
    srv = serve(mutual(pki))
    # (in TLS 1.3 the client's handshake ends before the server judges its certificate: the
    # refusal shows on the client's first read)
    out = client(srv.port, protocol, "--cafile", pki.ca_cert, "--send", "x", "--expect", 1,
                 *(["--cipher", "ECC-SM2-SM4-GCM-SM3"] if protocol == "tlcp" else []))
    assert not out["ok"]
    res = srv.result()
    assert res["error"] == "client sent no certificate (fail_if_no_peer_cert)", res
    # an alert went to the client (TLS 1.3 encrypts it: record type application_data)
    assert res["alert"][:1] == (b"\x15" if protocol == "tlcp" else b"\x17")


@pytest.mark.parametrize("protocol", ["tlcp", "tls13"])
def test_mutual_refuses_certificate_from_another_ca(pki: Sm2Dir, rogue: Sm2Dir, serve: Any,
                                                    protocol: str) -> None:
    srv = serve(mutual(pki))
    pair = client_pair_args(rogue.clients["mallory"])
    out = client(srv.port, protocol, "--cafile", pki.ca_cert, "--send", "x", "--expect", 1,
                 *(pair if protocol == "tlcp" else pair[:4]))
    assert not out["ok"]
    res = srv.result()
    assert res["error"].startswith("client certificate verify failed: unable to get local "
                                   "issuer certificate"), res


def test_verify_none_listener_has_no_ecdhe_and_no_peer_certificate(
        pki: Sm2Dir, serve: Any) -> None:
    """TLCP ECDHE is mutual only (and Tongsuo verifies the client chain even on verify_none):
    a verify_none listener does not offer it, refuses it in `ciphers`, and exposes no
    client certificate even if a client sends one."""
    with pytest.raises(GmConfigError) as ei:
        GmServerContext.build(opts(pki, ciphers=["ECDHE-SM2-SM4-GCM-SM3", "TLS_SM4_GCM_SM3"]))
    assert ei.value.key == "ciphers" and "verify_peer" in ei.value.message
    srv = serve(opts(pki))
    refused = client(srv.port, "tlcp", "--cipher", "ECDHE-SM2-SM4-GCM-SM3", "--cafile",
                     pki.ca_cert, *client_pair_args(pki.clients["dev1"]))
    assert not refused["ok"]
    assert srv.result()["error"] == "no cipher suite in common with the client"
    out = client(srv.port, "tls13", "--cafile", pki.ca_cert, "--send", "a", "--expect", 1,
                 *client_pair_args(pki.clients["dev1"])[:4])
    assert out["ok"], out
    assert srv.result()["peer_cert_der"] is None


def test_client_rejects_server_from_another_ca(pki: Sm2Dir, rogue: Sm2Dir,
                                               serve: Any) -> None:
    """The client really verifies: against the wrong CA it refuses the server."""
    srv = serve(opts(pki))
    out = client(srv.port, "tlcp", "--cafile", rogue.ca_cert)
    assert not out["ok"]
    assert "certificate verify failed" in out["error"]
    assert "error" in srv.result()


def test_default_suites_serve_a_certless_tlcp_client_offering_everything(
        pki: Sm2Dir, serve: Any) -> None:
    """A client offering every TLCP suite but holding no certificate must get ECC-SM2, not
    ECDHE-SM2 (which would need its encryption certificate)."""
    srv = serve(opts(pki))
    out = client(srv.port, "tlcp", "--cafile", pki.ca_cert, "--send", "q", "--expect", 1)
    assert out["ok"], out
    assert out["cipher"] == "ECC-SM2-SM4-GCM-SM3"


@pytest.mark.parametrize("protocols,refused", [(["tlcp"], "tls13"), (["tlsv1.3"], "tlcp")])
def test_protocols_setting_restricts(pki: Sm2Dir, serve: Any, protocols: list[str],
                                     refused: str) -> None:
    srv = serve(opts(pki, protocols=protocols))
    out = client(srv.port, refused, "--cafile", pki.ca_cert, "--send", "x", "--expect", 1)
    assert not out["ok"]
    assert "error" in srv.result()
    ok = client(srv.port, "tlcp" if refused == "tls13" else "tls13", "--cafile", pki.ca_cert)
    assert ok["ok"], ok


@pytest.mark.parametrize("flag,alert", [("-tls1_2", "protocol version"),
                                        ("-tls1_3", "handshake failure")])
def test_non_gm_client_gets_handshake_failure_not_a_crash(pki: Sm2Dir, serve: Any, flag: str,
                                                          alert: str) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl CLI not installed")
    srv = serve(opts(pki))
    proc = subprocess.run([openssl, "s_client", "-connect", f"127.0.0.1:{srv.port}", flag,
                           "-servername", "localhost"], input="", capture_output=True,
                          text=True, timeout=30)
    assert f"alert {alert}" in proc.stderr, proc.stderr
    res = srv.result()
    assert res["error"] == ("client offered only TLS versions this listener does not allow"
                            if flag == "-tls1_2" else
                            "no cipher suite in common with the client"), res
    assert res["alert"][:1] == b"\x15"
    # the server is still fine
    assert client(srv.port, "tls13", "--cafile", pki.ca_cert)["ok"]


# ------------------------------------------------------------------------------------------
# the session API, in process (memory BIOs on both sides)
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tlib() -> Any:
    return gmclient.load()


class Out(list[bytes]):
    """A session's ``send``: collects what would go to the client."""

    def take(self) -> bytes:
        data = b"".join(self)
        self.clear()
        return data


def session(ctx: GmServerContext) -> tuple[GmSession, Out]:
    out = Out()
    return ctx.new_session(out.append), out


def pump(c: gmclient.MemoryClient, s: GmSession, out: Out, byte_by_byte: bool = False) -> None:
    for _ in range(50):
        cdone = c.handshake()
        data = c.take_output()
        if byte_by_byte:
            for i in range(len(data)):
                s.feed(data[i:i + 1])
                assert not s.handshake() or i == len(data) - 1
        else:
            s.feed(data)
        sdone = s.handshake()
        c.feed(out.take())
        if cdone and sdone:
            c.handshake()
            return
    raise AssertionError("handshake did not finish")


def via_inbuf(s: GmSession, data: bytes) -> bytes:
    """The gateway's path: a socket read lands in INBUF, then decrypt(n)."""
    plain = b""
    for i in range(0, len(data), len(INBUF)):
        chunk = data[i:i + len(INBUF)]
        INBUF[:len(chunk)] = chunk
        plain += s.decrypt(len(chunk))
    return plain


@pytest.mark.parametrize("protocol", ["tlcp", "tls13"])
def test_session_handles_records_split_and_joined(pki: Sm2Dir, tlib: Any,
                                                  protocol: str) -> None:
    ctx = GmServerContext.build(opts(pki))
    c = gmclient.MemoryClient(tlib, gmclient.client_ctx(tlib, protocol, cafile=str(pki.ca_cert)))
    s, out = session(ctx)
    assert s.version == "" and s.server_name is None and s.peer_cert_der is None
    pump(c, s, out, byte_by_byte=True)  # the protocol sniff and the handshake survive 1-byte feeds
    assert s.version == ("TLCP" if protocol == "tlcp" else "TLSv1.3")
    assert s.cipher == ("ECC-SM2-SM4-GCM-SM3" if protocol == "tlcp" else "TLS_SM4_GCM_SM3")
    assert not s.session_reused and s.peer_certificate() is None and s.peer_chain() == []
    big = os.urandom(200_000)
    assert via_inbuf(s, c.write(big)) == big     # many records in one decrypt(n) call
    s.feed(c.write(b"small"))
    assert s.read_plain() == b"small" and not s.peer_closed
    INBUF[:len(big) // 2] = big[:len(big) // 2]  # the relay's path back: INBUF -> encrypt_in
    c.feed(s.encrypt_in(len(big) // 2) + s.encrypt(big[len(big) // 2:]))
    got = b""
    while len(got) < len(big):
        chunk = c.read()
        assert chunk
        got += chunk
    assert got == big
    s.feed(c.close())
    assert s.read_plain() == b"" and s.peer_closed
    s.close_notify()
    s.close_notify()  # idempotent
    # close_notify is one alert record (TLS 1.3: encrypted, outer type application_data)
    sent = out.take()
    assert sent[:1] == (b"\x15" if protocol == "tlcp" else b"\x17")
    assert len(sent) == 5 + int.from_bytes(sent[3:5], "big")
    c.free()
    s.free()


@pytest.mark.parametrize("protocol", ["tlcp", "tls13"])
def test_leaf_only_sign_certificate_chain_is_built_once_and_unchanged(
        pki: Sm2Dir, tlib: Any, protocol: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A verify_peer listener whose sign certificate file holds the leaf alone: the chain is
    completed from cacertfile when the context is built (engine._complete_chain), not by the
    library in every handshake; the client receives exactly what the library's per-handshake
    building sends (TLCP: sign, enc, CA; TLS 1.3: sign, CA)."""
    import tlsgate.tls.gm.engine as gm_engine

    assert pki.server.sign_cert.read_bytes().count(b"BEGIN CERTIFICATE") == 1

    def chain_set_on(ctx: GmServerContext) -> list[bytes] | None:
        """The chain the context holds for its sign certificate (None: none, the library
        builds one per handshake)."""
        import ctypes

        lib, raw = ctx._lib, ctx._ntls if protocol == "tlcp" else ctx._tls13
        lib.SSL_CTX_ctrl(raw, 117, 1, None)  # SSL_CTX_set_current_cert(SSL_CERT_SET_FIRST)
        sk = ctypes.c_void_p()
        lib.SSL_CTX_ctrl(raw, 115, 0, ctypes.addressof(sk))  # SSL_CTX_get0_chain_certs
        if not sk.value:
            return None
        return [gm_engine._x509_der(lib, lib.OPENSSL_sk_value(sk.value, i))
                for i in range(int(lib.OPENSSL_sk_num(sk.value)))]

    chains: list[list[bytes] | None] = []

    def received() -> list[bytes]:
        ctx = GmServerContext.build(opts(pki, verify="verify_peer", cacertfile=str(pki.ca_cert)))
        chains.append(chain_set_on(ctx))
        c = gmclient.MemoryClient(tlib, gmclient.client_ctx(tlib, protocol,
                                                            cafile=str(pki.ca_cert)))
        s, out = session(ctx)
        pump(c, s, out)
        lib = ctx._lib
        sk = lib.SSL_get_peer_cert_chain(c.ssl)
        ders = [gm_engine._x509_der(lib, lib.OPENSSL_sk_value(sk, i))
                for i in range(int(lib.OPENSSL_sk_num(sk)))]
        c.free()
        s.free()
        return [d for d in ders if d]

    def der(path: Path) -> bytes:
        return x509.load_pem_x509_certificate(path.read_bytes()).public_bytes(
            serialization.Encoding.DER)

    built = received()
    with monkeypatch.context() as m:
        m.setattr(gm_engine, "_complete_chain", lambda lib, ctx: None)
        per_handshake = received()
    expected = [der(pki.server.sign_cert)]
    if protocol == "tlcp":
        expected.append(der(pki.server.enc_cert))
    expected.append(der(pki.ca_cert))
    assert built == per_handshake == expected
    assert chains == [[der(pki.ca_cert)], None]


def test_garbage_and_plain_mqtt_are_refused(pki: Sm2Dir) -> None:
    ctx = GmServerContext.build(opts(pki))
    connect = b"\x10\x10\x00\x04MQTT\x04\x02\x00\x3c\x00\x04test"
    for data, reason, alert in (
            (connect, "client did not speak TLS (garbage or plain MQTT on the TLS port)", False),
            (b"GET / HTTP/1.1\r\n\r\n", "client sent plain HTTP, not TLS", False),
            (b"\x16\x03\x01\x00\x05hello", None, True)):
        s, out = session(ctx)
        s.feed(data)
        with pytest.raises(HandshakeError) as ei:
            while not s.handshake():
                s.feed(b"\x00" * 64)
        assert ei.value.reason == reason if reason else ei.value.reason
        # not TLS at all: no alert (OpenSSL's choice); a broken ClientHello: a plaintext alert
        sent = out.take()
        assert sent[:1] == b"\x15" if alert else sent == b"", (data, sent)


def test_tls_errors_after_the_handshake(pki: Sm2Dir, tlib: Any) -> None:
    ctx = GmServerContext.build(opts(pki))
    s, out = session(ctx)
    with pytest.raises(TlsError):
        s.read_plain()
    with pytest.raises(TlsError):
        s.encrypt(b"x")
    c = gmclient.MemoryClient(tlib, gmclient.client_ctx(tlib, "tls13", cafile=str(pki.ca_cert)))
    s, out = session(ctx)
    pump(c, s, out)
    rec = bytearray(c.write(b"payload"))
    rec[-1] ^= 0xFF                     # break the AEAD tag
    s.feed(bytes(rec))
    with pytest.raises(TlsError) as ei:
        s.read_plain()
    assert ei.value.reason == "bad record MAC (corrupted or tampered data)"
    assert out.take()[:1] == b"\x17"  # the (encrypted) bad_record_mac alert went out


# ------------------------------------------------------------------------------------------
# configuration errors name the key
# ------------------------------------------------------------------------------------------
def test_missing_file_names_the_key(pki: Sm2Dir, tmp_path: Path) -> None:
    with pytest.raises(GmConfigError) as ei:
        GmServerContext.build(opts(pki, sign_certfile=str(tmp_path / "nope.pem")))
    assert ei.value.key == "sign_certfile"
    assert "no such file" in str(ei.value) and "ssl_options.sign_certfile" in str(ei.value)
    with pytest.raises(GmConfigError) as ei:
        GmServerContext.build(opts(pki, verify="verify_peer",
                                   cacertfile=str(tmp_path / "ca.pem")))
    assert ei.value.key == "cacertfile"


def test_build_gm_context_reports_the_full_key(pki: Sm2Dir, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ContextError) as ei:
        build_gm_context(opts(pki, enc_certfile=str(tmp_path / "x.pem")), "listeners.gm.china")
    [problem] = ei.value.problems
    assert problem.key == "listeners.gm.china.ssl_options.enc_certfile"
    assert "no such file" in problem.message
    ctx = build_gm_context(opts(pki), "listeners.gm.china")
    assert ctx.opts.handshake_timeout == 15.0 and ctx.opts.verify == "verify_none"
    assert [cn_of(c.public_bytes(serialization.Encoding.DER)) for c in ctx.chain] == ["localhost"]
    assert set(ctx.all_chains()) == {"", "enc"}


def test_key_that_does_not_match_names_the_key(pki: Sm2Dir) -> None:
    with pytest.raises(GmConfigError) as ei:
        GmServerContext.build(opts(pki, enc_keyfile=str(pki.server.sign_key)))
    assert ei.value.key == "enc_keyfile"
    assert "does not belong" in ei.value.message


def test_non_sm2_key_is_refused(pki: Sm2Dir, tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "p256.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    with pytest.raises(GmConfigError) as ei:
        GmServerContext.build(opts(pki, sign_keyfile=str(tmp_path / "p256.key")))
    assert ei.value.key == "sign_keyfile" and "not an SM2 key" in ei.value.message
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    with pytest.raises(GmConfigError) as ei:
        GmServerContext.build(opts(pki, enc_certfile=str(tmp_path / "junk.pem")))
    assert ei.value.key == "enc_certfile"


@pytest.mark.parametrize("ciphers,protocols,fragment", [
    (["AES128-SHA"], ["tlcp", "tlsv1.3"], "not a GM suite"),
    (["TLS_SM4_GCM_SM3"], ["tlcp", "tlsv1.3"], "no TLCP suite"),
    (["ECC-SM2-SM4-GCM-SM3"], ["tlsv1.3"], "no RFC 8998 suite"),
])
def test_bad_cipher_settings(pki: Sm2Dir, ciphers: list[str], protocols: list[str],
                             fragment: str) -> None:
    with pytest.raises(GmConfigError) as ei:
        GmServerContext.build(opts(pki, ciphers=ciphers, protocols=protocols))
    assert ei.value.key == "ciphers" and fragment in ei.value.message


def test_encrypted_keys_with_password(pki: Sm2Dir, tmp_path: Path, tlib: Any) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl CLI not installed")
    for name, src in (("sign", pki.server.sign_key), ("enc", pki.server.enc_key)):
        subprocess.run([openssl, "pkey", "-in", str(src), "-aes-256-cbc", "-passout",
                        "pass:s3cret", "-out", str(tmp_path / f"{name}.key")], check=True)
    enc = dict(sign_keyfile=str(tmp_path / "sign.key"), enc_keyfile=str(tmp_path / "enc.key"))
    with pytest.raises(GmConfigError) as ei:
        GmServerContext.build(opts(pki, **enc))
    assert ei.value.key == "sign_keyfile" and "password" in ei.value.message
    with pytest.raises(GmConfigError) as ei:
        GmServerContext.build(opts(pki, password="Zq9xPw", **enc))
    assert "s3cret" not in str(ei.value) and "Zq9xPw" not in str(ei.value)
    ctx = GmServerContext.build(opts(pki, password="s3cret", **enc))
    c = gmclient.MemoryClient(tlib, gmclient.client_ctx(tlib, "tlcp", cafile=str(pki.ca_cert)))
    pump(c, *session(ctx))


def test_world_readable_key_is_a_warning(pki: Sm2Dir, tmp_path: Path) -> None:
    k = tmp_path / "sign.key"
    shutil.copy(pki.server.sign_key, k)
    k.chmod(0o644)
    ctx = GmServerContext.build(opts(pki, sign_keyfile=str(k)))
    assert any("sign_keyfile" in w and "chmod" in w for w in ctx.warnings)
    assert GmServerContext.build(opts(pki)).warnings == ()


def test_missing_library_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(_lib.ENV_LIBRARY, raising=False)
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(GmUnavailableError) as ei:
        _lib._find_library()
    assert "pip install tongsuopy" in str(ei.value)
    monkeypatch.setenv(_lib.ENV_LIBRARY, "/nonexistent/libssl.so")
    with pytest.raises(GmUnavailableError) as ei:
        _lib._find_library()
    assert _lib.ENV_LIBRARY in str(ei.value)


def test_library_is_the_bundled_babassl() -> None:
    info = library_info()
    assert info.version.startswith(("BabaSSL 8.3", "Tongsuo")), info
    assert info.deepbind  # loaded by tlsgate, with RTLD_DEEPBIND (see _lib's docstring)


# ------------------------------------------------------------------------------------------
# same process as ssl / cryptography / pyOpenSSL (the isolation question)
# ------------------------------------------------------------------------------------------
COEXIST = r'''
import ctypes, datetime, hashlib, os, sys
mode, certdir, rounds, testsdir = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
sys.path.insert(0, testsdir)
if mode.startswith("global-libcrypto"):
    # the worst neighbour: an OpenSSL 3 in the global symbol scope
    ctypes.CDLL("libcrypto.so.3", mode=os.RTLD_NOW | os.RTLD_GLOBAL)
    ctypes.CDLL("libssl.so.3", mode=os.RTLD_NOW | os.RTLD_GLOBAL)
if mode.endswith("tongsuopy-first"):
    import tongsuopy.backends._tongsuo  # Python's import: same file, no RTLD_DEEPBIND
def load_gm():
    from tlsgate.tls.gm import GmServerContext, library_info
    return GmServerContext, library_info()
if mode == "gm-first":
    GmServerContext, info = load_gm()
import ssl
import OpenSSL.SSL, OpenSSL.crypto
from cryptography import x509
from cryptography.x509.oid import NameOID
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
if mode != "gm-first":
    GmServerContext, info = load_gm()
from tlsgate.config.schema import GmSslOptions
import gmclient
d = certdir + "/"
gm = GmServerContext.build(GmSslOptions(
    sign_certfile=d + "server-sign.pem", sign_keyfile=d + "server-sign.key",
    enc_certfile=d + "server-enc.pem", enc_keyfile=d + "server-enc.key"))
lib = gmclient.load()
cctx = {p: gmclient.client_ctx(lib, p, cafile=d + "sm2-ca.pem") for p in ("tlcp", "tls13")}
key = ec.generate_private_key(ec.SECP256R1())
name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
now = datetime.datetime.now(datetime.timezone.utc)
cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(1)
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256()))
sctx = OpenSSL.SSL.Context(OpenSSL.SSL.TLS_SERVER_METHOD)
sctx.use_certificate(OpenSSL.crypto.X509.from_cryptography(cert))
sctx.use_privatekey(OpenSSL.crypto.PKey.from_cryptography_key(key))
cssl = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
cssl.load_verify_locations(cadata=cert.public_bytes(Encoding.PEM).decode())

def gm_round(proto):
    out = []
    s, c = gm.new_session(out.append), gmclient.MemoryClient(lib, cctx[proto])
    for _ in range(20):
        cd = c.handshake(); s.feed(c.take_output()); sd = s.handshake()
        c.feed(b"".join(out)); out.clear()
        if cd and sd:
            break
    c.handshake()
    assert s.version == ("TLCP" if proto == "tlcp" else "TLSv1.3"), s.version
    msg = b"ping-" + proto.encode()
    s.feed(c.write(msg))
    assert s.read_plain() == msg
    c.feed(s.encrypt(b"pong")); assert c.read() == b"pong"
    c.free(); s.free()

def drain(srv, bio):
    try:
        while True:
            bio.write(srv.bio_read(65536))
    except OpenSSL.SSL.WantReadError:
        pass

def openssl_round():
    srv = OpenSSL.SSL.Connection(sctx, None); srv.set_accept_state()
    i, o = ssl.MemoryBIO(), ssl.MemoryBIO()
    cli = cssl.wrap_bio(i, o, server_hostname="localhost")
    for _ in range(20):
        try:
            cli.do_handshake(); cd = True
        except ssl.SSLWantReadError:
            cd = False
        if o.pending:
            srv.bio_write(o.read())
        try:
            srv.do_handshake(); sd = True
        except OpenSSL.SSL.WantReadError:
            sd = False
        drain(srv, i)
        if cd and sd:
            break
    assert cli.version() == "TLSv1.3"
    cli.write(b"hello"); srv.bio_write(o.read()); assert srv.recv(100) == b"hello"
    srv.send(b"world"); drain(srv, i); assert cli.read(100) == b"world"
    sig = key.sign(b"x", ec.ECDSA(hashes.SHA256()))
    key.public_key().verify(sig, b"x", ec.ECDSA(hashes.SHA256()))
    assert hashlib.sha256(b"abc").hexdigest().startswith("ba7816bf")

for _ in range(rounds):
    gm_round("tlcp"); openssl_round(); gm_round("tls13")
print("OK", rounds, info.deepbind)
'''


@pytest.mark.parametrize("mode", ["ssl-first", "gm-first", "tongsuopy-first",
                                  "global-libcrypto"])
def test_coexistence_with_ssl_cryptography_pyopenssl(pki: Sm2Dir, mode: str) -> None:
    """GM, pyOpenSSL (OpenSSL 4) and stdlib ssl (system OpenSSL 3) handshakes interleaved in
    one process, in every import order, also with OpenSSL 3 forced into the global scope."""
    rounds = 40
    proc = subprocess.run([sys.executable, "-c", COEXIST, mode, str(pki.ca_cert.parent),
                           str(rounds), str(TESTS)], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert proc.stdout.split()[:2] == ["OK", str(rounds)], proc.stdout


def test_unsafe_load_order_is_refused_not_crashed(pki: Sm2Dir) -> None:
    """tongsuopy imported (no RTLD_DEEPBIND) *and* an OpenSSL in the global scope: the loader
    must refuse with a clear error (unguarded, this combination segfaults)."""
    proc = subprocess.run([sys.executable, "-c", COEXIST, "global-libcrypto-tongsuopy-first",
                           str(pki.ca_cert.parent), "1", str(TESTS)], capture_output=True,
                          text=True, timeout=60, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    assert "GmUnavailableError" in proc.stderr and "global" in proc.stderr


# ------------------------------------------------------------------------------------------
# SM2 PKI
# ------------------------------------------------------------------------------------------
def test_init_sm2_dir_files_modes_and_verification(pki: Sm2Dir) -> None:
    for p in pki.files():
        assert p.is_file(), p
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode == (0o600 if p.suffix == ".key" else 0o644), (p, oct(mode))
    cert = x509.load_pem_x509_certificate(pki.server.sign_cert.read_bytes())
    assert cert.signature_algorithm_oid.dotted_string == "1.2.156.10197.1.501"  # SM2-with-SM3
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    enc = x509.load_pem_x509_certificate(pki.server.enc_cert.read_bytes())
    ku = enc.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_encipherment and ku.key_agreement and not ku.digital_signature
    assert cn_of(x509.load_pem_x509_certificate(
        pki.clients["dev1"].sign_cert.read_bytes()).public_bytes(serialization.Encoding.DER)) \
        == "dev1"
    openssl = shutil.which("openssl")
    if openssl:  # the system OpenSSL 3 agrees, given the default SM2 ID Tongsuo signs with
        for p in (pki.server.sign_cert, pki.server.enc_cert, pki.clients["dev1"].enc_cert):
            r = subprocess.run([openssl, "verify", "-vfyopt", "distid:1234567812345678",
                                "-CAfile", str(pki.ca_cert), str(p)], capture_output=True,
                               text=True)
            assert r.returncode == 0, r.stdout + r.stderr


def test_init_sm2_dir_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    d = init_sm2_dir(tmp_path, ["gw.example"], [], days=1)
    before = d.ca_cert.read_bytes()
    with pytest.raises(GmCertError, match="--force"):
        init_sm2_dir(tmp_path, ["gw.example"], [], days=1)
    time.sleep(0.01)
    d2 = init_sm2_dir(tmp_path, ["gw.example"], [], days=1, force=True)
    assert d2.ca_cert.read_bytes() != before


@pytest.mark.parametrize("hosts,clients,days", [
    ([], ["a"], 1), (["bad host"], [], 1), (["ok"], ["../x"], 1), (["ok"], ["a", "a"], 1),
    (["ok"], ["server"], 1), (["ok"], [], 0),
])
def test_init_sm2_dir_bad_input(tmp_path: Path, hosts: list[str], clients: list[str],
                                days: int) -> None:
    with pytest.raises(GmCertError):
        init_sm2_dir(tmp_path, hosts, clients, days=days)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------
# the example publishes through a GM hop to a real mosquitto
# ------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("protocol", ["tlcp", "tls13"])
def test_example_publishes_through_gm_to_mosquitto(pki: Sm2Dir, serve: Any, tmp_path: Path,
                                                   protocol: str) -> None:
    mosquitto, sub = shutil.which("mosquitto") or "/usr/sbin/mosquitto", \
        shutil.which("mosquitto_sub")
    if not (os.path.exists(mosquitto) and sub):
        pytest.skip("mosquitto / mosquitto_sub not installed")
    port = _free_port()
    conf = tmp_path / "m.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
    broker = subprocess.Popen([mosquitto, "-c", str(conf)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        subscriber = subprocess.Popen([sub, "-h", "127.0.0.1", "-p", str(port), "-t",
                                       "demo/gm", "-C", "1", "-W", "20"],
                                      stdout=subprocess.PIPE, text=True)
        time.sleep(0.5)
        srv = serve(mutual(pki), upstream=("127.0.0.1", port))
        pair = client_pair_args(pki.clients["dev1"])
        r = subprocess.run([sys.executable, str(ROOT / "examples/gm/gm_publish.py"),
                            "--port", str(srv.port), "--protocol", protocol,
                            "--cafile", str(pki.ca_cert), "--servername", "localhost",
                            "--topic", "demo/gm", "--message", f"你好 {protocol}",
                            *(pair if protocol == "tlcp" else pair[:4])],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        out, _ = subscriber.communicate(timeout=20)
        assert out.strip() == f"你好 {protocol}"
        res = srv.result()
        assert cn_of(res["peer_cert_der"]) == "dev1"
    finally:
        broker.terminate()
        broker.wait(timeout=10)
