"""Handshake steps coalesced under load: a worker busy with new connections runs the TLS work
that arrived within one short window together, instead of one wake-up per client read.

A step is one ``SSL_do_handshake`` on what a client sent (its ClientHello; later its Finished),
plus sending what it produced and, at the end, the gate's post-handshake work. The gate hands
every step to :meth:`HandshakeBatcher.submit`:

* when no step has run within the last ``window`` (``node.handshake_batch_window``), the step
  runs at once: a lone client, or light load, waits for nothing;
* otherwise it joins the pending batch, which runs one ``window`` after the previous one; a
  client whose bytes arrive twice before that is in it once.

Why: on the hs benchmark (50 clients connecting in a loop, one worker; `benchmarks/quick.sh hs`
with `EXTRA_NODE='handshake_batch_window = ...'`), the worker's CPU per new connection was
≈ 500 µs with batching off, ≈ 332 with 1 ms and ≈ 305 with 2 ms (the default), and the load
tool's and the broker's CPU per connection fell too: the server flights and CONNACKs leave in
bursts, so the peers (and this worker) sleep and wake once per burst instead of once per
message. With fewer handshakes in flight the saving shrinks (a third with 20 clients, a few per
cent with 5): it grows with the load, which is when CPU per handshake matters (a fleet
reconnecting after an outage). The price is at most one window of latency per step under load
(two steps per TLS handshake). ``window = 0`` turns it off. Each step still runs to its end on
its own (OpenSSL's error queue is read before the next one starts), and a step that raises
closes its own connection only.

No I/O of its own: the loop's clock and ``call_at``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

log = logging.getLogger("tlsgate.gateway")


class Steppable(Protocol):
    def handshake_step(self, batched: bool) -> None:
        """Run the handshake on what the client has sent so far (never raises for a TLS
        problem: the connection is closed with its reason); ``batched``: in a batch, not at
        once (for the metrics)."""

    def internal_error(self, reason: str) -> None:
        """Close this connection after an unexpected exception in its step."""


class HandshakeBatcher:
    """One per worker (event loop), shared by its listeners."""

    __slots__ = ("_loop", "_next", "_queue", "window")

    def __init__(self, loop: asyncio.AbstractEventLoop, window: float) -> None:
        self._loop = loop
        #: Seconds; 0: every step runs at once.
        self.window = window
        #: Pending steps, in arrival order (a dict: a client is in it once).
        self._queue: dict[Steppable, None] = {}
        #: Loop time before which a new step joins the next batch instead of running.
        self._next = 0.0

    def submit(self, gate: Steppable) -> None:
        queue = self._queue
        if queue:
            queue[gate] = None
            return
        now = self._loop.time()
        if now >= self._next:
            self._run(gate, False)
            self._next = self._loop.time() + self.window
            return
        queue[gate] = None
        self._loop.call_at(self._next, self._flush)

    def _flush(self) -> None:
        queue = self._queue
        self._queue = {}
        run = self._run
        for gate in queue:
            run(gate, True)
        self._next = self._loop.time() + self.window

    @staticmethod
    def _run(gate: Steppable, batched: bool) -> None:
        try:
            gate.handshake_step(batched)
        except Exception as exc:  # a bug must cost this connection, not the whole batch
            log.exception("handshake step failed unexpectedly")
            gate.internal_error(f"internal error in the handshake: {type(exc).__name__}")
