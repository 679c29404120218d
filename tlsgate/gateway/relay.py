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
import os
from typing import TYPE_CHECKING, Any

from ..tls import engine
from ..tls.engine import IN_VIEW, OUT_VIEW, ServerSession, TlsError

_os_write = os.write

if TYPE_CHECKING:
    from .gate import ClientGate


def _fd_of(transport: asyncio.Transport, tls: bool = False) -> int:
    """The socket fd for direct writes, or -1 when the transport must do the writing itself
    (``tls``: a TLS transport towards the broker: its bytes are not ours to put on the wire)."""
    if tls:
        return -1
    sock = transport.get_extra_info("socket")
    try:
        return int(sock.fileno()) if sock is not None else -1
    except (AttributeError, OSError):
        return -1


class ClientSide(asyncio.BufferedProtocol):
    """Client socket: ciphertext in -> plaintext to the broker."""

    __slots__ = ("_decrypt", "_sess", "_up_fd", "_up_pending", "_up_write", "conn", "nbytes",
                 "upstream_transport")

    def __init__(self, conn: ClientGate, sess: Any, upstream_transport: asyncio.Transport,
                 decrypt: Any = None) -> None:
        self.conn = conn
        self._sess = sess
        self._decrypt = decrypt or sess.decrypt_out
        self._up_write = upstream_transport.write
        self._up_pending = upstream_transport.get_write_buffer_size
        self._up_fd = _fd_of(upstream_transport, conn.lst.upstream_tls is not None)
        self.upstream_transport = upstream_transport
        self.nbytes = 0

    def get_buffer(self, sizehint: int) -> memoryview:
        return IN_VIEW

    def buffer_updated(self, nbytes: int) -> None:
        try:
            total = self._decrypt(nbytes)
        except TlsError as exc:
            self.conn.close("tls error: " + exc.reason)
            return
        if total:
            self.nbytes += total
            # Straight from the shared buffer to the socket when nothing is queued (the
            # usual case): no copy. What the socket does not take goes to the transport as
            # a copy, and the transport's flow control takes over from there.
            fd = self._up_fd
            if fd >= 0 and not self._up_pending():
                try:
                    done = _os_write(fd, OUT_VIEW[:total])
                except BlockingIOError:
                    done = 0
                except OSError:
                    done = 0  # let the transport meet the error and report it
                if done < total:
                    self._up_write(OUT_VIEW[done:total].tobytes())
            else:
                self._up_write(OUT_VIEW[:total].tobytes())
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

    __slots__ = ("_client_fd", "_client_pending", "_client_write", "_encrypt",
                 "client_transport", "conn", "nbytes", "transport")

    def __init__(self, conn: ClientGate, sess: Any, client_transport: asyncio.Transport,
                 encrypt: Any = None) -> None:
        self.conn = conn
        self._encrypt = encrypt or sess.encrypt_out
        self._client_write = client_transport.write
        self._client_pending = client_transport.get_write_buffer_size
        self._client_fd = _fd_of(client_transport)
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
            total = self._encrypt(nbytes)
        except TlsError as exc:
            self.conn.close("tls error: " + exc.reason)
            return
        fd = self._client_fd
        if fd >= 0 and not self._client_pending():
            try:
                done = _os_write(fd, OUT_VIEW[:total])
            except BlockingIOError:
                done = 0
            except OSError:
                done = 0
            if done < total:
                self._client_write(OUT_VIEW[done:total].tobytes())
        else:
            self._client_write(OUT_VIEW[:total].tobytes())

    def eof_received(self) -> bool:
        self.conn.upstream_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.upstream_lost(exc)

    def pause_writing(self) -> None:
        self.client_transport.pause_reading()

    def resume_writing(self) -> None:
        self.client_transport.resume_reading()


class ClientSideC(ClientSide):
    """:class:`ClientSide` when the engine's C accelerator runs the loops: decrypting and
    writing to the broker socket is one call (``ServerSession.decrypt_send``)."""

    __slots__ = ()

    def __init__(self, conn: ClientGate, sess: Any, upstream_transport: asyncio.Transport) -> None:
        ClientSide.__init__(self, conn, sess, upstream_transport, sess.decrypt_send)

    def buffer_updated(self, nbytes: int) -> None:
        fd = self._up_fd
        if fd >= 0 and self._up_pending():
            fd = -1  # bytes are queued in the transport: ours go behind them
        try:
            total = self._decrypt(nbytes, fd)
        except TlsError as exc:
            self.conn.close("tls error: " + exc.reason)
            return
        if total:
            self.nbytes += total
            done = _SENT[2] if fd >= 0 else 0
            if done < total:
                self._up_write(OUT_VIEW[done:total].tobytes())
        if self._sess.peer_closed:
            self.conn.client_eof("client sent close_notify")


class UpstreamSideC(UpstreamSide):
    """:class:`UpstreamSide` with encrypting and writing to the client as one C call."""

    __slots__ = ()

    def __init__(self, conn: ClientGate, sess: Any, client_transport: asyncio.Transport) -> None:
        UpstreamSide.__init__(self, conn, sess, client_transport, sess.encrypt_send)

    def buffer_updated(self, nbytes: int) -> None:
        self.nbytes += nbytes
        fd = self._client_fd
        if fd >= 0 and self._client_pending():
            fd = -1
        try:
            total = self._encrypt(nbytes, fd)
        except TlsError as exc:
            self.conn.close("tls error: " + exc.reason)
            return
        done = _SENT[2] if fd >= 0 else 0
        if done < total:
            self._client_write(OUT_VIEW[done:total].tobytes())


_SENT = engine.SENT


def client_side(conn: ClientGate, sess: Any, upstream_transport: asyncio.Transport) -> ClientSide:
    """The client socket's relay protocol for this session (C loops when available)."""
    if engine.ACCEL == "c" and type(sess) is ServerSession:
        return ClientSideC(conn, sess, upstream_transport)
    return ClientSide(conn, sess, upstream_transport)


def upstream_side(conn: ClientGate, sess: Any, client_transport: asyncio.Transport) -> UpstreamSide:
    """The broker socket's protocol for this session (C loops when available)."""
    if engine.ACCEL == "c" and type(sess) is ServerSession:
        return UpstreamSideC(conn, sess, client_transport)
    return UpstreamSide(conn, sess, client_transport)


class Relay:
    """The pair, for byte counters (admin API, access log)."""

    __slots__ = ("client", "upstream")

    def __init__(self, client: ClientSide, upstream: UpstreamSide) -> None:
        self.client = client
        self.upstream = upstream
