"""OCSP: stapling a validated response for each server certificate, and checking clients.

Stapling (SPEC §3)
------------------
One :class:`OcspStapler` per server certificate (the listener's ``certfile`` and each SNI
``certfile``). It fetches a response from ``responder_url`` (default: the certificate's AIA OCSP
URL) for the certificate and its issuer (``issuer_pem``, default: found in ``certfile``'s chain
or ``cacertfile``), and **validates it before it is ever stapled** — EMQX staples any HTTP 200
body, which lets a broken or hostile responder make every client fail:

* the response status is ``successful`` and one SingleResponse's CertID matches ours
  (issuer name hash, issuer key hash, serial, with the hash algorithm the responder chose);
* it is signed by the issuer itself, or by a delegated responder certificate that is included in
  the response, issued (and signed) by the same issuer, within its validity period, and has the
  id-kp-OCSPSigning extended key usage (RFC 6960 §4.2.2.2);
* the certificate status is ``good``;
* ``thisUpdate <= now + MAX_CLOCK_SKEW`` and ``now < nextUpdate``. The skew (5 minutes, the same
  tolerance OpenSSL applies by default) absorbs a responder whose clock is a little ahead of
  ours; ``nextUpdate`` gets no tolerance: an expired response is never stapled. A response
  without ``nextUpdate`` ("newer information is always available") is treated as valid for
  ``refresh_interval`` after its thisUpdate.

A rejected response never replaces the held one, except a *revoked* answer: then the held staple
is dropped at once (stapling "good" for a certificate its CA has just revoked would be a lie) and
an error is logged.

Refresh happens at the earlier of ``refresh_interval`` and half-way to the held response's
nextUpdate (:func:`refresh_delay`), with exponential back-off on failure (:func:`retry_delay`); the
last good response keeps being stapled until its nextUpdate. Each accepted response is written
atomically to ``<data_dir>/ocsp/<sha256 of the certificate DER>.der``; :meth:`OcspStapler.start`
loads and re-validates it, so the staple is served immediately after a restart, even with the
responder down.

:meth:`OcspStapler.current` is the handshake-time accessor: one attribute read and one clock
comparison, no I/O. :func:`install_stapling` wires it into an ``OpenSSL.SSL.Context`` with
``set_ocsp_server_callback``, which OpenSSL calls for every client that sends ``status_request``,
with or without SNI, TLS 1.2 (CertificateStatus message) and TLS 1.3 (Certificate extension).

Client certificates (``ocsp.check_client``)
-------------------------------------------
:class:`ClientOcspChecker` checks a client certificate against its AIA responder with the same
response validation, caching each answer by (issuer name, serial) until its nextUpdate (failures
for ``failure_ttl``), and sharing one request among concurrent checks of the same certificate.
It is called after the handshake (see ``tlsgate.tls.revocation_guard.ClientRevocationGuard``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import aiohttp
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import (
    AuthorityInformationAccessOID,
    ExtendedKeyUsageOID,
    SignatureAlgorithmOID,
)

from .revocation_status import RevocationStatus, default_status

if TYPE_CHECKING:
    from OpenSSL import SSL

    from ..config.schema import OcspOptions

__all__ = [
    "MAX_CLOCK_SKEW",
    "ClientOcspChecker",
    "ClientOcspResult",
    "OcspConfigError",
    "OcspError",
    "OcspFetchError",
    "OcspRevokedError",
    "OcspStapler",
    "OcspValidationError",
    "VerifiedOcsp",
    "build_request",
    "find_issuer",
    "install_stapling",
    "is_must_staple",
    "ocsp_responder_urls",
    "post_ocsp",
    "refresh_delay",
    "retry_delay",
    "validate_staple",
    "verify_response",
]

log = logging.getLogger("tlsgate.ocsp")

#: ``fetcher(url, request_der, timeout) -> response body``: replaces the HTTP POST, e.g. to let
#: the node process fetch once for all workers. It raises :class:`OcspFetchError` on failure.
OcspFetcher = Callable[[str, bytes, float], Awaitable[bytes]]

#: How far a response's thisUpdate may lie in the future (responder clock ahead of ours).
MAX_CLOCK_SKEW: Final = 300.0
#: Largest OCSP response body accepted (real ones are a few KiB).
MAX_RESPONSE_BYTES: Final = 256 * 1024
#: Never refresh a held response more often than this (unless refresh_interval is shorter), so a
#: responder that serves old pre-generated responses (past their half-way point) is not hammered.
MIN_REFRESH: Final = 30.0


# ------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------
class OcspError(Exception):
    """Base class: an OCSP response could not be obtained or used."""


class OcspConfigError(OcspError, ValueError):
    """Stapling cannot be set up; the message names the config key to change."""


class OcspFetchError(OcspError):
    """The responder could not be reached or did not answer with a response."""


class OcspValidationError(OcspError):
    """A response was received but must not be used; ``str(e)`` says why."""


class OcspRevokedError(OcspValidationError):
    """The responder says the certificate is revoked."""


# ------------------------------------------------------------------------------------------------
# Certificate helpers
# ------------------------------------------------------------------------------------------------
def ocsp_responder_urls(cert: x509.Certificate) -> list[str]:
    """The http(s) OCSP URLs of the certificate's Authority Information Access extension."""
    try:
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except x509.ExtensionNotFound:
        return []
    urls = []
    for desc in aia:
        if (desc.access_method == AuthorityInformationAccessOID.OCSP
                and isinstance(desc.access_location, x509.UniformResourceIdentifier)):
            url = desc.access_location.value
            if url.lower().startswith(("http://", "https://")):
                urls.append(url)
    return urls


