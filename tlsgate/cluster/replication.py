"""Replicated state: versioned entries that converge, and the anti-entropy that lets a node
catch up. No I/O: ``ClusterService`` moves the messages this module produces.

The model. Each replicated table (a *namespace*: ``psk``, ``bans``) is a map ``key -> entry``;
an entry is a value or a tombstone (``None``: removed), stamped with a version ``(time, node)``
by the node where the change was made. Merging is last-writer-wins by version, compared as a
tuple: the later time wins, the node name breaks a tie. LWW is commutative, associative and
idempotent, so every node that has seen the same set of changes holds the same table, whatever
the order and however often they arrived (``tests/unit/test_cluster_replication.py`` checks that
with random delivery orders). Tombstones are kept, so a removal made while a node was away is
not undone by that node when it returns. Clocks: a change stamped by a node whose clock is
behind can lose to an older change -- keep node clocks in NTP sync, as for any LWW system.

Moving state:

* **Deltas.** A local change is sent to every connected peer at once (an ``entries`` message
  with one entry). A peer that *changed* its table by applying it forwards it to its other
  peers (it stops there: the next node already has it), so a partially connected mesh converges.
* **Anti-entropy.** On every new link each side sends, per namespace, its *digest*: the
  versions of all its keys (chunked to fit frames). The receiver answers with every entry of
  its own that is newer than, or missing from, that digest. Both sides do it, so after one
  round trip both have the union -- this is how a restarted node catches up on what it missed,
  and how two sides of a healed partition merge. Heartbeats carry a hash of each namespace's
  versions; a hash that still differs two heartbeats later triggers the same digest exchange
  (a lost delta costs one digest round, not a stale node).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .protocol import MAX_FRAME, Digest, Entries, Entry

log = logging.getLogger("tlsgate.cluster")

Version = tuple[float, str]
#: A state transfer message is cut when it reaches this many bytes (well below MAX_FRAME).
CHUNK_BYTES = MAX_FRAME // 4


class Namespace(Protocol):
    """One replicated table, as an adapter over the node-held state that owns it."""

    name: str

    def available(self) -> bool:
        """False when this node does not hold the table (e.g. PSK disabled): it is then
        neither announced nor compared."""
        ...

    def versions(self) -> dict[str, Version]: ...

    def entries(self, keys: Iterable[str]) -> list[Entry]:
        """The current entries (values or tombstones) for ``keys`` that exist."""
        ...

    def apply(self, entry: Entry) -> bool:
        """Merge a remote entry last-writer-wins; True if the table changed. Raises
        ValueError for an entry that is not valid for this table."""
        ...


def state_hash(versions: dict[str, Version]) -> str:
    """A short hash of a namespace's versions: equal hashes = same table (for heartbeats)."""
    h = hashlib.sha256()
    for key in sorted(versions):
        ts, node = versions[key]
        h.update(json.dumps([key, ts, node]).encode())
        h.update(b"\n")
    return h.hexdigest()[:32]


def newer(a: Version, b: Version | None) -> bool:
    return b is None or a > b


def chunk_entries(ns: str, entries: list[Entry], budget: int = CHUNK_BYTES) -> list[Entries]:
    """Split entries into ``entries`` messages of at most ~``budget`` bytes each."""
    out: list[Entries] = []
    batch: list[Entry] = []
    size = 0
    for e in entries:
        n = len(json.dumps([e.key, e.value, e.ts, e.node], ensure_ascii=False)) + 1
        if batch and size + n > budget:
            out.append(Entries(ns, tuple(batch)))
            batch, size = [], 0
        batch.append(e)
        size += n
    if batch:
        out.append(Entries(ns, tuple(batch)))
    return out


def chunk_digest(ns: str, versions: dict[str, Version], budget: int = CHUNK_BYTES
                 ) -> list[Digest]:
    """A namespace's digest as one or more ``digest`` messages (the last one says so)."""
    out: list[Digest] = []
    part: dict[str, Version] = {}
    size = 0
    for key, ver in versions.items():
        n = len(json.dumps(key, ensure_ascii=False)) + len(repr(ver[0])) + len(ver[1]) + 12
        if part and size + n > budget:
            out.append(Digest(ns, part, last=False))
            part, size = {}, 0
        part[key] = ver
        size += n
    out.append(Digest(ns, part, last=True))
    return out


