"""Client-certificate revocation during the TLS handshake: the per-listener guard.

* :class:`ClientRevocationGuard` — one per listener: the verify callback that looks each
  certificate up in the CRL cache (:mod:`tlsgate.tls.crl`) during the handshake, and the
  deferred verdict when a CRL is not held yet (below); optionally client OCSP.
* :func:`tls12_alert_record` / :func:`tls13_alert_record` — the alert sent after a deferred
  refusal.
* :func:`peer_cert_ids` and :class:`LiveConnectionIndex` — for ``close_revoked_connections``.

Where revocation is decided: neither OpenSSL's CRL store nor pyhanko-certvalidator
----------------------------------------------------------------------------------------
OpenSSL builds the chain and checks every signature and date as usual (the listener's own
store: ``cacertfile``, ``depth``, ``partial_chain``). Revocation is looked up by this module's
verify callback (a raw cffi callback, no pyOpenSSL objects on the fast path) in an in-memory
index of the CRLs held: issuer name -> newest current CRL -> set of revoked serials. A CRL's
signature, issuer and dates are verified *once*, when it enters the cache.

Measured (server-side CPU of a TLS 1.3 mutual handshake, P-256, root -> intermediate -> device,
1000-entry CRL, in memory, this 2-core machine, best of 4 runs of 300): no CRL check ≈ 510 µs;
OpenSSL's ``X509_V_FLAG_CRL_CHECK`` (leaf) ≈ +155 µs and ``CRL_CHECK | CRL_CHECK_ALL`` (chain)
≈ +210 µs (OpenSSL re-verifies each CRL's signature in every handshake, and one P-256 check
alone is ≈ 60 µs here); this guard (leaf or chain, verify and keylog callbacks included)
≈ +45 µs. With OpenSSL's flags note also that ``CRL_CHECK_ALL`` alone checks nothing.

A revoked certificate still fails *inside* the handshake with alert 44: the callback
sets ``X509_V_ERR_CERT_REVOKED`` on the store context and OpenSSL maps it to the alert itself.
pyhanko-certvalidator was not used: it would re-validate the whole chain in pure Python after
the handshake (a second, slower path builder next to OpenSSL's), it cannot produce a handshake
alert, and it is not installed in the project venv.

A missing CRL without stalling anyone: deferred verdicts
--------------------------------------------------------
The gateway drives each handshake over memory BIOs on the event loop; the verify callback runs
synchronously inside ``SSL_do_handshake`` and cannot wait for an HTTP fetch, and OpenSSL offers
no way to suspend a *server's* certificate verification (``SSL_set_retry_verify`` is client-side
only). Alternatives considered: blocking the loop in the callback (stalls every handshake);
running handshake steps in threads (a thread hop, i.e. two loop wake-ups, on every mutual-TLS
handshake, to cover a rare case); peeking at the client's Certificate message before OpenSSL
reads it (fine in TLS 1.2, but in TLS 1.3 it is encrypted: we would have to decrypt handshake
records ourselves); failing the first attempt and fetching in the background (every device of a
new CA fails once).

Chosen: when no current CRL of a certificate's issuer is held and the certificate has an http(s)
distribution point that has not failed recently, the verify callback records the URL on the
connection and lets verification continue (every *other* check — signatures, expiry, CRLs
already held for other levels of the chain — still applies). The gateway holds back everything
the server writes from that handshake step on (:meth:`~ClientRevocationGuard.pending`), lets
the handshake finish, then awaits :meth:`~ClientRevocationGuard.resolve`, which fetches the CRLs
(other connections carry on: it is just another coroutine), checks the verified chain against
them in Python, and returns a :class:`PeerVerdict`. On "deny", the held bytes are discarded and
the verdict's ``alert_record`` is sent instead, so the client still sees the alert a handshake
failure would have produced:

* TLS 1.2: the server has not sent ChangeCipherSpec yet (it was held), so a *plaintext* fatal
  alert record is exactly what OpenSSL would have sent at that point;
* TLS 1.3: the server already switched to its application traffic keys (its Finished precedes the
  client's Certificate); the alert is encrypted with the server's application traffic secret at
  sequence number 0 (nothing else was sent under it: the tickets were held), RFC 8446 §5.2/§7.3.
  The secret is captured per connection with the keylog callback (kept in memory only until the
  verdict, never logged).

Verified against ``openssl s_client`` in tests/unit/test_crl.py ("alert certificate revoked",
alert number 44). When a CRL source already failed within ``failure_threshold``, nothing is
deferred: the verdict is immediate (refused with OpenSSL's usual alert for a missing CRL,
``unknown_ca``, or allowed with a warning under ``crl_soft_fail``).

Known limits: a *resumed* session skips certificate verification in OpenSSL; :meth:`check_now`
checks its leaf against the CRLs held (the chain is not stored in session tickets), and for
TLS 1.2 resumption no alert can be sent any more (the server's Finished went first), the
connection is just closed. Delta CRLs, indirect CRLs and non-http distribution points (LDAP) are
not fetched; a local ``crlfile`` covers those cases.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import weakref
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESCCM, AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from OpenSSL import SSL, crypto
from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _lib

from .crl import (
    ALERT_CERTIFICATE_REVOKED,
    ALERT_CERTIFICATE_UNKNOWN,
    ALERT_INTERNAL_ERROR,
    ALERT_UNKNOWN_CA,
    CachedCrl,
    CertId,
    CrlCache,
    CrlError,
    _cert_id,
    _describe,
    _fmt,
    _issuer_serial,
    _session_reused,
    _ts,
    crl_distribution_urls,
)
from .engine import needs_connection
from .ocsp import ClientOcspChecker, find_issuer

if TYPE_CHECKING:
    from ..config.schema import ServerSslOptions

__all__ = [
    "ALLOW",
    "ClientRevocationGuard",
    "LiveConnectionIndex",
    "PeerVerdict",
    "peer_cert_ids",
    "tls12_alert_record",
    "tls13_alert_record",
]

log = logging.getLogger("tlsgate.crl")


# ------------------------------------------------------------------------------------------------
# Late alerts (see the module docstring)
# ------------------------------------------------------------------------------------------------
def tls12_alert_record(description: int) -> bytes:
    """A plaintext fatal alert record, valid before the server's ChangeCipherSpec."""
    return bytes((21, 3, 3, 0, 2, 2, description))