def is_must_staple(cert: x509.Certificate) -> bool:
    """True if the certificate carries the TLS feature extension with status_request (RFC 7633)."""
    try:
        feats = cert.extensions.get_extension_for_class(x509.TLSFeature).value
    except x509.ExtensionNotFound:
        return False
    return x509.TLSFeatureType.status_request in feats


def cert_fingerprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def find_issuer(cert: x509.Certificate,
                candidates: Sequence[x509.Certificate]) -> x509.Certificate | None:
    """The candidate whose subject is ``cert``'s issuer and whose key verifies its signature."""
    for cand in candidates:
        if cand.subject != cert.issuer:
            continue
        try:
            cert.verify_directly_issued_by(cand)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
            continue
        return cand
    return None


def build_request(cert: x509.Certificate, issuer: x509.Certificate,
                  algorithm: hashes.HashAlgorithm | None = None) -> bytes:
    """A DER OCSPRequest for one certificate (SHA-1 CertID by default: what every responder
    understands; the CertID hash is an identifier, not a security boundary here)."""
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, algorithm or hashes.SHA1())
    return builder.build().public_bytes(serialization.Encoding.DER)


def _ts(d: Any) -> float:
    return float(d.timestamp())


def _fmt(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _describe(cert: x509.Certificate) -> str:
    return f"{cert.subject.rfc4514_string() or '(empty subject)'} (serial {cert.serial_number:x})"


# ------------------------------------------------------------------------------------------------
# Response validation (pure: no I/O, time passed in)
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VerifiedOcsp:
    """An authentic, current response about one certificate."""

    der: bytes
    cert_status: str                 # "good" | "revoked" | "unknown"
    this_update: float
    next_update: float               # effective expiry
    has_next_update: bool
    produced_at: float
    signer: str                      # "issuer" or "delegated responder <subject>"
    revocation_time: float | None = None
    revocation_reason: str | None = None


def _single_for(resp: ocsp.OCSPResponse, cert: x509.Certificate,
                issuer: x509.Certificate) -> ocsp.OCSPSingleResponse:
    expected: dict[str, tuple[bytes, bytes]] = {}
    seen = 0
    for single in resp.responses:
        seen += 1
        alg = single.hash_algorithm
        if alg.name not in expected:
            try:
                req = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, alg).build()
            except (ValueError, TypeError, UnsupportedAlgorithm):
                continue
            expected[alg.name] = (req.issuer_name_hash, req.issuer_key_hash)
        name_hash, key_hash = expected[alg.name]
        if (single.serial_number == cert.serial_number and single.issuer_name_hash == name_hash
                and single.issuer_key_hash == key_hash):
            return single
    raise OcspValidationError(
        f"none of the {seen} answer(s) in the response is about {_describe(cert)} issued by "
        f"{issuer.subject.rfc4514_string()} (CertID mismatch: wrong certificate, wrong issuer, "
        f"or a responder for another CA)")


