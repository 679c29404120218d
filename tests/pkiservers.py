"""Real PKI servers for tests, on loopback, on ports the OS picks.

* :class:`TestCA` — a small CA built with ``cryptography`` (EC P-256, fast): issues leaf,
  intermediate and OCSP-responder certificates with CRL distribution points, AIA OCSP URLs and
  must-staple as asked, and signs CRLs. Everything is made per test session, nothing is checked in.
* :class:`OcspResponder` — an aiohttp OCSP responder built on cryptography's OCSPResponseBuilder.
  It answers real DER OCSP requests over HTTP and can be told to misbehave (revoked, unknown,
  signed with the wrong key, by an unauthorised delegate, expired, malformed, HTTP 500) and counts
  requests. It exists because ``openssl ocsp`` cannot produce the bad cases.
* :class:`OpensslOcspResponder` — ``openssl ocsp -index … -port 0 -rsigner … -CA …`` as a child
  process: the interop proof against a responder we did not write. (``openssl ocsp`` binds the
  port on all interfaces; it cannot be told to bind loopback only.)
* :class:`CrlServer` — an aiohttp server for CRLs: content swappable per path, can be stopped
  (connection refused: "down") and started again on the same port, counts requests.
* :class:`BlockingTlsServer` — a pyOpenSSL server in a thread over plain blocking sockets, for
  checking what a real client (``openssl s_client``) sees in a handshake (stapling).
* :class:`GuardedTlsServer` — a pyOpenSSL server driven over memory BIOs under asyncio, the way
  the gateway drives handshakes, applying a
  :class:`tlsgate.tls.revocation_guard.ClientRevocationGuard` (including holding output while
  a verdict is pending and sending the late alert); also a reference for integrating the guard.
* :func:`s_client` — run ``openssl s_client`` and return what it printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import re
import selectors
import socket
import subprocess
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL

UTC = dt.UTC


def utcnow() -> dt.datetime:
    return dt.datetime.now(UTC)


# ------------------------------------------------------------------------------------------------
# Certificates
# ------------------------------------------------------------------------------------------------
@dataclass
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def serial(self) -> int:
        return self.cert.serial_number

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        return self.key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())

    def write(self, directory: Path, name: str,
              chain: Sequence[x509.Certificate] = ()) -> tuple[str, str]:
        """Write ``name.pem`` (this certificate, then ``chain``) and ``name.key``."""
        cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
        cert_path.write_bytes(self.cert_pem() + b"".join(
            c.public_bytes(serialization.Encoding.PEM) for c in chain))
        key_path.write_bytes(self.key_pem())
        key_path.chmod(0o600)
        return str(cert_path), str(key_path)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tlsgate tests"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


class TestCA:
    """A CA (root, or intermediate when made with :meth:`intermediate`)."""

    __test__ = False    # not a pytest test class

    def __init__(self, cn: str = "Test Root CA", *, _issued: Issued | None = None,
                 _parent: TestCA | None = None) -> None:
        self.parent = _parent
        if _issued is None:
            key = ec.generate_private_key(ec.SECP256R1())
            now = utcnow()
            cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
                    .public_key(key.public_key()).serial_number(x509.random_serial_number())
                    .not_valid_before(now - dt.timedelta(days=1))
                    .not_valid_after(now + dt.timedelta(days=365))
                    .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
                    .add_extension(_ca_usage(), True)
                    .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                                   False)
                    .sign(key, hashes.SHA256()))
            _issued = Issued(cert, key)
        self.issued = _issued

    @property
    def cert(self) -> x509.Certificate:
        return self.issued.cert

    @property
    def key(self) -> ec.EllipticCurvePrivateKey:
        return self.issued.key

    def chain(self) -> list[x509.Certificate]:
        """This CA's certificate and its parents' up to the root."""
        out, ca = [], self
        while ca is not None:
            out.append(ca.cert)
            ca = ca.parent
        return out

    def issue(self, cn: str, *, ca: bool = False, crl_url: str | None = None,
              ocsp_url: str | None = None, eku: Sequence[x509.ObjectIdentifier] | None = None,
              must_staple: bool = False, san: Sequence[str] = (),
              not_before: dt.datetime | None = None, not_after: dt.datetime | None = None,
              key: ec.EllipticCurvePrivateKey | None = None) -> Issued:
        key = key or ec.generate_private_key(ec.SECP256R1())
        now = utcnow()
        b = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(self.cert.subject)
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(not_before or now - dt.timedelta(hours=1))
             .not_valid_after(not_after or now + dt.timedelta(days=30))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), True)
             .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                 self.key.public_key()), False))
        if ca:
            b = b.add_extension(_ca_usage(), True)
        else:
            b = b.add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False), True)
        if crl_url:
            b = b.add_extension(x509.CRLDistributionPoints([x509.DistributionPoint(
                [x509.UniformResourceIdentifier(crl_url)], None, None, None)]), False)
        if ocsp_url:
            b = b.add_extension(x509.AuthorityInformationAccess([x509.AccessDescription(
                x509.oid.AuthorityInformationAccessOID.OCSP,
                x509.UniformResourceIdentifier(ocsp_url))]), False)
        if eku:
            b = b.add_extension(x509.ExtendedKeyUsage(list(eku)), False)
        if must_staple:
            b = b.add_extension(x509.TLSFeature([x509.TLSFeatureType.status_request]), False)
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName(n) for n in san]), False)
        return Issued(b.sign(self.key, hashes.SHA256()), key)

    def intermediate(self, cn: str, *, crl_url: str | None = None) -> TestCA:
        """A sub-CA; ``crl_url`` is the distribution point *of the intermediate's certificate*
        (where this CA's CRL, which can revoke it, is published)."""
        return TestCA(_issued=self.issue(cn, ca=True, crl_url=crl_url), _parent=self)

    def server_cert(self, cn: str = "localhost", **kw: Any) -> Issued:
        return self.issue(cn, san=[cn], eku=[ExtendedKeyUsageOID.SERVER_AUTH], **kw)

    def client_cert(self, cn: str, **kw: Any) -> Issued:
        return self.issue(cn, eku=[ExtendedKeyUsageOID.CLIENT_AUTH], **kw)

    def ocsp_signer(self, cn: str = "OCSP Responder", *, eku: bool = True) -> Issued:
        return self.issue(cn, eku=[ExtendedKeyUsageOID.OCSP_SIGNING] if eku
                          else [ExtendedKeyUsageOID.CLIENT_AUTH])

    def crl(self, revoked: Iterable[int] = (), *, this_update: dt.datetime | None = None,
            next_update: dt.datetime | None = None,
            reason: x509.ReasonFlags | None = x509.ReasonFlags.key_compromise,
            key: ec.EllipticCurvePrivateKey | None = None) -> x509.CertificateRevocationList:
        now = utcnow()
        b = (x509.CertificateRevocationListBuilder().issuer_name(self.cert.subject)
             .last_update(this_update or now - dt.timedelta(minutes=5))
             .next_update(next_update or now + dt.timedelta(days=1)))
        for serial in revoked:
            rb = (x509.RevokedCertificateBuilder().serial_number(serial)
                  .revocation_date(now - dt.timedelta(minutes=10)))
            if reason is not None:
                rb = rb.add_extension(x509.CRLReason(reason), False)
            b = b.add_revoked_certificate(rb.build())
        return b.sign(key or self.key, hashes.SHA256())


def _ca_usage() -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=True, content_commitment=False,
                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                         key_cert_sign=True, crl_sign=True, encipher_only=False,
                         decipher_only=False)


