"""A bare TLS forwarder on tlsgate's own engine: the floor of this architecture per connection.

A measuring device, not a product: TLS on 127.0.0.1:$CAND_PORT with $BENCH_CERTS/server.crt +
server.key, plaintext to 127.0.0.1:1883, using the same context builder, ServerSession, shared
buffers and C relay loops as tlsgate -- and nothing else: no MQTT gate (the CONNECT is forwarded
unread), no limits, timers, access log, metrics, registry, half-close or error reporting.
What tlsgate costs per connection above this is what its gate does in Python.
BARE_BATCH=0.002 runs the handshake steps through tlsgate's HandshakeBatcher with that window
(seconds), as tlsgate does by default (node.handshake_batch_window); unset: every step at once.

    BENCH_CERTS=... CAND_PORT=18005 .venv/bin/python benchmarks/bare_forwarder.py
    benchmarks/quick.sh runs it instead of tlsgate with SERVE=benchmarks/bare_forwarder.py
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import uvloop

from tlsgate.config.schema import ServerSslOptions
from tlsgate.gateway.handshakes import HandshakeBatcher
from tlsgate.server.sockets import tune_malloc
from tlsgate.tls import engine
from tlsgate.tls.context import build_server_context
from tlsgate.tls.engine import IN_VIEW, OUT_VIEW, TlsError

_SENT = engine.SENT


class Upstream(asyncio.BufferedProtocol):
    def __init__(self, client: Client) -> None:
        self.client = client

    def get_buffer(self, sizehint: int) -> memoryview:
        return IN_VIEW

    def buffer_updated(self, nbytes: int) -> None:
        c = self.client
        total = c.sess.encrypt_send(nbytes, c.fd)
        done = _SENT[2]
        if done < total:
            c.transport.write(OUT_VIEW[done:total].tobytes())

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.transport.close()


class Client(asyncio.BufferedProtocol):
    def __init__(self, ctx: Any, batcher: HandshakeBatcher) -> None:
        self.ctx = ctx
        self.batcher = batcher
        self.up: asyncio.Transport | None = None
        self.up_fd = -1
        self.pending = b""
        self.done = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.fd = transport.get_extra_info("socket").fileno()
        self.sess = self.ctx.new_session(transport.write)

    def get_buffer(self, sizehint: int) -> memoryview:
        return IN_VIEW

    def buffer_updated(self, nbytes: int) -> None:
        try:
            if self.up is not None:
                total = self.sess.decrypt_send(nbytes, self.up_fd)
                if _SENT[2] < total:
                    self.up.write(OUT_VIEW[_SENT[2]:total].tobytes())
            elif not self.done:
                self.sess.feed_in(nbytes)
                self.batcher.submit(self)
            else:
                self.pending += self.sess.read_plain(nbytes)
        except TlsError:
            self.transport.close()

    def handshake_step(self, batched: bool) -> None:
        if self.done or self.transport.is_closing():
            return
        try:
            if self.sess.handshake():
                self.done = True
                self.pending += self.sess.read_plain()
                asyncio.get_running_loop().create_task(self.dial())
        except TlsError:
            self.transport.close()

    def internal_error(self, reason: str) -> None:
        self.transport.close()

    async def dial(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            up, _ = await loop.create_connection(lambda: Upstream(self), "127.0.0.1", 1883)
        except OSError:
            self.transport.close()
            return
        self.up = up
        self.up_fd = up.get_extra_info("socket").fileno()
        if self.pending:
            up.write(self.pending)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.up is not None:
            self.up.close()


async def main() -> None:
    certs = os.environ["BENCH_CERTS"]
    opts = ServerSslOptions(certfile=f"{certs}/server.crt", keyfile=f"{certs}/server.key")
    ctx = build_server_context(opts, "listeners.ssl.bare")
    loop = asyncio.get_running_loop()
    port = int(os.environ.get("CAND_PORT", "18005"))
    batcher = HandshakeBatcher(loop, float(os.environ.get("BARE_BATCH", "0")))
    srv = await loop.create_server(lambda: Client(ctx, batcher), "127.0.0.1", port, backlog=4096,
                                   reuse_address=True)
    async with srv:
        await srv.serve_forever()


if __name__ == "__main__":
    tune_malloc()
    engine.self_check()
    uvloop.run(main())
