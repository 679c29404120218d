"""Revocation status in one place: OCSP staples, CRL sources, client OCSP checks.

The OCSP stapler (``tlsgate.tls.ocsp``) and the CRL cache (``tlsgate.tls.crl``) write into a
:class:`RevocationStatus`; the admin API (``GET /api/v1/certificates``) and ``/metrics`` read
:meth:`RevocationStatus.snapshot`, which returns plain JSON types only (str, int, float, bool,
None, lists, dicts): times as ISO 8601 UTC strings plus ages in seconds, so a reader never has to
know about clocks or datetime objects.

Nothing here does I/O or holds a lock: everything runs on the worker's event loop thread.
Entries are keyed by a stable string (the stapler's name, the CRL URL or file path) so a reload
that rebuilds a stapler for the same certificate keeps one entry, not two.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ClientOcspStats",
    "CrlSourceStatus",
    "OcspStapleStatus",
    "RevocationStatus",
    "default_status",
    "iso",
]


def iso(ts: float | None) -> str | None:
    """Epoch seconds -> ``2024-05-01T12:00:00Z`` (None stays None)."""
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _age(now: float, ts: float | None) -> float | None:
    return None if ts is None else round(now - ts, 3)


def _until(now: float, ts: float | None) -> float | None:
    return None if ts is None else round(ts - now, 3)


@dataclass
class OcspStapleStatus:
    """One server certificate's OCSP staple."""

    name: str                      # e.g. "listeners.ssl.default" or "...sni[api.example.com]"
    subject: str
    serial: str                    # hex
    fingerprint_sha256: str        # hex of the DER certificate
    responder_url: str
    must_staple: bool
    # The staple currently served (None: nothing is stapled).
    cert_status: str | None = None  # "good" for a held staple
    this_update: float | None = None
    next_update: float | None = None
    produced_at: float | None = None
    source: str | None = None       # "responder" | "disk"
    # Fetching.
    last_fetch: float | None = None
    last_success: float | None = None
    last_error: str | None = None
    last_error_time: float | None = None
    consecutive_failures: int = 0
    next_refresh: float | None = None
    fetches: int = 0
    rejected: int = 0               # responses fetched but refused by validation

    def staple_valid(self, now: float) -> bool:
        return self.next_update is not None and now < self.next_update

    def to_json(self, now: float) -> dict[str, Any]:
        valid = self.staple_valid(now)
        warning = None
        if self.must_staple and not valid:
            warning = ("certificate has the TLS feature must-staple but no valid OCSP response "
                       "is held: clients that enforce must-staple will refuse it")
        return {
            "name": self.name,
            "subject": self.subject,
            "serial": self.serial,
            "fingerprint_sha256": self.fingerprint_sha256,
            "responder_url": self.responder_url,
            "must_staple": self.must_staple,
            "stapled": valid,
            "cert_status": self.cert_status if valid else None,
            "staple_age_seconds": _age(now, self.this_update) if valid else None,
            "this_update": iso(self.this_update),
            "next_update": iso(self.next_update),
            "seconds_to_next_update": _until(now, self.next_update),
            "produced_at": iso(self.produced_at),
            "source": self.source,
            "last_fetch": iso(self.last_fetch),
            "last_success": iso(self.last_success),
            "last_error": self.last_error,
            "last_error_time": iso(self.last_error_time),
            "consecutive_failures": self.consecutive_failures,
            "next_refresh": iso(self.next_refresh),
            "fetches": self.fetches,
            "rejected": self.rejected,
            "warning": warning,
        }