def _verify_signature(key: Any, signature: bytes, data: bytes,
                      hash_alg: hashes.HashAlgorithm | None,
                      sig_oid: x509.ObjectIdentifier) -> None:
    if isinstance(key, rsa.RSAPublicKey):
        if hash_alg is None:
            raise OcspValidationError("RSA signature without a hash algorithm")
        pad: padding.AsymmetricPadding
        if sig_oid == SignatureAlgorithmOID.RSASSA_PSS:
            pad = padding.PSS(mgf=padding.MGF1(hash_alg), salt_length=padding.PSS.AUTO)
        else:
            pad = padding.PKCS1v15()
        key.verify(signature, data, pad, hash_alg)
    elif isinstance(key, ec.EllipticCurvePublicKey):
        if hash_alg is None:
            raise OcspValidationError("ECDSA signature without a hash algorithm")
        key.verify(signature, data, ec.ECDSA(hash_alg))
    elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        key.verify(signature, data)
    elif isinstance(key, dsa.DSAPublicKey):
        if hash_alg is None:
            raise OcspValidationError("DSA signature without a hash algorithm")
        key.verify(signature, data, hash_alg)
    else:
        raise OcspValidationError(f"unsupported signer key type {type(key).__name__}")


def _responder_matches(resp: ocsp.OCSPResponse) -> Callable[[x509.Certificate], bool]:
    key_hash = resp.responder_key_hash
    if key_hash is not None:
        def by_key(c: x509.Certificate) -> bool:
            try:
                return x509.SubjectKeyIdentifier.from_public_key(
                    c.public_key()).digest == key_hash
            except (ValueError, TypeError, UnsupportedAlgorithm):
                return False
        return by_key
    name = resp.responder_name
    return lambda c: c.subject == name


def _check_signer(resp: ocsp.OCSPResponse, issuer: x509.Certificate, now: float,
                  max_skew: float) -> str:
    try:
        hash_alg = resp.signature_hash_algorithm
    except UnsupportedAlgorithm as e:
        raise OcspValidationError(f"unsupported signature algorithm ({e})") from None
    data, sig, oid = resp.tbs_response_bytes, resp.signature, resp.signature_algorithm_oid
    matches = _responder_matches(resp)
    if matches(issuer):
        try:
            _verify_signature(issuer.public_key(), sig, data, hash_alg, oid)
        except InvalidSignature:
            raise OcspValidationError(
                "the response names the issuer as its signer but the signature does not verify "
                "with the issuer's key (corrupted or forged response)") from None
        return "issuer"
    for cand in resp.certificates:
        if not matches(cand):
            continue
        who = cand.subject.rfc4514_string()
        try:
            cand.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
            raise OcspValidationError(
                f"the response is signed by {who}, which is not a delegated responder of this "
                f"certificate's issuer {issuer.subject.rfc4514_string()} (not issued by it)"
            ) from None
        try:
            eku = cand.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            eku = None
        if eku is None or ExtendedKeyUsageOID.OCSP_SIGNING not in eku:
            raise OcspValidationError(
                f"the response is signed by {who}, which lacks the id-kp-OCSPSigning extended "
                f"key usage required of a delegated responder")
        if not (_ts(cand.not_valid_before_utc) - max_skew <= now < _ts(cand.not_valid_after_utc)):
            raise OcspValidationError(
                f"the delegated responder certificate {who} is not valid now (valid "
                f"{_fmt(_ts(cand.not_valid_before_utc))} .. {_fmt(_ts(cand.not_valid_after_utc))})")
        try:
            _verify_signature(cand.public_key(), sig, data, hash_alg, oid)
        except InvalidSignature:
            raise OcspValidationError(
                f"the response signature does not verify with the key of the delegated "
                f"responder {who}") from None
        return f"delegated responder {who}"
    if resp.responder_key_hash is not None:
        rid = f"key hash {resp.responder_key_hash.hex()}"
    else:
        rid = resp.responder_name.rfc4514_string() if resp.responder_name else "?"
    raise OcspValidationError(
        f"the response is signed by {rid}, which is neither the issuer nor a delegated responder "
        f"certificate included in the response")


