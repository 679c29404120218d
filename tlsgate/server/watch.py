"""Reload when a file changes (``node.reload_on_change``): a per-node service that polls.

It watches the config file and every file the config names -- certificates, keys, CA files,
CRL files, the PSK file, ``file://`` passwords, the dashboard token file -- by their
(mtime, size, inode) every ``node.reload_check_interval``, and calls ``node.reload()`` (the same
path as SIGHUP and the admin API) when one changes. Polling, not inotify: it works the same on
every file system, including Kubernetes secret volumes whose files are swapped by symlink.

A rotation usually writes two files (certificate, then key). After the first change is seen the
watcher waits until two looks in a row agree before reloading, so it rarely catches a
certificate without its key; when it does, the reload fails, the old pair keeps serving, and
the next change (the key) reloads again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import Any

from pydantic import BaseModel

from ..config.types import Secret

log = logging.getLogger("tlsgate.node")

#: Signature of a file as polled: (mtime_ns, size, inode), or None when it cannot be stat'ed.
Signature = tuple[int, int, int] | None
#: Extra looks (each SETTLE apart) to wait for a change to settle.
SETTLE_TRIES = 5


def config_files(config: BaseModel) -> set[str]:
    """Every file path the configuration names (keys ending in ``file``, ``issuer_pem``, and
    ``file://`` secrets). ``log.file`` is not one of them: it is written, not read."""
    out: set[str] = set()

    def walk(obj: Any) -> None:
        if isinstance(obj, BaseModel):
            for name in type(obj).model_fields:
                value = getattr(obj, name)
                if isinstance(value, Secret):
                    raw = str.__str__(value)
                    if raw.startswith("file://"):
                        out.add(raw[len("file://"):])
                elif isinstance(value, str):
                    if value and ((name.endswith("file") and name != "file")
                                  or name == "issuer_pem"):
                        out.add(value)
                elif isinstance(value, list) and name.endswith("file") and name != "file":
                    out.update(v for v in value if isinstance(v, str) and v)
                else:
                    walk(value)
        elif isinstance(obj, dict):
            for v in obj.values():
                walk(v)
        elif isinstance(obj, list | tuple):
            for v in obj:
                walk(v)

    walk(config)
    return out


def signature(path: str) -> Signature:
    try:
        st = os.stat(path)  # follows symlinks: a swapped link target counts as a change
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


class FileWatcher:
    """Node service; idles (one timer per interval) while ``reload_on_change`` is off."""

    def __init__(self, node: Any) -> None:
        self.node = node
        self.task: asyncio.Task[None] | None = None
        self.reloads = 0
        self.last_changed: list[str] = []

    def watched(self) -> set[str]:
        files = config_files(self.node.config)
        if self.node.path:
            files.add(self.node.path)
        return files

    def snapshot(self) -> dict[str, Signature]:
        return {p: signature(p) for p in sorted(self.watched())}

    def _interval(self) -> float:
        return max(0.1, float(self.node.config.node.reload_check_interval))

    def _enabled(self) -> bool:
        return bool(self.node.config.node.reload_on_change)

    async def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run(), name="reload on change")
        if self._enabled():
            log.info("reload_on_change: watching %d file(s) every %gs",
                     len(self.watched()), self._interval())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            self.task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        baseline = await loop.run_in_executor(None, self.snapshot)
        while True:
            await asyncio.sleep(self._interval())
            if not self._enabled() or self.node.stopping:
                baseline = await loop.run_in_executor(None, self.snapshot)
                continue
            current = await loop.run_in_executor(None, self.snapshot)
            if current == baseline:
                continue
            settle = min(0.5, self._interval())
            for _ in range(SETTLE_TRIES):
                await asyncio.sleep(settle)
                again = await loop.run_in_executor(None, self.snapshot)
                if again == current:
                    break
                current = again
            if not self._enabled() or self.node.stopping:
                # switched off (or stopping) while we looked: the check above was too early
                baseline = current
                continue
            changed = sorted(p for p in set(baseline) | set(current)
                             if baseline.get(p) != current.get(p))
            self.last_changed = changed
            log.info("reload_on_change: %s changed; reloading", ", ".join(changed))
            try:
                await self.node.reload()
            except Exception:  # the watcher must survive whatever a reload does
                log.exception("reload after a file change failed")
            self.reloads += 1
            # the (new) config may name other files: start over from what is there now
            baseline = await loop.run_in_executor(None, self.snapshot)
