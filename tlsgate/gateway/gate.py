"""One client connection from accept to close: PROXY header -> TLS handshake -> CONNECT gate ->
admission -> broker dial -> relay.

:class:`ClientGate` is the client socket's protocol until the client is admitted; then the
socket's protocol is switched (``transport.set_protocol``) to the relay's
:class:`~tlsgate.gateway.relay.ClientSide`, so the hot path carries none of the state checks
below. The gate object stays the connection's owner: every end (EOF, half-close, error, kick,
shutdown) goes through it, and it writes the access log line exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import ssl
import time
from typing import Any

from ..accesslog import access
from ..mqtt import (
    KEEP,
    Connect,
    ProtocolError,
    ProxyProtocolError,
    Refusal,
    TlsInfo,
    connack_for,
    encode_v1,
    encode_v2,
    parse_connect,
    parse_proxy_header,
    rewrite_connect,
)
from ..tls.engine import IN_VIEW, INBUF, HandshakeError, TlsError
from ..tls.identity import PeerIdentity, peer_identity
from ..tls.revocation_guard import peer_cert_ids
from .listener import ListenerRuntime
from .record import ConnRecord
from .relay import Relay, client_side, upstream_side

log = logging.getLogger("tlsgate.gateway")

# Phases before the relay takes over.
_PROXY, _HANDSHAKE, _POST_HS, _CONNECT, _ADMIT, _RELAY, _CLOSED = range(7)

#: After one side has closed its sending direction, how long the other may keep the
#: connection half-open before it is closed.
HALF_CLOSE_TIMEOUT = 30.0


class ClientGate(asyncio.BufferedProtocol):
    # Slots: one of these lives as long as its connection (idle memory per connection).
    __slots__ = ("client_done", "ctx", "dial_expired", "guard", "held", "live_registered", "lst",
                 "no_close_notify", "over_limit", "peer_cert", "pending", "phase",
                 "proxied_dst", "proxied_src", "rec", "relay", "sess", "t0", "task", "timer",
                 "transport", "upstream_done", "upstream_transport")

    def __init__(self, lst: ListenerRuntime) -> None:
        self.lst = lst
        self.ctx = lst.context
        self.phase = _HANDSHAKE
        self.transport: asyncio.Transport | None = None
        self.sess: Any = None  # ServerSession or GmSession (same interface)
        self.rec: ConnRecord | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.pending = bytearray()
        self.task: asyncio.Task[None] | None = None
        self.over_limit: Refusal | None = None
        self.upstream_transport: asyncio.Transport | None = None
        self.relay: Relay | None = None
        self.client_done = False
        self.upstream_done = False
        self.t0 = 0.0
        #: The verified client certificate, parsed once (None: no certificate).
        self.peer_cert: PeerIdentity | None = None
        self.proxied_src: tuple[str, int] | None = None
        self.proxied_dst: tuple[str, int] | None = None
        #: Revocation guard of the context this client got (None: no check, the usual case).
        self.guard: Any = getattr(self.ctx, "guard", None)
        #: Server handshake output held back while a revocation verdict is pending.
        self.held: bytearray | None = None
        self.no_close_notify = False
        self.live_registered = False
        self.dial_expired = False

    # ---------------------------------------------------------------------- accept
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t: asyncio.Transport = transport  # type: ignore[assignment]
        self.transport = t
        lst = self.lst
        peer = t.get_extra_info("peername") or ("?", 0)
        rec = self.rec = ConnRecord(lst.label, (str(peer[0]), int(peer[1])))
        rec.conn = self
        lst.stats.accepted += 1
        self.t0 = time.monotonic()
        if lst.cfg.proxy_protocol:
            if not lst.trusted_proxies.contains(rec.peer[0]):
                self._drop("proxy_untrusted",
                           f"PROXY header expected but {rec.peer[0]} is not in "
                           "proxy_protocol_trusted")
                return
            self.phase = _PROXY
            self.timer = self.lst.loop.call_later(
                lst.cfg.proxy_protocol_timeout, self._timeout, "proxy_timeout",
                "no complete PROXY header within proxy_protocol_timeout")
            return
        self._admit_tcp()

    def _admit_tcp(self) -> None:
        """Access rules and limits (before any TLS work), then start the handshake."""
        lst, rec = self.lst, self.rec
        assert rec is not None and self.transport is not None
        if not lst.access.allows(rec.peer[0]):
            self._drop("access_denied", "refused by access_rules")
            return
        if lst.active >= lst.hard_limit:
            # Far over max_connections (a flood of sockets that never finish): no TLS state
            # at all for these, just close; the refusal with a CONNACK below costs a handshake.
            self._drop("max_connections", "max_connections far exceeded: closed before TLS")
            return
        lst.registry.add(rec)
        lst.active += 1
        if lst.active > lst.cfg.max_connections:
            self.over_limit = Refusal.QUOTA_EXCEEDED
        elif not lst.rate.allow():
            self.over_limit = Refusal.RATE_EXCEEDED
        self.phase = _HANDSHAKE
        self.sess = self.ctx.new_session(self.transport.write)
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.lst.loop.call_later(
            lst.handshake_timeout, self._timeout, "handshake_timeout",
            "TLS handshake not finished within handshake_timeout")

    def _drop(self, refusal: str, reason: str) -> None:
        """Refuse before TLS: just close (nothing the client could read)."""
        self.lst.stats.refusals[refusal] += 1
        assert self.rec is not None and self.transport is not None
        self.rec.refusal = refusal
        self.phase = _CLOSED
        self.rec.close_reason = reason
        self.rec.closed_at = time.time()
        self.rec.conn = None  # the access log keeps the record until its next batch
        self.transport.abort()
        self._log_access()

    # ---------------------------------------------------------------------- reads
    def get_buffer(self, sizehint: int) -> memoryview:
        return IN_VIEW

    def buffer_updated(self, nbytes: int) -> None:
        phase = self.phase
        try:
            if phase == _HANDSHAKE:
                assert self.sess is not None
                self.sess.feed_in(nbytes)
                # the TLS work itself runs now or with the others that arrived within
                # node.handshake_batch_window (tlsgate.gateway.handshakes)
                self.lst.handshakes.submit(self)
            elif phase == _POST_HS:
                # Waiting for a revocation verdict: keep the ciphertext, touch no TLS state.
                assert self.sess is not None
                self.sess.feed_in(nbytes)
            elif phase in (_CONNECT, _ADMIT):
                assert self.sess is not None
                data = self.sess.read_plain(nbytes)
                if data:
                    self.pending += data
                if phase == _CONNECT:
                    self._try_connect()
                elif len(self.pending) > self.lst.mqtt.max_connect_size + 65536:
                    # a client that floods before its CONNACK: stop reading (bounded memory)
                    assert self.transport is not None
                    self.transport.pause_reading()
                if self.sess.peer_closed and self.phase != _CLOSED:
                    self.close("client sent close_notify before it was admitted")
            elif phase == _PROXY:
                self.pending += INBUF[:nbytes]
                self._try_proxy_header()
        except HandshakeError as exc:
            self._handshake_failed(exc.reason)
        except TlsError as exc:
            self.close("tls error: " + exc.reason)

    def eof_received(self) -> bool | None:
        if self.phase == _HANDSHAKE:
            self._handshake_failed("client closed the connection mid-handshake")
        elif self.phase != _CLOSED:
            self.close("client closed before it was admitted")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.phase == _RELAY:
            return  # the relay protocol reports its own losses
        if self.phase == _HANDSHAKE:
            self._handshake_failed("client closed the connection mid-handshake")
        elif self.phase != _CLOSED:
            self.close("client closed before it was admitted" if exc is None
                       else f"client connection lost: {exc}")

    # ---------------------------------------------------------------------- PROXY header
    def _try_proxy_header(self) -> None:
        try:
            res = parse_proxy_header(bytes(self.pending))
        except ProxyProtocolError as exc:
            self._drop("proxy_header_invalid", f"bad PROXY header: {exc}")
            return
        if res is None:
            return
        hdr, used = res
        rest = bytes(self.pending[used:])
        self.pending.clear()
        if hdr.src is not None and self.rec is not None:
            self.proxied_src, self.proxied_dst = hdr.src, hdr.dst
            self.rec.peer = (hdr.src[0], hdr.src[1])
        self._admit_tcp()
        if rest and self.phase == _HANDSHAKE and self.sess is not None:
            self.sess.feed(rest)
            self.lst.handshakes.submit(self)

    # ---------------------------------------------------------------------- handshake
    def handshake_step(self, batched: bool) -> None:
        """Advance the handshake on what the client has sent (run by the listener's
        :class:`~tlsgate.gateway.handshakes.HandshakeBatcher`, at once or in a batch)."""
        if self.phase != _HANDSHAKE:
            return  # closed (or finished) while the step waited for its batch
        self.lst.stats.handshake_steps[batched] += 1
        try:
            if self.guard is not None:
                self._guarded_step()
            elif self.sess.handshake():
                self._handshake_done()
        except HandshakeError as exc:
            self._handshake_failed(exc.reason)
        except TlsError as exc:
            self.close("tls error: " + exc.reason)

    def internal_error(self, reason: str) -> None:
        self.close(reason)

    def _handshake_failed(self, reason: str) -> None:
        if self.phase == _CLOSED:
            return
        st = self.lst.stats
        st.handshakes["failed", "-"] += 1
        st.handshake_failures[_failure_class(reason)] += 1
        self.close("handshake failed: " + reason)

    def _guarded_step(self) -> None:
        """A handshake step under a revocation guard: once the guard may need to wait for a
        CRL/OCSP fetch, hold back everything the server writes (see
        tlsgate.tls.revocation_guard), so a refusal can still be an alert the client reads."""
        sess, guard = self.sess, self.guard
        assert sess is not None and self.transport is not None
        try:
            done = sess.handshake_step()
        except HandshakeError:
            self.held = None
            self.transport.write(sess.take_output())  # OpenSSL's own alert
            raise
        out = sess.take_output()
        if self.held is not None or done or guard.pending(sess.conn):
            if self.held is None:
                self.held = bytearray()
            self.held += out
        elif out:
            self.transport.write(out)
        if done:
            self._handshake_done()

    def _handshake_done(self) -> None:
        sess, rec, lst = self.sess, self.rec, self.lst
        assert sess is not None and rec is not None and self.timer is not None
        self.timer.cancel()
        elapsed = time.monotonic() - self.t0
        rec.handshake_ms = round(elapsed * 1000, 3)
        (rec.tls_version, rec.cipher, rec.group, rec.server_name,
         rec.session_reused) = sess.established()
        if lst.alpn:  # only asked when ALPN is configured (a pyOpenSSL call per connection)
            alpn = sess.alpn
            rec.alpn = alpn.decode("ascii", "replace") if alpn else None
        # The connect timer also bounds a pending revocation verdict.
        self.timer = self.lst.loop.call_later(
            lst.mqtt.connect_timeout, self._timeout, "connect_timeout",
            "no complete CONNECT within connect_timeout")
        guard = self.guard
        if guard is not None:
            verdict = guard.check_now(sess.conn)
            if verdict is None:
                self.phase = _POST_HS
                assert self.transport is not None
                self.transport.pause_reading()
                self.task = self.lst.loop.create_task(
                    self._resolve(), name=f"revocation verdict {rec.id}")
                return
            if not self._verdict(verdict):
                return
        self._handshake_accepted(elapsed)

    async def _resolve(self) -> None:
        assert self.sess is not None and self.transport is not None
        verdict = await self.guard.resolve(self.sess.conn)
        self.task = None
        if self.phase != _POST_HS or not self._verdict(verdict):
            return
        self.transport.resume_reading()
        assert self.rec is not None
        self._handshake_accepted((self.rec.handshake_ms or 0.0) / 1000)

    def _verdict(self, verdict: Any) -> bool:
        """Send the held handshake bytes (allowed) or the alert instead (refused)."""
        assert self.transport is not None
        held, self.held = self.held, None
        if verdict.allow:
            if held:
                self.transport.write(bytes(held))
            return True
        if verdict.alert_record:
            self.transport.write(verdict.alert_record)
        self.no_close_notify = True  # the keys the client holds no longer match ours
        st = self.lst.stats
        st.handshakes["failed", (self.rec.tls_version if self.rec else None) or "-"] += 1
        st.handshake_failures[_failure_class(verdict.reason)] += 1
        self.close("handshake failed: " + verdict.reason)
        return False

    def _handshake_accepted(self, elapsed: float) -> None:
        sess, rec, lst = self.sess, self.rec, self.lst
        assert sess is not None and rec is not None
        st = lst.stats
        st.handshakes["ok", rec.tls_version or "-"] += 1
        if rec.cipher:
            st.ciphers[rec.cipher] += 1
        if rec.group:
            st.groups[rec.group] += 1
        if rec.session_reused:
            st.resumed += 1
        st.observe_handshake(elapsed)
        if self.ctx.opts.verify == "verify_peer":
            der = sess.peer_cert_der
            if der is not None:
                # parsed once: subject and CN here, the identity mappings at CONNECT
                ident = self.peer_cert = peer_identity(der)
                rec.cert_subject = ident.dn
                rec.cert_cn = ident.cn_text
        if lst.psk_identity_of is not None:
            rec.psk_identity = lst.psk_identity_of(sess)
        self.phase = _CONNECT
        data = sess.read_plain()
        if data:
            self.pending += data
            self._try_connect()

    def refresh_ticket(self) -> bool:
        """Send the client a fresh TLS 1.3 session ticket (tlsgate.gateway.tickets decides
        when). Only while relaying, both directions open, and not for TLS-PSK (a resumed PSK
        session is refused); False when no ticket was sent."""
        t = self.transport
        if self.phase != _RELAY or t is None or t.is_closing() or self.client_done \
                or self.upstream_done or self.rec is None or self.rec.psk_identity:
            return False
        new_ticket = getattr(self.sess, "new_ticket", None)  # not on 国密 sessions
        if new_ticket is None:
            return False
        try:
            sent = bool(new_ticket())
        except Exception:  # a bug must cost one ticket, never the sweep
            log.exception("session ticket for connection %s failed", self.rec.id)
            return False
        if sent:
            self.lst.stats.tickets_refreshed += 1
        return sent

    # ---------------------------------------------------------------------- CONNECT
    def _try_connect(self) -> None:
        if not self.pending:
            return
        try:
            res = parse_connect(self.pending, self.lst.mqtt.max_connect_size)
        except ProtocolError as exc:
            self.refuse(exc.refusal, exc.protocol_level, "bad CONNECT: " + exc.message,
                        "bad_connect")
            return
        if res is None:
            return
        connect, used = res
        del self.pending[:used]
        rec = self.rec
        assert rec is not None and self.transport is not None
        rec.mqtt_version = connect.protocol_level
        rec.client_id = connect.client_id.decode("utf-8", "replace")
        rec.username = (connect.username.decode("utf-8", "replace")
                        if connect.username is not None else None)
        if self.over_limit is not None:
            which = "max_connections" if self.over_limit is Refusal.QUOTA_EXCEEDED \
                else "max_conn_rate"
            self.refuse(self.over_limit, connect.protocol_level, f"{which} reached", which)
            return
        try:
            # before the admission checks: they see the mapped user name (bans, auth)
            first = self._mapped_connect(connect)
        except Exception as exc:  # a bug must cost one connection, never the process
            self._internal_error(connect, exc)
            return
        self.phase = _ADMIT
        self.transport.pause_reading()
        # Straight to the dial when no admission check is installed (the usual case): one
        # coroutine less per connection.
        self.task = self.lst.loop.create_task(
            self._admit(connect, first) if self.lst.admission else self._dial(connect, first),
            name=f"admit {rec.id}")

    def _mapped_connect(self, connect: Connect) -> bytes:
        """Apply peer_cert_as_username/clientid and psk_identity_as_username."""
        mqtt, rec = self.lst.mqtt, self.rec
        assert rec is not None
        username: Any = KEEP
        client_id: Any = KEEP
        ident = self.peer_cert
        if ident is not None:
            if mqtt.peer_cert_as_username != "disabled":
                value = ident.value(mqtt.peer_cert_as_username)
                if value is not None:
                    username = value
            if mqtt.peer_cert_as_clientid != "disabled":
                value = ident.value(mqtt.peer_cert_as_clientid)
                if value is not None:
                    client_id = value
        if mqtt.psk_identity_as_username and rec.psk_identity is not None:
            username = rec.psk_identity.encode()
        if username is KEEP and client_id is KEEP:
            return connect.raw
        if username is not KEEP:
            rec.username = username.decode("utf-8", "replace")
        if client_id is not KEEP:
            rec.client_id = client_id.decode("utf-8", "replace")
        return rewrite_connect(connect, username=username, client_id=client_id)

    def _internal_error(self, connect: Connect, exc: Exception) -> None:
        """An unexpected exception while admitting: log it, refuse this client."""
        log.exception("admitting connection %s failed", self.rec.id if self.rec else "?")
        self.refuse(Refusal.SERVER_UNAVAILABLE, connect.protocol_level,
                    f"internal error: {exc}", "internal_error")

    async def _admit(self, connect: Connect, first: bytes) -> None:
        """The admission checks (authentication...), then the dial."""
        rec, lst = self.rec, self.lst
        assert rec is not None
        try:
            for check in lst.admission:
                verdict = await check(rec, connect)
                if verdict is not None:
                    refusal, why = verdict
                    self.refuse(refusal, connect.protocol_level, why, refusal.name.lower())
                    return
        except asyncio.CancelledError:
            self.task = None
            raise
        except Exception as exc:  # a bug must cost one connection, never the process
            self._internal_error(connect, exc)
            self.task = None
            return
        await self._dial(connect, first)

    async def _dial(self, connect: Connect, first: bytes) -> None:
        """Dial the broker, then hand both sockets to the relay (the admission task's end)."""
        lst, rec, sess = self.lst, self.rec, self.sess
        assert rec is not None and sess is not None and self.transport is not None
        try:
            up = lst.upstream
            host, port = lst.upstream_addr
            loop = lst.loop
            client_t = self.transport
            tls = lst.upstream_tls
            extra: dict[str, Any] = {}
            if tls is not None:
                # TLS towards the broker: uvloop's own TLS transport does it (the upstream
                # side is one connection per client, not the hot path this module optimises).
                extra = {"ssl": tls.context, "server_hostname": tls.server_hostname(host),
                         "ssl_handshake_timeout": up.connect_timeout}
            # upstream.connect_timeout as a plain timer that cancels this task:
            # asyncio.timeout() costs ~15 µs per connection (measured), a timer ~1 µs.
            self.dial_expired = False
            timer = loop.call_later(up.connect_timeout, self._dial_timeout)
            try:
                transport, upstream = await loop.create_connection(
                    lambda: upstream_side(self, sess, client_t), host, port, **extra)
            except (asyncio.CancelledError, OSError) as exc:
                if isinstance(exc, asyncio.CancelledError):
                    if not self.dial_expired:
                        raise  # cancelled from outside (the client left, shutdown)
                    task = asyncio.current_task()
                    if task is not None:
                        task.uncancel()
                    what = "timed out"
                elif isinstance(exc, TimeoutError):  # the TLS handshake towards the broker
                    what = "timed out"
                elif isinstance(exc, ssl.SSLError):
                    detail = getattr(exc, "verify_message", None) or exc.reason or str(exc)
                    what = f"TLS to the broker failed: {detail}"
                else:
                    what = exc.strerror or str(exc)
                self.refuse(Refusal.SERVER_UNAVAILABLE, connect.protocol_level,
                            f"broker {up.address} unreachable: {what}", "upstream_unavailable")
                return
            finally:
                timer.cancel()
            if self.phase != _ADMIT:  # the client went away while we dialled
                transport.close()
                return
            self._start_relay(transport, upstream, first)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must cost one connection, never the process
            self._internal_error(connect, exc)
        finally:
            self.task = None

    def _start_relay(self, transport: asyncio.Transport, upstream: Any, first: bytes) -> None:
        lst, rec, sess, client_t = self.lst, self.rec, self.sess, self.transport
        assert rec is not None and client_t is not None
        self.upstream_transport = transport
        up = lst.upstream
        if up.proxy_protocol != "none":
            transport.write(self._proxy_header(transport))
        transport.write(first)
        if self.pending:
            transport.write(bytes(self.pending))
            self.pending = bytearray()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.guard is not None:
            opts = self.ctx.opts
            if getattr(opts, "close_revoked_connections", False) and lst.revocation is not None:
                lst.revocation.live.register(rec.id,
                                             peer_cert_ids(sess.conn, opts.crl_check_depth))
                self.live_registered = True
        if hasattr(sess, "release_wrapper"):
            sess.release_wrapper()
        client = client_side(self, sess, transport)
        self.relay = Relay(client, upstream)
        rec.relay = self.relay
        self.phase = _RELAY
        lst.stats.connections_total += 1
        client_t.set_protocol(client)
        client_t.resume_reading()

    def _dial_timeout(self) -> None:
        """upstream.connect_timeout passed while dialling: cancel the admission task (its
        ``_dial`` tells this from other cancellations by ``dial_expired``)."""
        if self.task is not None and self.phase == _ADMIT:
            self.dial_expired = True
            self.task.cancel()

    def _proxy_header(self, upstream_t: asyncio.Transport) -> bytes:
        mode = self.lst.upstream.proxy_protocol
        if mode == "none":
            return b""
        rec = self.rec
        assert rec is not None and self.transport is not None
        src = self.proxied_src or rec.peer
        sockname = self.transport.get_extra_info("sockname")
        dst = self.proxied_dst or (str(sockname[0]), int(sockname[1]))
        if mode == "v1":
            return encode_v1(src, dst)
        tls = TlsInfo(version=rec.tls_version or "", cipher=rec.cipher or "",
                      sni=rec.server_name,
                      alpn=rec.alpn.encode() if rec.alpn else None,
                      cn=rec.cert_cn, client_cert_present=self.peer_cert is not None,
                      # peer_cert is only read under verify_peer, i.e. it was verified
                      client_cert_verified=self.peer_cert is not None,
                      session_reused=rec.session_reused)
        return encode_v2(src, dst, tls)

    # ---------------------------------------------------------------------- refusals, timeouts
    def refuse(self, refusal: Refusal, level: int | None, reason: str, metric: str) -> None:
        """Answer with a CONNACK for the client's MQTT version (if known), then close."""
        if self.phase == _CLOSED:
            return
        rec = self.rec
        assert rec is not None
        self.lst.stats.refusals[metric] += 1
        rec.refusal = metric
        packet = connack_for(level, refusal, reason_string=reason if level == 5 else None)
        if packet is not None and self.sess is not None and self.transport is not None:
            with contextlib.suppress(TlsError):
                self.transport.write(self.sess.encrypt(packet))
        self.close(f"refused: {reason}")

    def _timeout(self, metric: str, reason: str) -> None:
        self.timer = None
        if self.phase == _CLOSED or self.phase == _RELAY:
            return
        if metric == "handshake_timeout":
            self.lst.stats.handshake_failures["timeout"] += 1
        self.lst.stats.refusals[metric] += 1
        assert self.rec is not None
        self.rec.refusal = metric
        self.close(reason)

    # ---------------------------------------------------------------------- ends
    def client_eof(self, reason: str) -> None:
        """The client will send no more (close_notify or TCP FIN)."""
        if self.client_done or self.phase == _CLOSED:
            return
        self.client_done = True
        if self.upstream_done:
            self.close(reason)
            return
        up = self.upstream_transport
        if up is not None and up.can_write_eof():
            up.write_eof()
        self._half_close_timer(reason)

    def upstream_eof(self) -> None:
        """The broker will send no more: pass its close on as close_notify + FIN."""
        if self.upstream_done or self.phase == _CLOSED:
            return
        self.upstream_done = True
        if self.client_done:
            self.close("broker closed")
            return
        if self.sess is not None:
            self.sess.close_notify()
        ct = self.transport
        if ct is not None and ct.can_write_eof():
            ct.write_eof()
        self._half_close_timer("broker closed")

    def _half_close_timer(self, reason: str) -> None:
        if self.timer is None:
            self.timer = self.lst.loop.call_later(
                HALF_CLOSE_TIMEOUT, self.close, reason + " (half-close timed out)")

    def client_lost(self, exc: Exception | None) -> None:
        if self.phase != _CLOSED:  # usually closed already: then no reason to word
            self.close(_lost("client", exc))

    def upstream_lost(self, exc: Exception | None) -> None:
        if self.phase != _CLOSED:
            self.close(_lost("broker", exc))

    def close(self, reason: str) -> None:
        """Close both sockets (flushing what is buffered, with close_notify) and log once."""
        if self.phase == _CLOSED:
            return
        self.phase = _CLOSED
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()
            self.task = None
        if self.sess is not None and self.transport is not None and \
                not self.no_close_notify and self.held is None and \
                not self.transport.is_closing():
            # not contextlib.suppress: that is a context manager object per connection
            try:  # noqa: SIM105
                self.sess.close_notify()
            except Exception:  # closing anyway
                pass
        if self.transport is not None:
            self.transport.close()
        if self.upstream_transport is not None:
            self.upstream_transport.close()
        self._finish(reason)

    def _finish(self, reason: str) -> None:
        self.phase = _CLOSED
        rec, lst = self.rec, self.lst
        if rec is None or rec.closed_at is not None:
            return
        rec.close_reason = reason
        rec.closed_at = time.time()
        if self.relay is not None:
            rec.bytes_in += self.relay.client.nbytes
            rec.bytes_out += self.relay.upstream.nbytes
            lst.stats.bytes_in += self.relay.client.nbytes
            lst.stats.bytes_out += self.relay.upstream.nbytes
            rec.relay = None
            self.relay = None
        if self.sess is not None:
            lst.active -= 1
            lst.registry.remove(rec)
        if self.live_registered and lst.revocation is not None:
            lst.revocation.live.unregister(rec.id)
        rec.conn = None
        self._log_access()

    def _log_access(self) -> None:
        rec = self.rec
        assert rec is not None
        if access.enabled:
            access.write_entry(rec)


def _lost(who: str, exc: Exception | None) -> str:
    """The access log's reason for a connection the other end ended."""
    if exc is None or (isinstance(exc, OSError)
                       and exc.errno in (errno.ENOTCONN, errno.EPIPE, errno.ESHUTDOWN)):
        return f"{who} closed"
    if isinstance(exc, ConnectionResetError):
        return f"{who} reset the connection"
    return f"{who} connection lost: {exc}"


def _failure_class(reason: str) -> str:
    """A short label for the metrics: what kind of handshake failure this was."""
    r = reason.lower()
    for needle, label in (
        ("did not speak tls", "not_tls"), ("plain http", "not_tls"),
        ("no certificate", "no_client_cert"), ("sent no certificate", "no_client_cert"),
        ("expired", "cert_expired"), ("revoked", "cert_revoked"),
        ("unable to get local issuer", "unknown_ca"), ("unknown ca", "unknown_ca"),
        ("self-signed", "unknown_ca"), ("verify failed", "bad_client_cert"),
        ("tls versions", "protocol_version"), ("cipher", "no_shared_cipher"),
        ("mid-handshake", "client_closed"), ("psk", "psk"), ("timeout", "timeout"),
    ):
        if needle in r:
            return label
    return "other"
