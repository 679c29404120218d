"""Handshake steps coalesced under load: a worker busy with new connections runs the TLS work
that arrived within one short window together, instead of one wake-up per client read.

A step is one ``SSL_do_handshake`` on what a client sent (its ClientHello; later its Finished),
plus sending what it produced and, at the end, the gate's post-handshake work. The gate hands
every step to :meth:`HandshakeBatcher.submit`:

* light load -- at most :attr:`HandshakeBatcher.BUSY_STEPS` (4) steps within one ``window``
  (``node.handshake_batch_window``), taking less than half of it -- every step runs at once:
  nothing waits. With the default 2 ms that is up to ~1,000 handshakes per second per worker,
  about half of what a worker does without batching;
* beyond that the worker is busy: the window's further steps join the batch that runs at its
  end, and while batches have at least ``BUSY_STEPS`` steps the next window batches from its
  first step; a smaller batch, or a window without any step (the load fell), ends that. A
  client whose bytes arrive twice before its batch runs is in it once.

Why: on the hs benchmark (50 clients connecting in a loop, one worker; `benchmarks/quick.sh hs`
with `EXTRA_NODE='handshake_batch_window = ...'`), the worker's CPU per new connection was
≈ 500 µs with batching off and ≈ 305-330 µs with 2 ms (the default), and the load tool's and
the broker's CPU per connection fell too: the server flights and CONNACKs leave in bursts, so
the peers (and this worker) sleep and wake once per burst instead of once per message. By
library (`benchmarks/peer_profile.sh hs`, same day, off -> on): OpenSSL 211 -> 145-155 µs per
connection, kernel 139 -> 78-85, the interpreter 143 -> 76-87, uvloop 28 -> 13-15: fewer
wake-ups, and the same code kept warm in the caches across a batch. Running the queued
steps' OpenSSL calls first and their Python after made no further difference; the loop's own
batching (call_soon: two steps per batch) made none at all: the window is what counts. The
price is at most one window of latency per step while busy (two steps per TLS handshake).
``window = 0`` turns it off. Each step still runs to its end on its own (OpenSSL's error queue
is read before the next one starts), and a step that raises closes its own connection only.

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

    #: A window in which more steps than this arrive, or in which the steps run at once take
    #: more than BUSY_SHARE of it, finds the worker busy: the rest of its steps wait for the
    #: window's batch; while batches have at least BUSY_STEPS steps, windows batch from their
    #: first step.
    BUSY_STEPS = 4
    BUSY_SHARE = 0.5

    __slots__ = ("_busy", "_count", "_end", "_loop", "_queue", "_spent", "window")

    def __init__(self, loop: asyncio.AbstractEventLoop, window: float) -> None:
        self._loop = loop
        #: Seconds; 0: every step runs at once.
        self.window = window
        #: Pending steps, in arrival order (a dict: a client is in it once).
        self._queue: dict[Steppable, None] = {}
        #: End of the current window (loop time); steps run at once in it, and their time.
        self._end = 0.0
        self._count = 0
        self._spent = 0.0
        #: The last batch was full (BUSY_STEPS or more): batch from the window's start.
        self._busy = False

    def submit(self, gate: Steppable) -> None:
        queue = self._queue
        if queue:
            queue[gate] = None
            return
        if self.window <= 0:
            self._run(gate, False)
            return
        clock = self._loop.time
        now = clock()
        if now >= self._end:  # a new window; the last one passed without a step: not busy
            self._end = now + self.window
            self._count = 0
            self._spent = 0.0
            self._busy = False
        if not self._busy and self._count < self.BUSY_STEPS \
                and self._spent < self.window * self.BUSY_SHARE:
            try:  # _run, inlined: this is once or twice per connection
                gate.handshake_step(False)
            except Exception as exc:
                self._failed(gate, exc)
            self._count += 1
            self._spent += clock() - now
            return
        queue[gate] = None
        self._loop.call_at(self._end, self._flush)

    def _flush(self) -> None:
        queue = self._queue
        self._queue = {}
        run = self._run
        for gate in queue:
            run(gate, True)
        # the next window starts now; a full batch means the load is still there
        self._end = self._loop.time() + self.window
        self._count = 0
        self._spent = 0.0
        self._busy = len(queue) >= self.BUSY_STEPS

    @classmethod
    def _run(cls, gate: Steppable, batched: bool) -> None:
        try:
            gate.handshake_step(batched)
        except Exception as exc:
            cls._failed(gate, exc)

    @staticmethod
    def _failed(gate: Steppable, exc: Exception) -> None:
        """A bug must cost this connection, not the batch or the worker."""
        log.exception("handshake step failed unexpectedly")
        gate.internal_error(f"internal error in the handshake: {type(exc).__name__}")
