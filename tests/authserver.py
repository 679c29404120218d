"""A real HTTPS authentication server on loopback, for tests of the HTTP authentication client.

It is an aiohttp web app speaking EMQX's HTTP authentication contract; what it answers is chosen
per user name (``decisions``) so one server serves every case of a test module:

    async with AuthServer(tls=pki.server_context()) as srv:
        srv.decisions["bob"] = "deny"
        ... srv.url ... srv.requests[-1].json ...

Replies: ``"allow"``, ``"superuser"``, ``"deny"``, ``"bad_credentials"`` (tlsgate's deny with
``reason``), ``"ignore"``, ``"204"``, ``"500"``, ``"404"``, ``"302"``, ``"hang"`` (never
answers until the server stops), ``"badjson"``, ``"text"`` (200 text/plain), ``"form"`` (200
form-encoded allow), ``"not_object"`` (JSON array), or a :class:`Reply` for anything else.
Every request is logged in ``requests`` (method, path, query, headers, body, TLS peer
certificate); ``sni_seen`` holds the SNI name of every TLS handshake (``None`` = no SNI).

It also holds the small test PKI (:class:`Pki`) these tests use: a CA, certificates issued from
it, written to a temporary directory; generated per test session with ``cryptography``, never
checked in.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


# --------------------------------------------------------------------------------------------
# Test PKI
# --------------------------------------------------------------------------------------------
@dataclass
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    chain: list[x509.Certificate] = field(default_factory=list)  # intermediates, leaf excluded

    @property
    def cert_pem(self) -> bytes:
        out = self.cert.public_bytes(serialization.Encoding.PEM)
        for c in self.chain:
            out += c.public_bytes(serialization.Encoding.PEM)
        return out

    def key_pem(self, password: bytes | None = None) -> bytes:
        enc: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(password) if password
            else serialization.NoEncryption())
        return self.key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8, enc)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tlsgate tests")])


def make_ca(cn: str = "tlsgate test CA", parent: Issued | None = None) -> Issued:
    """A CA; with ``parent``, an intermediate CA signed by it."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    issuer_name = parent.cert.subject if parent else _name(cn)
    signing_key = parent.key if parent else key
    b = (x509.CertificateBuilder()
         .subject_name(_name(cn)).issuer_name(issuer_name)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(minutes=5))
         .not_valid_after(now + dt.timedelta(days=2))
         .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
         .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                      content_commitment=False, key_encipherment=False,
                                      data_encipherment=False, key_agreement=False,
                                      encipher_only=False, decipher_only=False), critical=True)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                        critical=False))
    if parent:
        b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            parent.key.public_key()), critical=False)
    cert = b.sign(signing_key, hashes.SHA256())
    parent_is_intermediate = parent is not None and parent.cert.issuer != parent.cert.subject
    chain = [parent.cert, *parent.chain] if parent is not None and parent_is_intermediate else []
    return Issued(cert, key, chain)


def issue(ca: Issued, cn: str, *, dns: tuple[str, ...] = (), ips: tuple[str, ...] = (),
          client: bool = False) -> Issued:
    """A leaf certificate signed by ``ca`` (server by default, client with ``client=True``).
    Its chain holds ``ca`` when ``ca`` is an intermediate."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    b = (x509.CertificateBuilder()
         .subject_name(_name(cn)).issuer_name(ca.cert.subject)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(minutes=5))
         .not_valid_after(now + dt.timedelta(days=2))
         .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
         .add_extension(x509.ExtendedKeyUsage(
             [ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]),
             critical=False)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
                        critical=False))
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = b.sign(ca.key, hashes.SHA256())
    is_intermediate = ca.cert.issuer != ca.cert.subject
    chain = [ca.cert, *ca.chain] if is_intermediate else []
    return Issued(cert, key, chain)


@dataclass
class Files:
    cert: str
    key: str


class Pki:
    """A CA, a server certificate (auth.test + 127.0.0.1) and a client certificate, as files."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.ca = make_ca()
        self.server = issue(self.ca, "auth.test", dns=("auth.test",), ips=("127.0.0.1",))
        self.client = issue(self.ca, "device-1", client=True)
        self.ca_file = self.write_ca("ca.pem", self.ca)
        self.server_files = self.write("server", self.server)
        self.client_files = self.write("client", self.client)

    def write_ca(self, name: str, ca: Issued) -> str:
        p = self.dir / name
        p.write_bytes(ca.cert.public_bytes(serialization.Encoding.PEM))
        return str(p)

    def write(self, stem: str, issued: Issued, password: bytes | None = None) -> Files:
        cert = self.dir / f"{stem}.pem"
        key = self.dir / f"{stem}.key"
        cert.write_bytes(issued.cert_pem)
        key.write_bytes(issued.key_pem(password))
        key.chmod(0o600)
        return Files(str(cert), str(key))

    def server_context(self, issued: Issued | None = None, *, require_client_cert: bool = False,
                       client_ca: str | None = None) -> ssl.SSLContext:
        files = self.server_files if issued is None else self.write("srv-extra", issued)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(files.cert, files.key)
        if require_client_cert:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(client_ca or self.ca_file)
        return ctx


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------
@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    content_type: str | None = "application/json"
    delay: float = 0.0          # seconds before answering
    hang: bool = False          # never answer (until the server stops)
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, obj: Any, status: int = 200, **kw: Any) -> Reply:
        return cls(status=status, body=json.dumps(obj).encode(), **kw)