def verify_response(der: bytes, cert: x509.Certificate, issuer: x509.Certificate, *,
                    now: float, max_skew: float = MAX_CLOCK_SKEW,
                    default_validity: float | None = None) -> VerifiedOcsp:
    """Parse and authenticate an OCSP response about ``cert``; any certificate status.

    Raises :class:`OcspValidationError` if the response is malformed, unsuccessful, about another
    certificate, not signed by an authorised responder, not yet valid or expired.
    ``default_validity`` is the lifetime given to a response without nextUpdate (None: reject).
    """
    try:
        resp = ocsp.load_der_ocsp_response(der)
    except ValueError as e:
        raise OcspValidationError(f"not a DER OCSP response ({e})") from None
    if resp.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise OcspValidationError(
            f"the responder answered {resp.response_status.name.lower()} instead of a response")
    single = _single_for(resp, cert, issuer)
    signer = _check_signer(resp, issuer, now, max_skew)
    this_update = _ts(single.this_update_utc)
    if this_update > now + max_skew:
        raise OcspValidationError(
            f"thisUpdate {_fmt(this_update)} is in the future (more than {max_skew:g}s ahead of "
            f"this host's clock; check both clocks)")
    nu = single.next_update_utc
    if nu is None:
        if default_validity is None:
            raise OcspValidationError("the response has no nextUpdate")
        next_update = this_update + default_validity
    else:
        next_update = _ts(nu)
    if next_update <= now:
        raise OcspValidationError(f"the response expired at {_fmt(next_update)} (nextUpdate)")
    status = single.certificate_status
    rev_time = rev_reason = None
    if status == ocsp.OCSPCertStatus.REVOKED:
        rt = single.revocation_time_utc
        rev_time = _ts(rt) if rt is not None else None
        rr = single.revocation_reason
        rev_reason = rr.value if rr is not None else None
    return VerifiedOcsp(
        der=der,
        cert_status={ocsp.OCSPCertStatus.GOOD: "good", ocsp.OCSPCertStatus.REVOKED: "revoked"}
        .get(status, "unknown"),
        this_update=this_update, next_update=next_update, has_next_update=nu is not None,
        produced_at=_ts(resp.produced_at_utc), signer=signer,
        revocation_time=rev_time, revocation_reason=rev_reason)


def validate_staple(der: bytes, cert: x509.Certificate, issuer: x509.Certificate, *,
                    now: float, max_skew: float = MAX_CLOCK_SKEW,
                    default_validity: float | None = None) -> VerifiedOcsp:
    """:func:`verify_response` plus: the status must be ``good`` (else OcspRevokedError /
    OcspValidationError)."""
    v = verify_response(der, cert, issuer, now=now, max_skew=max_skew,
                        default_validity=default_validity)
    if v.cert_status == "revoked":
        when = f" at {_fmt(v.revocation_time)}" if v.revocation_time is not None else ""
        why = f" (reason: {v.revocation_reason})" if v.revocation_reason else ""
        raise OcspRevokedError(f"the responder says {_describe(cert)} is REVOKED{when}{why}")
    if v.cert_status != "good":
        raise OcspValidationError(f"the responder does not know {_describe(cert)} "
                                  f"(status unknown): wrong responder or issuer?")
    return v


# ------------------------------------------------------------------------------------------------
# Scheduling (pure)
# ------------------------------------------------------------------------------------------------
def refresh_delay(now: float, this_update: float, next_update: float, refresh_interval: float,
                  *, min_delay: float = MIN_REFRESH) -> float:
    """Seconds from ``now`` until a held response should be refreshed.

    The earlier of ``refresh_interval`` and half-way between thisUpdate and nextUpdate, but not
    sooner than ``min(min_delay, refresh_interval)`` (a responder handing out responses already
    past their half-way point must not be polled in a loop) — unless the response expires sooner,
    then half of the remaining lifetime (at least 1 s)."""
    halfway = this_update + (next_update - this_update) / 2.0
    delay = min(refresh_interval, halfway - now)
    floor = min(min_delay, refresh_interval, max(1.0, (next_update - now) / 2.0))
    return max(delay, floor)


def retry_delay(failures: int, *, base: float, cap: float) -> float:
    """Exponential back-off after ``failures`` consecutive failures: base, 2·base, 4·base … cap."""
    if failures <= 0:
        return base
    return min(max(cap, base), base * (2.0 ** min(failures - 1, 30)))


# ------------------------------------------------------------------------------------------------
# HTTP
# ------------------------------------------------------------------------------------------------
async def post_ocsp(session: aiohttp.ClientSession, url: str, request_der: bytes,
                    timeout: float) -> bytes:
    """POST one OCSP request (RFC 6960 appendix A); the DER body of a 200 answer, else
    :class:`OcspFetchError` saying what went wrong."""
    headers = {"Content-Type": "application/ocsp-request", "Accept": "application/ocsp-response"}
    try:
        async with session.post(url, data=request_der, headers=headers,
                                timeout=aiohttp.ClientTimeout(total=timeout),
                                allow_redirects=True) as r:
            if r.status != 200:
                raise OcspFetchError(f"HTTP {r.status} {r.reason or ''} from {url}".rstrip())
            if r.content_length is not None and r.content_length > MAX_RESPONSE_BYTES:
                raise OcspFetchError(f"{url} sent {r.content_length} bytes, more than the "
                                     f"{MAX_RESPONSE_BYTES} an OCSP response may have")
            body = bytearray()
            async for chunk in r.content.iter_chunked(16384):
                body += chunk
                if len(body) > MAX_RESPONSE_BYTES:
                    raise OcspFetchError(f"{url} sent more than {MAX_RESPONSE_BYTES} bytes")
            return bytes(body)
    except TimeoutError:
        raise OcspFetchError(f"no answer from {url} within {timeout:g}s") from None
    except aiohttp.ClientError as e:
        raise OcspFetchError(f"cannot reach {url}: {e or type(e).__name__}") from None


