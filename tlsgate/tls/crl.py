"""CRLs of client certificates (SPEC §4): where they come from, how they are checked, the cache.

* :class:`CrlCache` — every CRL this worker holds: CRLs fetched from distribution points (an LRU
  of at most ``[crl_cache] capacity`` URLs, refreshed every ``refresh_interval`` or at nextUpdate
  if sooner, ``http_timeout`` per fetch, no new attempt for ``failure_threshold`` after a failure,
  persisted under ``<data_dir>/crl/`` so a restart does not start cold) and the local ``crlfile``s
  of each listener (polled for changes and reloaded; a file that turns bad keeps the old CRL).
  Every CRL is PEM or DER, its signature is verified against the issuing CA and its
  thisUpdate/nextUpdate checked before it is used. ``on_change`` and ``on_revoked`` tell
  listeners and the gateway about new content.

The handshake-time check that uses it (the verify callback, deferred verdicts, late alerts,
``close_revoked_connections``) is :mod:`tlsgate.tls.revocation_guard`.

Semantics: a certificate is revoked if the newest current CRL *issued by its issuer* lists its
serial (full CRLs; no delta CRLs, indirect CRLs or IDP scoping). ``crl_check_depth = "leaf"``
checks the client certificate, ``"chain"`` every certificate below the trust anchor (a
self-signed root in ``cacertfile``, or any ``cacertfile`` certificate with ``partial_chain``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import aiohttp
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _lib

from .revocation_status import RevocationStatus, default_status

if TYPE_CHECKING:
    from ..config.schema import CrlCacheConfig

__all__ = [
    "ALERT_BAD_CERTIFICATE",
    "ALERT_CERTIFICATE_REVOKED",
    "ALERT_CERTIFICATE_UNKNOWN",
    "ALERT_INTERNAL_ERROR",
    "ALERT_UNKNOWN_CA",
    "CachedCrl",
    "CertId",
    "CrlCache",
    "CrlError",
    "CrlFetchError",
    "CrlValidationError",
    "check_crl",
    "crl_distribution_urls",
    "get_crl",
    "load_crl",
]

log = logging.getLogger("tlsgate.crl")

#: (issuer name DER, serial number): how a certificate is named in a CRL.
CertId = tuple[bytes, int]
#: ``fetcher(url, timeout) -> body``: replaces the HTTP GET of a CRL, e.g. to let the node
#: process fetch once for all workers. It raises :class:`CrlFetchError` on failure.
CrlFetcher = Callable[[str, float], Awaitable[bytes]]

MAX_CLOCK_SKEW: Final = 300.0
MAX_CRL_BYTES: Final = 64 * 1024 * 1024

ALERT_BAD_CERTIFICATE: Final = 42
ALERT_CERTIFICATE_REVOKED: Final = 44
ALERT_CERTIFICATE_UNKNOWN: Final = 46
ALERT_UNKNOWN_CA: Final = 48      # what OpenSSL sends for X509_V_ERR_UNABLE_TO_GET_CRL
ALERT_INTERNAL_ERROR: Final = 80

# Verify errors meaning "no usable CRL is in the store for this certificate".
_CRL_UNAVAILABLE: Final = frozenset({
    _lib.X509_V_ERR_UNABLE_TO_GET_CRL,
    _lib.X509_V_ERR_CRL_NOT_YET_VALID,
    _lib.X509_V_ERR_CRL_HAS_EXPIRED,
    _lib.X509_V_ERR_UNABLE_TO_GET_CRL_ISSUER,
    _lib.X509_V_ERR_DIFFERENT_CRL_SCOPE,
    _lib.X509_V_ERR_CRL_PATH_VALIDATION_ERROR,
    _lib.X509_V_ERR_CRL_SIGNATURE_FAILURE,
    _lib.X509_V_ERR_UNABLE_TO_DECRYPT_CRL_SIGNATURE,
    _lib.X509_V_ERR_ERROR_IN_CRL_LAST_UPDATE_FIELD,
    _lib.X509_V_ERR_ERROR_IN_CRL_NEXT_UPDATE_FIELD,
    _lib.X509_V_ERR_UNHANDLED_CRITICAL_CRL_EXTENSION,
    _lib.X509_V_ERR_KEYUSAGE_NO_CRL_SIGN,
})


# ------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------
class CrlError(Exception):
    """A CRL could not be obtained or used; the message says which and why."""


class CrlFetchError(CrlError):
    """A distribution point could not be reached or did not return a CRL."""


class CrlValidationError(CrlError):
    """A CRL was obtained but must not be used (bad signature, wrong issuer, expired…)."""


# ------------------------------------------------------------------------------------------------
# CRL parsing and checks (pure)
# ------------------------------------------------------------------------------------------------
def crl_distribution_urls(cert: x509.Certificate) -> list[str]:
    """The http(s) URLs of the certificate's CRL distribution points (full names only)."""
    try:
        cdp = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    except x509.ExtensionNotFound:
        return []
    except ValueError:      # a malformed extension: treat as absent, OpenSSL decides the rest
        return []
    urls: list[str] = []
    for dp in cdp:
        for gn in dp.full_name or ():
            if isinstance(gn, x509.UniformResourceIdentifier):
                url = gn.value
                if url.lower().startswith(("http://", "https://")) and url not in urls:
                    urls.append(url)
    return urls


