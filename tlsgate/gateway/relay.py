"""The relay: the hot path once a client is admitted.

Two tiny protocols per connection, one per socket. Each socket read lands in the process-wide
buffer (:data:`tlsgate.tls.engine.INBUF`) and costs exactly one engine call and one
``transport.write``: no parsing, no per-packet work, no events, no allocation beyond the bytes
object handed to the other socket. Bound methods are cached in slots so a chunk costs as few
attribute lookups as possible.

Back-pressure: when one side's send buffer passes its high-water mark, asyncio calls
``pause_writing`` on that side's protocol, which pauses *reading* on the other side; memory per
connection stays bounded whatever the speeds. Lifecycle (EOF, half-close, errors, close
reasons) belongs to the connection object (:class:`~tlsgate.gateway.gate.ClientGate`); these
classes only report to it.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from ..tls.engine import IN_VIEW, TlsError

if TYPE_CHECKING:
    from .gate import ClientGate


class ClientSide(asyncio.BufferedProtocol):
    """Client socket: ciphertext in -> plaintext to the broker."""

    __slots__ = ("_decrypt", "_sess", "_up_write", "conn", "nbytes", "upstream_transport")

    def __init__(self, conn: ClientGate, sess: Any, upstream_transport: asyncio.Transport) -> None:
        self.conn = conn
        self._sess = sess
        self._decrypt = sess.decrypt
        self._up_write = upstream_transport.write
        self.upstream_transport = upstream_transport
        self.nbytes = 0

    def get_buffer(self, sizehint: int) -> memoryview:
        return IN_VIEW

    def buffer_updated(self, nbytes: int) -> None:
        try:
            data = self._decrypt(nbytes)
        except TlsError as exc:
            self.conn.close("tls error: " + exc.reason)
            return
        if data:
            self.nbytes += len(data)
            self._up_write(data)
        if self._sess.peer_closed:
            self.conn.client_eof("client sent close_notify")

    def eof_received(self) -> bool:
        self.conn.client_eof("client closed")
        return True  # keep our sending side open: half-close

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.client_lost(exc)

    def pause_writing(self) -> None:
        self.upstream_transport.pause_reading()

    def resume_writing(self) -> None:
        self.upstream_transport.resume_reading()


class UpstreamSide(asyncio.BufferedProtocol):
    """Broker socket: plaintext in -> ciphertext to the client."""

    __slots__ = ("_client_write", "_encrypt", "client_transport", "conn", "nbytes", "transport")

    def __init__(self, conn: ClientGate, sess: Any, client_transport: asyncio.Transport) -> None:
        self.conn = conn
        self._encrypt = sess.encrypt_in
        self._client_write = client_transport.write
        self.client_transport = client_transport
        self.transport: asyncio.Transport | None = None
        self.nbytes = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        return IN_VIEW

    def buffer_updated(self, nbytes: int) -> None:
        self.nbytes += nbytes
        try:
            self._client_write(self._encrypt(nbytes))
        except TlsError as exc:
            self.conn.close("tls error: " + exc.reason)

    def eof_received(self) -> bool:
        self.conn.upstream_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.upstream_lost(exc)

    def pause_writing(self) -> None:
        self.client_transport.pause_reading()

    def resume_writing(self) -> None:
        self.client_transport.resume_reading()


class Relay:
    """The pair, for byte counters (admin API, access log)."""

    __slots__ = ("client", "upstream")

    def __init__(self, client: ClientSide, upstream: UpstreamSide) -> None:
        self.client = client
        self.upstream = upstream