def _load_pem_certs(path: str, key: str) -> list[x509.Certificate]:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise OcspConfigError(f"{key}: cannot read {path!r}: {e.strerror or e}") from None
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise OcspConfigError(f"{key}: {path!r} holds no PEM certificate ({e})") from None


# ------------------------------------------------------------------------------------------------
# The stapler
# ------------------------------------------------------------------------------------------------
class OcspStapler:
    """Keeps one validated OCSP response for one server certificate."""

    def __init__(self, *, name: str, cert: x509.Certificate, issuer: x509.Certificate,
                 responder_url: str, refresh_interval: float = 300.0,
                 http_timeout: float = 15.0, data_dir: str | os.PathLike[str] | None = None,
                 status: RevocationStatus | None = None,
                 session: aiohttp.ClientSession | None = None,
                 clock: Callable[[], float] = time.time, retry_base: float = 2.0,
                 max_skew: float = MAX_CLOCK_SKEW, min_refresh: float = MIN_REFRESH,
                 fetcher: OcspFetcher | None = None) -> None:
        if not responder_url.lower().startswith(("http://", "https://")):
            raise OcspConfigError(f"responder_url {responder_url!r} must be http:// or https://")
        self.name = name
        self.cert = cert
        self.issuer = issuer
        self.responder_url = responder_url
        self.refresh_interval = refresh_interval
        self.http_timeout = http_timeout
        self.must_staple = is_must_staple(cert)
        self.fingerprint = cert_fingerprint(cert)
        self._clock = clock
        self._retry_base = retry_base
        self._max_skew = max_skew
        self._min_refresh = min_refresh
        self._session = session
        self._own_session = session is None
        self._fetcher = fetcher
        self._path = (Path(data_dir) / "ocsp" / f"{self.fingerprint}.der"
                      if data_dir is not None else None)
        self._request = build_request(cert, issuer)
        # The staple: read by current() on every handshake that asks for it.
        self._der: bytes | None = None
        self._expires = 0.0
        self._held: VerifiedOcsp | None = None
        self._failures = 0
        self._next_delay = 0.0
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._warned_no_staple = False
        self._registry = status or default_status()
        self.status = self._registry.ocsp(
            name, name=name, subject=cert.subject.rfc4514_string(),
            serial=f"{cert.serial_number:x}", fingerprint_sha256=self.fingerprint,
            responder_url=responder_url, must_staple=self.must_staple)

    # -- construction from the config ---------------------------------------------------------
    @classmethod
    def from_options(cls, *, name: str, certfile: str, options: OcspOptions,
                     cacertfile: str = "", data_dir: str | os.PathLike[str] | None = None,
                     key_prefix: str = "ssl_options", **kwargs: Any) -> OcspStapler:
        """Build from ``ssl_options``: ``certfile`` (leaf first, then chain), ``ocsp.*``,
        ``cacertfile``. Errors name the key to change (``key_prefix`` is prepended)."""
        chain = _load_pem_certs(certfile, f"{key_prefix}.certfile")
        leaf = chain[0]
        okey = f"{key_prefix}.ocsp"
        if options.issuer_pem:
            cands = _load_pem_certs(options.issuer_pem, f"{okey}.issuer_pem")
            issuer = find_issuer(leaf, cands)
            if issuer is None:
                raise OcspConfigError(
                    f"{okey}.issuer_pem: no certificate in {options.issuer_pem!r} issued "
                    f"{_describe(leaf)} (its issuer is {leaf.issuer.rfc4514_string()})")
        else:
            cands = list(chain[1:])
            if cacertfile:
                cands += _load_pem_certs(cacertfile, f"{key_prefix}.cacertfile")
            issuer = find_issuer(leaf, cands)
            if issuer is None:
                raise OcspConfigError(
                    f"{okey}.issuer_pem: the issuer of {_describe(leaf)} "
                    f"({leaf.issuer.rfc4514_string()}) is neither in certfile's chain nor in "
                    f"cacertfile; set issuer_pem to the issuing CA certificate")
        url = options.responder_url
        if not url:
            urls = ocsp_responder_urls(leaf)
            if not urls:
                raise OcspConfigError(
                    f"{okey}.responder_url: {_describe(leaf)} has no OCSP URL in its Authority "
                    f"Information Access extension; set responder_url")
            url = urls[0]
        return cls(name=name, cert=leaf, issuer=issuer, responder_url=url,
                   refresh_interval=options.refresh_interval,
                   http_timeout=options.refresh_http_timeout, data_dir=data_dir, **kwargs)

    # -- the hot accessor ---------------------------------------------------------------------
    def current(self) -> bytes | None:
        """The DER response to staple, or None. O(1), no I/O: safe in the handshake callback."""
        der = self._der
        if der is None or self._clock() >= self._expires:
            return None
        return der

    @property
    def held(self) -> VerifiedOcsp | None:
        """The validated response held (possibly expired by now)."""
        return self._held

    @property
    def next_refresh_in(self) -> float:
        """Delay the refresh task waits before its next attempt (as last computed)."""
        return self._next_delay

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    # -- lifecycle ----------------------------------------------------------------------------
    def load_persisted(self) -> bool:
        """Load ``<data_dir>/ocsp/<fingerprint>.der`` and staple it if it still validates.
        Synchronous (a small file); may run before the event loop starts."""
        if self._path is None:
            return False
        try:
            der = self._path.read_bytes()
        except FileNotFoundError:
            return False
        except OSError as e:
            log.warning("OCSP %s: cannot read the saved response %s: %s", self.name, self._path,
                        e.strerror or e)
            return False
        now = self._clock()
        try:
            v = validate_staple(der, self.cert, self.issuer, now=now, max_skew=self._max_skew,
                                default_validity=self.refresh_interval)
        except OcspValidationError as e:
            log.warning("OCSP %s: the saved response %s is not used: %s", self.name, self._path, e)
            with contextlib.suppress(OSError):
                self._path.unlink()
            return False
        self._accept(v, source="disk", now=now)
        log.info("OCSP %s: stapling the saved response (thisUpdate %s, nextUpdate %s)",
                 self.name, _fmt(v.this_update), _fmt(v.next_update))
        return True

    async def start(self) -> None:
        """Load the saved response, then refresh in the background (first attempt at once)."""
        if self._task is not None:
            return
        if self._held is None:
            self.load_persisted()
        self._warn_if_no_staple()
        self._next_delay = 0.0
        self._task = asyncio.create_task(self._run(), name=f"ocsp-stapler:{self.name}")

    async def _post(self, url: str, request: bytes) -> bytes:
        if self._fetcher is not None:
            return await self._fetcher(url, request, self.http_timeout)
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return await post_ocsp(self._session, url, request, self.http_timeout)

    async def stop(self, *, forget: bool = False) -> None:
        """Stop refreshing (the held staple stays readable). ``forget``: also remove this
        certificate's entry from the status registry (its listener is gone)."""
        if forget:
            self._registry.drop_ocsp(self.name)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    def kick(self) -> None:
        """Make the refresh task try now (e.g. from the admin API)."""
        self._next_delay = 0.0
        self._wake.set()

    async def _run(self) -> None:
        while True:
            delay = self._next_delay
            self.status.next_refresh = self._clock() + delay
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=delay)
            self._wake.clear()
            try:
                await self.refresh_now()
            except asyncio.CancelledError:
                raise
            except Exception:   # a bug must not end stapling for good
                log.exception("OCSP %s: unexpected error during refresh", self.name)
                self._failures += 1
                self._next_delay = retry_delay(self._failures, base=self._retry_base,
                                               cap=self.refresh_interval)

    # -- one refresh --------------------------------------------------------------------------
    async def refresh_now(self) -> bool:
        """Fetch, validate and (if good) staple and persist one response. True on success.
        Sets the delay until the next attempt either way."""
        st = self.status
        st.last_fetch = self._clock()
        st.fetches += 1
        try:
            der = await self._post(self.responder_url, self._request)
            now = self._clock()
            v = validate_staple(der, self.cert, self.issuer, now=now, max_skew=self._max_skew,
                                default_validity=self.refresh_interval)
        except OcspRevokedError as e:
            st.rejected += 1
            self._drop_staple()
            self._fail(f"response rejected: {e}; the staple is withdrawn")
            return False
        except OcspValidationError as e:
            st.rejected += 1
            self._fail(f"response from {self.responder_url} rejected: {e}")
            return False
        except OcspFetchError as e:
            self._fail(str(e))
            return False
        held = self._held
        if held is not None and now < held.next_update and v.this_update < held.this_update:
            # An older answer than ours (a lagging responder cache): keep the newer one.
            log.info("OCSP %s: responder returned an older response (thisUpdate %s < %s); "
                     "keeping the held one", self.name, _fmt(v.this_update),
                     _fmt(held.this_update))
            v = held
        else:
            fresh = held is None or v.this_update != held.this_update
            self._accept(v, source="responder", now=now)
            await self._persist(v.der)
            if fresh:
                log.info("OCSP %s: stapling a new response from %s (good; thisUpdate %s, "
                         "nextUpdate %s)", self.name, self.responder_url, _fmt(v.this_update),
                         _fmt(v.next_update))
        self._failures = 0
        st.consecutive_failures = 0
        st.last_success = now
        self._next_delay = refresh_delay(now, v.this_update, v.next_update,
                                         self.refresh_interval, min_delay=self._min_refresh)
        st.next_refresh = now + self._next_delay
        return True

    def _accept(self, v: VerifiedOcsp, *, source: str, now: float) -> None:
        self._held = v
        self._expires = v.next_update
        self._der = v.der
        st = self.status
        st.cert_status = v.cert_status
        st.this_update = v.this_update
        st.next_update = v.next_update
        st.produced_at = v.produced_at
        st.source = source
        if self._warned_no_staple:
            log.info("OCSP %s: a valid staple is held again", self.name)
        self._warned_no_staple = False

    def _drop_staple(self) -> None:
        self._held = None
        self._der = None
        self._expires = 0.0
        st = self.status
        st.cert_status = st.this_update = st.next_update = st.produced_at = st.source = None
        if self._path is not None:
            with contextlib.suppress(OSError):
                self._path.unlink()

    def _fail(self, reason: str) -> None:
        now = self._clock()
        self._failures += 1
        st = self.status
        st.consecutive_failures = self._failures
        st.last_error = reason
        st.last_error_time = now
        self._next_delay = retry_delay(self._failures, base=self._retry_base,
                                       cap=self.refresh_interval)
        held = self.current() is not None
        log.error("OCSP %s: %s (attempt %d failed; retry in %.0fs; %s)", self.name, reason,
                  self._failures, self._next_delay,
                  f"still stapling the last good response until {_fmt(self._expires)}" if held
                  else "nothing is stapled")
        self._warn_if_no_staple()

    def _warn_if_no_staple(self) -> None:
        if self.must_staple and self.current() is None and not self._warned_no_staple:
            self._warned_no_staple = True
            log.warning("OCSP %s: %s has the TLS feature must-staple, but no valid OCSP response "
                        "is held: clients that enforce must-staple will refuse it",
                        self.name, _describe(self.cert))

    async def _persist(self, der: bytes) -> None:
        path = self._path
        if path is None:
            return
        try:
            await asyncio.to_thread(_atomic_write, path, der)
        except OSError as e:
            log.warning("OCSP %s: cannot save the response to %s: %s (stapling continues; it "
                        "will not survive a restart)", self.name, path, e.strerror or e)


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def install_stapling(ctx: SSL.Context,
                     stapler_for: Callable[[], OcspStapler | None]) -> None:
    """Staple ``stapler_for().current()`` for every client of ``ctx`` that sends status_request.

    ``stapler_for`` is called per handshake (so a reload can swap the stapler behind it); it must
    be cheap. With nothing to staple, or if anything goes wrong, the handshake goes on without a
    staple: a missing staple is never a reason to fail a handshake. Call it for the listener's
    context and for each SNI context (OpenSSL asks the context chosen after SNI)."""

    def _ocsp_cb(conn: SSL.Connection, _data: object) -> bytes:
        try:
            stapler = stapler_for()
            if stapler is None:
                return b""
            return stapler.current() or b""
        except Exception:
            log.exception("OCSP stapling callback failed; continuing without a staple")
            return b""

    ctx.set_ocsp_server_callback(_ocsp_cb)