@dataclass
class SyncState:
    """Per link and namespace: the keys the peer's digest named so far (until its last chunk)."""

    seen: dict[str, set[str]] = field(default_factory=dict)
    #: namespace -> consecutive heartbeats whose hash differed from ours
    mismatches: dict[str, int] = field(default_factory=dict)


class Replicator:
    """The namespaces of this node, with cached hashes."""

    def __init__(self, namespaces: Iterable[Namespace], chunk_bytes: int = CHUNK_BYTES) -> None:
        self.namespaces: dict[str, Namespace] = {ns.name: ns for ns in namespaces}
        self.chunk_bytes = chunk_bytes
        self._hash: dict[str, str] = {}

    def dirty(self, ns: str) -> None:
        self._hash.pop(ns, None)

    def hashes(self) -> dict[str, str]:
        out = {}
        for name, ns in self.namespaces.items():
            if not ns.available():
                continue
            h = self._hash.get(name)
            if h is None:
                h = self._hash[name] = state_hash(ns.versions())
            out[name] = h
        return out

    def digests(self) -> list[Digest]:
        """Every available namespace's digest (sent on a new link)."""
        out: list[Digest] = []
        for name, ns in self.namespaces.items():
            if ns.available():
                out += chunk_digest(name, ns.versions(), self.chunk_bytes)
        return out

    def digest_for(self, name: str) -> list[Digest]:
        ns = self.namespaces.get(name)
        if ns is None or not ns.available():
            return []
        return chunk_digest(name, ns.versions(), self.chunk_bytes)

    def answer_digest(self, d: Digest, sync: SyncState) -> list[Entries]:
        """The entries of ours the peer lacks, given one chunk of its digest."""
        ns = self.namespaces.get(d.ns)
        if ns is None or not ns.available():
            return []
        mine = ns.versions()
        seen = sync.seen.setdefault(d.ns, set())
        seen.update(d.versions)
        send = [k for k, theirs in d.versions.items()
                if k in mine and newer(mine[k], theirs)]
        if d.last:
            send += [k for k in mine if k not in seen]
            sync.seen.pop(d.ns, None)
        if not send:
            return []
        return chunk_entries(d.ns, ns.entries(send), self.chunk_bytes)

    def apply(self, msg: Entries, origin: str) -> list[Entry]:
        """Merge entries from ``origin``; the ones that changed our table (to forward).
        An invalid entry is logged and skipped (the rest still apply)."""
        ns = self.namespaces.get(msg.ns)
        if ns is None:
            log.warning("cluster: node %s sent entries of unknown namespace %r; ignored",
                        origin, msg.ns[:40])
            return []
        if not ns.available():
            return []
        changed = []
        for e in msg.entries:
            try:
                if ns.apply(e):
                    changed.append(e)
            except (ValueError, TypeError, KeyError) as exc:
                log.warning("cluster: node %s sent an invalid %s entry (%s); ignored", origin,
                            msg.ns, exc)
        if changed:
            self.dirty(msg.ns)
        return changed

    def heartbeat_hashes(self, theirs: dict[str, str], sync: SyncState) -> list[str]:
        """Namespaces whose hash differed from ours in two heartbeats in a row (then a digest
        is due); a single difference is usually a delta still in flight."""
        mine = self.hashes()
        due = []
        for name, h in mine.items():
            other = theirs.get(name)
            if other is None or other == h:
                sync.mismatches.pop(name, None)
                continue
            n = sync.mismatches.get(name, 0) + 1
            if n >= 2:
                due.append(name)
                n = 0
            sync.mismatches[name] = n
        return due


