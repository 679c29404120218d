"""The node's ban list: persisted under ``node.data_dir`` and pushed to every worker.

The file is ``<data_dir>/bans.json`` (a JSON list of bans), written atomically (temporary file,
fsync, rename) on every change, so a crash never leaves half a file. A missing file is an empty
list; an unreadable or malformed one is logged and treated as empty (the gateway must start),
and is not overwritten until the next change.

Every change is pushed to all workers with the ``bans_set`` control operation, which also closes
the live connections a new ban names; a worker that (re)starts gets the list right after its
``start`` (``node.on_worker_started``).

Replication (the cluster, ``tlsgate.cluster``): every ban and every removal carries a version
``(time, node)``; a removal (or an expiry) leaves a tombstone with its version. Changes merge
last-writer-wins by version (:meth:`NodeBans.apply_remote`), so nodes exchanging them converge
whatever the order of delivery, and a removal made while a node was down is not undone when it
returns. Local API changes are announced to ``on_local_change`` callbacks. When the cluster is
on (``replicated = True``) the versions and tombstones are persisted next to the list in
``bans-cluster.json``; tombstones are kept for good (they are small; dropping them would let a
long-absent node bring a removed ban back).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..gateway.bans import Ban, BanError, BanList, check_kind, parse_ban

log = logging.getLogger("tlsgate.admin")

FILE_NAME = "bans.json"
VERSIONS_FILE = "bans-cluster.json"
#: (time, node name): later wins; ties cannot happen between nodes (the node name differs).
Version = tuple[float, str]
BanKey = tuple[str, str]


@dataclass(frozen=True)
class BanEntry:
    """A ban (or its removal: ``ban`` None) with its replication version."""

    kind: str
    value: str
    ban: Ban | None
    ts: float
    node: str

    @property
    def version(self) -> Version:
        return self.ts, self.node

    @property
    def key(self) -> BanKey:
        return self.kind, self.value


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


class NodeBans:
    def __init__(self, node: Any, path: Path | None = None) -> None:
        self.node = node
        self.path = path or Path(node.config.node.data_dir) / FILE_NAME
        self.bans = BanList()
        self._lock = asyncio.Lock()
        cfg_node = getattr(getattr(node, "config", None), "node", None)
        self.node_name = str(getattr(cfg_node, "name", "") or "")
        #: versions of the live bans, and tombstones of removed/expired ones
        self.versions: dict[BanKey, Version] = {}
        self.removed: dict[BanKey, Version] = {}
        #: called with every local (API) change, after it is saved (cluster replication)
        self.on_local_change: list[Callable[[BanEntry], None]] = []
        #: the cluster sets this: versions and tombstones are then persisted too
        self.replicated = False
        self.versions_path = self.path.with_name(VERSIONS_FILE)
        self.load()

    def load(self) -> None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            self._load_versions()  # tombstones may outlive the list
            return
        except OSError as exc:
            log.error("cannot read the ban list %s: %s; starting with no bans", self.path,
                      exc.strerror)
            return
        try:
            self.bans = BanList.from_json(json.loads(raw))
        except (ValueError, BanError) as exc:
            log.error("the ban list %s is not valid (%s); starting with no bans -- fix or "
                      "delete the file", self.path, exc)
            return
        self._load_versions()
        gone = self._prune(time.time())
        log.info("loaded %d ban(s) from %s%s", len(self.bans), self.path,
                 f" ({len(gone)} expired)" if gone else "")

    def _load_versions(self) -> None:
        """Versions and tombstones (cluster); a ban without a recorded version gets
        (created_at, "") -- older than any change made through a node."""
        live: dict[BanKey, Version] = {}
        removed: dict[BanKey, Version] = {}
        try:
            doc = json.loads(self.versions_path.read_bytes())
            for name, target in (("live", live), ("removed", removed)):
                for kind, value, ts, node in doc.get(name, []):
                    target[(check_kind(kind), str(value))] = (float(ts), str(node))
        except FileNotFoundError:
            pass
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            log.error("cannot read the ban versions %s (%s); bans get default versions",
                      self.versions_path, exc)
            live, removed = {}, {}
        self.versions = {b.key: live.get(b.key, (b.created_at, "")) for b in self.bans}
        self.removed = {k: v for k, v in removed.items() if self.bans.get(*k) is None}

    def save(self) -> None:
        data = json.dumps(self.bans.to_json(), indent=1).encode() + b"\n"
        atomic_write(self.path, data)
        if self.replicated:
            doc = {"live": [[k, v, *ver] for (k, v), ver in self.versions.items()],
                   "removed": [[k, v, *ver] for (k, v), ver in self.removed.items()]}
            atomic_write(self.versions_path, json.dumps(doc).encode() + b"\n")

    def _prune(self, now: float) -> list[Ban]:
        """Drop expired bans; each leaves a tombstone with the ban's version (every node
        expires the same ban at the same time, so their versions still agree)."""
        gone = self.bans.prune(now)
        for b in gone:
            self.removed[b.key] = self.versions.pop(b.key, (b.created_at, ""))
        return gone

    def list(self) -> list[Ban]:
        self._prune(time.time())
        return list(self.bans)

    def version_of(self, key: BanKey) -> Version | None:
        return self.versions.get(key) or self.removed.get(key)

    def _stamp(self, key: BanKey) -> Version:
        ts = time.time()
        prev = self.version_of(key)
        if prev is not None and ts <= prev[0]:
            ts = prev[0] + 1e-6  # keep local changes ordered even with a coarse clock
        return ts, self.node_name

    def _announce(self, entry: BanEntry) -> None:
        for cb in list(self.on_local_change):
            try:
                cb(entry)
            except Exception:
                log.exception("announcing a ban change failed")

    async def add(self, ban: Ban) -> dict[str, Any]:
        """Add (or replace) a ban, persist it, push it; what the workers closed."""
        async with self._lock:
            self._prune(time.time())
            replaced = self.bans.add(ban)
            ver = self._stamp(ban.key)
            self.versions[ban.key] = ver
            self.removed.pop(ban.key, None)
            self.save()
            self._announce(BanEntry(ban.kind, ban.value, ban, *ver))
            pushed = await self.push()
        return {"replaced": replaced, **pushed}

    async def remove(self, kind: str, value: str) -> Ban | None:
        async with self._lock:
            gone = self.bans.remove(kind, value)
            if gone is not None:
                ver = self._stamp(gone.key)
                self.versions.pop(gone.key, None)
                self.removed[gone.key] = ver
                self.save()
                self._announce(BanEntry(kind, value, None, *ver))
                await self.push()
        return gone

    # -- replication (cluster) ----------------------------------------------------------------
    def apply_remote(self, entry: BanEntry) -> bool:
        """Merge a change from another node (last writer wins); True if ours changed. The
        caller pushes the list to the workers afterwards (:meth:`push`)."""
        cur = self.version_of(entry.key)
        if cur is not None and entry.version <= cur:
            return False
        if entry.ban is None or not entry.ban.active(time.time()):
            self.bans.remove(*entry.key)
            self.versions.pop(entry.key, None)
            self.removed[entry.key] = entry.version
        else:
            self.bans.add(entry.ban)
            self.versions[entry.key] = entry.version
            self.removed.pop(entry.key, None)
        self.save()
        return True

    def snapshot(self) -> builtins.list[BanEntry]:
        """Every ban and tombstone with its version (a full state transfer)."""
        self._prune(time.time())
        out = [BanEntry(b.kind, b.value, b, *self.versions.get(b.key, (b.created_at, "")))
               for b in self.bans]
        out += [BanEntry(k, v, None, *ver) for (k, v), ver in self.removed.items()]
        return out

    @staticmethod
    def entry_from_json(kind: str, value: str, doc: Any, ts: float, node: str) -> BanEntry:
        """A replicated entry as it travels (``doc``: the ban's JSON, or None); raises
        BanError when it is not a valid ban."""
        check_kind(kind)
        if doc is None:
            return BanEntry(kind, value, None, ts, node)
        ban = parse_ban(doc)
        if ban.key != (kind, value):
            raise BanError("the ban does not match its key")
        return BanEntry(kind, value, ban, ts, node)

    async def push(self) -> dict[str, Any]:
        """Send the list to every live worker; the API ids (``<worker>.<id>``) of the
        connections they closed."""
        results = await self.node.ask_workers("bans_set", bans=self.bans.to_json())
        closed: list[str] = []
        errors: list[str] = []
        for index, res in results:
            if isinstance(res, BaseException):
                errors.append(f"worker {index}: {res}")
                log.error("pushing the ban list to worker %d failed: %s", index, res)
            else:
                closed.extend(f"{index}.{c}" for c in res.get("closed", []))
        return {"closed": closed, "errors": errors}

    async def push_to(self, handle: Any) -> None:
        """``node.on_worker_started`` callback: give a (re)started worker the list."""
        if handle.peer is None:
            return
        await handle.peer.request("bans_set", timeout=10.0, bans=self.bans.to_json())