def crl_der(crl: x509.CertificateRevocationList) -> bytes:
    return crl.public_bytes(serialization.Encoding.DER)


def crl_pem(crl: x509.CertificateRevocationList) -> bytes:
    return crl.public_bytes(serialization.Encoding.PEM)


# ------------------------------------------------------------------------------------------------
# aiohttp plumbing
# ------------------------------------------------------------------------------------------------
class _AioServer:
    def __init__(self) -> None:
        self._runner: web.AppRunner | None = None
        self.port = 0

    def _app(self) -> web.Application:
        raise NotImplementedError

    async def start(self) -> None:
        runner = web.AppRunner(self._app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        self._runner = runner
        self.port = runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def running(self) -> bool:
        return self._runner is not None

    async def __aenter__(self) -> Any:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


# ------------------------------------------------------------------------------------------------
# OCSP responders
# ------------------------------------------------------------------------------------------------
OCSP_MODES = ("normal", "wrong_key", "bad_delegate", "expired", "future", "malformed",
              "http_500", "unauthorized", "no_next_update", "other_serial", "hang")


class OcspResponder(_AioServer):
    """aiohttp OCSP responder for one CA. ``statuses[serial]`` = "good" (default) | "revoked" |
    "unknown"; ``mode`` picks a misbehaviour (see ``OCSP_MODES``); ``requests`` counts POSTs."""

    def __init__(self, ca: TestCA, *, signer: Issued | None = None,
                 validity: dt.timedelta = dt.timedelta(days=1)) -> None:
        super().__init__()
        self.ca = ca
        self.signer = signer          # delegated responder; None: the CA signs
        self.validity = validity
        self.statuses: dict[int, str] = {}
        self.mode = "normal"
        self.requests = 0
        self.this_update_offset = dt.timedelta(minutes=-1)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/ocsp"

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/ocsp", self._handle)
        return app

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        body = await request.read()
        mode = self.mode
        if mode == "hang":
            await asyncio.sleep(3600)
        if mode == "http_500":
            return web.Response(status=500, text="responder broken")
        if mode == "malformed":
            return web.Response(body=b"\x30\x03\x0a\x01", content_type="application/ocsp-response")
        try:
            req = ocsp.load_der_ocsp_request(body)
        except ValueError:
            return web.Response(body=ocsp.OCSPResponseBuilder.build_unsuccessful(
                ocsp.OCSPResponseStatus.MALFORMED_REQUEST).public_bytes(
                    serialization.Encoding.DER), content_type="application/ocsp-response")
        return web.Response(body=self.response_for(req, mode),
                            content_type="application/ocsp-response")

    def response_for(self, req: ocsp.OCSPRequest, mode: str = "normal") -> bytes:
        if mode == "unauthorized":
            return ocsp.OCSPResponseBuilder.build_unsuccessful(
                ocsp.OCSPResponseStatus.UNAUTHORIZED).public_bytes(serialization.Encoding.DER)
        now = utcnow()
        this_update = now + self.this_update_offset
        next_update: dt.datetime | None = this_update + self.validity
        if mode == "expired":
            this_update, next_update = now - dt.timedelta(days=2), now - dt.timedelta(days=1)
        elif mode == "future":
            this_update = now + dt.timedelta(hours=2)
            next_update = this_update + self.validity
        elif mode == "no_next_update":
            next_update = None
        serial = req.serial_number + (1 if mode == "other_serial" else 0)
        status_name = self.statuses.get(req.serial_number, "good")
        status = {"good": ocsp.OCSPCertStatus.GOOD, "revoked": ocsp.OCSPCertStatus.REVOKED,
                  "unknown": ocsp.OCSPCertStatus.UNKNOWN}[status_name]
        b = ocsp.OCSPResponseBuilder().add_response_by_hash(
            req.issuer_name_hash, req.issuer_key_hash, serial, req.hash_algorithm, status,
            this_update, next_update,
            now - dt.timedelta(hours=1) if status_name == "revoked" else None,
            x509.ReasonFlags.key_compromise if status_name == "revoked" else None)
        signer_cert, signer_key = self.ca.cert, self.ca.key
        if self.signer is not None:
            signer_cert, signer_key = self.signer.cert, self.signer.key
            b = b.certificates([self.signer.cert])
        encoding = ocsp.OCSPResponderEncoding.HASH
        if mode == "wrong_key":
            # An impostor: the CA's name, another key; identified by name so it "claims" the CA.
            impostor = TestCA("impostor")
            fake = impostor.issue("x")
            signer_key = fake.key
            signer_cert = (x509.CertificateBuilder().subject_name(self.ca.cert.subject)
                           .issuer_name(self.ca.cert.subject).public_key(fake.key.public_key())
                           .serial_number(1).not_valid_before(now - dt.timedelta(days=1))
                           .not_valid_after(now + dt.timedelta(days=1))
                           .sign(fake.key, hashes.SHA256()))
            encoding = ocsp.OCSPResponderEncoding.NAME
        elif mode == "bad_delegate":
            rogue = self.ca.ocsp_signer("Not An OCSP Signer", eku=False)
            signer_cert, signer_key = rogue.cert, rogue.key
            b = b.certificates([rogue.cert])
        b = b.responder_id(encoding, signer_cert)
        return b.sign(signer_key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


class OpensslOcspResponder:
    """``openssl ocsp`` as a responder for ``ca``, signing with the delegated ``signer``.
    ``entries``: (certificate, "V" | "R") written to its index.txt."""

    def __init__(self, workdir: Path, ca: TestCA, signer: Issued,
                 entries: Sequence[tuple[x509.Certificate, str]], *, ndays: int = 1) -> None:
        self.workdir = workdir
        self.ca, self.signer, self.entries, self.ndays = ca, signer, entries, ndays
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self, timeout: float = 10.0) -> None:
        d = self.workdir
        d.mkdir(parents=True, exist_ok=True)
        lines = []
        for cert, flag in self.entries:
            exp = cert.not_valid_after_utc.strftime("%y%m%d%H%M%SZ")
            rev = utcnow().strftime("%y%m%d%H%M%SZ") + ",keyCompromise" if flag == "R" else ""
            subj = "/" + "/".join(f"{a.oid._name}={a.value}" for a in cert.subject)
            serial = f"{cert.serial_number:X}"
            serial = "0" * (len(serial) % 2) + serial     # whole bytes, as openssl writes them
            lines.append(f"{flag}\t{exp}\t{rev}\t{serial}\tunknown\t{subj}\n")
        (d / "index.txt").write_text("".join(lines))
        (d / "ca.pem").write_bytes(self.ca.cert.public_bytes(serialization.Encoding.PEM))
        self.signer.write(d, "rsigner")
        self.proc = subprocess.Popen(
            ["openssl", "ocsp", "-index", str(d / "index.txt"), "-port", "0",
             "-rsigner", str(d / "rsigner.pem"), "-rkey", str(d / "rsigner.key"),
             "-CA", str(d / "ca.pem"), "-ndays", str(self.ndays)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        buf = b""
        while b"\n" not in buf:
            if not sel.select(timeout):
                self.stop()
                raise RuntimeError("openssl ocsp did not start")
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            if not chunk:
                err = self.proc.stderr.read() if self.proc.stderr else b""
                raise RuntimeError(f"openssl ocsp exited: {err.decode(errors='replace')}")
            buf += chunk
        m = re.search(rb"ACCEPT \S*:(\d+)", buf)
        if not m:
            self.stop()
            raise RuntimeError(f"unexpected openssl ocsp output {buf!r}")
        self.port = int(m.group(1))

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            for s in (self.proc.stdout, self.proc.stderr):
                if s is not None:
                    s.close()
            self.proc = None


# ------------------------------------------------------------------------------------------------
# CRL server
# ------------------------------------------------------------------------------------------------
class CrlServer(_AioServer):
    """Serves ``content[path]`` (bytes) at ``/path``; ``hits[path]`` counts GETs. ``stop()``
    makes it refuse connections; ``start()`` again reuses the port. ``delay`` slows answers."""

    def __init__(self) -> None:
        super().__init__()
        self.content: dict[str, bytes] = {}
        self.hits: Counter[str] = Counter()
        self.delay = 0.0
        self.status = 200

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    def reserve_port(self) -> int:
        """Pick the port before starting (CRL URLs go into certificates issued before)."""
        if not self.port:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                self.port = s.getsockname()[1]
        return self.port

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/{path:.*}", self._handle)
        return app

    async def _handle(self, request: web.Request) -> web.Response:
        path = request.match_info["path"]
        self.hits[path] += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.status != 200:
            return web.Response(status=self.status, text="unavailable")
        body = self.content.get(path)
        if body is None:
            return web.Response(status=404, text="no such CRL")
        return web.Response(body=body, content_type="application/pkix-crl")


# ------------------------------------------------------------------------------------------------
# TLS servers
# ------------------------------------------------------------------------------------------------
class BlockingTlsServer:
    """pyOpenSSL over blocking sockets in a thread: each connection does the handshake, writes
    ``greeting`` and closes. ``handshakes`` / ``errors`` record what happened."""

    def __init__(self, ctx: SSL.Context, greeting: bytes = b"hello from tlsgate test\n") -> None:
        self.ctx = ctx
        self.greeting = greeting
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.handshakes = 0
        self.errors: list[str] = []
        self._stop = False
        self._thread = threading.Thread(target=self._serve, name="tls-test-server", daemon=True)

    def __enter__(self) -> BlockingTlsServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop = True
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        self._thread.join(5)
        self.sock.close()

    def _serve(self) -> None:
        while not self._stop:
            try:
                s, _ = self.sock.accept()
            except OSError:
                return
            if self._stop:
                s.close()
                return
            threading.Thread(target=self._one, args=(s,), daemon=True).start()

    def _one(self, s: socket.socket) -> None:
        # Blocking, no Python timeout: a socket timeout makes the fd non-blocking under OpenSSL.
        conn = SSL.Connection(self.ctx, s)
        conn.set_accept_state()
        try:
            conn.do_handshake()
            self.handshakes += 1
            conn.sendall(self.greeting)
            conn.shutdown()
        except (SSL.Error, OSError) as e:
            self.errors.append(repr(e))
        finally:
            s.close()


@dataclass
class ConnRecord:
    handshake_ok: bool = False
    error: str = ""
    verdict: Any = None
    closed_reason: str = ""
    held_bytes: int = 0


@dataclass
class GuardedTlsServer:
    """Memory-BIO TLS server under asyncio applying a ClientRevocationGuard, as the gateway
    does. An allowed client gets ``greeting``; with ``keep_open`` the connection then stays open
    until the client leaves or :meth:`close_handles` is called (close_revoked_connections)."""

    ctx: SSL.Context
    guard: Any
    greeting: bytes = b"welcome\n"
    keep_open: bool = False
    records: list[ConnRecord] = field(default_factory=list)
    live: dict[int, tuple[SSL.Connection, asyncio.StreamWriter]] = field(default_factory=dict)
    on_allowed: Callable[[int, SSL.Connection], None] | None = None
    port: int = 0
    _server: asyncio.base_events.Server | None = None
    _next_id: int = 0
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for _, w in list(self.live.values()):
            w.close()

    def close_handles(self, handles: Iterable[int], reason: str) -> None:
        for h in handles:
            item = self.live.pop(h, None)
            if item is None:
                continue
            conn, w = item
            with contextlib.suppress(SSL.Error):
                conn.shutdown()
            w.write(_drain(conn))
            w.close()
            self.records[h].closed_reason = reason

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        rec = ConnRecord()
        self.records.append(rec)
        handle = len(self.records) - 1
        conn = SSL.Connection(self.ctx, None)
        conn.set_accept_state()
        held = bytearray()
        try:
            while True:
                data = await asyncio.wait_for(reader.read(65536), 15)
                if not data:
                    rec.error = "client left during the handshake"
                    return
                conn.bio_write(data)
                done = False
                try:
                    conn.do_handshake()
                    done = True
                except SSL.WantReadError:
                    pass
                except SSL.Error as e:
                    rec.error = f"handshake failed: {e}"
                    writer.write(_drain(conn))      # OpenSSL's own alert
                    await writer.drain()
                    return
                out = _drain(conn)
                if done or self.guard.pending(conn):
                    held += out                     # hold until the verdict
                else:
                    writer.write(out)
                if done:
                    break
            rec.held_bytes = len(held)
            verdict = self.guard.check_now(conn)
            if verdict is None:
                verdict = await self.guard.resolve(conn)
            rec.verdict = verdict
            if not verdict.allow:
                writer.write(verdict.alert_record)
                await writer.drain()
                return
            rec.handshake_ok = True
            writer.write(bytes(held))
            conn.sendall(self.greeting)
            writer.write(_drain(conn))
            await writer.drain()
            if self.keep_open:
                self.live[handle] = (conn, writer)
                if self.on_allowed is not None:
                    self.on_allowed(handle, conn)
                while handle in self.live:
                    data = await reader.read(65536)
                    if not data:
                        break
                self.live.pop(handle, None)
                return
            conn.shutdown()
            writer.write(_drain(conn))
            await writer.drain()
        except (TimeoutError, ConnectionError) as e:
            rec.error = rec.error or repr(e)
        finally:
            with contextlib.suppress(Exception):
                writer.close()


def _drain(conn: SSL.Connection) -> bytes:
    out = b""
    while True:
        try:
            out += conn.bio_read(65536)
        except SSL.WantReadError:
            return out


# ------------------------------------------------------------------------------------------------
# openssl s_client
# ------------------------------------------------------------------------------------------------
async def s_client(port: int, *args: str, stdin: bytes = b"", timeout: float = 20.0) -> str:
    """Run ``openssl s_client -connect 127.0.0.1:<port> -ign_eof <args>``; stdout + stderr.
    ``-ign_eof`` keeps it reading until the server closes, so it reports a late alert."""
    proc = await asyncio.create_subprocess_exec(
        "openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-ign_eof", *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(stdin), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return out.decode(errors="replace")


async def start_s_client(port: int, *args: str) -> asyncio.subprocess.Process:
    """Start ``openssl s_client`` and leave it running (for close_revoked_connections)."""
    return await asyncio.create_subprocess_exec(
        "openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-ign_eof", *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
