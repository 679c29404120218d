"""Bans: identities an operator has shut out, and matching a connection against them.

A ban names one identity of a client: ``clientid``, ``username``, ``cn`` (the client
certificate's common name) or ``psk_identity``, with an optional expiry. Matching uses what
tlsgate itself recorded for the connection (:class:`~tlsgate.gateway.record.ConnRecord`), i.e.
the identity *after* ``peer_cert_as_username``/``peer_cert_as_clientid``/
``psk_identity_as_username`` mapping -- the identity the broker would see -- so a ban on the
user name ``device-7`` also holds for a device whose certificate CN is mapped to its user name.

Pure code: no I/O, no clock of its own (callers pass ``now``). The node keeps the list
(persisted, pushed to workers: ``tlsgate.admin.banstore``); each worker holds a
:class:`BanList` and checks it at admission and against live connections when it changes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from ..config.types import parse_duration

#: The identities a ban can name, in the order the API lists them.
BAN_KINDS: tuple[str, ...] = ("clientid", "username", "cn", "psk_identity")
MAX_VALUE_LEN = 65535        # MQTT strings are at most 65535 bytes
MAX_REASON_LEN = 1024


class BanError(ValueError):
    """A ban as written cannot be used; the message says which field and why."""


class Identified(Protocol):
    """What matching reads from a connection (a ConnRecord has these attributes)."""

    client_id: str | None
    username: str | None
    cert_cn: str | None
    psk_identity: str | None


@dataclass(frozen=True)
class Ban:
    kind: str
    value: str
    reason: str = ""
    created_at: float = 0.0
    until: float | None = None   # Unix time after which the ban no longer applies; None = never

    def active(self, now: float) -> bool:
        return self.until is None or now < self.until

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "value": self.value, "reason": self.reason,
                "created_at": self.created_at, "until": self.until}

    @property
    def key(self) -> tuple[str, str]:
        return self.kind, self.value


def identity_of(rec: Identified, kind: str) -> str | None:
    if kind == "clientid":
        return rec.client_id
    if kind == "username":
        return rec.username
    if kind == "cn":
        return rec.cert_cn
    if kind == "psk_identity":
        return rec.psk_identity
    raise BanError(f"kind {kind!r} is not one of {', '.join(BAN_KINDS)}")


def check_kind(kind: object) -> str:
    if not isinstance(kind, str) or kind not in BAN_KINDS:
        raise BanError(f"kind must be one of {', '.join(BAN_KINDS)} (got {kind!r})")
    return kind


def parse_ban(doc: object, now: float | None = None) -> Ban:
    """A ban from API/JSON input: ``{"kind", "value"}`` plus optional ``reason`` and either
    ``until`` (Unix time) or ``duration`` (``"10m"``, seconds). Raises :class:`BanError`."""
    if not isinstance(doc, Mapping):
        raise BanError("a ban is a JSON object: {\"kind\": ..., \"value\": ...}")
    unknown = set(doc) - {"kind", "value", "reason", "until", "duration", "created_at"}
    if unknown:
        raise BanError(f"unknown field(s) {', '.join(sorted(map(str, unknown)))}; a ban has "
                       "kind, value, and optionally reason and until or duration")
    kind = check_kind(doc.get("kind"))
    value = doc.get("value")
    if not isinstance(value, str) or not value:
        raise BanError("value must be a non-empty string (the client id, user name, CN or "
                       "PSK identity to ban)")
    if len(value.encode("utf-8", "surrogatepass")) > MAX_VALUE_LEN:
        raise BanError(f"value is longer than {MAX_VALUE_LEN} bytes")
    reason = doc.get("reason", "")
    if reason is None:
        reason = ""
    if not isinstance(reason, str) or len(reason) > MAX_REASON_LEN:
        raise BanError(f"reason must be a string of at most {MAX_REASON_LEN} characters")
    t = time.time() if now is None else now
    created = doc.get("created_at", t)
    if not _is_number(created):
        raise BanError("created_at must be a Unix time")
    until: float | None = None
    if doc.get("until") is not None and doc.get("duration") is not None:
        raise BanError("give until or duration, not both")
    if doc.get("until") is not None:
        u = doc["until"]
        if not _is_number(u):
            raise BanError("until must be a Unix time in seconds")
        until = float(u)
    elif doc.get("duration") is not None:
        try:
            seconds = parse_duration(doc["duration"])
        except ValueError as exc:
            raise BanError(f"duration: {exc}") from None
        if seconds <= 0:
            raise BanError("duration must be more than 0 (omit it for a ban without end)")
        until = t + seconds
    return Ban(kind, value, reason, float(created), until)


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


class BanList:
    """Bans indexed by kind and value: a match costs one dict lookup per kind."""

    __slots__ = ("_by_kind",)

    def __init__(self, bans: Iterable[Ban] = ()) -> None:
        self._by_kind: dict[str, dict[str, Ban]] = {k: {} for k in BAN_KINDS}
        for b in bans:
            self.add(b)

    def add(self, ban: Ban) -> bool:
        """Add or replace; True when a ban on the same identity was replaced."""
        check_kind(ban.kind)
        table = self._by_kind[ban.kind]
        replaced = ban.value in table
        table[ban.value] = ban
        return replaced

    def remove(self, kind: str, value: str) -> Ban | None:
        return self._by_kind[check_kind(kind)].pop(value, None)

    def get(self, kind: str, value: str) -> Ban | None:
        return self._by_kind[check_kind(kind)].get(value)

    def __iter__(self) -> Iterator[Ban]:
        for kind in BAN_KINDS:
            yield from list(self._by_kind[kind].values())

    def __len__(self) -> int:
        return sum(len(t) for t in self._by_kind.values())

    def active(self, now: float) -> list[Ban]:
        return [b for b in self if b.active(now)]

    def prune(self, now: float) -> list[Ban]:
        """Drop expired bans; returns them."""
        gone = [b for b in self if not b.active(now)]
        for b in gone:
            del self._by_kind[b.kind][b.value]
        return gone

    def match(self, rec: Identified, now: float) -> Ban | None:
        """The first active ban naming one of the connection's identities, or None."""
        for kind in BAN_KINDS:
            table = self._by_kind[kind]
            if not table:
                continue
            ident = identity_of(rec, kind)
            if ident is None:
                continue
            ban = table.get(ident)
            if ban is not None and ban.active(now):
                return ban
        return None

    def to_json(self) -> list[dict[str, Any]]:
        return [b.as_dict() for b in self]

    @classmethod
    def from_json(cls, docs: object) -> BanList:
        """Rebuild from :meth:`to_json` output; raises :class:`BanError` naming the entry."""
        if not isinstance(docs, list):
            raise BanError("expected a JSON list of bans")
        out = cls()
        for i, doc in enumerate(docs):
            try:
                out.add(parse_ban(doc))
            except BanError as exc:
                raise BanError(f"ban #{i + 1}: {exc}") from None
        return out