_TLS13_SUITES: Final[dict[str, tuple[Callable[[bytes], Any], int, int, hashes.HashAlgorithm]]] = {
    # name: (AEAD factory, key length, tag length, HKDF hash)
    "TLS_AES_128_GCM_SHA256": (AESGCM, 16, 16, hashes.SHA256()),
    "TLS_AES_256_GCM_SHA384": (AESGCM, 32, 16, hashes.SHA384()),
    "TLS_CHACHA20_POLY1305_SHA256": (ChaCha20Poly1305, 32, 16, hashes.SHA256()),
    "TLS_AES_128_CCM_SHA256": (AESCCM, 16, 16, hashes.SHA256()),
    "TLS_AES_128_CCM_8_SHA256": (lambda k: AESCCM(k, tag_length=8), 16, 8, hashes.SHA256()),
}


def _hkdf_expand_label(secret: bytes, label: bytes, length: int,
                       algorithm: hashes.HashAlgorithm) -> bytes:
    full = b"tls13 " + label
    info = struct.pack(">HB", length, len(full)) + full + b"\x00"
    return HKDFExpand(algorithm, length, info).derive(secret)


def tls13_alert_record(cipher_name: str, server_traffic_secret: bytes, description: int,
                       seq: int = 0) -> bytes:
    """A fatal alert protected with the server's application traffic secret (RFC 8446 §5.2,
    §7.3) at record sequence number ``seq``; b"" for a suite this does not know."""
    suite = _TLS13_SUITES.get(cipher_name)
    if suite is None:
        return b""
    factory, key_len, tag_len, alg = suite
    key = _hkdf_expand_label(server_traffic_secret, b"key", key_len, alg)
    iv = _hkdf_expand_label(server_traffic_secret, b"iv", 12, alg)
    nonce = bytes(a ^ b for a, b in zip(iv, seq.to_bytes(12, "big"), strict=True))
    inner = bytes((2, description, 21))            # level fatal, description, type alert
    header = struct.pack(">BHH", 23, 0x0303, len(inner) + tag_len)
    return header + bytes(factory(key).encrypt(nonce, inner, header))


