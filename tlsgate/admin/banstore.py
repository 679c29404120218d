"""The node's ban list: persisted under ``node.data_dir`` and pushed to every worker.

The file is ``<data_dir>/bans.json`` (a JSON list of bans), written atomically (temporary file,
fsync, rename) on every change, so a crash never leaves half a file. A missing file is an empty
list; an unreadable or malformed one is logged and treated as empty (the gateway must start),
and is not overwritten until the next change.

Every change is pushed to all workers with the ``bans_set`` control operation, which also closes
the live connections a new ban names; a worker that (re)starts gets the list right after its
``start`` (``node.on_worker_started``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from ..gateway.bans import Ban, BanError, BanList

log = logging.getLogger("tlsgate.admin")

FILE_NAME = "bans.json"


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
        self.load()

    def load(self) -> None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
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
        gone = self.bans.prune(time.time())
        log.info("loaded %d ban(s) from %s%s", len(self.bans), self.path,
                 f" ({len(gone)} expired)" if gone else "")

    def save(self) -> None:
        data = json.dumps(self.bans.to_json(), indent=1).encode() + b"\n"
        atomic_write(self.path, data)

    def list(self) -> list[Ban]:
        self.bans.prune(time.time())
        return list(self.bans)

    async def add(self, ban: Ban) -> dict[str, Any]:
        """Add (or replace) a ban, persist it, push it; what the workers closed."""
        async with self._lock:
            self.bans.prune(time.time())
            replaced = self.bans.add(ban)
            self.save()
            pushed = await self.push()
        return {"replaced": replaced, **pushed}

    async def remove(self, kind: str, value: str) -> Ban | None:
        async with self._lock:
            gone = self.bans.remove(kind, value)
            if gone is not None:
                self.save()
                await self.push()
        return gone

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