async def get_crl(session: aiohttp.ClientSession, url: str, timeout: float,
                  max_bytes: int = MAX_CRL_BYTES) -> bytes:
    """GET one CRL: the body of a 200 answer (bounded), else :class:`CrlFetchError`."""
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as r:
            if r.status != 200:
                raise CrlFetchError(f"{url}: HTTP {r.status} {r.reason or ''}".rstrip())
            if r.content_length is not None and r.content_length > max_bytes:
                raise CrlFetchError(f"{url}: {r.content_length} bytes, more than the "
                                    f"{max_bytes} a CRL may have here")
            body = bytearray()
            async for chunk in r.content.iter_chunked(65536):
                body += chunk
                if len(body) > max_bytes:
                    raise CrlFetchError(f"{url}: more than {max_bytes} bytes")
            return bytes(body)
    except TimeoutError:
        raise CrlFetchError(f"{url}: no answer within {timeout:g}s "
                            f"(crl_cache.http_timeout)") from None
    except aiohttp.ClientError as e:
        raise CrlFetchError(f"{url}: cannot fetch: {e or type(e).__name__}") from None


def load_crl(data: bytes, source: str) -> x509.CertificateRevocationList:
    """A CRL from PEM or DER bytes; :class:`CrlValidationError` naming ``source`` otherwise."""
    stripped = data.lstrip()
    try:
        if stripped.startswith(b"-----BEGIN"):
            return x509.load_pem_x509_crl(stripped)
        return x509.load_der_x509_crl(data)
    except ValueError as e:
        kind = "PEM" if stripped.startswith(b"-----BEGIN") else "DER"
        raise CrlValidationError(f"{source}: not a {kind} CRL ({e})") from None


def _ts(d: Any) -> float:
    return float(d.timestamp())


