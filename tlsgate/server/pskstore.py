"""The node's TLS-PSK identities: the ``init_file`` plus changes made through the admin API
(or, later, by other cluster nodes), merged into the table every worker serves.

Two layers:

* the **file** (``psk_authentication.init_file``), re-read on reload; a bad file keeps the old
  entries and the reload says why;
* the **overlay**: per identity, the last API change -- a secret or a removal (tombstone) --
  stamped ``(time, node)``. It is persisted (mode 0600: it holds secrets) under
  ``node.data_dir/psk-overlay.json`` and survives restarts and file reloads: an identity
  removed through the API stays removed even if the file still lists it, until it is added
  again. Overlay entries merge last-writer-wins by ``(time, node)``, so nodes exchanging them
  (the cluster) converge whatever the order of delivery.

The merged table = file entries, then overlay secrets replace or add, tombstones remove. It is
pushed to every worker in full (``psk_set``) whenever it changes; the worker's
:class:`~tlsgate.psk_table.PskTable` answers handshakes.

In a cluster (``file_changes_to_overlay``, set by ``tlsgate.cluster``), a reload that adds,
changes or removes identities in the file records each of those changes in the overlay as well,
so they replicate like API changes: an identity added to (or removed from) one node's file is
usable (or refused) on every node. Only changes seen by a running node count: a file edited
while the node is stopped is just loaded at the next start.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config.schema import PskConfig
from ..psk_table import (
    PskError,
    check_identity,
    check_secret,
    decode_secret,
    parse_psk_file,
    printable_identity,
)

log = logging.getLogger("tlsgate.psk")


@dataclass(frozen=True)
class OverlayEntry:
    secret: bytes | None   # None = removed (tombstone)
    ts: float
    node: str

    def newer_than(self, other: OverlayEntry) -> bool:
        return (self.ts, self.node) > (other.ts, other.node)

    def to_json(self) -> dict[str, Any]:
        return {"secret": self.secret.hex() if self.secret is not None else None,
                "ts": self.ts, "node": self.node}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> OverlayEntry:
        s = doc.get("secret")
        return cls(bytes.fromhex(s) if isinstance(s, str) else None, float(doc["ts"]),
                   str(doc["node"]))


class PskStore:
    """What ``node.psk`` is for the admin API: identities, add, remove (no secrets out)."""

    def __init__(self, cfg: PskConfig, data_dir: str, node_name: str) -> None:
        self.cfg = cfg
        self.node_name = node_name
        self.path = Path(data_dir) / "psk-overlay.json"
        self.file_entries: dict[bytes, bytes] = {}
        self.overlay: dict[bytes, OverlayEntry] = {}
        self._merged: dict[bytes, bytes] = {}
        #: called with the merged table after every change (the node pushes it to workers)
        self.on_change: list[Callable[[dict[bytes, bytes]], None]] = []
        #: called with (identity, entry) for every local overlay change (cluster replication)
        self.on_local_change: list[Callable[[bytes, OverlayEntry], None]] = []
        #: the cluster sets this: file changes seen on reload become overlay changes
        self.file_changes_to_overlay = False

    # -- loading ---------------------------------------------------------------------------
    def load(self) -> None:
        """Read the file and the persisted overlay; raises PskError (file:line: reason)."""
        self.file_entries = parse_psk_file(self.cfg.init_file, self.cfg.separator,
                                           self.cfg.format)
        self.overlay = self._read_overlay()
        self._recompute(announce=False)

    def reload_file(self, cfg: PskConfig) -> str | None:
        """Re-read the (possibly new) file; on error keep everything and return why."""
        try:
            entries = parse_psk_file(cfg.init_file, cfg.separator, cfg.format)
        except (PskError, OSError) as exc:
            return f"psk_authentication.init_file: {exc} (the previous identities stay)"
        self.cfg = cfg
        old, self.file_entries = self.file_entries, entries
        if self.file_changes_to_overlay:
            changes = {i: entries.get(i) for i in old.keys() | entries.keys()
                       if old.get(i) != entries.get(i)}
            if changes:
                self._local_many(changes)
                log.info("PSK file %s: %d identity change(s) recorded for the cluster",
                         cfg.init_file, len(changes))
                return None
        self._recompute()
        return None

    def _read_overlay(self) -> dict[bytes, OverlayEntry]:
        try:
            doc = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.error("cannot read the PSK overlay %s (%s); starting from the file alone",
                      self.path, exc)
            return {}
        out = {}
        for ident_hex, entry in doc.get("entries", {}).items():
            try:
                out[bytes.fromhex(ident_hex)] = OverlayEntry.from_json(entry)
            except (ValueError, KeyError, TypeError):
                log.warning("PSK overlay %s: skipping a malformed entry", self.path)
        return out

    def _write_overlay(self) -> None:
        doc = {"entries": {k.hex(): v.to_json() for k, v in self.overlay.items()}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f)
        os.replace(tmp, self.path)

    # -- the merged table --------------------------------------------------------------------
    def merged(self) -> dict[bytes, bytes]:
        return dict(self._merged)

    def _recompute(self, announce: bool = True) -> None:
        table = dict(self.file_entries)
        for ident, e in self.overlay.items():
            if e.secret is None:
                table.pop(ident, None)
            else:
                table[ident] = e.secret
        changed = table != self._merged
        self._merged = table
        if announce and changed:
            for cb in self.on_change:
                cb(dict(table))

    # -- the admin API's interface -------------------------------------------------------------
    def identities(self) -> list[str]:
        return sorted(i.decode("utf-8", "replace") for i in self._merged)

    def add(self, identity: str, secret: str) -> None:
        """Add or change an identity; ``secret`` as ``psk_authentication.format`` says.
        ValueError (message without the secret) on bad input."""
        ident = identity.encode("utf-8")
        check_identity(ident)
        key = decode_secret(secret, self.cfg.format)
        check_secret(key)
        self._local(ident, key)
        log.info("PSK identity %s added/changed through the admin API",
                 printable_identity(ident))

    def remove(self, identity: str) -> bool:
        ident = identity.encode("utf-8")
        if ident not in self._merged:
            return False
        self._local(ident, None)
        log.info("PSK identity %s removed through the admin API", printable_identity(ident))
        return True

    def _local(self, ident: bytes, secret: bytes | None) -> None:
        self._local_many({ident: secret})

    def _local_many(self, changes: dict[bytes, bytes | None]) -> None:
        made = []
        for ident, secret in changes.items():
            prev = self.overlay.get(ident)
            ts = time.time()
            if prev is not None and ts <= prev.ts:
                ts = prev.ts + 1e-6  # keep local changes ordered even with a coarse clock
            entry = OverlayEntry(secret, ts, self.node_name)
            self.overlay[ident] = entry
            made.append((ident, entry))
        self._write_overlay()
        self._recompute()
        for ident, entry in made:
            for cb in self.on_local_change:
                cb(ident, entry)

    # -- replication (cluster) ----------------------------------------------------------------
    def apply_remote(self, ident: bytes, entry: OverlayEntry) -> bool:
        """Merge an entry from another node (last writer wins); True if it changed ours."""
        prev = self.overlay.get(ident)
        if prev is not None and not entry.newer_than(prev):
            return False
        self.overlay[ident] = entry
        self._write_overlay()
        self._recompute()
        return True

    def overlay_snapshot(self) -> dict[bytes, OverlayEntry]:
        return dict(self.overlay)


def encode_table(table: dict[bytes, bytes]) -> dict[str, str]:
    """For the control channel (local socketpair only): identity hex -> secret hex."""
    return {k.hex(): v.hex() for k, v in table.items()}


def decode_table(doc: dict[str, str]) -> dict[bytes, bytes]:
    return {bytes.fromhex(k): bytes.fromhex(v) for k, v in doc.items()}
