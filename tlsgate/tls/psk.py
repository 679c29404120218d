"""TLS-PSK on a pyOpenSSL server context: TLS 1.2 PSK suites and TLS 1.3 external PSK.

pyOpenSSL has no PSK API, so this module is the one place that uses the cffi bindings under it
(``OpenSSL._util.lib``) for PSK. :func:`require_psk_support` checks every binding it needs and
raises :class:`PskUnavailable` naming the missing ones; :func:`enable_psk` calls it, so a
pyOpenSSL/cryptography upgrade that drops one fails at start-up, not mid-handshake.

How a handshake finds its key (OpenSSL 3/4 server side):

* TLS 1.3 — for every identity in the ClientHello's ``pre_shared_key`` extension OpenSSL calls
  the *find-session* callback. A known identity gets a fresh ``SSL_SESSION`` carrying the key,
  TLS 1.3 and the cipher ``TLS_AES_128_GCM_SHA256`` (its hash, SHA-256, is the hash of the
  PSK: RFC 8446 says an external PSK without a stated hash uses SHA-256, and every client we
  target — ``openssl s_client -psk``, mosquitto, Python's ``ssl`` — binds it with SHA-256).
  The same callback also sees session *tickets* (resumption identities), so an identity that
  is not in the table is not refused there: it may be a ticket. It is noted, and refused in the
  certificate callback, which OpenSSL only calls when no PSK and no ticket was accepted (a
  full handshake): that is where "unknown identity" is certain.
* TLS 1.2 — the PSK suites (``PSK-*``, ``ECDHE-PSK-*``, ``DHE-PSK-*``) call the *server*
  callback with the identity from the ClientKeyExchange; an unknown identity returns no key and
  OpenSSL ends the handshake with ``unknown_psk_identity``. (OpenSSL also calls this callback in
  TLS 1.3 for identities the find-session callback did not match; it declines those there.)

The SHA-256 trap (TLS 1.3, listener with a certificate): OpenSSL picks the TLS 1.3 suite
*before* it looks at the PSK, and drops a PSK whose hash differs from the chosen suite's. Only
when the context has no certificate does OpenSSL prefer SHA-256 suites on its own. With a
certificate and the usual order (``TLS_AES_256_GCM_SHA384`` first, or client preference with
an OpenSSL client, which lists it first) the PSK is silently ignored and the handshake falls
back to the certificate — an ``s_client -psk`` client without verification even "succeeds".
Hence :func:`psk_ciphers` puts SHA-256 suites first, :func:`enable_psk` warns when the server's
order is not enforced, and the certificate callback refuses a handshake in which a known
identity was offered but its PSK could not be used (with a log line saying why) instead of
letting it silently become a certificate handshake.

Resumption: a PSK client could otherwise come back on a session ticket, which authenticates it
without the table (a removed identity would keep working until the ticket expires) and without
the identity (``psk_identity_as_username`` could not be applied). The bindings can neither stop
a ticket nor read a resumed session's identity, so:

* TLS 1.3: the find-session callback sets ``SSL_OP_NO_TICKET`` on that connection, so its
  ticket is a stateful one (a session id). With OpenSSL 4.0.3, session cache on or off, such
  a ticket is not resumed and the client does a full PSK handshake against the table
  (test_psk_session_not_resumable with ``s_client -sess_in``; also checked by hand with
  Python 3.13's ``session=``). Stateless tickets, without the option, are resumed — the test
  fails if the option is dropped.
* TLS 1.2: the ticket is decided before the PSK is known. The server callback marks the new
  session's protocol version as TLS 1.1, and OpenSSL resumes only a session whose version
  equals the connection's, so every resumption attempt becomes a full handshake. As a
  backstop :func:`psk_identity` raises :class:`PskResumed` for a resumed session with a PSK
  suite.

Per-connection memory: during the handshake, the identity a connection offered is kept in a
``WeakKeyDictionary`` keyed by the ``SSL.Connection`` (found from the ``SSL*`` through
pyOpenSSL's own reverse mapping); :func:`psk_identity` takes it out, and a connection that dies
before that takes it along. A certificate handshake adds nothing.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from OpenSSL import SSL
from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _lib

from ..psk_table import MAX_IDENTITY_LEN, PskTable, printable_identity
from .engine import needs_connection

log = logging.getLogger("tlsgate.tls.psk")

#: What this module calls in the bindings (checked by :func:`require_psk_support`).
REQUIRED_BINDINGS = (
    "SSL_CTX_set_psk_server_callback",
    "SSL_CTX_set_psk_find_session_callback",
    "SSL_CTX_set_cert_cb",
    "Cryptography_SSL_SESSION_new",
    "SSL_SESSION_set1_master_key",
    "SSL_SESSION_set_cipher",
    "SSL_SESSION_set_protocol_version",
    "SSL_SESSION_free",
    "SSL_CIPHER_find",
    "SSL_CIPHER_get_name",
    "SSL_get_current_cipher",
    "SSL_get_session",
    "SSL_session_reused",
    "SSL_version",
    "SSL_set_options",
    "SSL_CTX_get_options",
    "SSL_OP_NO_TICKET",
    "SSL_OP_CIPHER_SERVER_PREFERENCE",
    "TLS1_1_VERSION",
    "TLS1_2_VERSION",
    "TLS1_3_VERSION",
)

# TLS 1.2 PSK suites a PSK listener offers when `ciphers` names none: AEAD only, forward-secret
# key exchange first (SPEC §1: no CBC, no RSA key exchange). OpenSSL has no ECDHE-PSK GCM
# suite; RSA-PSK-* (EMQX's examples) need an RSA certificate and lack forward secrecy, and the
# CBC and CCM8 forms are weaker — an operator whose devices need one (mbedTLS builds often
# use ECDHE-PSK-AES128-CBC-SHA256) lists it in `ciphers` explicitly.
DEFAULT_TLS12_PSK_SUITES = (
    "ECDHE-PSK-CHACHA20-POLY1305",
    "DHE-PSK-AES128-GCM-SHA256",
    "DHE-PSK-AES256-GCM-SHA384",
    "DHE-PSK-CHACHA20-POLY1305",
    "PSK-AES128-GCM-SHA256",
    "PSK-AES256-GCM-SHA384",
    "PSK-CHACHA20-POLY1305",
    "PSK-AES128-CCM",
    "PSK-AES256-CCM",
)

#: TLS 1.3 suites whose hash is SHA-256, the only ones an external PSK can use.
SHA256_TLS13_SUITES = frozenset({
    "TLS_AES_128_GCM_SHA256", "TLS_CHACHA20_POLY1305_SHA256", "TLS_AES_128_CCM_SHA256",
    "TLS_AES_128_CCM_8_SHA256",
})
DEFAULT_TLS13_SUITES = ("TLS_AES_128_GCM_SHA256", "TLS_CHACHA20_POLY1305_SHA256",
                        "TLS_AES_256_GCM_SHA384")

# TLS_AES_128_GCM_SHA256's two-byte IANA id, for SSL_CIPHER_find.
_TLS13_AES128GCM_ID = b"\x13\x01"


class PskUnavailable(RuntimeError):
    """The pyOpenSSL/cryptography bindings in use lack something TLS-PSK needs."""


class PskResumed(Exception):
    """A TLS 1.2 PSK session was resumed: its identity cannot be known, refuse the connection."""


def missing_bindings() -> list[str]:
    """Names from :data:`REQUIRED_BINDINGS` that the installed bindings lack."""
    missing = [n for n in REQUIRED_BINDINGS if not hasattr(_lib, n)]
    if not getattr(_lib, "Cryptography_HAS_PSK", 0):
        missing.append("Cryptography_HAS_PSK")
    if not getattr(_lib, "Cryptography_HAS_PSK_TLSv1_3", 0):
        missing.append("Cryptography_HAS_PSK_TLSv1_3")
    if not hasattr(SSL.Connection, "_reverse_mapping"):
        missing.append("OpenSSL.SSL.Connection._reverse_mapping")
    return missing


def require_psk_support() -> None:
    """Raise :class:`PskUnavailable` unless every binding TLS-PSK needs is present."""
    missing = missing_bindings()
    if missing:
        import cryptography
        import OpenSSL
        raise PskUnavailable(
            "TLS-PSK ([psk_authentication]) cannot work with the installed pyOpenSSL "
            f"{OpenSSL.__version__} / cryptography {cryptography.__version__}: their OpenSSL "
            f"bindings lack {', '.join(missing)}. Install versions that have them (pyOpenSSL "
            ">= 25, cryptography >= 44 are known to work) or set psk_authentication.enable = "
            "false.")


# --------------------------------------------------------------------------------------------
# Suites
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PskCiphers:
    """What a PSK-enabled listener gives ``SSL_CTX_set_cipher_list`` / ``set_ciphersuites``."""

    tls12: str
    tls13: str


def is_psk_suite(name: str) -> bool:
    """True for an OpenSSL TLS 1.2 PSK suite name (``PSK-…``, ``ECDHE-PSK-…``, ``RSA-PSK-…``)."""
    return name.startswith("PSK-") or "-PSK-" in name


def psk_ciphers(tls12: Sequence[str], tls13: Sequence[str]) -> PskCiphers:
    """Merge a listener's configured suites with what PSK needs.

    ``tls12``/``tls13`` are the listener's TLS 1.2 and 1.3 suite names (configured or its
    defaults). TLS 1.2: when none is a PSK suite, :data:`DEFAULT_TLS12_PSK_SUITES` are added;
    PSK suites go first — a client offers them only when it has a PSK (OpenSSL clients drop
    them without a PSK callback), and such a client should get PSK, not the certificate.
    TLS 1.3: SHA-256 suites go first (the trap in the module docstring); empty means
    :data:`DEFAULT_TLS13_SUITES`. Raises ``ValueError`` when no SHA-256 TLS 1.3 suite is left.
    Server cipher order (``honor_cipher_order = true``) must be on for the order to count.
    """
    t12 = [s for s in tls12 if s]
    if not any(is_psk_suite(s) for s in t12):
        t12 = [*DEFAULT_TLS12_PSK_SUITES, *t12]
    t12 = [s for s in t12 if is_psk_suite(s)] + [s for s in t12 if not is_psk_suite(s)]
    t13 = [s for s in tls13 if s] or list(DEFAULT_TLS13_SUITES)
    if not any(s in SHA256_TLS13_SUITES for s in t13):
        raise ValueError("TLS 1.3 external PSK needs a SHA-256 suite (TLS_AES_128_GCM_SHA256 "
                         f"or TLS_CHACHA20_POLY1305_SHA256) but the suites are {':'.join(t13)}")
    t13 = [s for s in t13 if s in SHA256_TLS13_SUITES] + \
          [s for s in t13 if s not in SHA256_TLS13_SUITES]
    return PskCiphers(":".join(dict.fromkeys(t12)), ":".join(dict.fromkeys(t13)))


# --------------------------------------------------------------------------------------------
# Per-connection record
# --------------------------------------------------------------------------------------------
class _ConnPsk:
    __slots__ = ("known", "tls12", "unknown")

    def __init__(self) -> None:
        #: First identity from the table the client offered (TLS 1.3) or used (TLS 1.2).
        self.known: bytes | None = None
        #: First identity not in the table (TLS 1.3; refused in the certificate callback).
        self.unknown: bytes | None = None
        #: The identity came through the TLS 1.2 server callback.
        self.tls12 = False


_records: weakref.WeakKeyDictionary[SSL.Connection, _ConnPsk] = weakref.WeakKeyDictionary()


def _record(ssl: Any) -> _ConnPsk | None:
    conn = SSL.Connection._reverse_mapping.get(ssl)
    if conn is None:
        return None
    rec = _records.get(conn)
    if rec is None:
        rec = _records[conn] = _ConnPsk()
    return rec


def _peek(ssl: Any) -> _ConnPsk | None:
    conn = SSL.Connection._reverse_mapping.get(ssl)
    return None if conn is None else _records.get(conn)


def tracked_connections() -> int:
    """How many live connections have a PSK record (for tests and leak checks)."""
    return len(_records)


def _cipher_name(ssl: Any) -> str | None:
    c = _lib.SSL_get_current_cipher(ssl)
    return None if c == _ffi.NULL else _ffi.string(_lib.SSL_CIPHER_get_name(c)).decode()


def psk_identity(conn: SSL.Connection) -> str | None:
    """The PSK identity this connection authenticated with, or None for a certificate (or
    anonymous) handshake.

    Call it once, when the handshake is complete, and keep the answer: the per-connection
    record is released here, so an established connection costs this module nothing.

    Raises :class:`PskResumed` for a resumed TLS 1.2 PSK session: it was authenticated by a
    ticket, not by the table, and its identity cannot be known — close the connection.
    """
    ssl = conn._ssl
    rec = _records.pop(conn, None)
    reused = bool(_lib.SSL_session_reused(ssl))
    cipher = _cipher_name(ssl)
    if _lib.SSL_version(ssl) == _lib.TLS1_3_VERSION:
        # `known` is set as soon as the client offers a table identity; the PSK was really used
        # only if the handshake resumed (external PSKs count as resumption) with a suite of
        # the PSK's hash. A ticket later in the same ClientHello cannot be what resumed: the
        # find-session callback is not called for identities after the one that was accepted,
        # and with a non-SHA-256 suite `known` is rejected below anyway.
        if rec is None or rec.known is None or not reused or cipher not in SHA256_TLS13_SUITES:
            return None
        return rec.known.decode("utf-8")
    if rec is not None and rec.known is not None and rec.tls12:
        return rec.known.decode("utf-8")
    if reused and cipher is not None and is_psk_suite(cipher):
        raise PskResumed(f"client resumed a TLS 1.2 PSK session ({cipher}); PSK clients must "
                         "do a full handshake so the identity is checked against the table")
    return None


# --------------------------------------------------------------------------------------------
# Callbacks
# --------------------------------------------------------------------------------------------
class _PskCallbacks:
    """The three C callbacks of one context. Kept alive as long as the context (see
    :data:`_installed`); each catches every exception, logs it and refuses the handshake,
    since an exception must never unwind into OpenSSL."""

    def __init__(self, table: PskTable, on_unknown: Callable[[bytes], None]) -> None:
        self.table = table
        self.on_unknown = on_unknown
        self.find_session = _ffi.callback(
            "int (*)(SSL *, const unsigned char *, size_t, SSL_SESSION **)",
            self._find_session, error=0)
        self.server = _ffi.callback(
            "unsigned int (*)(SSL *, const char *, unsigned char *, unsigned int)",
            self._server, error=0)
        self.cert = _ffi.callback("int (*)(SSL *, void *)", self._cert, error=0)

    def _unknown(self, identity: bytes) -> None:
        try:
            self.on_unknown(identity)
        except Exception:
            log.exception("PSK on_unknown handler failed for identity %r",
                          printable_identity(identity))

    # TLS 1.3: called for each identity of the pre_shared_key extension (external PSKs and
    # session tickets alike). Returns 1 (with or without a session) to go on, 0 to abort.
    def _find_session(self, ssl: Any, identity_p: Any, idlen: int, sess_out: Any) -> int:
        try:
            sess_out[0] = _ffi.NULL
            if idlen > MAX_IDENTITY_LEN:
                return 1  # longer than any identity we accept: a ticket, OpenSSL's business
            identity = _ffi.buffer(identity_p, idlen)[:]
            key = self.table.lookup(identity)
            rec = _record(ssl)
            if rec is None:
                log.error("PSK handshake on an SSL object without a pyOpenSSL Connection; "
                          "refused")
                return 0
            if key is None:
                if rec.unknown is None and rec.known is None and _looks_like_identity(identity):
                    rec.unknown = identity
                return 1
            if rec.known is not None and rec.known != identity:
                # OpenSSL uses the first usable identity; a second table identity in the same
                # ClientHello would only be asked for if the first's PSK was unusable (wrong
                # hash), and then so is this one. (The same identity again is a second
                # ClientHello after a HelloRetryRequest: answer it the same way.)
                return 1
            cipher = _lib.SSL_CIPHER_find(ssl, _TLS13_AES128GCM_ID)
            if cipher == _ffi.NULL:
                log.error("OpenSSL does not know TLS_AES_128_GCM_SHA256; TLS 1.3 PSK refused")
                return 0
            sess = _lib.Cryptography_SSL_SESSION_new()
            if sess == _ffi.NULL:
                return 0
            if not (_lib.SSL_SESSION_set1_master_key(sess, key, len(key))
                    and _lib.SSL_SESSION_set_cipher(sess, cipher)
                    and _lib.SSL_SESSION_set_protocol_version(sess, _lib.TLS1_3_VERSION)):
                _lib.SSL_SESSION_free(sess)
                log.error("OpenSSL refused to build a TLS 1.3 PSK session; handshake refused")
                return 0
            sess_out[0] = sess  # OpenSSL takes ownership (it dups and frees it)
            rec.known = identity
            # A stateless ticket from this handshake would let the client come back without
            # the table; a stateful one is not resumed (see the module docstring).
            _lib.SSL_set_options(ssl, _lib.SSL_OP_NO_TICKET)
            return 1
        except BaseException:
            log.exception("TLS 1.3 PSK lookup failed; handshake refused")
            return 0

    # TLS 1.2 PSK suites (and, in TLS 1.3, identities the find-session callback left without a
    # session). Returns the key length, 0 = no key.
    def _server(self, ssl: Any, identity_p: Any, psk_out: Any, max_len: int) -> int:
        try:
            if _lib.SSL_version(ssl) == _lib.TLS1_3_VERSION:
                return 0  # already decided by the find-session callback
            identity = _ffi.string(identity_p) if identity_p != _ffi.NULL else b""
            key = self.table.lookup(identity)
            if key is None:
                self._unknown(identity)
                return 0
            if len(key) > max_len:
                log.error("PSK for identity %r is %d bytes, OpenSSL takes at most %d; refused",
                          printable_identity(identity), len(key), max_len)
                return 0
            rec = _record(ssl)
            if rec is None:
                log.error("PSK handshake on an SSL object without a pyOpenSSL Connection; "
                          "refused")
                return 0
            _ffi.memmove(psk_out, key, len(key))
            rec.known = identity
            rec.tls12 = True
            # Make the session this handshake establishes unresumable: TLS 1.2 decides to
            # issue a ticket before the PSK is known and the bindings cannot stop it, but
            # OpenSSL only resumes a session whose protocol version equals the connection's.
            # Marking it TLS 1.1 (never negotiated: tlsgate's minimum is 1.2) makes every
            # resumption attempt with its ticket or session id a full handshake, which
            # consults the table again. The handshake itself uses the connection's version,
            # not the session's. psk_identity() still refuses a resumed PSK session, should
            # an OpenSSL change break this.
            sess = _lib.SSL_get_session(ssl)
            if sess != _ffi.NULL:
                _lib.SSL_SESSION_set_protocol_version(sess, _lib.TLS1_1_VERSION)
            return len(key)
        except BaseException:
            log.exception("TLS 1.2 PSK lookup failed; handshake refused")
            return 0

    # Called before the server certificate is chosen, only for full handshakes (not when a PSK
    # or ticket was accepted). 1 = go on, 0 = abort.
    def _cert(self, ssl: Any, _arg: Any) -> int:
        try:
            rec = _peek(ssl)
            if rec is None:
                return 1
            if rec.known is not None and not rec.tls12:
                log.warning(
                    "TLS 1.3 client offered PSK identity %r but the suite chosen is not "
                    "SHA-256, so its PSK cannot be used; refused instead of falling back to "
                    "the certificate. Put TLS_AES_128_GCM_SHA256 first and keep "
                    "honor_cipher_order = true", printable_identity(rec.known))
                return 0
            if rec.unknown is not None:
                self._unknown(rec.unknown)
                return 0
            return 1
        except BaseException:
            log.exception("TLS-PSK certificate-stage check failed; handshake refused")
            return 0


def _looks_like_identity(data: bytes) -> bool:
    """Whether an unmatched pre_shared_key identity is worth refusing as an unknown PSK
    identity. Stateless tickets are longer than MAX_IDENTITY_LEN and never get here; a stale
    *stateful* ticket is 32 random bytes, which are valid UTF-8 with negligible probability,
    whereas identities are UTF-8 text (the table only holds such)."""
    if b"\x00" in data:
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# The callbacks of every context with PSK enabled, alive exactly as long as the context.
_installed: weakref.WeakKeyDictionary[SSL.Context, _PskCallbacks] = weakref.WeakKeyDictionary()


def enable_psk(ctx: SSL.Context, table: PskTable, *,
               on_unknown: Callable[[bytes], None]) -> None:
    """Accept TLS-PSK clients on ``ctx`` (TLS 1.2 PSK suites and TLS 1.3 external PSK), keys
    from ``table`` (looked up per handshake, so table changes apply to the next handshake).

    ``ctx`` may also have a certificate: certificate clients keep working. Set the suites from
    :func:`psk_ciphers` on it and keep server cipher order on. ``on_unknown(identity)`` is
    called when a client offers an identity the table does not have (the handshake is refused);
    the identity is raw bytes from the network — log it with
    :func:`tlsgate.psk_table.printable_identity`. Call this on every context a PSK client can
    end up on, SNI contexts included (the certificate callback belongs to the context SNI
    switches to). Takes over the context's certificate callback (``SSL_CTX_set_cert_cb``).
    Raises :class:`PskUnavailable` when the bindings lack something.
    """
    require_psk_support()
    cbs = _PskCallbacks(table, on_unknown)
    raw = ctx._context
    _lib.SSL_CTX_set_psk_server_callback(raw, cbs.server)
    _lib.SSL_CTX_set_psk_find_session_callback(raw, cbs.find_session)
    _lib.SSL_CTX_set_cert_cb(raw, cbs.cert, _ffi.NULL)
    _installed[ctx] = cbs
    needs_connection(ctx, required=True)  # the callbacks look the Connection up
    if not _lib.SSL_CTX_get_options(raw) & _lib.SSL_OP_CIPHER_SERVER_PREFERENCE:
        log.warning("TLS-PSK is enabled on a context without server cipher order "
                    "(honor_cipher_order = false): TLS 1.3 clients that prefer "
                    "TLS_AES_256_GCM_SHA384 (OpenSSL's default) cannot use their PSK when a "
                    "certificate is configured, and TLS 1.2 clients offering both kinds of "
                    "suite may get the certificate instead of PSK")
