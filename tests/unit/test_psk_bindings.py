"""tlsgate.tls.psk against real TLS-PSK clients.

Peers: ``openssl s_client -psk`` (TLS 1.2 and 1.3), ``mosquitto_pub --psk``, and the Python 3.13
``ssl`` example client from examples/psk (run with pyenv's 3.13; skipped with a message where it
is absent). The server side is a test-only pyOpenSSL server in a thread (below): a context built
the way tlsgate's listener contexts are, plus :func:`enable_psk`. After the handshake it either
writes ``identity=<id>`` and closes, or plays a minimal MQTT broker — answering CONNECT with
CONNACK "accepted" and recording every byte. That broker part is a fake (the gateway is not at
this layer); it exists only so real MQTT clients run to completion.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import logging
import os
import queue
import shutil
import socket
import struct
import subprocess
import sys
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from OpenSSL._util import lib as _lib

from tlsgate.psk_table import PskTable
from tlsgate.tls import psk
from tlsgate.tls.psk import (
    DEFAULT_TLS12_PSK_SUITES,
    PskResumed,
    PskUnavailable,
    enable_psk,
    psk_ciphers,
    psk_identity,
)

REPO = Path(__file__).resolve().parents[2]
PY313 = Path("/root/.pyenv/versions/3.13.0/bin/python3")
EXAMPLE_CLIENT = REPO / "examples" / "psk" / "python_psk_client.py"

KEY1 = bytes.fromhex("00112233445566778899aabbccddeeff")
# Leading zero bytes: mosquitto used to drop them when turning --psk hex into bytes.
KEY0 = bytes.fromhex("0000c0ffee")

# tlsgate's default TLS 1.2 suites for a listener (Mozilla intermediate).
CERT_TLS12 = ["ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
              "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
              "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305"]

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None,
                                   reason="openssl command line tool not installed")


# --------------------------------------------------------------------------------------------
# Test-only server
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A throw-away self-signed EC server certificate."""
    d = tmp_path_factory.mktemp("pskcert")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    c = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(minutes=5))
         .not_valid_after(now + datetime.timedelta(days=1))
         .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), False)
         .sign(key, hashes.SHA256()))
    certfile, keyfile = d / "server.pem", d / "server.key"
    certfile.write_bytes(c.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return certfile, keyfile


def make_context(table: PskTable, unknown: list[bytes], *,
                 cert: tuple[Path, Path] | None = None, tls13: str | None = None,
                 server_order: bool = True, session_cache: bool = False,
                 groups: bytes | None = None) -> SSL.Context:
    """A server context as tlsgate's context builder makes it, plus PSK. ``tls13`` given
    verbatim bypasses :func:`psk_ciphers` (to reproduce a misconfiguration)."""
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_max_proto_version(SSL.TLS1_3_VERSION)
    opts = SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION
    if server_order:
        opts |= SSL.OP_CIPHER_SERVER_PREFERENCE
    ctx.set_options(opts)
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
    if not session_cache:
        ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    ctx.set_session_id(b"tlsgate-psk-test")
    suites = psk_ciphers(CERT_TLS12, [])
    ctx.set_cipher_list(suites.tls12.encode())
    ctx.set_tls13_ciphersuites((tls13 or suites.tls13).encode())
    if cert is not None:
        ctx.use_certificate_chain_file(str(cert[0]))
        ctx.use_privatekey_file(str(cert[1]))
    if groups is not None:  # pyOpenSSL has no API for it (test-only use of the bindings)
        assert _lib.SSL_CTX_set1_curves_list(ctx._context, groups) == 1
    enable_psk(ctx, table, on_unknown=unknown.append)
    return ctx


@dataclass
class Seen:
    """What the server saw on one connection."""

    identity: str | None = None
    version: str | None = None
    cipher: str | None = None
    reused: bool = False
    error: str | None = None
    resumed_psk: bool = False
    received: bytes = b""
    tracked: int = 0
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None and not self.resumed_psk


class PskTestServer:
    """Serve a context on 127.0.0.1:<free port> in a thread, one connection at a time."""

    def __init__(self, ctx: SSL.Context, *, mqtt: bool = False, timeout: int = 10) -> None:
        self.ctx = ctx
        self.mqtt = mqtt
        self.timeout = timeout
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port: int = self.sock.getsockname()[1]
        self.seen: queue.Queue[Seen] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="psk-test-server", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            try:
                self.seen.put(self._serve(client))
            except BaseException as exc:  # keep the test informed rather than hanging
                self.seen.put(Seen(error=f"server crashed: {exc!r}"))
            finally:
                client.close()

    def _serve(self, client: socket.socket) -> Seen:
        seen = Seen()
        # pyOpenSSL's socket mode needs a blocking socket; a kernel receive timeout keeps a
        # silent client from hanging the test.
        client.setblocking(True)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                          struct.pack("ll", self.timeout, 0))
        conn = SSL.Connection(self.ctx, client)
        conn.set_accept_state()
        try:
            conn.do_handshake()
        except (SSL.Error, OSError) as exc:
            seen.error = repr(exc)
            return seen
        seen.version = conn.get_protocol_version_name()
        seen.cipher = conn.get_cipher_name()
        seen.reused = bool(_lib.SSL_session_reused(conn._ssl))
        seen.tracked = psk.tracked_connections()
        try:
            seen.identity = psk_identity(conn)
        except PskResumed:
            seen.resumed_psk = True  # what the gateway does: refuse the connection
            return seen
        try:
            if self.mqtt:
                self._fake_broker(conn, seen)
            else:
                conn.sendall(f"identity={seen.identity}\n".encode())
                conn.shutdown()
        except (SSL.Error, OSError) as exc:
            seen.extra["io_error"] = repr(exc)
        return seen

    @staticmethod
    def _fake_broker(conn: SSL.Connection, seen: Seen) -> None:
        connacked = False
        while True:
            try:
                data = conn.recv(65536)
            except (SSL.ZeroReturnError, SSL.SysCallError):
                break
            if not data:
                break
            seen.received += data
            if not connacked and seen.received[:1] == b"\x10":
                conn.sendall(b"\x20\x02\x00\x00")  # CONNACK: accepted
                connacked = True
            if seen.received.endswith(b"\xe0\x00"):  # DISCONNECT
                break
        with contextlib.suppress(SSL.Error):
            conn.shutdown()

    def next(self, timeout: float = 20.0) -> Seen:
        return self.seen.get(timeout=timeout)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() (Linux)
        self.sock.close()
        self._thread.join(timeout=5)


