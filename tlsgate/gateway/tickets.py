"""Fresh TLS 1.3 session tickets for connections that outlive their ticket.

An MQTT client connects once and stays connected for days. The ticket it got with its CONNACK
stops resuming after ``ssl_options.session_lifetime``, and at the second ticket-key rotation
after it was made (``node.session_ticket_key_rotation``; at the first where the previous key
cannot be accepted) whatever its age. When such a client loses its
connection -- a network blip, a load balancer or broker restart, usually for many clients at
once -- it would then need a full handshake. TLS 1.3 lets the server send a new ticket at any
time after the handshake (RFC 8446 §4.6.1); this module decides when, so the newest ticket a
connected client holds always resumes:

* each listener is swept every third of its ``session_lifetime`` (at most once a second);
  a sweep sends one ticket to every connection admitted before the *previous* sweep, so a
  connection's newest ticket is never older than two thirds of the lifetime, and a connection
  younger than one period (it still has its handshake's ticket) gets none;
* right after a key rotation, every connection admitted before it gets one (its ticket was made
  with the old key) -- unless the previous period's key is still accepted
  (tlsgate.tls.unbound's ticket-key callback) and the sweeps come at least once per rotation
  period: then the next sweep replaces that ticket well before it stops resuming, and the
  fleet is spared a ticket to every connection at the same instant on every node;
* after the node adopts another secret (cluster), every connection admitted before gets one.

Work is spread: connections are handled :data:`BATCH` per event-loop turn, so a sweep over
100,000 connections never holds up the relay for long (a ticket costs ~10 µs of CPU and
~250 bytes on the wire). Which connections can take one is the gate's call
(:meth:`~tlsgate.gateway.gate.ClientGate.refresh_ticket`: relaying, TLS 1.3, not TLS-PSK).
No I/O of its own; the worker's one-second timer calls :meth:`TicketRefresher.tick`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable

from .listener import ListenerRuntime
from .record import ConnRecord

#: Connections handled per event-loop turn.
BATCH = 500
#: Shortest sweep period (a lifetime of a few seconds is for tests).
MIN_PERIOD = 1.0


def refresh_period(lst: ListenerRuntime) -> float | None:
    """How often ``lst`` is swept, or None when its tickets are not refreshed."""
    opts = getattr(lst.context, "opts", None)
    if opts is None or not (getattr(opts, "session_ticket_refresh", False)
                            and opts.reuse_sessions and opts.session_tickets > 0):
        return None
    return max(MIN_PERIOD, float(opts.session_lifetime) / 3)


class TicketRefresher:
    def __init__(self, listeners: Callable[[], Iterable[ListenerRuntime]]) -> None:
        self._listeners = listeners
        #: listener label -> when it was last swept (or started being watched)
        self._last: dict[str, float] = {}
        self._queue: deque[ConnRecord] = deque()
        self._queued: set[str] = set()  # ids in the queue (a sweep and a re-key may overlap)
        self._draining: asyncio.Handle | None = None

    def tick(self, now: float) -> None:
        """Sweep the listeners that are due (called about once a second)."""
        seen = set()
        for lst in self._listeners():
            label = lst.label
            seen.add(label)
            period = refresh_period(lst)
            last = self._last.get(label)
            if period is None:
                self._last.pop(label, None)
            elif last is None:
                self._last[label] = now
            elif now - last >= period - 0.1:  # the 1-s tick may land a hair early
                self._last[label] = now
                self._enqueue(lst, last)
        for label in set(self._last) - seen:
            del self._last[label]

    def after_rekey(self, now: float, grace: float = 0.0) -> None:
        """New ticket keys were installed: every connection admitted before now gets a ticket
        made with them. ``grace``: the keys rotated with the previous key still accepted for
        this long (the rotation period); listeners swept at least that often are left to
        their next sweep."""
        for lst in self._listeners():
            period = refresh_period(lst)
            if period is not None and not (grace and period <= grace):
                self._last[lst.label] = now
                self._enqueue(lst, now)

    def stop(self) -> None:
        self._queue.clear()
        self._queued.clear()
        if self._draining is not None:
            self._draining.cancel()
            self._draining = None

    def pending(self) -> int:
        return len(self._queue)

    def _enqueue(self, lst: ListenerRuntime, before: float) -> None:
        label, queued = lst.label, self._queued
        for rec in lst.registry:
            if rec.listener == label and rec.started < before and rec.id not in queued:
                queued.add(rec.id)
                self._queue.append(rec)
        if self._queue and self._draining is None:
            self._draining = lst.loop.call_soon(self._drain, lst.loop)

    def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        self._draining = None
        queue = self._queue
        for _ in range(min(BATCH, len(queue))):
            rec = queue.popleft()
            self._queued.discard(rec.id)
            gate = rec.conn
            if gate is not None:
                gate.refresh_ticket()
        if queue:
            self._draining = loop.call_soon(self._drain, loop)