NAMED: dict[str, Reply] = {
    "allow": Reply.json({"result": "allow", "is_superuser": False}),
    "superuser": Reply.json({"result": "allow", "is_superuser": True}),
    "deny": Reply.json({"result": "deny"}),
    "bad_credentials": Reply.json({"result": "deny", "reason": "bad_username_or_password"}),
    "ignore": Reply.json({"result": "ignore"}),
    "204": Reply(status=204, content_type=None),
    "500": Reply.json({"result": "allow"}, status=500),
    "404": Reply(status=404, body=b"not found", content_type="text/plain"),
    "302": Reply(status=302, content_type=None, headers={"Location": "http://127.0.0.1:9/"}),
    "hang": Reply(hang=True),
    "badjson": Reply(body=b'{"result": "allow"', content_type="application/json"),
    "text": Reply(body=b"allow", content_type="text/plain"),
    "form": Reply(body=b"result=allow&is_superuser=1",
                  content_type="application/x-www-form-urlencoded"),
    "not_object": Reply(body=b'["allow"]'),
}


@dataclass
class Seen:
    method: str
    path: str                   # raw path as sent (percent-encoding kept)
    query: list[tuple[str, str]]
    raw_query: str              # as sent
    headers: dict[str, str]     # lower-case names
    body: bytes
    peercert: dict[str, Any] | None
    username: str | None

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def form(self) -> dict[str, str]:
        return dict(parse_qsl(self.body.decode(), keep_blank_values=True))


class AuthServer:
    """EMQX-contract auth server on 127.0.0.1, a free port, HTTPS when ``tls`` is given."""

    def __init__(self, tls: ssl.SSLContext | None = None, *, default: str | Reply = "allow",
                 host: str = "127.0.0.1") -> None:
        self.tls = tls
        self.host = host
        self.default = default
        self.decisions: dict[str, str | Reply] = {}
        self.requests: list[Seen] = []
        self.sni_seen: list[str | None] = []
        self.port = 0
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None
        if tls is not None:
            tls.sni_callback = self._on_sni

    def _on_sni(self, sslobj: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> None:
        self.sni_seen.append(name)

    @property
    def url(self) -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://{self.host}:{self.port}"

    async def start(self) -> AuthServer:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0, ssl_context=self.tls)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> AuthServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        username: str | None = request.query.get("username")
        ctype = request.headers.get("Content-Type", "")
        try:
            if ctype.startswith("application/json") and body:
                username = json.loads(body).get("username", username)
            elif ctype.startswith("application/x-www-form-urlencoded"):
                username = dict(parse_qsl(body.decode())).get("username", username)
        except (ValueError, AttributeError):
            pass
        transport = request.transport
        peercert = transport.get_extra_info("peercert") if transport is not None else None
        self.requests.append(Seen(
            method=request.method, path=request.raw_path.split("?")[0],
            query=list(request.query.items()), raw_query=request.raw_path.partition("?")[2],
            headers={k.lower(): v for k, v in request.headers.items()},
            body=body, peercert=peercert, username=username))
        choice = self.decisions.get(username or "", self.default)
        reply = NAMED[choice] if isinstance(choice, str) else choice
        if reply.hang:
            await self._release.wait()
            return web.Response(status=503)
        if reply.delay:
            await asyncio.sleep(reply.delay)
        headers = dict(reply.headers)
        if reply.content_type is not None:
            headers["Content-Type"] = reply.content_type
        return web.Response(status=reply.status, body=reply.body if reply.status != 204 else None,
                            headers=headers)