@dataclass
class Setup:
    table: PskTable
    unknown: list[bytes]
    server: PskTestServer


ServeFn = Callable[..., Setup]


@pytest.fixture
def serve(cert: tuple[Path, Path]) -> Iterator[ServeFn]:
    servers: list[PskTestServer] = []

    def start(*, with_cert: bool = True, mqtt: bool = False, table: PskTable | None = None,
              **kw: object) -> Setup:
        t = table if table is not None else PskTable({b"dev1": KEY1, b"dev0": KEY0})
        unknown: list[bytes] = []
        ctx = make_context(t, unknown, cert=cert if with_cert else None, **kw)  # type: ignore[arg-type]
        srv = PskTestServer(ctx, mqtt=mqtt)
        servers.append(srv)
        return Setup(t, unknown, srv)

    yield start
    for s in servers:
        s.close()


def s_client(port: int, *args: str, server: PskTestServer) -> tuple[Seen, str]:
    """Run ``openssl s_client`` against ``server``; returns what the server saw and the client's
    output. Its stdin stays open (EOF on stdin makes s_client quit, possibly before it read
    the server's line): it ends on its own when the server closes or the handshake fails."""
    p = subprocess.Popen(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", *args],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        seen = server.next()
        p.wait(timeout=15)
    finally:
        out = p.communicate(b"", timeout=15)[0].decode(errors="replace")
    return seen, out


def psk_args(identity: str, key: bytes, version: str) -> list[str]:
    return ["-psk", key.hex(), "-psk_identity", identity, version]


# --------------------------------------------------------------------------------------------
# Binding checks and suites
# --------------------------------------------------------------------------------------------
def test_bindings_present() -> None:
    assert psk.missing_bindings() == []
    psk.require_psk_support()


def test_missing_binding_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(psk, "REQUIRED_BINDINGS", (*psk.REQUIRED_BINDINGS, "SSL_no_such_thing"))
    ctx = SSL.Context(SSL.TLS_METHOD)
    with pytest.raises(PskUnavailable, match="SSL_no_such_thing") as info:
        enable_psk(ctx, PskTable(), on_unknown=lambda _i: None)
    assert "psk_authentication.enable" in str(info.value)


def test_psk_ciphers_merge() -> None:
    c = psk_ciphers(CERT_TLS12, [])
    t12 = c.tls12.split(":")
    assert t12[:len(DEFAULT_TLS12_PSK_SUITES)] == list(DEFAULT_TLS12_PSK_SUITES)
    assert t12[len(DEFAULT_TLS12_PSK_SUITES):] == CERT_TLS12
    assert c.tls13 == "TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_256_GCM_SHA384"
    # Configured PSK suites are kept (no defaults added) and moved in front of the others.
    c = psk_ciphers(["ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-PSK-AES128-CBC-SHA256"],
                    ["TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"])
    assert c.tls12 == "ECDHE-PSK-AES128-CBC-SHA256:ECDHE-RSA-AES128-GCM-SHA256"
    assert c.tls13 == "TLS_CHACHA20_POLY1305_SHA256:TLS_AES_256_GCM_SHA384"
    with pytest.raises(ValueError, match="SHA-256"):
        psk_ciphers([], ["TLS_AES_256_GCM_SHA384"])


def test_default_psk_suites_known_to_openssl() -> None:
    ctx = SSL.Context(SSL.TLS_METHOD)
    c = psk_ciphers(CERT_TLS12, [])
    ctx.set_cipher_list(c.tls12.encode())
    ctx.set_tls13_ciphersuites(c.tls13.encode())
    offered = SSL.Connection(ctx, None).get_cipher_list()
    for name in DEFAULT_TLS12_PSK_SUITES:
        assert name in offered


# --------------------------------------------------------------------------------------------
# Handshakes with openssl s_client
# --------------------------------------------------------------------------------------------
@needs_openssl
@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
@pytest.mark.parametrize("with_cert", [True, False], ids=["cert+psk", "psk-only"])
def test_good_identity(serve: ServeFn, version: str, with_cert: bool) -> None:
    s = serve(with_cert=with_cert)
    seen, out = s_client(s.server.port, *psk_args("dev1", KEY1, version), server=s.server)
    assert seen.ok, seen
    assert seen.identity == "dev1"
    assert seen.tracked >= 1  # the side table held this connection while it was up
    if version == "-tls1_2":
        assert seen.version == "TLSv1.2" and seen.cipher is not None
        assert seen.cipher in DEFAULT_TLS12_PSK_SUITES
    else:
        assert seen.version == "TLSv1.3"
        assert seen.cipher == "TLS_AES_128_GCM_SHA256"
    assert "identity=dev1" in out
    assert s.unknown == []


@needs_openssl
@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
def test_wrong_key_refused(serve: ServeFn, version: str) -> None:
    s = serve()
    seen, _ = s_client(s.server.port, *psk_args("dev1", b"\x01" + KEY1[1:], version),
                       server=s.server)
    assert seen.error is not None and seen.identity is None
    assert s.unknown == []  # the identity is known; the key is wrong


@needs_openssl
@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
@pytest.mark.parametrize("with_cert", [True, False], ids=["cert+psk", "psk-only"])
def test_unknown_identity_refused(serve: ServeFn, version: str, with_cert: bool) -> None:
    s = serve(with_cert=with_cert)
    seen, _ = s_client(s.server.port, *psk_args("nobody", KEY1, version), server=s.server)
    assert seen.error is not None, seen  # not silently turned into a certificate handshake
    assert s.unknown == [b"nobody"]


@needs_openssl
@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
def test_certificate_client_on_same_context(serve: ServeFn, version: str) -> None:
    s = serve()
    seen, out = s_client(s.server.port, version, server=s.server)
    assert seen.ok, seen
    assert seen.identity is None
    assert seen.cipher is not None and not psk.is_psk_suite(seen.cipher)
    assert "identity=None" in out
    assert s.unknown == []


@needs_openssl
@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
def test_certificate_client_resumes(serve: ServeFn, version: str, tmp_path: Path) -> None:
    """A session ticket is a pre_shared_key identity too: it must not be taken for an unknown
    PSK identity, and certificate clients keep their resumption."""
    s = serve()
    sess = str(tmp_path / "sess.pem")
    first, _ = s_client(s.server.port, version, "-sess_out", sess, server=s.server)
    again, _ = s_client(s.server.port, version, "-sess_in", sess, server=s.server)
    assert first.ok and not first.reused
    assert again.ok and again.reused, again
    assert again.identity is None
    assert s.unknown == []


@needs_openssl
@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
def test_removed_identity_refused_next_handshake(serve: ServeFn, version: str) -> None:
    s = serve()
    seen, _ = s_client(s.server.port, *psk_args("dev1", KEY1, version), server=s.server)
    assert seen.identity == "dev1"
    assert s.table.remove("dev1")
    seen, _ = s_client(s.server.port, *psk_args("dev1", KEY1, version), server=s.server)
    assert seen.error is not None
    assert s.unknown == [b"dev1"]
    s.table.add("dev1", KEY1)  # and back, without touching the context
    seen, _ = s_client(s.server.port, *psk_args("dev1", KEY1, version), server=s.server)
    assert seen.identity == "dev1"


@needs_openssl
@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
@pytest.mark.parametrize("session_cache", [False, True], ids=["cache-off", "cache-on"])
def test_psk_session_not_resumable(serve: ServeFn, version: str, session_cache: bool,
                                   tmp_path: Path) -> None:
    """A PSK client coming back with its session (ticket or id) gets a full handshake, so a
    removed identity cannot get in on an old session."""
    s = serve(session_cache=session_cache)
    sess = str(tmp_path / "sess.pem")
    first, _ = s_client(s.server.port, *psk_args("dev1", KEY1, version), "-sess_out", sess,
                        server=s.server)
    assert first.identity == "dev1"
    again, _ = s_client(s.server.port, *psk_args("dev1", KEY1, version), "-sess_in", sess,
                        server=s.server)
    assert again.identity == "dev1" and again.ok  # a full PSK handshake again
    if version == "-tls1_2":
        assert not again.reused
    s.table.remove("dev1")
    third, _ = s_client(s.server.port, *psk_args("dev1", KEY1, version), "-sess_in", sess,
                        server=s.server)
    assert third.identity is None
    assert not third.ok or not third.reused, third
    assert s.unknown == [b"dev1"]


@needs_openssl
def test_sha384_preferred_is_refused_not_downgraded(serve: ServeFn,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """The trap: certificate + a SHA-384 suite chosen -> OpenSSL drops the PSK. Without the
    certificate callback the client would silently get a certificate handshake."""
    s = serve(tls13="TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256")
    with caplog.at_level(logging.WARNING, logger="tlsgate.tls.psk"):
        seen, _ = s_client(s.server.port, *psk_args("dev1", KEY1, "-tls1_3"), server=s.server)
    assert seen.error is not None, seen
    assert "not SHA-256" in caplog.text
    assert "00112233" not in caplog.text  # the key never appears


@needs_openssl
def test_client_cipher_order_warned(serve: ServeFn, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="tlsgate.tls.psk"):
        s = serve(server_order=False)
    assert "honor_cipher_order" in caplog.text
    # s_client lists TLS_AES_256_GCM_SHA384 first: with client order the PSK cannot be used,
    # and the handshake is refused with a reason instead of becoming a certificate one.
    seen, _ = s_client(s.server.port, *psk_args("dev1", KEY1, "-tls1_3"), server=s.server)
    assert seen.error is not None
    # A client that prefers a SHA-256 suite is fine.
    seen, _ = s_client(s.server.port, *psk_args("dev1", KEY1, "-tls1_3"), "-ciphersuites",
                       "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384", server=s.server)
    assert seen.identity == "dev1"


@needs_openssl
def test_psk_only_context_prefers_sha256_itself(serve: ServeFn) -> None:
    """Without a certificate OpenSSL prefers SHA-256 suites for PSK on its own."""
    s = serve(with_cert=False,
              tls13="TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256")
    seen, _ = s_client(s.server.port, *psk_args("dev1", KEY1, "-tls1_3"), server=s.server)
    assert seen.identity == "dev1" and seen.cipher == "TLS_AES_128_GCM_SHA256"


@needs_openssl
def test_hello_retry_request(serve: ServeFn) -> None:
    """The client's first key share is for a group the server does not take: the server asks
    again (HelloRetryRequest) and sees the PSK identity twice."""
    s = serve(groups=b"P-256")
    seen, out = s_client(s.server.port, *psk_args("dev1", KEY1, "-tls1_3"), "-groups",
                         "X25519:P-256", "-msg", server=s.server)
    assert seen.identity == "dev1", seen
    assert out.count("ClientHello") == 2  # there was a retry


@needs_openssl
def test_exception_in_lookup_refuses(serve: ServeFn, caplog: pytest.LogCaptureFixture) -> None:
    class Broken(PskTable):
        def lookup(self, identity: bytes) -> bytes | None:
            raise RuntimeError("table backend down")

    s = serve(table=Broken({b"dev1": KEY1}))
    for version in ("-tls1_2", "-tls1_3"):
        with caplog.at_level(logging.ERROR, logger="tlsgate.tls.psk"):
            seen, _ = s_client(s.server.port, *psk_args("dev1", KEY1, version), server=s.server)
        assert seen.error is not None and "crashed" not in seen.error
    assert "table backend down" in caplog.text
    # The server thread is still serving: a certificate client works.
    seen, _ = s_client(s.server.port, "-tls1_3", server=s.server)
    assert seen.ok


@needs_openssl
def test_exception_in_on_unknown_still_refuses(cert: tuple[Path, Path],
                                               caplog: pytest.LogCaptureFixture) -> None:
    def boom(_identity: bytes) -> None:
        raise ValueError("logger broke")

    ctx = make_context(PskTable({b"dev1": KEY1}), [], cert=cert)
    enable_psk(ctx, PskTable({b"dev1": KEY1}), on_unknown=boom)  # re-install, raising handler
    srv = PskTestServer(ctx)
    try:
        for version in ("-tls1_2", "-tls1_3"):
            with caplog.at_level(logging.ERROR, logger="tlsgate.tls.psk"):
                seen, _ = s_client(srv.port, *psk_args("ghost", KEY1, version), server=srv)
            assert seen.error is not None
        assert "logger broke" in caplog.text
    finally:
        srv.close()


# --------------------------------------------------------------------------------------------
# Other real clients
# --------------------------------------------------------------------------------------------
@pytest.mark.skipif(shutil.which("mosquitto_pub") is None, reason="mosquitto_pub not installed")
@pytest.mark.parametrize("version", ["tlsv1.2", "tlsv1.3"])
def test_mosquitto_pub(serve: ServeFn, version: str, tmp_path: Path) -> None:
    s = serve(mqtt=True)
    env = dict(os.environ)
    if version == "tlsv1.2":
        # mosquitto's --tls-version is a minimum; cap it through OpenSSL's config instead.
        conf = tmp_path / "tls12.cnf"
        conf.write_text("openssl_conf = c\n[c]\nssl_conf = s\n[s]\nsystem_default = d\n"
                        "[d]\nMaxProtocol = TLSv1.2\n")
        env["OPENSSL_CONF"] = str(conf)
    r = subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(s.server.port),
                        "--psk", KEY0.hex(), "--psk-identity", "dev0", "--tls-version", version,
                        "-t", "psk/test", "-m", "hello"], env=env, capture_output=True,
                       timeout=30)
    seen = s.server.next()
    assert r.returncode == 0, r.stderr
    assert seen.identity == "dev0", seen
    assert seen.version == ("TLSv1.2" if version == "tlsv1.2" else "TLSv1.3")
    assert b"psk/testhello" in seen.received