# ------------------------------------------------------------------------------------------------
# The per-listener guard
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PeerVerdict:
    """The outcome of the checks that finish after OpenSSL's handshake."""

    allow: bool
    reason: str = ""
    alert: int | None = None        # TLS AlertDescription sent when refused
    alert_record: bytes = b""       # the record to send instead of the held bytes (may be b"")


ALLOW: Final = PeerVerdict(True)

VerifyCallback = Callable[[SSL.Connection, crypto.X509, int, int, int], bool]
KeylogCallback = Callable[[SSL.Connection, bytes], None]


@dataclass(eq=False)
class _Pending:
    fetch: dict[str, int] = field(default_factory=dict)   # url -> depth of the cert needing it
    later: dict[str, int] = field(default_factory=dict)   # fetched only if the check needs them
    check: bool = False                                   # re-check the chain's CRLs after
    ocsp: bool = False
    decided: PeerVerdict | None = None

    def needs_wait(self) -> bool:
        return self.check or self.ocsp or self.decided is not None


def _load_trust(path: str, key: str) -> list[x509.Certificate]:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise CrlError(f"{key}: cannot read {path!r}: {e.strerror or e}") from None
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise CrlError(f"{key}: {path!r} holds no PEM certificate ({e})") from None


class ClientRevocationGuard:
    """Client-certificate revocation for one listener: CRLs (``enable_crl_check``) and,
    optionally, OCSP (``ocsp.check_client``). See the module docstring for the flow.

    Gateway integration, per listener::

        guard = ClientRevocationGuard(opts, cache, name="listeners.ssl.default",
                                      client_ocsp=checker_or_None, verify_next=eku_check)
        for ctx in (main_ctx, *sni_ctxs):          # before any Connection is made from them
            guard.attach(ctx)                      # verify callback (+ keylog for late alerts)

    Per connection: after every ``do_handshake()`` step, if ``guard.pending(conn)`` hold the
    bytes OpenSSL wrote instead of sending them (from that step on). When the handshake is done,
    before sending that last step's bytes: ``v = guard.check_now(conn) or await
    guard.resolve(conn)``; if ``v.allow`` send the held bytes and go on, else send
    ``v.alert_record`` (may be empty), close, and log ``v.reason``.
    """

    def __init__(self, options: ServerSslOptions, cache: CrlCache | None, *,
                 name: str = "listener", client_ocsp: ClientOcspChecker | None = None,
                 trust: Sequence[x509.Certificate] | None = None,
                 key_prefix: str = "ssl_options",
                 verify_next: VerifyCallback | None = None) -> None:
        self.name = name
        self.crl_enabled = bool(options.enable_crl_check)
        if self.crl_enabled and cache is None:
            raise ValueError("enable_crl_check needs a CrlCache")
        self.cache = cache
        self.client_ocsp = client_ocsp
        self.depth_mode = options.crl_check_depth
        self.soft_fail = bool(options.crl_soft_fail)
        self.partial_chain = bool(options.partial_chain)
        if trust is None:
            trust = (_load_trust(options.cacertfile, f"{key_prefix}.cacertfile")
                     if options.cacertfile else [])
        self.trust = list(trust)
        # Trust anchors are trusted by configuration and not revocation-checked: self-signed
        # roots, and with partial_chain every cacertfile certificate (OpenSSL may end the
        # chain at any of them).
        self._anchor_ids = frozenset(_cert_id(c) for c in self.trust
                                     if self.partial_chain or c.subject == c.issuer)
        self._pending: weakref.WeakKeyDictionary[SSL.Connection, _Pending] = (
            weakref.WeakKeyDictionary())
        self._secrets: weakref.WeakKeyDictionary[SSL.Connection, bytes] = (
            weakref.WeakKeyDictionary())
        self._verify_next: VerifyCallback | None = verify_next
        self._keylog_next: KeylogCallback | None = None
        self._raw_verify = _ffi.callback("int (*)(int, X509_STORE_CTX *)", self._verify_cb)
        self._raw_keylog = _ffi.callback("void (*)(SSL *, char *)", self._keylog_cb)
        # Files are registered per guard instance, so building a listener's new guard on reload
        # and then closing the old one never drops the new one's files.
        self._owner = f"{name}#{id(self):x}"
        if self.crl_enabled:
            assert cache is not None
            try:
                cache.set_files(self._owner, list(options.crlfile), self.trust)
            except CrlError as e:
                raise CrlError(f"{key_prefix}.crlfile: {e}") from None

    @staticmethod
    def needed(options: ServerSslOptions) -> bool:
        """Whether a listener with these options needs a guard."""
        return options.verify == "verify_peer" and bool(
            options.enable_crl_check or options.ocsp.check_client)

    # -- context setup ------------------------------------------------------------------------
    def attach(self, ctx: SSL.Context, verify_mode: int | None = None, *,
               verify_next: VerifyCallback | None = None,
               keylog_next: KeylogCallback | None = None) -> None:
        """Prepare ``ctx`` (the listener's and each SNI context, before any Connection is made
        from them): our verify callback with ``verify_mode`` (default: the mode already set on
        ``ctx``), and a keylog callback that keeps the TLS 1.3 server traffic secret until the
        verdict (for late alerts). The context's verify store is not touched. ``verify_next`` /
        ``keylog_next`` (pyOpenSSL signatures) run after ours, e.g. the extended-key-usage check.

        pyOpenSSL keeps one verify callback per context: if ``ctx`` already has one and no
        ``verify_next`` was given (here or to the constructor), this raises ValueError rather
        than silently dropping that check."""
        if verify_next is not None:
            self._verify_next = verify_next
        if keylog_next is not None:
            self._keylog_next = keylog_next
        if getattr(ctx, "_verify_helper", None) is not None and self._verify_next is None:
            raise ValueError(
                f"{self.name}: the TLS context already has a verify callback; pass it to "
                f"ClientRevocationGuard as verify_next so it keeps running")
        mode = ctx.get_verify_mode() if verify_mode is None else verify_mode
        # Raw callbacks (no pyOpenSSL wrapper objects per call). The context holds a reference
        # to them and to this guard, so they live exactly as long as OpenSSL may call them.
        _lib.SSL_CTX_set_verify(ctx._context, mode, self._raw_verify)
        _lib.SSL_CTX_set_keylog_callback(ctx._context, self._raw_keylog)
        needs_connection(ctx, required=True)  # the callbacks look the Connection up
        refs = getattr(ctx, "_tlsgate_guards", None)
        if refs is None:
            refs = []
            ctx._tlsgate_guards = refs  # type: ignore[attr-defined]
        refs.append(self)

    def close(self) -> None:
        """Stop using this guard's crlfiles (listener removed or replaced on reload)."""
        if self.crl_enabled and self.cache is not None:
            self.cache.drop_files(self._owner)

    # -- handshake-time callbacks (called by OpenSSL, must never raise) -------------------------
    def _keylog_cb(self, ssl: Any, line: Any) -> None:
        try:
            nxt = self._keylog_next
            # "SERVER_TRAFFIC_SECRET_0 <client random> <secret>": test two bytes before
            # converting, the other four lines of a TLS 1.3 handshake are skipped cheaply.
            if nxt is None and not (line[0] == b"S" and line[7] == b"T"):
                return
            text = _ffi.string(line)
            conn = SSL.Connection._reverse_mapping.get(ssl)
            if conn is None:
                return
            if text.startswith(b"SERVER_TRAFFIC_SECRET_0 "):
                parts = text.split()
                if len(parts) == 3:
                    self._secrets[conn] = bytes.fromhex(parts[2].decode("ascii"))
            if nxt is not None:
                nxt(conn, text)
        except Exception:
            log.exception("%s: keylog callback failed", self.name)

    def _verify_cb(self, ok: int, store_ctx: Any) -> int:
        try:
            return self._verify(ok, store_ctx)
        except Exception:
            log.exception("%s: verify callback failed; refusing the client certificate",
                          self.name)
            return 0

    def _verify(self, ok: int, store_ctx: Any) -> int:
        """Called by OpenSSL for each certificate of the chain (root first, leaf last) with
        ok = 1, and for each error it finds with ok = 0 (those are not ours: passed on)."""
        if not ok:
            return self._next(0, store_ctx)
        depth = _lib.X509_STORE_CTX_get_error_depth(store_ctx)
        x = _lib.X509_STORE_CTX_get_current_cert(store_ctx)
        if self.crl_enabled and (depth == 0 or self.depth_mode == "chain"):
            cid = _issuer_serial(x)
            if cid not in self._anchor_ids:
                assert self.cache is not None
                crl = self.cache.lookup(cid[0])
                if crl is None:
                    if not self._crl_missing(store_ctx, x, depth):
                        _lib.X509_STORE_CTX_set_error(store_ctx,
                                                      _lib.X509_V_ERR_UNABLE_TO_GET_CRL)
                        return 0        # OpenSSL sends unknown_ca, its alert for a missing CRL
                elif cid[1] in crl.serials():
                    if log.isEnabledFor(logging.INFO):
                        log.info("%s: client certificate at depth %d (serial %x) is revoked by "
                                 "the CRL %s", self.name, depth, cid[1], crl.source)
                    _lib.X509_STORE_CTX_set_error(store_ctx, _lib.X509_V_ERR_CERT_REVOKED)
                    return 0            # OpenSSL sends certificate_revoked (44)
        if depth == 0 and self.client_ocsp is not None:
            self._mark_ocsp(store_ctx, x)
        return self._next(1, store_ctx)

    def _next(self, ok: int, store_ctx: Any) -> int:
        nxt = self._verify_next
        if nxt is None:
            return ok
        # Same calling convention as pyOpenSSL's own verify wrapper.
        x = _lib.X509_STORE_CTX_get_current_cert(store_ctx)
        _lib.X509_up_ref(x)
        cert = crypto.X509._from_raw_x509_ptr(x)
        conn = self._conn_of(store_ctx)
        errno = _lib.X509_STORE_CTX_get_error(store_ctx)
        depth = _lib.X509_STORE_CTX_get_error_depth(store_ctx)
        if conn is not None and nxt(conn, cert, errno, depth, ok):
            _lib.X509_STORE_CTX_set_error(store_ctx, _lib.X509_V_OK)
            return 1
        return 0

    @staticmethod
    def _conn_of(store_ctx: Any) -> SSL.Connection | None:
        ssl = _lib.X509_STORE_CTX_get_ex_data(store_ctx,
                                              _lib.SSL_get_ex_data_X509_STORE_CTX_idx())
        return SSL.Connection._reverse_mapping.get(_ffi.cast("SSL *", ssl))

    def _crl_missing(self, store_ctx: Any, x: Any, depth: int) -> bool:
        """No usable CRL is held for this certificate: defer (True, fetch after the
        handshake), allow (True, soft fail) or refuse (False)."""
        assert self.cache is not None
        _lib.X509_up_ref(x)
        c = crypto.X509._from_raw_x509_ptr(x).to_cryptography()
        conn = self._conn_of(store_ctx)
        if conn is None:
            return self.soft_fail
        p = self._pending.get(conn)
        if p is None:
            p = self._pending[conn] = _Pending()
        urls = crl_distribution_urls(c)
        fetchable = [u for u in urls if not self.cache.in_backoff(u)]
        unverified = self.cache.has_unverified(c.issuer.public_bytes())
        for u in fetchable:
            # A crlfile of this issuer not verified yet (its issuer is not in cacertfile) is
            # tried first; the distribution points only if it does not verify.
            (p.later if unverified else p.fetch).setdefault(u, depth)
        if fetchable or unverified:
            p.check = True
            return True         # decided in resolve(), after the fetch
        why = ("has no http(s) CRL distribution point and no crlfile covers its issuer"
               if not urls else f"its CRL source(s) {', '.join(urls)} failed recently")
        what = f"no CRL obtainable for {_describe(c)} (depth {depth}): {why}"
        if self.soft_fail:
            log.warning("%s: %s; allowed (crl_soft_fail = true)", self.name, what)
            return True
        if p.needs_wait():
            # Another level is being fetched; refuse after the handshake with the same reason.
            p.decided = PeerVerdict(False, what + " (crl_soft_fail = false)", ALERT_UNKNOWN_CA)
            return True
        log.warning("%s: client refused: %s (crl_soft_fail = false)", self.name, what)
        self._pending.pop(conn, None)
        self._secrets.pop(conn, None)
        return False

    def _mark_ocsp(self, store_ctx: Any, x: Any) -> None:
        assert self.client_ocsp is not None
        issuer_der, serial = _issuer_serial(x)
        hit = self.client_ocsp.cached(issuer_der, serial)
        if hit is not None and hit.status in ("good", "no_responder"):
            return
        conn = self._conn_of(store_ctx)
        if conn is None:
            return
        p = self._pending.get(conn)
        if p is None:
            p = self._pending[conn] = _Pending()
        p.ocsp = True

    # -- after the handshake ------------------------------------------------------------------
    def pending(self, conn: SSL.Connection) -> bool:
        """True if the verdict needs :meth:`resolve`: hold all server output from now on."""
        p = self._pending.get(conn)
        return p is not None and p.needs_wait()

    def check_now(self, conn: SSL.Connection) -> PeerVerdict | None:
        """The verdict when it needs no waiting (the usual case), else None (call resolve)."""
        if self.pending(conn):
            return None
        self._pending.pop(conn, None)
        secret = self._secrets.pop(conn, None)
        if not _session_reused(conn):
            return ALLOW
        v = self._check_resumed(conn)
        if v.allow:
            return v
        return self._with_alert(conn, v, secret)

    def _check_resumed(self, conn: SSL.Connection) -> PeerVerdict:
        """A resumed session skipped certificate verification: check its leaf against what is
        held now (CRL and cached client OCSP answers)."""
        peer = conn.get_peer_certificate()
        if peer is None:
            return ALLOW
        issuer_der, serial = _issuer_serial(peer._x509)
        if self.crl_enabled and self.cache is not None:
            hit = self.cache.revocation_of(issuer_der, serial)
            if hit is not None:
                crl, rev = hit
                return PeerVerdict(False, self._revoked_reason(peer.to_cryptography(), crl, rev)
                                   + " (resumed session)", ALERT_CERTIFICATE_REVOKED)
        if self.client_ocsp is not None:
            r = self.client_ocsp.cached(issuer_der, serial)
            if r is not None and r.status == "revoked":
                return PeerVerdict(False, r.reason + " (resumed session)",
                                   ALERT_CERTIFICATE_REVOKED)
        return ALLOW

    async def resolve(self, conn: SSL.Connection) -> PeerVerdict:
        """Finish the deferred checks of ``conn`` (fetching what is missing; other connections
        are not held up) and return the verdict, with the alert record to send if refused."""
        p = self._pending.pop(conn, None)
        secret = self._secrets.pop(conn, None)
        if p is None or not p.needs_wait():
            return ALLOW
        try:
            v = await self._decide(conn, p)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s: revocation check failed unexpectedly; refusing the client",
                          self.name)
            v = PeerVerdict(False, "internal error during the revocation check",
                            ALERT_INTERNAL_ERROR)
        if v.allow:
            return v
        return self._with_alert(conn, v, secret)

    async def _decide(self, conn: SSL.Connection, p: _Pending) -> PeerVerdict:
        chain = [c.to_cryptography() for c in (conn.get_verified_chain() or [])]
        if not chain:
            peer = conn.get_peer_certificate()
            if peer is None:
                return ALLOW
            chain = [peer.to_cryptography()]
        if p.fetch:
            await self._fetch_for(chain, p.fetch)
        if p.decided is not None:
            return p.decided
        if p.check and self.crl_enabled:
            deny, missing = self._chain_state(chain)
            if deny is None and missing and p.later:
                await self._fetch_for(chain, p.later)
                deny, missing = self._chain_state(chain)
            v = deny or self._missing_verdict(missing)
            if not v.allow:
                return v
        if p.ocsp and self.client_ocsp is not None and len(chain) >= 2:
            r = await self.client_ocsp.check(chain[0], chain[1])
            if r.status == "revoked":
                return PeerVerdict(False, r.reason, ALERT_CERTIFICATE_REVOKED)
            if r.status == "unknown":
                return PeerVerdict(False, r.reason, ALERT_CERTIFICATE_UNKNOWN)
            if r.status == "error":
                what = f"client OCSP check of {_describe(chain[0])} failed: {r.reason}"
                if not self.soft_fail:
                    return PeerVerdict(False, what + " (crl_soft_fail = false)",
                                       ALERT_CERTIFICATE_UNKNOWN)
                log.warning("%s: %s; allowed (crl_soft_fail = true)", self.name, what)
        return ALLOW

    async def _fetch_for(self, chain: list[x509.Certificate], urls: dict[str, int]) -> None:
        """Fetch ``urls`` (url -> depth of the certificate whose CRL it is) concurrently; the
        CRL of the certificate at depth d must be signed by its issuer in ``chain``."""
        if self.cache is None:
            return
        waits = []
        for url, depth in urls.items():
            cert = chain[depth] if depth < len(chain) else None
            issuer = find_issuer(cert, chain + self.trust) if cert is not None else None
            if issuer is None:
                log.warning("%s: cannot tell which CA signs the CRL at %s; not fetched",
                            self.name, url)
                continue
            waits.append(self.cache.fetch(url, issuer))
        for res in await asyncio.gather(*waits, return_exceptions=True):
            if isinstance(res, BaseException) and not isinstance(res, CrlError):
                raise res       # failures are logged and in the status; the check decides

    def _chain_state(self, chain: list[x509.Certificate]
                     ) -> tuple[PeerVerdict | None, list[str]]:
        """The verify callback's check in Python, on the verified chain: (a refusal if a
        certificate is revoked, the certificates for which no CRL is held)."""
        assert self.cache is not None
        now = self.cache.now()
        missing = []
        for d, cert in enumerate(chain):
            if d > 0 and self.depth_mode == "leaf":
                break
            if _cert_id(cert) in self._anchor_ids:
                continue
            issuer = chain[d + 1] if d + 1 < len(chain) else find_issuer(cert, self.trust)
            crl = self.cache.best_crl_for(cert, issuer, now) if issuer is not None else None
            if crl is None:
                missing.append(f"{_describe(cert)} (depth {d})")
                continue
            rev = crl.crl.get_revoked_certificate_by_serial_number(cert.serial_number)
            if rev is not None:
                return PeerVerdict(False, self._revoked_reason(cert, crl, rev),
                                   ALERT_CERTIFICATE_REVOKED), missing
        return None, missing

    def _missing_verdict(self, missing: list[str]) -> PeerVerdict:
        if not missing:
            return ALLOW
        what = f"no CRL obtainable for {', '.join(missing)}"
        if self.soft_fail:
            log.warning("%s: %s; allowed (crl_soft_fail = true)", self.name, what)
            return ALLOW
        return PeerVerdict(False, what + " (crl_soft_fail = false)", ALERT_UNKNOWN_CA)

    @staticmethod
    def _revoked_reason(cert: x509.Certificate, crl: CachedCrl,
                        rev: x509.RevokedCertificate) -> str:
        reason = ""
        with contextlib.suppress(x509.ExtensionNotFound, ValueError):
            crl_reason = rev.extensions.get_extension_for_class(x509.CRLReason).value
            reason = f", reason {crl_reason.reason.value}"
        return (f"certificate {_describe(cert)} is revoked by the CRL {crl.source} "
                f"(revoked {_fmt(_ts(rev.revocation_date_utc))}{reason})")

    def _with_alert(self, conn: SSL.Connection, v: PeerVerdict,
                    secret: bytes | None) -> PeerVerdict:
        log.warning("%s: client refused: %s", self.name, v.reason)
        if v.alert is None:
            return v
        version = conn.get_protocol_version_name()
        record = b""
        if version == "TLSv1.3" and secret is not None:
            record = tls13_alert_record(conn.get_cipher_name() or "", secret, v.alert)
        elif version == "TLSv1.2" and not _session_reused(conn):
            record = tls12_alert_record(v.alert)
        return PeerVerdict(False, v.reason, v.alert, record)

    def release(self, conn: SSL.Connection) -> None:
        """Forget ``conn`` (optional: the state is weakly keyed and goes with the Connection)."""
        self._pending.pop(conn, None)
        self._secrets.pop(conn, None)


