"""tlsgate.gateway.tickets: which live connections get a fresh session ticket, and when.

The refresher's clock is passed in, so the schedule is checked without waiting. What it calls on
a connection is the gate's ``refresh_ticket``; here a recording stand-in takes the gate's place
(the real one, sending a real ticket, is covered by tests/unit/test_ticket_keys.py and the e2e
test in tests/e2e/test_mqtt_gate.py). The listener is a stand-in with the four attributes the
refresher reads; the registry, records and options are the real classes.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from tlsgate.config.schema import ServerSslOptions
from tlsgate.gateway import tickets
from tlsgate.gateway.record import ConnRecord
from tlsgate.gateway.registry import Registry
from tlsgate.gateway.tickets import TicketRefresher, refresh_period


class RecordingGate:
    """Stands in for ClientGate: counts refresh_ticket calls."""

    def __init__(self) -> None:
        self.tickets = 0

    def close(self, reason: str) -> None:
        pass

    def refresh_ticket(self) -> bool:
        self.tickets += 1
        return True


def _listener(registry: Registry, label: str = "ssl:t", **opts: Any) -> Any:
    o = ServerSslOptions(certfile="c.pem", keyfile="k.pem", **opts)
    return SimpleNamespace(label=label, context=SimpleNamespace(opts=o), registry=registry,
                           loop=asyncio.get_running_loop())


def _conn(registry: Registry, started: float, label: str = "ssl:t") -> RecordingGate:
    rec = ConnRecord(label, ("127.0.0.1", 1))
    rec.started = started
    gate = RecordingGate()
    rec.conn = gate
    registry.add(rec)
    return gate


async def _settle(r: TicketRefresher) -> None:
    for _ in range(100):
        if not r.pending():
            return
        await asyncio.sleep(0)
    raise AssertionError("the queue did not drain")


def test_refresh_period_follows_the_options() -> None:
    async def main() -> None:
        reg = Registry()
        assert refresh_period(_listener(reg, session_lifetime="30s")) == 10.0
        assert refresh_period(_listener(reg, session_lifetime="1s")) == tickets.MIN_PERIOD
        assert refresh_period(_listener(reg, session_ticket_refresh=False)) is None
        assert refresh_period(_listener(reg, reuse_sessions=False)) is None
        assert refresh_period(_listener(reg, session_tickets=0)) is None
        assert refresh_period(SimpleNamespace(context=None)) is None  # type: ignore[arg-type]

    asyncio.run(main())


def test_each_sweep_covers_connections_admitted_before_the_previous_one() -> None:
    """Period 10 s: a connection gets its first fresh ticket at the second sweep after it was
    admitted (never later than two periods), then one per sweep."""
    async def main() -> None:
        reg = Registry()
        lst = _listener(reg, session_lifetime="30s")
        r = TicketRefresher(lambda: [lst])
        old = _conn(reg, started=-5.0)
        r.tick(0.0)       # starts watching: nothing yet
        young = _conn(reg, started=5.0)
        r.tick(9.0)       # not due
        await _settle(r)
        assert (old.tickets, young.tickets) == (0, 0)
        r.tick(10.0)      # due: connections admitted before 0.0
        await _settle(r)
        assert (old.tickets, young.tickets) == (1, 0)
        r.tick(15.0)
        r.tick(20.0)      # admitted before 10.0
        await _settle(r)
        assert (old.tickets, young.tickets) == (2, 1)

    asyncio.run(main())


def test_a_rekey_refreshes_every_connection_admitted_before_it_once() -> None:
    async def main() -> None:
        reg = Registry()
        lst = _listener(reg, session_lifetime="30s")
        other = _listener(reg, label="ssl:off", session_ticket_refresh=False)
        r = TicketRefresher(lambda: [lst, other])
        r.tick(0.0)
        a, b = _conn(reg, started=1.0), _conn(reg, started=2.0)
        off = _conn(reg, started=1.0, label="ssl:off")
        r.tick(10.0)      # a sweep due (covers nothing: both admitted after 0.0) ...
        r.after_rekey(10.0)  # ... and the rotation at the same instant: one ticket each
        await _settle(r)
        assert (a.tickets, b.tickets, off.tickets) == (1, 1, 0)
        late = _conn(reg, started=11.0)
        r.tick(19.0)      # the rotation restarted the period
        await _settle(r)
        assert (a.tickets, late.tickets) == (1, 0)
        r.tick(20.0)
        await _settle(r)
        assert (a.tickets, b.tickets, late.tickets, off.tickets) == (2, 2, 0, 0)

    asyncio.run(main())


def test_a_rotation_with_the_previous_key_accepted_waits_for_the_sweep() -> None:
    """after_rekey(grace=rotation period): where the sweep comes at least once per rotation
    period, the connections' tickets (made with the previous key, still accepted for a period)
    are left to the next sweep instead of all getting one at the boundary; a listener swept
    less often than that still gets them at once, and so does a change of secret (no grace)."""
    async def main() -> None:
        reg = Registry()
        swept = _listener(reg, session_lifetime="30s")  # swept every 10 s
        slow = _listener(reg, label="ssl:slow", session_lifetime="1h")  # every 20 min
        r = TicketRefresher(lambda: [swept, slow])
        r.tick(0.0)
        a = _conn(reg, started=1.0)
        s = _conn(reg, started=1.0, label="ssl:slow")
        r.after_rekey(5.0, grace=60.0)  # a rotation every minute
        await _settle(r)
        assert (a.tickets, s.tickets) == (0, 1)
        r.tick(10.0)  # the sweeps on their usual schedule (this one: a still has its
        r.tick(20.0)  # handshake's ticket; this one covers it)
        await _settle(r)
        assert (a.tickets, s.tickets) == (1, 1)
        r.after_rekey(22.0)  # a new secret: no grace
        await _settle(r)
        assert (a.tickets, s.tickets) == (2, 2)

    asyncio.run(main())


def test_large_sweeps_are_spread_over_loop_turns(monkeypatch: Any) -> None:
    async def main() -> None:
        monkeypatch.setattr(tickets, "BATCH", 100)
        reg = Registry()
        lst = _listener(reg, session_lifetime="30s")
        r = TicketRefresher(lambda: [lst])
        gates = [_conn(reg, started=0.0) for _ in range(250)]
        r.after_rekey(1.0)
        assert r.pending() == 250
        await asyncio.sleep(0)
        assert r.pending() == 150  # one batch per turn
        await _settle(r)
        assert all(g.tickets == 1 for g in gates)
        r.after_rekey(2.0)
        r.stop()                   # shutdown: the queue is dropped
        await asyncio.sleep(0)
        assert r.pending() == 0 and all(g.tickets == 1 for g in gates)

    asyncio.run(main())


def test_the_gateway_passes_the_grace_only_for_a_rotation(monkeypatch: Any) -> None:
    """Gateway._rekey_listeners: a plain rotation tells the refresher the previous key is still
    accepted for a rotation period (when the ticket-key callback exists); a change of secret,
    or no callback, does not."""
    from tlsgate.config import parse
    from tlsgate.server.app import Gateway
    from tlsgate.tls import unbound

    async def main() -> None:
        cfg = parse({"node": {"session_ticket_key_rotation": "6h"},
                     "listeners": {"ssl": {"t": {"bind": "127.0.0.1:0", "ssl_options": {
                         "certfile": "c.pem", "keyfile": "k.pem"}}}}})
        gw = Gateway(cfg, None)
        calls: list[float] = []
        monkeypatch.setattr(gw.tickets, "after_rekey", lambda now, grace=0.0: calls.append(grace))
        gw._rekey_listeners()
        gw._rekey_listeners(bytes(32))
        monkeypatch.setattr(unbound, "_grace", None)
        monkeypatch.setattr(unbound, "_grace_why", "no module")
        gw._rekey_listeners()
        assert calls == [6 * 3600.0, 0.0, 0.0]

    assert unbound.grace_missing() == ""
    asyncio.run(main())
