"""A real HAProxy produces the PROXY headers; tlsgate's parser must decode them exactly.

HAProxy (2.6 here) terminates TLS with a certificate made for this test session, and forwards
to a one-shot listener with ``send-proxy-v2-ssl-cn proxy-v2-options ssl-cipher,authority,crc32c``
(or ``send-proxy`` for v1). The client is Python's ``ssl`` with a client certificate, SNI and
ALPN; what it knows about its own connection (addresses, TLS version, cipher) is what the
header must say. Skipped when ``haproxy`` is not installed.
"""

from __future__ import annotations

import contextlib
import datetime
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tlsgate.mqtt.connect import encode_connect, parse_connect
from tlsgate.mqtt.proxy_protocol import (
    PP2_TYPE_CRC32C,
    ProxyHeader,
    encode_v2,
    parse_proxy_header,
)

HAPROXY = shutil.which("haproxy")
pytestmark = pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed "
                                "(apt-get install haproxy) - the PROXY v2 interop test needs it")

SNI = "mqtt.example.com"
CN = "device-0042"


# ---------------------------------------------------------------------------------------------
# Certificates for this session (never checked in)
# ---------------------------------------------------------------------------------------------
def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _issue(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str,
           issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool,
           usage: x509.ObjectIdentifier | None = None, dns: str | None = None) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if dns is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(dns)]),
                                        critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None = None) -> bytes:
    out = cert.public_bytes(serialization.Encoding.PEM)
    if key is not None:
        out += key.private_bytes(serialization.Encoding.PEM,
                                 serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())
    return out