@dataclass
class CrlSourceStatus:
    """One CRL source: a distribution-point URL (cached, LRU) or a local ``crlfile``."""

    source: str                    # URL or file path
    kind: str                      # "url" | "file"
    issuer: str | None = None      # RFC 4514 issuer name of the CRL held
    this_update: float | None = None
    next_update: float | None = None
    revoked_count: int | None = None
    cached: bool = False           # a CRL is held for this source
    last_fetch: float | None = None
    last_success: float | None = None
    last_error: str | None = None
    last_error_time: float | None = None
    consecutive_failures: int = 0
    next_refresh: float | None = None
    last_used: float | None = None
    fetches: int = 0

    def to_json(self, now: float) -> dict[str, Any]:
        expired = self.next_update is not None and now >= self.next_update
        return {
            "source": self.source,
            "kind": self.kind,
            "cached": self.cached,
            "issuer": self.issuer,
            "this_update": iso(self.this_update),
            "next_update": iso(self.next_update),
            "expired": expired if self.cached else None,
            "age_seconds": _age(now, self.this_update) if self.cached else None,
            "revoked_count": self.revoked_count,
            "last_fetch": iso(self.last_fetch),
            "last_success": iso(self.last_success),
            "last_error": self.last_error,
            "last_error_time": iso(self.last_error_time),
            "consecutive_failures": self.consecutive_failures,
            "next_refresh": iso(self.next_refresh),
            "last_used": iso(self.last_used),
            "fetches": self.fetches,
        }


@dataclass
class ClientOcspStats:
    """Client-certificate OCSP checks (``ocsp.check_client``), aggregated."""

    cache_entries: int = 0
    checks: int = 0
    cache_hits: int = 0
    fetches: int = 0
    good: int = 0
    revoked: int = 0
    unknown: int = 0
    errors: int = 0
    last_error: str | None = None
    last_error_time: float | None = None
    per_responder: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "cache_entries": self.cache_entries,
            "checks": self.checks,
            "cache_hits": self.cache_hits,
            "fetches": self.fetches,
            "good": self.good,
            "revoked": self.revoked,
            "unknown": self.unknown,
            "errors": self.errors,
            "last_error": self.last_error,
            "last_error_time": iso(self.last_error_time),
            "responders": {url: dict(v) for url, v in sorted(self.per_responder.items())},
        }


class RevocationStatus:
    """The registry. One per worker process (see :func:`default_status`); tests make their own."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._ocsp: dict[str, OcspStapleStatus] = {}
        self._crl: dict[str, CrlSourceStatus] = {}
        self.client_ocsp = ClientOcspStats()

    # -- OCSP staples -------------------------------------------------------------------------
    def ocsp(self, key: str, **initial: Any) -> OcspStapleStatus:
        """The entry for ``key``; created with ``initial`` fields if missing, else those fields
        (certificate identity, responder) are updated so a rebuilt stapler keeps its history."""
        entry = self._ocsp.get(key)
        if entry is None:
            entry = OcspStapleStatus(**initial)
            self._ocsp[key] = entry
        else:
            for k, v in initial.items():
                setattr(entry, k, v)
        return entry

    def drop_ocsp(self, key: str) -> None:
        self._ocsp.pop(key, None)

    # -- CRL sources --------------------------------------------------------------------------
    def crl(self, source: str, kind: str = "url") -> CrlSourceStatus:
        entry = self._crl.get(source)
        if entry is None:
            entry = CrlSourceStatus(source=source, kind=kind)
            self._crl[source] = entry
        return entry

    def drop_crl(self, source: str) -> None:
        self._crl.pop(source, None)

    # -- reading ------------------------------------------------------------------------------
    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        """Everything, JSON-serialisable, sorted by key so output is stable."""
        t = self._clock() if now is None else now
        return {
            "generated_at": iso(t),
            "ocsp_staples": [self._ocsp[k].to_json(t) for k in sorted(self._ocsp)],
            "crls": [self._crl[k].to_json(t) for k in sorted(self._crl)],
            "client_ocsp": self.client_ocsp.to_json(),
        }


_DEFAULT: RevocationStatus | None = None


def default_status() -> RevocationStatus:
    """The process-wide registry used when a component is not given one explicitly."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = RevocationStatus()
    return _DEFAULT
