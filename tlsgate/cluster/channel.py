"""The cluster channel: mutual-TLS connections between nodes (stdlib ``ssl`` on the node's
asyncio/uvloop loop), each carrying the framed protocol of ``protocol.py``.

* Both directions verify the peer: the server requires a client certificate, the client
  verifies the server's; both against ``cluster.ssl.cacertfile`` only (not the system store).
  Host names are not checked -- seeds are often IP addresses, and a node is identified by the
  cluster CA plus the name in its hello, which the log shows next to the certificate subject.
  Node certificates therefore need both extended key usages (serverAuth and clientAuth) or
  none: every node both accepts and dials.
* TLS 1.3 only: every node runs this same program, so there is no old peer to talk to.
* The server side accepts plain TCP and runs the TLS handshake itself
  (``loop.connect_accepted_socket``), so that a refused handshake -- a certificate from
  another CA, a port scanner, an HTTP client -- is logged with the peer's address and the
  reason, instead of disappearing inside the event loop.
* A :class:`Link` is one established connection: it decodes frames as they arrive (at most one
  maximum frame buffered), writes frames, and closes itself when the peer stops reading (more
  than ``MAX_PENDING`` bytes waiting) rather than buffering without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
from typing import Any

from ..config import ConfigError, Problem
from ..config.schema import ClusterConfig
from .protocol import Decoder, Message, ProtocolError, encode

READ_CHUNK = 64 * 1024
#: A peer that lets this much output pile up (it stopped reading) is disconnected.
MAX_PENDING = 32 * 1024 * 1024


class LinkClosed(Exception):
    pass


def build_contexts(cfg: ClusterConfig, source: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context, client context) from ``[cluster.ssl]``; ConfigError naming the key."""
    if cfg.ssl is None:
        raise ConfigError(source, [Problem("cluster.ssl", "enable = true needs [cluster.ssl] "
                                                          "cacertfile, certfile and keyfile")])
    opts = cfg.ssl
    problems: list[Problem] = []
    for key in ("cacertfile", "certfile", "keyfile"):
        path = getattr(opts, key)
        if not path:
            problems.append(Problem(f"cluster.ssl.{key}", "must be set"))
        elif not os.path.isfile(path):
            problems.append(Problem(f"cluster.ssl.{key}", f"file not found: {path}"))
        elif not os.access(path, os.R_OK):
            problems.append(Problem(f"cluster.ssl.{key}", f"cannot read {path}"))
    if problems:
        raise ConfigError(source, problems)
    password: str | None = None
    if opts.password is not None and str.__str__(opts.password):
        try:
            password = opts.password.reveal()
        except OSError as exc:
            raise ConfigError(source, [Problem("cluster.ssl.password",
                                               f"cannot read the password file: "
                                               f"{exc.strerror or exc}")]) from None
    contexts = []
    for purpose in (ssl.PROTOCOL_TLS_SERVER, ssl.PROTOCOL_TLS_CLIENT):
        ctx = ssl.SSLContext(purpose)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.verify_mode = ssl.CERT_REQUIRED
        if purpose == ssl.PROTOCOL_TLS_CLIENT:
            ctx.check_hostname = False
        try:
            ctx.load_verify_locations(opts.cacertfile)
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise ConfigError(source, [Problem("cluster.ssl.cacertfile",
                                               f"cannot load {opts.cacertfile}: "
                                               f"{_reason(exc)} (expected PEM CA "
                                               "certificates)")]) from None
        try:
            ctx.load_cert_chain(opts.certfile, opts.keyfile, password=password)
        except (ssl.SSLError, OSError, ValueError) as exc:
            why = _reason(exc)
            key = "cluster.ssl.certfile" if "PEM" in why and "key" not in why.lower() \
                else "cluster.ssl.keyfile"
            raise ConfigError(source, [Problem(
                key, f"cannot load certfile/keyfile: {why} (a key that does not match the "
                     "certificate, a wrong or missing cluster.ssl.password, or not PEM?)")]
            ) from None
        contexts.append(ctx)
    return contexts[0], contexts[1]


def _reason(exc: BaseException) -> str:
    r = getattr(exc, "reason", None)
    if isinstance(r, str) and r:
        return r
    return str(exc) or type(exc).__name__


