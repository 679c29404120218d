"""Who is in the cluster and who is alive: pure bookkeeping, no I/O, the clock is passed in.

Rules (``ClusterService`` feeds the events in, acts on what comes out):

* A node becomes a **member** when it completes a hello on a link (``heard``), or when another
  member's heartbeat names it (``learn``: gossip -- a node that knows one seed learns the whole
  cluster from it and dials the rest).
* Every message on a member's link counts as a sign of life. A member silent for ``down_after``
  seconds is reported **down** (one ``down`` event, logged once); a member that said ``bye``
  (graceful stop) is down at once. A down member is taken back (``back``) the moment it is
  heard again. A member whose ``boot`` id changes while up restarted faster than ``down_after``:
  that is a ``restarted`` event (its state is re-synchronised like any new link).
* Members are never forgotten while the node runs: a static cluster wants to see a node that
  is gone as ``down``, not have it vanish from the list.

Liveness is judged only from direct links (the cluster is a full mesh): a node that another
node still hears but we do not is down *for us* -- that is what matters for the work we would
send it (fetches, connection queries).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

UP, DOWN, JOINING = "up", "down", "joining"


@dataclass
class Member:
    name: str
    address: str = ""          # where to dial it ("host:port"), as advertised/seen
    boot: str = ""
    state: str = JOINING       # joining (known, never heard) | up | down
    last_heard: float = 0.0    # monotonic
    last_heard_wall: float = 0.0
    since: float = 0.0         # wall time of the last state change
    stats: dict[str, Any] = field(default_factory=dict)
    down_reason: str = ""


@dataclass(frozen=True)
class Event:
    kind: str                  # joined | back | restarted | down
    name: str
    detail: str = ""


class Membership:
    def __init__(self, me: str, down_after: float) -> None:
        self.me = me
        self.down_after = down_after
        self.members: dict[str, Member] = {}

    # -- inputs ---------------------------------------------------------------------------
    def heard(self, name: str, now: float, wall: float, *, boot: str | None = None,
              address: str | None = None, stats: dict[str, Any] | None = None) -> list[Event]:
        """A message (hello, heartbeat, anything) arrived from ``name`` on a direct link."""
        if name == self.me:
            return []
        m = self.members.get(name)
        events: list[Event] = []
        if m is None:
            m = self.members[name] = Member(name)
        if address:
            m.address = address
        if m.state == JOINING:
            m.state, m.since = UP, wall
            events.append(Event("joined", name))
        elif m.state == DOWN:
            m.state, m.since = UP, wall
            events.append(Event("back", name, f"after {m.down_reason}" if m.down_reason
                                else ""))
            m.down_reason = ""
        elif boot is not None and m.boot and boot != m.boot:
            m.since = wall
            events.append(Event("restarted", name))
        if boot is not None:
            m.boot = boot
        m.last_heard, m.last_heard_wall = now, wall
        if stats is not None:
            m.stats = stats
        return events

    def learn(self, name: str, address: str) -> bool:
        """Gossip names a node; True if it was unknown (the caller then dials ``address``)."""
        if name == self.me or not name or not address:
            return False
        m = self.members.get(name)
        if m is None:
            self.members[name] = Member(name, address=address)
            return True
        if not m.address:
            m.address = address
            return True
        return False

    def left(self, name: str, wall: float, reason: str) -> list[Event]:
        """``name`` said bye: down now."""
        m = self.members.get(name)
        if m is None or m.state != UP:
            return []
        m.state, m.since, m.down_reason = DOWN, wall, f"it left: {reason}"
        return [Event("down", name, m.down_reason)]

    def tick(self, now: float, wall: float) -> list[Event]:
        """Report members silent for ``down_after``."""
        events = []
        for m in self.members.values():
            if m.state == UP and now - m.last_heard > self.down_after:
                m.state, m.since = DOWN, wall
                m.down_reason = f"no heartbeat for {now - m.last_heard:.1f}s"
                events.append(Event("down", m.name, m.down_reason))
        return events

    # -- views ----------------------------------------------------------------------------
    def is_up(self, name: str) -> bool:
        m = self.members.get(name)
        return m is not None and m.state == UP

    def up(self) -> list[str]:
        return sorted(n for n, m in self.members.items() if m.state == UP)

    def gossip(self) -> list[tuple[str, str]]:
        """What a heartbeat tells others: every member we know an address for."""
        return sorted((n, m.address) for n, m in self.members.items() if m.address)