# ------------------------------------------------------------------------------------------
# adapters over the node-held state
# ------------------------------------------------------------------------------------------
class PskNamespace:
    """``node.psk`` (tlsgate.server.pskstore.PskStore): the admin-API overlay, keyed by the
    identity in hex; values are the secret in hex (only ever inside the TLS channel)."""

    name = "psk"

    def __init__(self, store_of: Callable[[], Any]) -> None:
        self._store_of = store_of

    def available(self) -> bool:
        return self._store_of() is not None

    def versions(self) -> dict[str, Version]:
        store = self._store_of()
        if store is None:
            return {}
        return {k.hex(): (e.ts, e.node) for k, e in store.overlay_snapshot().items()}

    def entries(self, keys: Iterable[str]) -> list[Entry]:
        store = self._store_of()
        if store is None:
            return []
        snap = store.overlay_snapshot()
        out = []
        for k in keys:
            e = snap.get(bytes.fromhex(k))
            if e is not None:
                out.append(Entry(k, e.secret.hex() if e.secret is not None else None, e.ts,
                                 e.node))
        return out

    def apply(self, entry: Entry) -> bool:
        from ..psk_table import check_identity, check_secret
        from ..server.pskstore import OverlayEntry

        store = self._store_of()
        if store is None:
            return False
        ident = bytes.fromhex(entry.key)
        check_identity(ident)
        secret: bytes | None = None
        if entry.value is not None:
            if not isinstance(entry.value, str):
                raise ValueError("a PSK secret travels as hex")
            secret = bytes.fromhex(entry.value)
            check_secret(secret)
        changed: bool = store.apply_remote(ident, OverlayEntry(secret, entry.ts, entry.node))
        return changed


class BanNamespace:
    """The node's ban list (tlsgate.admin.banstore.NodeBans), keyed ``kind:value``."""

    name = "bans"

    def __init__(self, bans_of: Callable[[], Any]) -> None:
        self._bans_of = bans_of

    def available(self) -> bool:
        return self._bans_of() is not None

    def versions(self) -> dict[str, Version]:
        bans = self._bans_of()
        if bans is None:
            return {}
        return {f"{e.kind}:{e.value}": e.version for e in bans.snapshot()}

    def entries(self, keys: Iterable[str]) -> list[Entry]:
        bans = self._bans_of()
        if bans is None:
            return []
        want = set(keys)
        return [Entry(f"{e.kind}:{e.value}", e.ban.as_dict() if e.ban is not None else None,
                      e.ts, e.node)
                for e in bans.snapshot() if f"{e.kind}:{e.value}" in want]

    def apply(self, entry: Entry) -> bool:
        bans = self._bans_of()
        if bans is None:
            return False
        kind, sep, value = entry.key.partition(":")
        if not sep or not value:
            raise ValueError(f"ban key {entry.key[:40]!r} is not kind:value")
        be = bans.entry_from_json(kind, value, entry.value, entry.ts, entry.node)
        changed: bool = bans.apply_remote(be)
        return changed


class TicketSecretNamespace:
    """The node's session-ticket secret (tlsgate.server.ticket_secret.NodeTicketSecret): one
    key, ``secret``, the value in hex (only ever inside the TLS channel). Not available on a
    node that reads its secret from ``node.session_ticket_secret_file``."""

    name = "tickets"

    def __init__(self, holder_of: Callable[[], Any]) -> None:
        self._holder_of = holder_of

    def available(self) -> bool:
        return self._holder_of() is not None

    def versions(self) -> dict[str, Version]:
        h = self._holder_of()
        return {"secret": h.version} if h is not None else {}

    def entries(self, keys: Iterable[str]) -> list[Entry]:
        h = self._holder_of()
        if h is None or "secret" not in keys:
            return []
        ts, node = h.version
        return [Entry("secret", h.secret.hex(), ts, node)]

    def apply(self, entry: Entry) -> bool:
        h = self._holder_of()
        if h is None:
            return False
        if entry.key != "secret" or not isinstance(entry.value, str):
            raise ValueError("a ticket secret entry is secret = hex")
        changed: bool = h.apply_remote(bytes.fromhex(entry.value), entry.version)
        return changed
