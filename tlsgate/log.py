"""Logging set-up: one place that names the loggers and formats lines (text or JSON).

Loggers: ``tlsgate`` (everything), ``tlsgate.access`` (one line per closed connection).
No secret ever reaches a log call: config secrets are :class:`~tlsgate.config.types.Secret`
objects whose ``repr`` is masked, and the gateway logs identities, never keys or passwords.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

log = logging.getLogger("tlsgate")
access_log = logging.getLogger("tlsgate.access")


class JsonFormatter(logging.Formatter):
    def __init__(self, tag: str = "") -> None:
        super().__init__()
        self.tag = tag

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "proc": self.tag or None,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            doc.update(fields)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self, tag: str = "") -> None:
        t = f"[{tag}] " if tag else ""
        super().__init__(f"%(asctime)s %(levelname)s {t}%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict) and fields:
            line += " " + " ".join(f"{k}={_text_value(v)}" for k, v in fields.items())
        return line


def _text_value(v: Any) -> str:
    s = "-" if v is None or v == "" else str(v)
    if any(c in s for c in " \"=\n"):
        return json.dumps(s, ensure_ascii=False)
    return s


def setup(level: str = "info", fmt: str = "text", file: str = "", access: bool = True,
          tag: str = "") -> None:
    """(Re)configure the ``tlsgate`` loggers; ``tag`` marks the process (``main``, ``w0``...)."""
    handler: logging.Handler
    handler = logging.FileHandler(file) if file else logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(tag) if fmt == "json" else TextFormatter(tag))
    root = logging.getLogger("tlsgate")
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level.upper())
    root.propagate = False
    access_log.disabled = not access
    # Lines carry our own process tag: skip the getpid()/thread lookups per LogRecord.
    logging.logProcesses = False
    logging.logThreads = False
    logging.logMultiprocessing = False
    from .accesslog import access as fast_access

    fast_access.configure(enabled=access, fmt=fmt, file=file, tag=tag)