@pytest.mark.skipif(not PY313.exists(), reason=f"Python 3.13 not found at {PY313} "
                                               "(needed for ssl PSK callbacks)")
@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_python313_example_client(serve: ServeFn, version: str) -> None:
    s = serve(mqtt=True)
    r = subprocess.run([str(PY313), str(EXAMPLE_CLIENT), "--host", "127.0.0.1", "--port",
                        str(s.server.port), "--identity", "dev1", "--psk", KEY1.hex(),
                        "--tls-version", version, "--topic", "ex/psk", "--message", "hi"],
                       capture_output=True, timeout=30)
    seen = s.server.next()
    assert r.returncode == 0, r.stderr
    assert seen.identity == "dev1"
    assert seen.version == f"TLSv{version}"
    assert seen.received.startswith(b"\x10")  # CONNECT
    assert b"ex/psk" in seen.received and b"hi" in seen.received
    assert b"TLS: TLSv" + version.encode() in r.stdout


@pytest.mark.skipif(not PY313.exists(), reason=f"Python 3.13 not found at {PY313}")
def test_python313_wrong_key(serve: ServeFn) -> None:
    s = serve(mqtt=True)
    r = subprocess.run([str(PY313), str(EXAMPLE_CLIENT), "--host", "127.0.0.1", "--port",
                        str(s.server.port), "--identity", "dev1", "--psk", "ff" * 16],
                       capture_output=True, timeout=30)
    seen = s.server.next()
    assert r.returncode == 1
    assert b"TLS handshake refused" in r.stderr
    assert seen.error is not None and seen.identity is None