# ------------------------------------------------------------------------------------------------
# close_revoked_connections
# ------------------------------------------------------------------------------------------------
def peer_cert_ids(conn: SSL.Connection, depth: str = "chain") -> frozenset[CertId]:
    """The (issuer name DER, serial) of the client's certificate — and with ``depth="chain"``
    of every certificate of its verified chain below the trust anchor — as CRLs name them.
    After a resumed session only the leaf is known."""
    ssl = conn._ssl
    sk = _lib.SSL_get0_verified_chain(ssl)
    ids: list[CertId] = []
    if sk != _ffi.NULL and _lib.sk_X509_num(sk) > 0:
        n = _lib.sk_X509_num(sk)
        top = 1 if depth == "leaf" else max(1, n - 1)
        for i in range(min(top, n)):
            ids.append(_issuer_serial(_lib.sk_X509_value(sk, i)))
    else:
        peer = conn.get_peer_certificate()
        if peer is not None:
            ids.append(_issuer_serial(peer._x509))
    return frozenset(ids)


H = TypeVar("H", bound=Hashable)


class LiveConnectionIndex(Generic[H]):
    """Which live connections present which certificates, to find those a new CRL revokes.

    ``register(handle, peer_cert_ids(conn, depth))`` after a client is allowed,
    ``unregister(handle)`` when it closes, and from ``CrlCache.on_revoked``:
    ``for h in index.affected(ids): close h``."""

    def __init__(self) -> None:
        self._by_id: dict[CertId, set[H]] = {}
        self._ids: dict[H, frozenset[CertId]] = {}

    def register(self, handle: H, ids: Iterable[CertId]) -> None:
        fs = frozenset(ids)
        self.unregister(handle)
        self._ids[handle] = fs
        for i in fs:
            self._by_id.setdefault(i, set()).add(handle)

    def unregister(self, handle: H) -> None:
        for i in self._ids.pop(handle, ()):
            s = self._by_id.get(i)
            if s is not None:
                s.discard(handle)
                if not s:
                    del self._by_id[i]

    def affected(self, revoked: Iterable[CertId]) -> set[H]:
        out: set[H] = set()
        for i in revoked:
            s = self._by_id.get(i)
            if s:
                out |= s
        return out

    def __len__(self) -> int:
        return len(self._ids)
