"""The access log: one line per closed connection, cheap enough for reconnect storms.

It writes the same line format as the ``tlsgate`` loggers (text: ``<time> INFO [w0]
tlsgate.access: connection closed k=v ...``, or one JSON object per line) to the same destination
(``log.file`` or standard error), but without the ``logging`` machinery (LogRecord creation,
handler locks, a flush and a write() syscall per line). A finished connection's record is
queued as it is (one list append on the connection's path), and the batch -- when 256 are
queued or 0.1 s after the first one, whichever comes first -- is formatted in one loop and
written with one ``os.write``. Measured on the handshake benchmark (benchmarks/quick.sh hs, four
alternating runs each): formatting every line when its connection closed cost ~50 µs per
connection over the log switched off -- code that runs once per connection runs cold, several
times dearer than the same code in a loop (~8 µs) -- and formatting the batch ~6 µs. Before
batching the writes, the logging module took about a tenth of the per-connection CPU. A crash
can lose the last 0.1 s of lines; a normal stop flushes them.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import time
from typing import Any, Protocol

_FLUSH_AFTER = 0.1
_FLUSH_LINES = 256


def text_value(v: Any) -> str:
    """One value of a text line: ``-`` for none, JSON-quoted if it has a space, quote, ``=``
    or newline (so ``k=v`` pairs always split unambiguously)."""
    if v is None or v == "":
        return "-"
    s = v if type(v) is str else str(v)
    return _quote(s) if _special(s) else s


_special = re.compile('[ "=\n]').search  # one C call instead of four `in` scans
_quote = json.JSONEncoder(ensure_ascii=False).encode


class AccessLog:
    def __init__(self) -> None:
        self.enabled = True
        self.json = False
        self.tag = ""
        self._fd = 2
        self._own_fd = False
        self._lines: list[Entry] = []
        self._timer: asyncio.TimerHandle | None = None
        self._sec = -1
        self._stamp = ""
        self._prefix = " INFO tlsgate.access: connection closed "

    def configure(self, *, enabled: bool, fmt: str, file: str, tag: str) -> None:
        self.flush()
        if self._own_fd:
            os.close(self._fd)
            self._own_fd = False
        self.enabled = enabled
        self.json = fmt == "json"
        self.tag = tag
        self._prefix = ((f" INFO [{tag}] " if tag else " INFO ")
                        + "tlsgate.access: connection closed ")
        if file:
            self._fd = os.open(file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            self._own_fd = True
        else:
            sys.stderr.flush()
            self._fd = 2

    def _time(self, now: float) -> str:
        sec = int(now)
        if sec != self._sec:
            self._sec = sec
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(sec))
        return f"{self._stamp},{int((now - sec) * 1000):03d}"

    def write_entry(self, entry: Entry) -> None:
        """Queue a finished connection's line; it is formatted when the batch is written (one
        tight loop per batch instead of formatting code run cold once per connection: see
        the module docstring for what that measured). ``entry`` must not change once
        queued."""
        if not self.enabled:
            return
        lines = self._lines
        lines.append(entry)
        if len(lines) >= _FLUSH_LINES:
            self.flush()
        elif self._timer is None:
            try:
                self._timer = asyncio.get_running_loop().call_later(_FLUSH_AFTER, self.flush)
            except RuntimeError:  # no loop (tests, shutdown): write now
                self.flush()

    def format(self, entry: Entry) -> str:
        """The line for ``entry`` in the configured format (text or JSON)."""
        at = entry.closed_at or time.time()
        if not self.json:
            return f"{self._time(at)}{self._prefix}{entry.access_text()}"
        doc = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at))
               + f".{int((at % 1) * 1000):03d}Z", "level": "info",
               "logger": "tlsgate.access", "proc": self.tag or None,
               "msg": "connection closed"}
        doc.update(entry.access_fields())
        return json.dumps(doc, default=str, ensure_ascii=False)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._lines:
            return
        fmt = self.format
        lines = []
        for e in self._lines:
            try:
                lines.append(fmt(e))
            except Exception:  # a formatting bug must cost one line, not the batch or the node
                lines.append(f"{self._time(time.time())}{self._prefix}{_fallback(e)}")
        self._lines.clear()
        data = ("\n".join(lines) + "\n").encode("utf-8", "replace")
        try:
            while data:
                n = os.write(self._fd, data)
                data = data[n:]
        except OSError:
            pass  # a full disk or closed stderr must not take connections down


class Entry(Protocol):
    """What the access log needs from a finished connection (``ConnRecord``)."""

    closed_at: float | None

    def access_text(self) -> str: ...

    def access_fields(self) -> dict[str, Any]: ...


def _fallback(entry: Entry) -> str:
    try:
        return f"(unformattable) {entry.access_fields()!r}"
    except Exception:
        return "(unformattable entry)"


#: The process-wide access log (configured by ``tlsgate.log.setup``).
access = AccessLog()
