"""Server TLS contexts: ``ServerSslOptions`` -> an immutable, ready-to-use pyOpenSSL context.

A :class:`ServerContext` is built once per listener (and again on reload) and never mutated
afterwards: a reload builds a new one and swaps it in, so connections in flight keep the
context they started with. Every problem found while building names its config key
(``listeners.ssl.<name>.ssl_options.keyfile: wrong password``); all problems are collected so
``tlsgate check-config`` can list them at once.

Safe defaults (SPEC §1): TLS 1.2+, Mozilla "intermediate" TLS 1.2 suites (ECDHE/DHE + AEAD
only: no CBC, no RSA key exchange, no 3DES/RC4), server cipher order, no compression, no
renegotiation, OpenSSL's per-connection buffers released when idle (SSL_MODE_RELEASE_BUFFERS:
≈22 KiB less per idle connection, no measurable CPU cost).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import ObjectIdentifier
from OpenSSL import SSL, crypto
from OpenSSL._util import lib as _lib

from ..config.load import Problem
from ..config.schema import ServerSslOptions, SniEntry
from ..config.types import Secret
from . import unbound
from .certs import (
    CertError,
    is_world_readable,
    key_matches_cert,
    load_pem_chain,
    load_private_key,
    parse_eku,
)
from .engine import ServerSession

log = logging.getLogger("tlsgate.tls")

# TLS 1.3 suites, AES-128-GCM first: cheapest per byte with AES-NI, and SHA-256 based (TLS 1.3
# external PSK only works with SHA-256 suites when a certificate is also configured).
DEFAULT_TLS13_SUITES = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"

_VERSION = {"tlsv1.2": SSL.TLS1_2_VERSION, "tlsv1.3": SSL.TLS1_3_VERSION}

PrivateKey = Any  # a cryptography private key object


class ContextError(Exception):
    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


@dataclass
class _Collector:
    prefix: str
    problems: list[Problem] = field(default_factory=list)

    def add(self, key: str, message: str) -> None:
        full = ".".join(k for k in (self.prefix, key) if k)
        self.problems.append(Problem(full, message))


def warn_if_world_readable(path: str, key: str) -> None:
    try:
        if is_world_readable(path):
            log.warning("%s: key file %s is readable by every user on this machine; "
                        "chmod 600 it", key, path)
    except OSError:
        pass


# ------------------------------------------------------------------------------------------
# The context
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ServerContext:
    """An immutable server context for one listener (plus its SNI contexts)."""

    ctx: SSL.Context
    chain: list[x509.Certificate]
    certfile: str
    sni: dict[str, SSL.Context]
    sni_chains: dict[str, list[x509.Certificate]]
    opts: ServerSslOptions
    # Objects that must live as long as the context (callbacks handed to OpenSSL).
    keepalive: list[object] = field(default_factory=list, repr=False)
    #: The Python verify callback (extended key usage check) if any: a revocation guard
    #: installed later chains to it.
    verify_callback: VerifyCallback | None = None
    #: Client revocation guard (CRL / client OCSP), when the listener checks revocation.
    guard: Any = None
    #: OCSP staplers of this context's certificates (main first, then SNI entries).
    staplers: tuple[Any, ...] = ()
    #: Installs the session-ticket key of a period (``ticket_epoch``) in this context and its
    #: SNI contexts; None when the keys are OpenSSL's own (no secret, or resumption off).
    #: ``rekey(period, new_secret=None)``: install the ticket key of ``period`` (derived from
    #: ``new_secret`` from now on, when given), the key before it still accepted: the previous
    #: period's, or the old secret's after a change of secret.
    rekey: Callable[..., None] | None = None

    def all_chains(self) -> dict[str, list[x509.Certificate]]:
        out = {"": self.chain}
        out.update(self.sni_chains)
        return out

    def new_session(self, send: Callable[[bytes], Any]) -> ServerSession:
        """A server session for one client; ``send`` writes ciphertext to it."""
        return ServerSession(self.ctx, send)


ContextHook = Callable[[SSL.Context, ServerSslOptions], None]
VerifyCallback = Callable[[SSL.Connection, crypto.X509, int, int, int], bool]


#: What decides which clients a listener admits: a session-ticket key is derived from these
#: (and the CA file's content), so a ticket from before a reload still resumes unless one of
#: them changed -- a server certificate renewed in place keeps tickets valid, a changed CA set
#: or verify mode does not.
_ADMISSION_FIELDS = ("cacertfile", "verify", "fail_if_no_peer_cert", "depth", "partial_chain",
                     "verify_peer_ext_key_usage", "versions", "ciphers")


#: The shortest ``node.session_ticket_secret_file`` accepted (bytes).
TICKET_SECRET_MIN = 32


def load_ticket_secret(path: str) -> bytes:
    """The ticket secret from an operator's file (any content of at least
    :data:`TICKET_SECRET_MIN` bytes, hashed). Raises ValueError saying what is wrong."""
    try:
        with open(path, "rb") as f:
            data = f.read(1 << 16)
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    if len(data) < TICKET_SECRET_MIN:
        raise ValueError(f"{path} holds {len(data)} bytes; at least {TICKET_SECRET_MIN} random "
                         f"bytes are needed (head -c 48 /dev/urandom > {path}; chmod 600 {path})")
    warn_if_world_readable(path, "node.session_ticket_secret_file")
    return hashlib.sha256(b"tlsgate ticket secret\0" + data).digest()


def ticket_epoch(now: float, rotation: float) -> int:
    """The ticket-key period ``now`` falls in (0 when keys never rotate)."""
    return int(now // rotation) if rotation > 0 else 0


def ticket_key(secret: bytes, key: str, opts: ServerSslOptions, epoch: int = 0) -> bytes:
    """The session-ticket key (name, HMAC key, AES key) for listener ``key`` in period
    ``epoch``: derived from the node's secret, so every worker, and every context a reload
    builds, has the same one."""
    admission = opts.model_dump(include=set(_ADMISSION_FIELDS), mode="json")
    ca = b""
    if opts.cacertfile:
        try:
            with open(opts.cacertfile, "rb") as f:
                ca = hashlib.sha256(f.read()).digest()
        except OSError:
            pass  # the context build reports the file
    info = b"\0".join([b"tlsgate session tickets v1", key.encode(),
                       repr(sorted(admission.items())).encode(), ca, str(epoch).encode()])
    name = hmac.new(secret, b"name\0" + info, hashlib.sha256).digest()[:16]
    keys = hmac.new(secret, b"keys\0" + info, hashlib.sha512).digest()
    return name + keys


#: A context's session-ticket keys: the current period's (new tickets), and the previous and
#: the next period's (None without rotation), whose tickets are accepted too.
TicketKeys = tuple[bytes, bytes | None, bytes | None]


def period_keys(secret: bytes, key: str, opts: ServerSslOptions, epoch: int,
                rotation: float) -> TicketKeys:
    """The ticket keys for period ``epoch``. With rotation, the period before's tickets still
    resume (unbound.set_ticket_keys: a fresh one replaces each), so a rotation costs no client
    a full handshake; and the next period's already do, so a ticket made by a worker or node
    that rotated a moment earlier (timers, clocks) resumes on one that has not yet."""
    current = ticket_key(secret, key, opts, epoch)
    if rotation <= 0:
        return current, None, None
    return (current, ticket_key(secret, key, opts, epoch - 1),
            ticket_key(secret, key, opts, epoch + 1))


def _apply_common(ctx: SSL.Context, opts: ServerSslOptions, c: _Collector,
                  session_id: bytes, tickets: TicketKeys | None = None
                  ) -> VerifyCallback | None:
    """Everything but the certificate: versions, suites, verification, session handling.
    Returns the Python verify callback installed (None: OpenSSL's own checks only)."""
    verify_cb: VerifyCallback | None = None
    versions = sorted(_VERSION[v] for v in opts.versions)
    ctx.set_min_proto_version(versions[0])
    ctx.set_max_proto_version(versions[-1])
    options = SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION
    if opts.honor_cipher_order:
        options |= SSL.OP_CIPHER_SERVER_PREFERENCE
    if not opts.reuse_sessions:
        options |= SSL.OP_NO_TICKET
    # Resumption is by session ticket (the client keeps the state). OpenSSL's server-side
    # session cache would only add TLS 1.2 session-id resumption, which no longer works once a
    # node runs several workers (one cache per process), and costs every full handshake a
    # cache insert (~5 % of the handshake measured). nginx's default is the same.
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    # The ticket lifetime clients are told, and OpenSSL's age check when one comes back.
    ctx.set_timeout(int(opts.session_lifetime))
    ctx.set_options(options)
    # reuse off: none at all (TLS 1.3 would still get session-id tickets that never resume)
    unbound.set_num_tickets(ctx, opts.session_tickets if opts.reuse_sessions else 0)
    if tickets is not None:  # only built when reuse_sessions is on
        unbound.set_ticket_keys(ctx, *tickets)
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
    # pyOpenSSL turns partial writes on for every context it makes; the engine writes whole
    # chunks into a memory BIO (which never blocks) with one SSL_write, so it must be off:
    # with it on, SSL_write stops after one 16 KiB record.
    ctx.clear_mode(_lib.SSL_MODE_ENABLE_PARTIAL_WRITE)
    ctx.set_session_id(session_id)

    tls12 = opts.tls12_ciphers()
    tls13 = opts.tls13_ciphers()
    if "tlsv1.2" in opts.versions:
        if not tls12:
            c.add("ciphers", "TLS 1.2 is enabled in versions but no TLS 1.2 suite is listed "
                             "(add e.g. ECDHE-ECDSA-AES128-GCM-SHA256, or drop tlsv1.2)")
        else:
            try:
                ctx.set_cipher_list(":".join(tls12).encode())
            except SSL.Error:
                c.add("ciphers", f"OpenSSL knows none of {', '.join(tls12)}")
    if "tlsv1.3" in opts.versions:
        suites = ":".join(tls13) if tls13 else DEFAULT_TLS13_SUITES
        try:
            ctx.set_tls13_ciphersuites(suites.encode())
        except (SSL.Error, ValueError):
            c.add("ciphers", f"OpenSSL refused the TLS 1.3 suites {suites}")
    elif tls13:
        c.add("ciphers", "TLS 1.3 suites are listed but tlsv1.3 is not in versions")

    # Key shares: OpenSSL 4's default prefers the ML-KEM hybrid; measured on the server side
    # (benchmarks/key_exchange_cost.py), a client that uses it costs ~25 % more CPU per
    # handshake and 6.4 KiB more per connection for its lifetime (OpenSSL keeps the peer's
    # parsed ML-KEM key). `groups` lets an operator choose.
    if opts.groups and _lib.SSL_CTX_set1_curves_list(
            ctx._context, ":".join(opts.groups).encode()) != 1:
        _lib.ERR_clear_error()
        c.add("groups", f"OpenSSL does not know the group list {', '.join(opts.groups)} "
                        "(OpenSSL names, e.g. X25519MLKEM768, X25519, P-256, P-384)")

    if opts.verify == "verify_peer":
        mode = SSL.VERIFY_PEER | SSL.VERIFY_CLIENT_ONCE
        if opts.fail_if_no_peer_cert:
            mode |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT
        eku = None
        if opts.verify_peer_ext_key_usage:
            try:
                eku = parse_eku(opts.verify_peer_ext_key_usage)
            except (CertError, ValueError) as exc:
                c.add("verify_peer_ext_key_usage", str(exc))
        verify_cb = _eku_checker(eku) if eku is not None else None
        ctx.set_verify(mode, verify_cb)
        ctx.set_verify_depth(opts.depth)
        if opts.cacertfile:
            try:
                load_pem_chain(opts.cacertfile)
                ctx.load_verify_locations(opts.cacertfile)
                ctx.load_client_ca(opts.cacertfile.encode())
            except CertError as exc:
                c.add("cacertfile", str(exc))
            except SSL.Error as exc:
                c.add("cacertfile", f"OpenSSL could not load it: {exc}")
        if opts.partial_chain:
            store = ctx.get_cert_store()
            if store is not None:
                store.set_flags(crypto.X509StoreFlags.PARTIAL_CHAIN)
    else:
        ctx.set_verify(SSL.VERIFY_NONE)

    if opts.alpn:
        offered = [p.encode() for p in opts.alpn]

        def select(_conn: SSL.Connection, client_protos: list[bytes]) -> Any:
            for p in offered:
                if p in client_protos:
                    return p
            # RFC 7301 allows continuing without ALPN; refusing would lock out clients that
            # offer e.g. "x-amzn-mqtt-ca" only. The access log shows alpn=- for them.
            return SSL.NO_OVERLAPPING_PROTOCOLS

        ctx.set_alpn_select_callback(select)
    return verify_cb


def _eku_checker(required: ObjectIdentifier) -> Callable[..., bool]:
    def verify(_conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int) -> bool:
        if not ok:
            return False
        if depth != 0:
            return True
        try:
            ext = cert.to_cryptography().extensions.get_extension_for_class(
                x509.ExtendedKeyUsage)
        except x509.ExtensionNotFound:
            log.info("client certificate has no extended key usage; %s required",
                     required.dotted_string)
            return False
        except Exception:  # never let an exception escape into OpenSSL
            return False
        if required in ext.value:
            return True
        log.info("client certificate lacks extended key usage %s", required.dotted_string)
        return False

    return verify


def _load_identity(ctx: SSL.Context, certfile: str, keyfile: str, password: Secret | None,
                   c: _Collector, key_prefix: str = "") -> list[x509.Certificate]:
    chain: list[x509.Certificate] = []
    key = None
    try:
        chain = load_pem_chain(certfile)
    except CertError as exc:
        c.add(f"{key_prefix}certfile", str(exc))
    try:
        key = load_private_key(keyfile, password.reveal() if password else None)
        warn_if_world_readable(keyfile, f"{c.prefix}.{key_prefix}keyfile")
    except OSError as exc:
        c.add(f"{key_prefix}password", f"cannot read the password file: {exc.strerror}")
    except CertError as exc:
        c.add(f"{key_prefix}keyfile", str(exc))
    if not chain or key is None:
        return chain
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
                      | ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        c.add(f"{key_prefix}keyfile", "unsupported key type (use RSA, EC, Ed25519 or Ed448)")
        return chain
    if not key_matches_cert(key, chain[0]):
        c.add(f"{key_prefix}keyfile", f"the key does not belong to the first certificate in "
                                      f"{certfile} (leaf first, then the chain)")
        return chain
    try:
        ctx.use_certificate(chain[0])
        for extra in chain[1:]:
            ctx.add_extra_chain_cert(extra)
        ctx.use_privatekey(key)
        ctx.check_privatekey()
    except SSL.Error as exc:
        c.add(f"{key_prefix}certfile", f"OpenSSL refused the certificate/key: {exc}")
    return chain


def _sni_match(pattern: str, name: str) -> bool:
    pattern, name = pattern.lower().rstrip("."), name.lower().rstrip(".")
    if pattern.startswith("*."):
        head, _, tail = name.partition(".")
        return bool(head) and tail == pattern[2:]
    return pattern == name


def build_server_context(opts: ServerSslOptions, key: str,
                         hooks: list[ContextHook] | None = None,
                         ticket_secret: bytes | None = None,
                         ticket_rotation: float = 0.0,
                         ticket_period: int | None = None) -> ServerContext:
    """Build a listener's context; ``key`` is its config path (``listeners.ssl.default``).
    ``ticket_secret``: the node's secret the session-ticket keys are derived from (None: OpenSSL
    makes random keys for this context alone); ``ticket_rotation``: their period in seconds;
    ``ticket_period``: the period whose keys to install (default: the current one).

    Raises :class:`ContextError` listing every problem, each with its full key.
    """
    c = _Collector(f"{key}.ssl_options")
    session_id = ("tlsgate:" + key).encode()[:32]
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    epoch = ticket_epoch(time.time(), ticket_rotation) if ticket_period is None \
        else ticket_period
    tickets = None
    if ticket_secret and opts.reuse_sessions:
        tickets = period_keys(ticket_secret, key, opts, epoch, ticket_rotation)
    verify_cb = _apply_common(ctx, opts, c, session_id, tickets)
    # No certificate: a TLS-PSK-only listener (the config allows it only with PSK enabled).
    chain = (_load_identity(ctx, opts.certfile, opts.keyfile, opts.password, c)
             if opts.certfile else [])

    sni: dict[str, SSL.Context] = {}
    sni_chains: dict[str, list[x509.Certificate]] = {}
    for i, entry in enumerate(opts.sni):
        sctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        _apply_common(sctx, opts, _Collector(""), session_id, tickets)
        sni_chains[entry.server_name] = _load_identity(
            sctx, entry.certfile, entry.keyfile, entry.password, c, key_prefix=f"sni[{i}].")
        sni[entry.server_name] = sctx
    keep: list[object] = []
    if sni:
        entries = list(sni.items())

        def on_servername(conn: SSL.Connection) -> None:
            try:
                raw = conn.get_servername()
                if not raw:
                    return
                name = raw.decode("ascii", "replace")
                for pattern, sctx in entries:
                    if _sni_match(pattern, name):
                        conn.set_context(sctx)
                        return
            except Exception:  # never let an exception escape into OpenSSL
                log.exception("SNI selection failed")

        ctx.set_tlsext_servername_callback(on_servername)
        keep.append(on_servername)
    for hook in hooks or []:
        try:
            hook(ctx, opts)
            for sctx in sni.values():
                hook(sctx, opts)
        except ValueError as exc:
            c.add("", str(exc))
    if c.problems:
        raise ContextError(c.problems)
    # A certfile with the leaf alone: complete its chain from the verify store now, once,
    # instead of OpenSSL doing it in every handshake (unbound.build_cert_chain). After the hooks,
    # so the store is final. A chain given in the file is sent as it is.
    for one, its_chain in [(ctx, chain), *((sni[n], sni_chains[n]) for n in sni)]:
        if len(its_chain) == 1:
            unbound.build_cert_chain(one)
    rekey = None
    if tickets is not None and ticket_secret is not None:
        contexts = [ctx, *sni.values()]
        secret = ticket_secret

        def rekey(period: int, new_secret: bytes | None = None) -> None:
            nonlocal secret
            keys = period_keys(new_secret or secret, key, opts, period, ticket_rotation)
            if new_secret is not None and new_secret != secret:
                # the node's secret changed (cluster): the tickets this node made so far
                # (under the old secret's current key) still resume
                keys = (keys[0], ticket_key(secret, key, opts, period), keys[2])
                secret = new_secret
            for one in contexts:
                unbound.set_ticket_keys(one, *keys)

    return ServerContext(ctx=ctx, chain=chain, certfile=opts.certfile, sni=sni,
                         sni_chains=sni_chains, opts=opts, keepalive=keep,
                         verify_callback=verify_cb, rekey=rekey)


def sni_entry_names(entries: list[SniEntry]) -> list[str]:
    return [e.server_name for e in entries]