@dataclass
class Pki:
    ca: Path
    server: Path   # certificate + key, as HAProxy's `crt` wants
    client: Path   # certificate + key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _issue("tlsgate test CA", ca_key, "tlsgate test CA", ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _issue(SNI, server_key, "tlsgate test CA", ca_key, ca=False,
                    usage=ExtendedKeyUsageOID.SERVER_AUTH, dns=SNI)
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _issue(CN, client_key, "tlsgate test CA", ca_key, ca=False,
                    usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    (d / "ca.pem").write_bytes(_pem(ca))
    (d / "server.pem").write_bytes(_pem(server, server_key))
    (d / "client.pem").write_bytes(_pem(client, client_key))
    for f in d.iterdir():
        f.chmod(0o600)
    return Pki(d / "ca.pem", d / "server.pem", d / "client.pem")


# ---------------------------------------------------------------------------------------------
# HAProxy in front of a one-shot listener
# ---------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Backend:
    """A listener that takes the first connection carrying a PROXY header and a CONNECT."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(20)
        self.port = int(self.sock.getsockname()[1])

    def receive(self) -> bytes:
        """Accept until a connection delivers a whole header and CONNECT; close it; return all
        it sent. (Connections that close empty, e.g. from a start-up probe, are skipped.)"""
        while True:
            conn, _ = self.sock.accept()
            data = b""
            with conn:
                conn.settimeout(10)
                while True:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                    got = parse_proxy_header(data)
                    if got is not None and parse_connect(data[got[1]:], 4096) is not None:
                        return data
            if data:
                return data


@dataclass
class Haproxy:
    v2_port: int
    v1_port: int
    backend_v2: Backend
    backend_v1: Backend


@pytest.fixture(scope="module")
def haproxy(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Haproxy]:
    assert HAPROXY is not None
    d = tmp_path_factory.mktemp("haproxy")
    backend_v2, backend_v1 = Backend(), Backend()
    for _attempt in range(5):  # a probed free port can be taken meanwhile: retry
        v2_port, v1_port = _free_port(), _free_port()
        cfg = d / "haproxy.cfg"
        bind_opts = f"ssl crt {pki.server} ca-file {pki.ca} verify optional alpn mqtt"
        v2_opts = "send-proxy-v2-ssl-cn proxy-v2-options ssl-cipher,authority,crc32c"
        cfg.write_text(f"""
global
    maxconn 100
defaults
    mode tcp
    timeout connect 5s
    timeout client 20s
    timeout server 20s
frontend fe_v2
    bind 127.0.0.1:{v2_port} {bind_opts}
    default_backend be_v2
frontend fe_v1
    bind 127.0.0.1:{v1_port} {bind_opts}
    default_backend be_v1
backend be_v2
    server s1 127.0.0.1:{backend_v2.port} {v2_opts}
backend be_v1
    server s1 127.0.0.1:{backend_v1.port} send-proxy
""")
        check = subprocess.run([HAPROXY, "-c", "-f", str(cfg)], capture_output=True, text=True,
                               check=False)
        assert check.returncode == 0, f"haproxy rejected the test config:\n{check.stdout}" \
                                      f"{check.stderr}"
        proc = subprocess.Popen([HAPROXY, "-db", "-f", str(cfg)], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        up = False
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", v1_port), timeout=1).close()
                socket.create_connection(("127.0.0.1", v2_port), timeout=1).close()
                up = True
                break
            except OSError:
                time.sleep(0.05)
        if up:
            break
        proc.kill()
        out = proc.communicate()[0]
    else:
        pytest.fail(f"haproxy did not start: {out.decode(errors='replace')}")
    try:
        yield Haproxy(v2_port, v1_port, backend_v2, backend_v1)
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        backend_v1.sock.close()
        backend_v2.sock.close()


@dataclass
class ClientView:
    local: tuple[str, int]
    remote: tuple[str, int]
    version: str
    cipher: str
    received: bytes
    header: ProxyHeader
    rest: bytes


def run_client(port: int, backend: Backend, pki: Pki, *, with_cert: bool) -> ClientView:
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    ctx.set_alpn_protocols(["mqtt"])
    if with_cert:
        ctx.load_cert_chain(str(pki.client))
    connect = encode_connect(protocol_level=5, client_id=b"through-haproxy", username=b"u")
    result: dict[str, bytes | BaseException] = {}

    def serve() -> None:
        try:
            result["data"] = backend.receive()
        except BaseException as exc:  # reported below
            result["error"] = exc

    listener = threading.Thread(target=serve, name="backend", daemon=True)
    listener.start()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname=SNI) as tls:
        tls.sendall(connect)
        local, remote = tls.getsockname()[:2], tls.getpeername()[:2]
        version, cipher = tls.version() or "", (tls.cipher() or ("", "", 0))[0]
        assert tls.selected_alpn_protocol() == "mqtt"
        # The backend closes once it has everything; HAProxy then closes us.
        with contextlib.suppress(ssl.SSLError, OSError):
            assert tls.recv(1) == b""
    listener.join(15)
    data = result.get("data")
    assert isinstance(data, bytes), f"backend got nothing: {result.get('error')!r}"
    got = parse_proxy_header(data)
    assert got is not None, f"no complete PROXY header in {data[:64]!r}"
    header, consumed = got
    return ClientView((local[0], int(local[1])), (remote[0], int(remote[1])), version, cipher,
                      data, header, data[consumed:])


def test_haproxy_v2_with_client_certificate(haproxy: Haproxy, pki: Pki) -> None:
    view = run_client(haproxy.v2_port, haproxy.backend_v2, pki, with_cert=True)
    h = view.header
    assert (h.version, h.command, h.family, h.transport) == (2, "PROXY", "INET", "STREAM")
    assert h.src == view.local and h.dst == view.remote
    assert h.tlv(PP2_TYPE_CRC32C) is not None          # and it was verified by the parser
    tls = h.tls
    assert tls is not None
    assert tls.cn == CN
    assert tls.sni == SNI and h.authority == SNI
    assert tls.alpn == b"mqtt"
    assert tls.version == view.version and tls.cipher == view.cipher
    assert tls.client_cert_present and tls.client_cert_verified and not tls.session_reused
    assert h.ssl_verify == 0 and h.ssl_client_flags == 0x07
    # tlsgate's encoder sends the same bytes as HAProxy, apart from the CRC32C TLV.
    assert h.src is not None and h.dst is not None
    ours = parse_proxy_header(encode_v2(h.src, h.dst, tls))
    assert ours is not None
    assert [t for t in ours[0].tlvs] == [t for t in h.tlvs if t[0] != PP2_TYPE_CRC32C]
    # The client's CONNECT follows the header untouched.
    got = parse_connect(view.rest, 4096)
    assert got is not None and got[0].client_id == b"through-haproxy"


def test_haproxy_v2_without_client_certificate(haproxy: Haproxy, pki: Pki) -> None:
    view = run_client(haproxy.v2_port, haproxy.backend_v2, pki, with_cert=False)
    tls = view.header.tls
    assert tls is not None
    assert tls.cn is None and not tls.client_cert_present and not tls.client_cert_verified
    assert view.header.ssl_client_flags == 0x01
    assert tls.sni == SNI and tls.version == view.version


def test_haproxy_v1(haproxy: Haproxy, pki: Pki) -> None:
    view = run_client(haproxy.v1_port, haproxy.backend_v1, pki, with_cert=True)
    h = view.header
    assert (h.version, h.family) == (1, "INET")
    assert h.src == view.local and h.dst == view.remote
    got = parse_connect(view.rest, 4096)
    assert got is not None and got[0].client_id == b"through-haproxy"