def explain_tls_error(exc: BaseException) -> str:
    """An operator's reading of a failed cluster handshake."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        msg = exc.verify_message or _reason(exc)
        if any(s in msg for s in ("local issuer", "self-signed", "self signed")):
            return (f"its certificate does not chain to cluster.ssl.cacertfile ({msg}): not a "
                    "node of this cluster")
        if "purpose" in msg:
            return (f"its certificate is not for TLS client and server use ({msg}): node "
                    "certificates need extended key usages serverAuth and clientAuth, or none")
        return f"its certificate was rejected: {msg}"
    if isinstance(exc, ssl.SSLError):
        r = _reason(exc)
        low = r.lower()
        if "unknown_ca" in low or "unknown ca" in low:
            return ("it rejected our certificate (unknown CA): it does not trust our cluster CA, "
                    "or our cluster.ssl.certfile is not from it")
        if "certificate_required" in low or "certificate required" in low:
            return "it did not present a certificate"
        if "bad_certificate" in low or "certificate_unknown" in low:
            return f"the certificate exchange failed ({r}): check both nodes' cluster.ssl"
        if "http_request" in low or "wrong_version" in low or "record" in low:
            return f"it does not speak TLS ({r}): not a tlsgate node"
        return f"TLS error: {r}"
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "the TLS handshake timed out"
    if isinstance(exc, ConnectionAbortedError) and "handshake" in str(exc).lower():
        return "the TLS handshake timed out"
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        return ("it closed the connection during the handshake (it may have refused our "
                "certificate)")
    if isinstance(exc, OSError):
        return exc.strerror or str(exc) or type(exc).__name__
    return str(exc) or type(exc).__name__


def cert_subject(peercert: Any) -> str:
    """``CN=...`` (or the whole subject) of a peer certificate dict from ``getpeercert()``."""
    if not isinstance(peercert, dict):
        return "?"
    parts = []
    for rdn in peercert.get("subject", ()):
        for k, v in rdn:
            if k == "commonName":
                return f"CN={v}"
            parts.append(f"{k}={v}")
    return ",".join(parts) or "?"


class Link:
    """One established, authenticated connection to another node."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                 outbound: bool, address: str, peer_ip: str) -> None:
        self.reader = reader
        self.writer = writer
        self.outbound = outbound
        self.address = address        # dialed address (outbound) or "ip:port" seen (inbound)
        self.peer_ip = peer_ip
        self.decoder = Decoder()
        self.peer = ""                # the node's name, after its hello
        self.boot = ""
        self.subject = cert_subject(writer.get_extra_info("peercert"))
        self.closed = asyncio.Event()
        self.close_reason = ""
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.sync: Any = None         # replication.SyncState, set by the service
        self._queue: list[Message] = []

    def __repr__(self) -> str:
        return (f"Link({self.peer or '?'} {'to' if self.outbound else 'from'} "
                f"{self.address})")

    # -- reading --------------------------------------------------------------------------
    async def read(self, timeout: float | None = None) -> Message | None:
        """The next message; None when the peer closed the connection. ProtocolError on
        garbage, TimeoutError when nothing complete arrived within ``timeout``."""
        while True:
            if self._queue:
                return self._queue.pop(0)
            msg = self.decoder.next()
            if msg is not None:
                return msg
            if timeout is None:
                data = await self.reader.read(READ_CHUNK)
            else:
                data = await asyncio.wait_for(self.reader.read(READ_CHUNK), timeout)
            if not data:
                return None
            self.decoder.feed(data)

    # -- writing --------------------------------------------------------------------------
    def send(self, msg: Message) -> None:
        if self.closed.is_set() or self.writer.is_closing():
            raise LinkClosed(f"link to {self.peer or self.address} is closed")
        frame = encode(msg)
        transport = self.writer.transport
        if transport.get_write_buffer_size() + len(frame) > MAX_PENDING:
            self.close(f"it stopped reading ({MAX_PENDING} bytes waiting)")
            raise LinkClosed(f"link to {self.peer or self.address}: peer not reading")
        self.writer.write(frame)

    def try_send(self, msg: Message) -> bool:
        try:
            self.send(msg)
        except (LinkClosed, ValueError, ConnectionError, RuntimeError):
            return False
        return True

    async def drain(self) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.writer.drain()

    def close(self, reason: str = "") -> None:
        if not self.closed.is_set():
            self.close_reason = reason
            self.closed.set()
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(LinkClosed(f"link to {self.peer or self.address} closed"
                                             + (f": {reason}" if reason else "")))
        self.pending.clear()
        with contextlib.suppress(Exception):
            self.writer.close()


__all__ = ["Link", "LinkClosed", "ProtocolError", "build_contexts", "cert_subject",
           "explain_tls_error"]