# --------------------------------------------------------------------------------------------
# Memory: nothing per connection survives the connection
# --------------------------------------------------------------------------------------------
_LOOP_CLIENT = r"""
import socket, ssl, sys
port, n, key = int(sys.argv[1]), int(sys.argv[2]), bytes.fromhex(sys.argv[3])
for i in range(n):
    # i % 4: 0 TLS 1.3 ok, 1 TLS 1.2 ok, 2 TLS 1.3 wrong key, 3 TLS 1.2 wrong key
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    v = ssl.TLSVersion.TLSv1_2 if i % 2 else ssl.TLSVersion.TLSv1_3
    ctx.minimum_version = ctx.maximum_version = v
    if i % 2:
        ctx.set_ciphers("PSK")
    k = key if i % 4 < 2 else bytes(len(key))
    ctx.set_psk_client_callback(lambda hint, k=k: ("dev1", k))
    try:
        with socket.create_connection(("127.0.0.1", port)) as raw:
            with ctx.wrap_socket(raw) as s:
                assert s.recv(100).startswith(b"identity=dev1"), i
    except (ssl.SSLError, ConnectionError):
        assert i % 4 >= 2, i
"""


@pytest.mark.skipif(not PY313.exists(), reason=f"Python 3.13 not found at {PY313}")
def test_many_handshakes_do_not_grow(serve: ServeFn, tmp_path: Path) -> None:
    s = serve()
    script = tmp_path / "loop.py"
    script.write_text(_LOOP_CLIENT)

    def run(n: int) -> tuple[set[str | None], set[str | None], int]:
        """n handshakes: TLS 1.3 and 1.2, half of them failing after the identity was
        recorded (wrong key), so their records only go away with the connection. Keeps a
        summary only (no Seen objects: the memory check measures what the server retained)."""
        p = subprocess.Popen([str(PY313), str(script), str(s.server.port), str(n), KEY1.hex()],
                             stderr=subprocess.PIPE)
        identities: set[str | None] = set()
        versions: set[str | None] = set()
        least_tracked = 1 << 30
        failed = 0
        for _ in range(n):
            x = s.server.next()
            if x.error is not None:
                failed += 1
                continue
            identities.add(x.identity)
            versions.add(x.version)
            least_tracked = min(least_tracked, x.tracked)
        assert failed == n // 2
        assert p.wait(timeout=60) == 0, p.stderr.read() if p.stderr else ""
        return identities, versions, least_tracked

    run(20)  # warm-up: caches, interned strings, OpenSSL's lazily built tables
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        identities, versions, least_tracked = run(400)
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    assert identities == {"dev1"}
    assert versions == {"TLSv1.2", "TLSv1.3"}
    assert least_tracked >= 1  # every connection was in the side table while it was up...
    assert psk.tracked_connections() == 0  # ...and none is left
    diffs = after.compare_to(before, "lineno")
    grown = sum(d.size_diff for d in diffs)
    assert grown < 16 * 1024, f"{grown} bytes kept over 400 handshakes: {diffs[:5]}"


def test_callbacks_live_and_die_with_context() -> None:
    before = len(psk._installed)
    ctx = SSL.Context(SSL.TLS_METHOD)
    enable_psk(ctx, PskTable(), on_unknown=lambda _i: None)
    assert len(psk._installed) == before + 1
    gc.collect()
    assert len(psk._installed) == before + 1  # kept alive while the context lives
    del ctx
    gc.collect()
    assert len(psk._installed) == before


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-v"]))
