"""The control channel between the node process and its workers.

A Unix socketpair per worker carries framed JSON messages both ways::

    frame   = 4-byte big-endian length, then that many bytes of UTF-8 JSON (≤ MAX_FRAME)
    request = {"id": n, "op": "name", "args": {...}}      -> answered by
    reply   = {"id": n, "ok": true, "result": ...} | {"id": n, "ok": false, "error": "text"}
    notice  = {"op": "name", "args": {...}}               (no id: no answer)

Either side may send requests. Handlers are coroutines keyed by op name; an unknown op or a
handler exception becomes an error reply (the channel survives). Version skew cannot happen
(both ends are the same installation), so there is no version field.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("tlsgate.control")

MAX_FRAME = 64 * 1024 * 1024
Handler = Callable[[dict[str, Any]], Awaitable[Any]]


class ControlError(Exception):
    pass


class ControlPeer:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 handlers: dict[str, Handler], name: str) -> None:
        self.reader = reader
        self.writer = writer
        self.handlers = handlers
        self.name = name
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.closed = asyncio.Event()

    @classmethod
    async def from_socket(cls, sock: socket.socket, handlers: dict[str, Handler],
                          name: str) -> ControlPeer:
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=MAX_FRAME)
        return cls(reader, writer, handlers, name)

    def _send(self, doc: dict[str, Any]) -> None:
        if self.writer.is_closing():
            raise ControlError(f"control channel to {self.name} is closed")
        body = json.dumps(doc, separators=(",", ":"), default=str).encode()
        self.writer.write(struct.pack(">I", len(body)) + body)

    async def request(self, op: str, timeout: float = 10.0, **args: Any) -> Any:
        rid = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = fut
        try:
            self._send({"id": rid, "op": op, "args": args})
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._waiting.pop(rid, None)

    def notify(self, op: str, **args: Any) -> None:
        try:
            self._send({"op": op, "args": args})
        except ControlError:
            log.debug("notice %s to %s dropped: channel closed", op, self.name)

    async def run(self) -> None:
        """Read frames until EOF; dispatch requests, resolve replies."""
        try:
            while True:
                head = await self.reader.readexactly(4)
                (size,) = struct.unpack(">I", head)
                if size > MAX_FRAME:
                    log.error("control frame of %d bytes from %s exceeds the limit; closing",
                              size, self.name)
                    break
                doc = json.loads(await self.reader.readexactly(size))
                if not isinstance(doc, dict):
                    raise ValueError(f"a frame holds JSON {type(doc).__name__}, not an object")
                if "ok" in doc and "id" in doc:
                    rid = doc["id"]
                    fut = self._waiting.get(rid) if isinstance(rid, int) else None
                    if fut is not None and not fut.done():
                        if doc["ok"]:
                            fut.set_result(doc.get("result"))
                        else:
                            fut.set_exception(ControlError(doc.get("error", "error")))
                    continue
                task = asyncio.get_running_loop().create_task(self._dispatch(doc),
                                                              name=f"control {doc.get('op')}")
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            log.error("garbage on the control channel from %s: %s", self.name, exc)
        finally:
            for fut in self._waiting.values():
                if not fut.done():
                    fut.set_exception(ControlError(f"control channel to {self.name} closed"))
            self.writer.close()
            self.closed.set()

    async def _dispatch(self, doc: dict[str, Any]) -> None:
        op = doc.get("op")
        rid = doc.get("id")
        handler = self.handlers.get(op) if isinstance(op, str) else None
        try:
            if handler is None:
                raise ControlError(f"unknown control operation {op!r}")
            result = await handler(doc.get("args") or {})
            if rid is not None:
                self._send({"id": rid, "ok": True, "result": result})
        except Exception as exc:
            if rid is not None:
                with contextlib.suppress(ControlError):
                    self._send({"id": rid, "ok": False, "error": str(exc) or type(exc).__name__})
            else:
                log.exception("control notice %s failed", op)

    def close(self) -> None:
        self.writer.close()