# ------------------------------------------------------------------------------------------------
# Client certificates
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClientOcspResult:
    """What the client certificate's responder said (or why we do not know)."""

    status: str          # "good" | "revoked" | "unknown" | "error" | "no_responder"
    reason: str
    responder_url: str | None = None
    this_update: float | None = None
    next_update: float | None = None
    revocation_time: float | None = None
    revocation_reason: str | None = None
    from_cache: bool = False


@dataclass
class _CacheEntry:
    result: ClientOcspResult
    expires: float


class ClientOcspChecker:
    """Checks client certificates against their AIA OCSP responder, with a response cache."""

    def __init__(self, *, http_timeout: float = 15.0,
                 session: aiohttp.ClientSession | None = None,
                 status: RevocationStatus | None = None,
                 clock: Callable[[], float] = time.time, capacity: int = 100_000,
                 failure_ttl: float = 60.0, default_validity: float = 300.0,
                 max_skew: float = MAX_CLOCK_SKEW, fetcher: OcspFetcher | None = None) -> None:
        self.http_timeout = http_timeout
        self._session = session
        self._own_session = session is None
        self._fetcher = fetcher
        self._stats = (status or default_status()).client_ocsp
        self._clock = clock
        self._capacity = capacity
        self._failure_ttl = failure_ttl
        self._default_validity = default_validity
        self._max_skew = max_skew
        self._cache: OrderedDict[tuple[bytes, int], _CacheEntry] = OrderedDict()
        self._inflight: dict[tuple[bytes, int], asyncio.Task[ClientOcspResult]] = {}

    @staticmethod
    def key_for(cert: x509.Certificate) -> tuple[bytes, int]:
        return cert.issuer.public_bytes(), cert.serial_number

    def cached(self, issuer_name_der: bytes, serial: int) -> ClientOcspResult | None:
        """A cached, unexpired result for (issuer name DER, serial), or None. No I/O."""
        key = (issuer_name_der, serial)
        entry = self._cache.get(key)
        if entry is None:
            return None
        if self._clock() >= entry.expires:
            del self._cache[key]
            self._stats.cache_entries = len(self._cache)
            return None
        self._cache.move_to_end(key)
        r = entry.result
        return ClientOcspResult(r.status, r.reason, r.responder_url, r.this_update,
                                r.next_update, r.revocation_time, r.revocation_reason, True)

    async def check(self, cert: x509.Certificate, issuer: x509.Certificate) -> ClientOcspResult:
        """The status of ``cert`` (issued by ``issuer``), from the cache or its responder.
        Never raises for network or protocol problems: those are ``status == "error"``."""
        self._stats.checks += 1
        key = self.key_for(cert)
        hit = self.cached(*key)
        if hit is not None:
            self._stats.cache_hits += 1
            return hit
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.create_task(self._query(cert, issuer),
                                       name=f"client-ocsp:{cert.serial_number:x}")
            self._inflight[key] = task
            task.add_done_callback(functools.partial(self._forget, key))
        return await asyncio.shield(task)

    def _forget(self, key: tuple[bytes, int], _task: object) -> None:
        self._inflight.pop(key, None)

    async def _query(self, cert: x509.Certificate, issuer: x509.Certificate) -> ClientOcspResult:
        st = self._stats
        key = self.key_for(cert)
        urls = ocsp_responder_urls(cert)
        if not urls:
            r = ClientOcspResult("no_responder",
                                 f"{_describe(cert)} names no OCSP responder (AIA)")
            self._store(key, r, self._clock() + 86400.0)
            return r
        url = urls[0]
        per = st.per_responder.setdefault(url, {"fetches": 0, "errors": 0, "last_error": None})
        st.fetches += 1
        per["fetches"] += 1
        try:
            request = build_request(cert, issuer)
            if self._fetcher is not None:
                der = await self._fetcher(url, request, self.http_timeout)
            else:
                if self._session is None:
                    self._session = aiohttp.ClientSession()
                der = await post_ocsp(self._session, url, request, self.http_timeout)
            now = self._clock()
            v = verify_response(der, cert, issuer, now=now, max_skew=self._max_skew,
                                default_validity=self._default_validity)
        except OcspError as e:
            now = self._clock()
            st.errors += 1
            per["errors"] += 1
            per["last_error"] = str(e)
            st.last_error = f"{url}: {e}"
            st.last_error_time = now
            log.warning("client OCSP: no usable answer for %s from %s: %s", _describe(cert),
                        url, e)
            r = ClientOcspResult("error", str(e), url)
            self._store(key, r, now + self._failure_ttl)
            return r
        if v.cert_status == "good":
            st.good += 1
            reason = "good"
        elif v.cert_status == "revoked":
            st.revoked += 1
            reason = (f"{_describe(cert)} is revoked according to {url}"
                      + (f" (reason: {v.revocation_reason})" if v.revocation_reason else ""))
        else:
            st.unknown += 1
            reason = f"{url} does not know {_describe(cert)} (status unknown)"
        r = ClientOcspResult(v.cert_status, reason, url, v.this_update, v.next_update,
                             v.revocation_time, v.revocation_reason)
        self._store(key, r, v.next_update)
        return r

    def _store(self, key: tuple[bytes, int], result: ClientOcspResult, expires: float) -> None:
        self._cache[key] = _CacheEntry(result, expires)
        self._cache.move_to_end(key)
        while len(self._cache) > self._capacity:
            self._cache.popitem(last=False)
        self._stats.cache_entries = len(self._cache)

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None