def _fmt(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _describe(cert: x509.Certificate) -> str:
    return f"{cert.subject.rfc4514_string() or '(empty subject)'} (serial {cert.serial_number:x})"


def check_crl(crl: x509.CertificateRevocationList, issuer: x509.Certificate, *, now: float,
              source: str, allow_expired: bool = False,
              max_skew: float = MAX_CLOCK_SKEW) -> None:
    """Raise :class:`CrlValidationError` unless ``crl`` was issued and signed by ``issuer`` and
    is current (thisUpdate at most ``max_skew`` in the future; nextUpdate, if present, not
    passed unless ``allow_expired``)."""
    if crl.issuer != issuer.subject:
        raise CrlValidationError(
            f"{source}: CRL issued by {crl.issuer.rfc4514_string()}, expected "
            f"{issuer.subject.rfc4514_string()}")
    try:
        ku = issuer.extensions.get_extension_for_class(x509.KeyUsage).value
        if not ku.crl_sign:
            raise CrlValidationError(
                f"{source}: the issuer {issuer.subject.rfc4514_string()} may not sign CRLs "
                f"(no cRLSign key usage)")
    except x509.ExtensionNotFound:
        pass
    try:
        ok = crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
    except (TypeError, ValueError, UnsupportedAlgorithm) as e:
        raise CrlValidationError(f"{source}: cannot verify the CRL signature ({e})") from None
    if not ok:
        raise CrlValidationError(
            f"{source}: CRL signature does not verify with the key of "
            f"{issuer.subject.rfc4514_string()} (corrupted, forged, or another CA's CRL)")
    this_update = _ts(crl.last_update_utc)
    if this_update > now + max_skew:
        raise CrlValidationError(f"{source}: thisUpdate {_fmt(this_update)} is in the future "
                                 f"(check this host's clock)")
    nu = crl.next_update_utc
    if nu is not None and _ts(nu) <= now and not allow_expired:
        raise CrlValidationError(f"{source}: CRL expired at {_fmt(_ts(nu))} (nextUpdate)")


# ------------------------------------------------------------------------------------------------
# Small cffi helpers (cryptography's bindings, as pyOpenSSL uses them)
# ------------------------------------------------------------------------------------------------
def _name_der(name_ptr: Any) -> bytes:
    n = _lib.i2d_X509_NAME(name_ptr, _ffi.NULL)
    if n <= 0:
        return b""
    buf = _ffi.new("unsigned char[]", n)
    pp = _ffi.new("unsigned char **", buf)
    _lib.i2d_X509_NAME(name_ptr, pp)
    return bytes(_ffi.buffer(buf, n))


_V_ASN1_NEG_INTEGER: Final = 0x102


def _serial(x509_ptr: Any) -> int:
    """The serial number of an ``X509 *`` (read from the ASN1_INTEGER's bytes, no bignum)."""
    asn1 = _ffi.cast("ASN1_STRING *", _lib.X509_get_serialNumber(x509_ptr))
    n = _lib.ASN1_STRING_length(asn1)
    value = int.from_bytes(_ffi.buffer(_lib.ASN1_STRING_get0_data(asn1), n), "big")
    return -value if _lib.ASN1_STRING_type(asn1) == _V_ASN1_NEG_INTEGER else value


def _issuer_serial(x509_ptr: Any) -> CertId:
    return _name_der(_lib.X509_get_issuer_name(x509_ptr)), _serial(x509_ptr)


def _cert_id(cert: x509.Certificate) -> CertId:
    return cert.issuer.public_bytes(), cert.serial_number


def _session_reused(conn: SSL.Connection) -> bool:
    return bool(_lib.SSL_session_reused(conn._ssl))


# ------------------------------------------------------------------------------------------------
# The cache
# ------------------------------------------------------------------------------------------------
@dataclass(eq=False)
class CachedCrl:
    """One validated CRL and where it came from."""

    source: str                               # URL or file path
    kind: str                                 # "url" | "file"
    crl: x509.CertificateRevocationList
    der: bytes
    issuer_der: bytes                         # DER of the CRL issuer name
    issuer_cert: x509.Certificate | None      # verified against this (None: file, issuer unknown)
    this_update: float
    next_update: float | None
    fetched_at: float
    _serials: frozenset[int] | None = field(default=None, repr=False)
    _sig_ok: dict[bytes, bool] = field(default_factory=dict, repr=False)

    @classmethod
    def make(cls, crl: x509.CertificateRevocationList, *, source: str, kind: str,
             issuer_cert: x509.Certificate | None, fetched_at: float,
             der: bytes | None = None) -> CachedCrl:
        return cls(source=source, kind=kind, crl=crl,
                   der=der if der is not None else crl.public_bytes(serialization.Encoding.DER),
                   issuer_der=crl.issuer.public_bytes(), issuer_cert=issuer_cert,
                   this_update=_ts(crl.last_update_utc),
                   next_update=_ts(crl.next_update_utc) if crl.next_update_utc else None,
                   fetched_at=fetched_at)

    def serials(self) -> frozenset[int]:
        if self._serials is None:
            self._serials = frozenset(r.serial_number for r in self.crl)
        return self._serials

    def valid_at(self, now: float, max_skew: float = MAX_CLOCK_SKEW) -> bool:
        return self.this_update <= now + max_skew and (self.next_update is None
                                                       or now < self.next_update)

    @property
    def verified(self) -> bool:
        """Signature verified against a known issuer (only such CRLs decide handshakes)."""
        return self.issuer_cert is not None

    def signed_by(self, issuer: x509.Certificate) -> bool:
        """Whether ``issuer`` signed this CRL (cached per issuer key)."""
        key = issuer.public_key().public_bytes(serialization.Encoding.DER,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
        ok = self._sig_ok.get(key)
        if ok is None:
            try:
                ok = (self.crl.issuer == issuer.subject
                      and self.crl.is_signature_valid(issuer.public_key()))  # type: ignore[arg-type]
            except (TypeError, ValueError, UnsupportedAlgorithm):
                ok = False
            self._sig_ok[key] = ok
        return ok


@dataclass(eq=False)
class _UrlEntry:
    url: str
    crl: CachedCrl | None = None
    issuer: x509.Certificate | None = None
    failures: int = 0
    failed_at: float | None = None
    last_error: str | None = None
    last_used: float = 0.0


@dataclass(eq=False)
class _FileEntry:
    path: str
    crl: CachedCrl | None
    stamp: tuple[int, int] | None               # (mtime_ns, size) of what was loaded


@dataclass(eq=False)
class _FileSet:
    trust: list[x509.Certificate]
    files: dict[str, _FileEntry]


class CrlCache:
    """All CRLs of this worker: the distribution-point LRU and the local ``crlfile``s."""

    def __init__(self, config: CrlCacheConfig | None = None, *,
                 data_dir: str | os.PathLike[str] | None = None,
                 status: RevocationStatus | None = None,
                 session: aiohttp.ClientSession | None = None,
                 clock: Callable[[], float] = time.time, file_poll_interval: float = 5.0,
                 max_bytes: int = MAX_CRL_BYTES, fetch_concurrency: int = 8,
                 max_skew: float = MAX_CLOCK_SKEW, fetcher: CrlFetcher | None = None) -> None:
        if config is None:
            from ..config.schema import CrlCacheConfig as _Cfg
            config = _Cfg()
        self.refresh_interval = float(config.refresh_interval)
        self.http_timeout = float(config.http_timeout)
        self.capacity = int(config.capacity)
        self.failure_threshold = float(config.failure_threshold)
        self._status = status or default_status()
        self._session = session
        self._own_session = session is None
        self._fetcher = fetcher
        self._clock = clock
        self._file_poll_interval = file_poll_interval
        self._max_bytes = max_bytes
        self._max_skew = max_skew
        self._sem = asyncio.Semaphore(fetch_concurrency)
        self._dir = Path(data_dir) / "crl" if data_dir is not None else None
        self._urls: OrderedDict[str, _UrlEntry] = OrderedDict()
        # The handshake-time index: issuer name DER -> verified CRLs, newest first.
        self._index: dict[bytes, list[CachedCrl]] = {}
        self._files: dict[str, _FileSet] = {}
        self._inflight: dict[str, asyncio.Task[CachedCrl]] = {}
        self._change_cbs: list[Callable[[], None]] = []
        self._revoked_cbs: list[Callable[[frozenset[CertId]], None]] = []
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._next_file_poll = 0.0

    # -- subscriptions ------------------------------------------------------------------------
    def on_change(self, cb: Callable[[], None]) -> Callable[[], None]:
        """``cb()`` after any CRL is added, replaced or dropped. Returns an unsubscribe."""
        self._change_cbs.append(cb)
        return lambda: self._change_cbs.remove(cb) if cb in self._change_cbs else None

    def on_revoked(self, cb: Callable[[frozenset[CertId]], None]) -> Callable[[], None]:
        """``cb(ids)`` with the (issuer name DER, serial) pairs that a new or refreshed CRL lists
        and its previous version (if any) did not — for ``close_revoked_connections``."""
        self._revoked_cbs.append(cb)
        return lambda: self._revoked_cbs.remove(cb) if cb in self._revoked_cbs else None

    def _changed(self, old: CachedCrl | None, new: CachedCrl | None) -> None:
        self._reindex()
        for cb in list(self._change_cbs):
            try:
                cb()
            except Exception:
                log.exception("CRL change listener failed")
        if new is None or not self._revoked_cbs:
            return
        added = new.serials() - (old.serials() if old is not None else frozenset())
        if not added:
            return
        ids = frozenset((new.issuer_der, s) for s in added)
        for rcb in list(self._revoked_cbs):
            try:
                rcb(ids)
            except Exception:
                log.exception("CRL revocation listener failed")

    # -- reading ------------------------------------------------------------------------------
    def now(self) -> float:
        return self._clock()

    def get(self, url: str) -> CachedCrl | None:
        """The CRL held for ``url`` (counts as a use for the LRU)."""
        e = self._urls.get(url)
        if e is None:
            return None
        self._touch(e)
        return e.crl

    def crls(self) -> list[CachedCrl]:
        """Every CRL held (URL and file, unique by content), for building a verify store."""
        seen: set[bytes] = set()
        out: list[CachedCrl] = []
        for c in self._all():
            h = hashlib.sha256(c.der).digest()
            if h not in seen:
                seen.add(h)
                out.append(c)
        return out

    def _all(self) -> Iterable[CachedCrl]:
        for e in self._urls.values():
            if e.crl is not None:
                yield e.crl
        for fs in self._files.values():
            for fe in fs.files.values():
                if fe.crl is not None:
                    yield fe.crl

    def in_backoff(self, url: str) -> bool:
        """True while ``url`` failed less than ``failure_threshold`` ago (no new attempt)."""
        e = self._urls.get(url)
        return (e is not None and e.failed_at is not None
                and self._clock() < e.failed_at + self.failure_threshold)

    def best_crl_for(self, cert: x509.Certificate, issuer: x509.Certificate,
                     now: float | None = None) -> CachedCrl | None:
        """The newest current CRL that covers ``cert`` and is signed by ``issuer``, whatever
        its source (URL or file). Verifies signatures not checked yet (file CRLs of issuers
        outside cacertfile) and remembers the result."""
        t = self._clock() if now is None else now
        want = cert.issuer.public_bytes()
        cands = [c for c in self._all() if c.issuer_der == want and c.valid_at(t, self._max_skew)]
        cands.sort(key=lambda c: c.this_update, reverse=True)
        for c in cands:
            if c.signed_by(issuer):
                if not c.verified:
                    self.mark_verified(c, issuer)
                if c.kind == "url":
                    e = self._urls.get(c.source)
                    if e is not None:
                        self._touch(e)
                return c
        return None

    def revocation_of(self, issuer_der: bytes,
                      serial: int) -> tuple[CachedCrl, x509.RevokedCertificate] | None:
        """The CRL and entry revoking (issuer, serial), if the newest current CRL of that
        issuer lists it."""
        c = self.lookup(issuer_der)
        if c is None or serial not in c.serials():
            return None
        rev = c.crl.get_revoked_certificate_by_serial_number(serial)
        return (c, rev) if rev is not None else None

    def lookup(self, issuer_der: bytes) -> CachedCrl | None:
        """Handshake-time lookup: the newest current, signature-verified CRL issued by
        ``issuer_der`` (counts as a use for the LRU). Dictionary work only."""
        crls = self._index.get(issuer_der)
        if not crls:
            return None
        now = self._clock()
        for c in crls:
            if c.valid_at(now, self._max_skew):
                if c.kind == "url":
                    e = self._urls.get(c.source)
                    if e is not None:
                        e.last_used = now
                        self._urls.move_to_end(c.source)
                return c
        return None

    def has_unverified(self, issuer_der: bytes) -> bool:
        """A file CRL of this issuer is held but not yet verified (issuer not in cacertfile)."""
        return any(not c.verified and c.issuer_der == issuer_der for c in self._all())

    def _reindex(self) -> None:
        index: dict[bytes, list[CachedCrl]] = {}
        for c in self._all():
            if c.verified:
                index.setdefault(c.issuer_der, []).append(c)
        for crls in index.values():
            crls.sort(key=lambda c: c.this_update, reverse=True)
        self._index = index

    def mark_verified(self, c: CachedCrl, issuer: x509.Certificate) -> None:
        """A file CRL whose issuer was not in cacertfile, now verified against ``issuer``
        (from a chain OpenSSL validated): from now on it decides handshakes directly."""
        if c.issuer_cert is None and c.signed_by(issuer):
            c.issuer_cert = issuer
            self._reindex()

    def _touch(self, e: _UrlEntry) -> None:
        e.last_used = self._clock()
        self._urls.move_to_end(e.url)

    # -- fetching -----------------------------------------------------------------------------
    async def fetch(self, url: str, issuer: x509.Certificate, *,
                    force: bool = False) -> CachedCrl:
        """The CRL of ``url``, signed by ``issuer``: the held one if current (unless ``force``),
        else downloaded and validated. Concurrent calls share one download. Raises
        :class:`CrlFetchError` / :class:`CrlValidationError`; while ``url`` is in its
        failure back-off, raises at once without a request."""
        e = self._urls.get(url)
        now = self._clock()
        if (not force and e is not None and e.crl is not None
                and e.crl.valid_at(now, self._max_skew) and e.crl.signed_by(issuer)):
            self._touch(e)
            return e.crl
        if not force and self.in_backoff(url) and e is not None and e.failed_at is not None:
            raise CrlFetchError(
                f"{url}: not retried before {_fmt(e.failed_at + self.failure_threshold)} "
                f"(failed {now - e.failed_at:.0f}s ago: {e.last_error}; "
                f"crl_cache.failure_threshold)")
        task = self._inflight.get(url)
        if task is None:
            task = asyncio.create_task(self._fetch(url, issuer), name=f"crl-fetch:{url}")
            self._inflight[url] = task
            task.add_done_callback(functools.partial(self._forget, url))
        return await asyncio.shield(task)

    def _forget(self, url: str, _task: object) -> None:
        self._inflight.pop(url, None)

    async def _download(self, url: str) -> bytes:
        if self._fetcher is not None:
            return await self._fetcher(url, self.http_timeout)
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return await get_crl(self._session, url, self.http_timeout, self._max_bytes)

    async def _fetch(self, url: str, issuer: x509.Certificate) -> CachedCrl:
        st = self._status.crl(url, "url")
        st.last_fetch = self._clock()
        st.fetches += 1
        try:
            async with self._sem:
                body = await self._download(url)
            crl = load_crl(body, url)
            now = self._clock()
            check_crl(crl, issuer, now=now, source=url, max_skew=self._max_skew)
            new = CachedCrl.make(crl, source=url, kind="url", issuer_cert=issuer, fetched_at=now)
        except CrlError as err:
            self._record_failure(url, str(err))
            raise
        e = self._entry(url)
        old = e.crl
        if old is not None and new.this_update < old.this_update and old.valid_at(now):
            log.info("CRL %s: the server returned an older CRL (thisUpdate %s < %s); keeping "
                     "the held one", url, _fmt(new.this_update), _fmt(old.this_update))
            new = old
        else:
            e.crl = new
        e.issuer = issuer
        e.failures = 0
        e.failed_at = None
        e.last_error = None
        self._touch(e)
        st.cached = True
        st.issuer = new.crl.issuer.rfc4514_string()
        st.this_update, st.next_update = new.this_update, new.next_update
        st.revoked_count = len(new.serials())
        st.last_success = now
        st.consecutive_failures = 0
        st.last_used = e.last_used
        st.next_refresh = self._due(e)
        if new is not old:
            log.info("CRL %s: loaded (%d revoked, thisUpdate %s, nextUpdate %s)", url,
                     st.revoked_count, _fmt(new.this_update), _fmt(new.next_update))
            await self._persist(url, new)
            self._changed(old, new)
            self._wake.set()
        return new

    def _entry(self, url: str) -> _UrlEntry:
        e = self._urls.get(url)
        if e is None:
            e = _UrlEntry(url)
            self._urls[url] = e
            self._evict()
        return e

    def _evict(self) -> None:
        while len(self._urls) > self.capacity:
            victim = next((u for u in self._urls if u not in self._inflight), None)
            if victim is None:
                return
            e = self._urls.pop(victim)
            self._status.drop_crl(victim)
            log.info("CRL %s: evicted (crl_cache.capacity = %d, least recently used)", victim,
                     self.capacity)
            if self._dir is not None:
                for p in self._persist_paths(victim):
                    with contextlib.suppress(OSError):
                        p.unlink()
            if e.crl is not None:
                self._changed(e.crl, None)

    def _record_failure(self, url: str, reason: str) -> None:
        now = self._clock()
        e = self._entry(url)
        e.failures += 1
        e.failed_at = now
        e.last_error = reason
        st = self._status.crl(url, "url")
        st.last_error = reason
        st.last_error_time = now
        st.consecutive_failures = e.failures
        st.next_refresh = now + self.failure_threshold if e.crl is not None else None
        held = (f"keeping the held CRL until {_fmt(e.crl.next_update)}" if e.crl is not None
                else "no CRL held for it")
        log.warning("CRL %s: %s (%s; no new attempt for %gs)", url, reason, held,
                    self.failure_threshold)

    def _due(self, e: _UrlEntry) -> float:
        if e.crl is None:
            return float("inf")
        if e.failed_at is not None:
            return e.failed_at + self.failure_threshold
        due = e.crl.fetched_at + self.refresh_interval
        if e.crl.next_update is not None:
            due = min(due, e.crl.next_update)
        return due

    async def refresh_due(self) -> int:
        """Refresh every held URL CRL that is due; the number refreshed successfully."""
        now = self._clock()
        due = [e for e in self._urls.values()
               if e.crl is not None and e.issuer is not None and self._due(e) <= now]
        return await self._refresh(due)

    async def refresh_all(self) -> int:
        """Refresh every held URL CRL now (admin reload, tests)."""
        return await self._refresh([e for e in self._urls.values()
                                    if e.crl is not None and e.issuer is not None])

    async def _refresh(self, entries: list[_UrlEntry]) -> int:
        async def one(e: _UrlEntry) -> bool:
            assert e.issuer is not None
            try:
                await self.fetch(e.url, e.issuer, force=True)
            except CrlError:
                return False
            return True
        results = await asyncio.gather(*(one(e) for e in entries))
        return sum(results)

    # -- local files --------------------------------------------------------------------------
    def set_files(self, owner: str, paths: Sequence[str],
                  trust: Sequence[x509.Certificate]) -> None:
        """Load the ``crlfile`` list of ``owner`` (a listener). All files are loaded before any
        replaces the old set: on error (:class:`CrlError` naming the file) nothing changes."""
        now = self._clock()
        fresh: dict[str, _FileEntry] = {}
        for p in paths:
            crl, stamp = self._load_file(p, trust, now)
            fresh[p] = _FileEntry(p, crl, stamp)
        old = self._files.get(owner)
        self._files[owner] = _FileSet(list(trust), fresh)
        if old is not None:
            for p in old.files:
                if p not in fresh and not self._file_used_elsewhere(p, owner):
                    self._status.drop_crl(p)
        for p, fe in fresh.items():
            prev = old.files.get(p) if old is not None else None
            self._file_status(fe, error=None)
            if prev is None or prev.crl is None or fe.crl is None or prev.crl.der != fe.crl.der:
                self._changed(prev.crl if prev is not None else None, fe.crl)
        if old is not None and any(p not in fresh for p in old.files):
            self._changed(None, None)
        self._reindex()
        self._wake.set()

    def drop_files(self, owner: str) -> None:
        old = self._files.pop(owner, None)
        if old is None:
            return
        for p in old.files:
            if not self._file_used_elsewhere(p, owner):
                self._status.drop_crl(p)
        self._changed(None, None)

    def _file_used_elsewhere(self, path: str, owner: str) -> bool:
        return any(path in fs.files for o, fs in self._files.items() if o != owner)

    def _load_file(self, path: str, trust: Sequence[x509.Certificate],
                   now: float) -> tuple[CachedCrl, tuple[int, int]]:
        try:
            stt = os.stat(path)
            data = Path(path).read_bytes()
        except OSError as e:
            raise CrlError(f"crlfile {path!r}: cannot read: {e.strerror or e}") from None
        crl = load_crl(data, f"crlfile {path!r}")
        issuer = next((c for c in trust if c.subject == crl.issuer), None)
        if issuer is not None:
            try:
                check_crl(crl, issuer, now=now, source=f"crlfile {path!r}", allow_expired=True,
                          max_skew=self._max_skew)
            except CrlValidationError as e:
                raise CrlError(str(e)) from None
        else:
            log.info("crlfile %r: its issuer %s is not in cacertfile; OpenSSL verifies its "
                     "signature against the client's chain when it is used", path,
                     crl.issuer.rfc4514_string())
        cached = CachedCrl.make(crl, source=path, kind="file", issuer_cert=issuer,
                                fetched_at=now)
        if cached.next_update is not None and cached.next_update <= now:
            log.warning("crlfile %r expired at %s: clients of %s are refused until it is "
                        "replaced (or allowed under crl_soft_fail)", path,
                        _fmt(cached.next_update), crl.issuer.rfc4514_string())
        return cached, (stt.st_mtime_ns, stt.st_size)

    def _file_status(self, fe: _FileEntry, error: str | None) -> None:
        st = self._status.crl(fe.path, "file")
        now = self._clock()
        if error is not None:
            st.last_error = error
            st.last_error_time = now
            st.consecutive_failures += 1
            return
        st.last_fetch = st.last_success = now
        st.consecutive_failures = 0
        st.fetches += 1
        if fe.crl is not None:
            st.cached = True
            st.issuer = fe.crl.crl.issuer.rfc4514_string()
            st.this_update, st.next_update = fe.crl.this_update, fe.crl.next_update
            st.revoked_count = len(fe.crl.serials())

    def poll_files(self) -> int:
        """Reload every ``crlfile`` whose mtime or size changed; the number reloaded. A file
        that no longer loads keeps its previous CRL (error logged and in the status)."""
        reloaded = 0
        now = self._clock()
        for fs in self._files.values():
            for p, fe in list(fs.files.items()):
                try:
                    stt = os.stat(p)
                    stamp = (stt.st_mtime_ns, stt.st_size)
                except OSError as e:
                    if fe.stamp is not None:
                        log.error("crlfile %r: %s; keeping the CRL loaded before", p,
                                  e.strerror or e)
                        self._file_status(fe, error=f"cannot read: {e.strerror or e}")
                        fe.stamp = None
                    continue
                if stamp == fe.stamp:
                    continue
                try:
                    crl, stamp = self._load_file(p, fs.trust, now)
                except CrlError as e:
                    log.error("%s; keeping the CRL loaded before", e)
                    self._file_status(fe, error=str(e))
                    fe.stamp = stamp
                    continue
                old = fe.crl
                fs.files[p] = nfe = _FileEntry(p, crl, stamp)
                self._file_status(nfe, error=None)
                log.info("crlfile %r reloaded (%d revoked, thisUpdate %s)", p,
                         len(crl.serials()), _fmt(crl.this_update))
                reloaded += 1
                self._changed(old, crl)
        return reloaded

    # -- persistence --------------------------------------------------------------------------
    def _persist_paths(self, url: str) -> tuple[Path, Path]:
        assert self._dir is not None
        h = hashlib.sha256(url.encode()).hexdigest()[:40]
        return self._dir / f"{h}.der", self._dir / f"{h}.json"

    async def _persist(self, url: str, c: CachedCrl) -> None:
        if self._dir is None or c.issuer_cert is None:
            return
        der_path, meta_path = self._persist_paths(url)
        meta = json.dumps({"url": url, "issuer_pem": c.issuer_cert.public_bytes(
            serialization.Encoding.PEM).decode()}).encode()
        try:
            await asyncio.to_thread(_write_pair, der_path, c.der, meta_path, meta)
        except OSError as e:
            log.warning("CRL %s: cannot save to %s: %s", url, der_path.parent, e.strerror or e)

    def restore(self) -> int:
        """Load the CRLs saved under ``<data_dir>/crl/`` (still current ones only, newest
        first up to capacity); the number restored. Synchronous (start-up)."""
        if self._dir is None or not self._dir.is_dir():
            return 0
        now = self._clock()
        metas = sorted(self._dir.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
        restored = 0
        for meta_path in metas:
            der_path = meta_path.with_suffix(".der")
            try:
                meta = json.loads(meta_path.read_text())
                url = str(meta["url"])
                issuer = x509.load_pem_x509_certificate(str(meta["issuer_pem"]).encode())
                crl = load_crl(der_path.read_bytes(), url)
                check_crl(crl, issuer, now=now, source=url, max_skew=self._max_skew)
                c = CachedCrl.make(crl, source=url, kind="url", issuer_cert=issuer,
                                   fetched_at=meta_path.stat().st_mtime)
            except (OSError, ValueError, KeyError, CrlError) as err:
                log.info("saved CRL %s not used: %s", meta_path.name, err)
                for p in (meta_path, der_path):
                    with contextlib.suppress(OSError):
                        p.unlink()
                continue
            if url in self._urls or len(self._urls) >= self.capacity:
                continue
            e = _UrlEntry(url, crl=c, issuer=issuer, last_used=c.fetched_at)
            self._urls[url] = e
            self._urls.move_to_end(url, last=False)     # older files rank as less recently used
            st = self._status.crl(url, "url")
            st.cached = True
            st.issuer = crl.issuer.rfc4514_string()
            st.this_update, st.next_update = c.this_update, c.next_update
            st.revoked_count = len(c.serials())
            st.last_success = c.fetched_at
            st.next_refresh = self._due(e)
            restored += 1
        if restored:
            log.info("restored %d saved CRL(s) from %s", restored, self._dir)
            self._changed(None, None)
        return restored

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        """Restore saved CRLs and start the refresh / file-poll task."""
        if self._task is not None:
            return
        self.restore()
        self._task = asyncio.create_task(self._maintain(), name="crl-cache")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for t in list(self._inflight.values()):
            t.cancel()
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def _maintain(self) -> None:
        while True:
            now = self._clock()
            try:
                if now >= self._next_file_poll:
                    self._next_file_poll = now + self._file_poll_interval
                    self.poll_files()
                await self.refresh_due()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("CRL cache maintenance failed; retrying")
            now = self._clock()
            wake = min([self._next_file_poll]
                       + [self._due(e) for e in self._urls.values() if e.issuer is not None])
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=max(0.05, wake - now))


def _write_pair(p1: Path, d1: bytes, p2: Path, d2: bytes) -> None:
    p1.parent.mkdir(parents=True, exist_ok=True)
    for path, data in ((p1, d1), (p2, d2)):
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
