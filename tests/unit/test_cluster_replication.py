"""Replicated state over the real node-held stores (PskStore, NodeBans): last-writer-wins
convergence whatever the delivery order, tombstones, anti-entropy catch-up, bad entries.

The node the ban list pushes to is a fake (it records ``bans_set``): real nodes and workers are
covered by tests/e2e/test_cluster.py."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tlsgate.admin.banstore import VERSIONS_FILE, BanEntry, NodeBans
from tlsgate.cluster.protocol import Digest, Entries, Entry
from tlsgate.cluster.replication import (
    BanNamespace,
    PskNamespace,
    Replicator,
    SyncState,
    chunk_digest,
    chunk_entries,
    state_hash,
)
from tlsgate.config.schema import PskConfig
from tlsgate.gateway.bans import Ban
from tlsgate.server.pskstore import PskStore

NOW = time.time()


class _FakeNode:
    def __init__(self, data_dir: Path, name: str) -> None:
        self.config = SimpleNamespace(node=SimpleNamespace(data_dir=str(data_dir), name=name))
        self.pushed: list[Any] = []

    async def ask_workers(self, op: str, timeout: float = 10.0, **args: Any
                          ) -> list[tuple[int, Any]]:
        self.pushed.append(args["bans"])
        return [(0, {"closed": []})]


def psk_store(d: Path, name: str) -> PskStore:
    f = d / "psk.txt"
    if not f.exists():
        f.write_text("file-dev:00112233\n")
    store = PskStore(PskConfig(enable=True, init_file=str(f), format="hex"), str(d / name), name)
    store.load()
    return store


class Replica:
    def __init__(self, d: Path, name: str, chunk: int = 1 << 20) -> None:
        self.name = name
        self.psk = psk_store(d, name)
        self.node = _FakeNode(d / name, name)
        self.bans = NodeBans(self.node)
        self.bans.replicated = True
        self.rep = Replicator([PskNamespace(lambda: self.psk),
                               BanNamespace(lambda: self.bans)], chunk_bytes=chunk)

    def state(self) -> tuple[Any, ...]:
        return (self.psk.merged(),
                sorted(json.dumps(b.as_dict(), sort_keys=True) for b in self.bans.list()),
                self.rep.hashes())


def sync(a: Replica, b: Replica) -> None:
    """One anti-entropy round between two replicas, as two links would run it."""
    sa, sb = SyncState(), SyncState()
    to_b = a.rep.digests()
    to_a = b.rep.digests()
    for d in to_b:
        for m in b.rep.answer_digest(d, sb):
            a.rep.apply(m, b.name)
    for d in to_a:
        for m in a.rep.answer_digest(d, sa):
            b.rep.apply(m, a.name)


# ------------------------------------------------------------------------------ convergence
idents = st.sampled_from(["dev-a", "dev-b", "dev-c", "file-dev"])
psk_entries = st.builds(
    lambda i, secret, ts, node: Entry(i.encode().hex(), secret, ts, node),
    idents, st.none() | st.sampled_from(["0a0b", "ffee", "1234"]),
    st.floats(1.0, 100.0).map(lambda x: round(x, 1)), st.sampled_from(["n1", "n2", "n3"]))
ban_entries = st.builds(
    lambda v, reason, ts, node: Entry(
        f"clientid:{v}", None if reason is None else
        {"kind": "clientid", "value": v, "reason": reason, "created_at": ts, "until": None},
        ts, node),
    st.sampled_from(["x", "y"]), st.none() | st.sampled_from(["r1", "r2"]),
    st.floats(1.0, 100.0).map(lambda x: round(x, 1)), st.sampled_from(["n1", "n2", "n3"]))


def unique_versions(entries: list[Entry]) -> list[Entry]:
    """A node stamps each change of a key with a later time than the last: one version of a
    key never carries two different values."""
    seen: dict[tuple[str, float, str], Entry] = {}
    for e in entries:
        seen.setdefault((e.key, e.ts, e.node), e)
    return list(seen.values())


@settings(max_examples=60, deadline=None)
@given(st.lists(psk_entries, max_size=12).map(unique_versions),
       st.lists(ban_entries, max_size=8).map(unique_versions), st.randoms())
def test_any_delivery_order_converges_to_the_same_tables(psks: list[Entry], bans: list[Entry],
                                                        rnd: Any) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        replicas = [Replica(d, n) for n in ("n1", "n2", "n3")]
        for r in replicas:
            order = [("psk", e) for e in psks] + [("bans", e) for e in bans]
            rnd.shuffle(order)
            for ns, e in order:
                r.rep.apply(Entries(ns, (e,)), "peer")
                if rnd.random() < 0.3:  # a duplicate delivery changes nothing
                    r.rep.apply(Entries(ns, (e,)), "peer")
        states = [r.state() for r in replicas]
        assert states[0] == states[1] == states[2]
        # and it is the last writer's value per key
        for key in {e.key for e in psks}:
            winner = max((e for e in psks if e.key == key), key=lambda e: (e.ts, e.node))
            got = replicas[0].psk.merged().get(bytes.fromhex(key))
            if winner.value is None:
                assert got is None
            else:
                assert got == bytes.fromhex(winner.value)


@settings(max_examples=30, deadline=None)
@given(st.lists(psk_entries, max_size=20).map(unique_versions), st.data(),
       st.lists(ban_entries, max_size=12).map(unique_versions))
def test_one_anti_entropy_round_merges_two_histories(psks: list[Entry], data: st.DataObject,
                                                     bans: list[Entry]) -> None:
    # each replica saw some of the changes (a node that was down, a partition)
    pa = [e for e in psks if data.draw(st.booleans())]
    pb = [e for e in psks if e not in pa or data.draw(st.booleans())]
    ba = [e for e in bans if data.draw(st.booleans())]
    bb = [e for e in bans if e not in ba or data.draw(st.booleans())]
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        a, b = Replica(d, "n1", chunk=200), Replica(d, "n2", chunk=200)  # many small chunks
        for e in pa:
            a.rep.apply(Entries("psk", (e,)), "x")
        for e in pb:
            b.rep.apply(Entries("psk", (e,)), "x")
        for e in ba:
            a.rep.apply(Entries("bans", (e,)), "x")
        for e in bb:
            b.rep.apply(Entries("bans", (e,)), "x")
        sync(a, b)
        assert a.state() == b.state()
        c = Replica(d, "n3")  # saw every change directly
        for e in psks:
            c.rep.apply(Entries("psk", (e,)), "x")
        for e in bans:
            c.rep.apply(Entries("bans", (e,)), "x")
        assert c.state() == a.state()


# ------------------------------------------------------------------------------ PSK
def test_local_psk_changes_announce_versions_and_tombstones_win(tmp_path: Path) -> None:
    a, b = Replica(tmp_path, "n1"), Replica(tmp_path, "n2")
    seen: list[Entry] = []
    a.psk.on_local_change.append(lambda i, e: seen.append(
        Entry(i.hex(), e.secret.hex() if e.secret else None, e.ts, e.node)))
    a.psk.add("dev-x", "a1b2")
    a.psk.remove("file-dev")         # a file identity removed through the API
    assert [e.value for e in seen] == ["a1b2", None]
    assert seen[0].version < seen[1].version or seen[0].key != seen[1].key
    for e in seen:
        assert b.rep.apply(Entries("psk", (e,)), "n1") == [e]
    assert b.psk.merged() == {b"dev-x": bytes.fromhex("a1b2")}
    # an older add arriving late does not resurrect the removed identity
    old = Entry(b"file-dev".hex(), "99", seen[1].ts - 10, "n3")
    assert b.rep.apply(Entries("psk", (old,)), "n3") == []
    assert b"file-dev" not in b.psk.merged()


def test_invalid_entries_are_skipped_and_the_rest_applies(tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture
                                                          ) -> None:
    r = Replica(tmp_path, "n1")
    msg = Entries("psk", (Entry("zz-not-hex", "00", 1.0, "n2"),
                          Entry(b"ok".hex(), "not hex", 1.0, "n2"),
                          Entry(b"ok".hex(), "", 1.0, "n2"),          # empty secret
                          Entry(b"good".hex(), "0102", 1.0, "n2")))
    changed = r.rep.apply(msg, "n2")
    assert [bytes.fromhex(e.key) for e in changed] == [b"good"]
    assert caplog.text.count("sent an invalid psk entry") == 3
    bad_ban = Entries("bans", (Entry("colour:red", {"kind": "colour"}, 1.0, "n2"),
                               Entry("clientid:a", {"kind": "clientid", "value": "b"}, 1.0, "n2"),
                               Entry("nokind", None, 1.0, "n2")))
    assert r.rep.apply(bad_ban, "n2") == []
    assert r.rep.apply(Entries("weather", ()), "n2") == []
    assert "unknown namespace 'weather'" in caplog.text


# ------------------------------------------------------------------------------ bans
async def test_ban_versions_tombstones_and_persistence(tmp_path: Path) -> None:
    node = _FakeNode(tmp_path / "d", "n1")
    bans = NodeBans(node)
    bans.replicated = True
    announced: list[BanEntry] = []
    bans.on_local_change.append(announced.append)
    await bans.add(Ban("clientid", "x", "r", NOW))
    await bans.remove("clientid", "x")
    assert [(e.ban is not None, e.node) for e in announced] == [(True, "n1"), (False, "n1")]
    assert announced[1].version > announced[0].version
    # an older remote add loses to the tombstone; a newer one wins
    older = BanEntry("clientid", "x", Ban("clientid", "x", "old", NOW), announced[1].ts - 1,
                     "n2")
    assert bans.apply_remote(older) is False and bans.list() == []
    newer = BanEntry("clientid", "x", Ban("clientid", "x", "new", NOW), announced[1].ts + 1,
                     "n2")
    assert bans.apply_remote(newer) is True
    assert [b.reason for b in bans.list()] == ["new"]
    # persisted with versions: a new process holds the same versions and tombstones
    await bans.remove("clientid", "x")
    doc = json.loads((tmp_path / "d" / VERSIONS_FILE).read_text())
    assert doc["live"] == [] and doc["removed"][0][:2] == ["clientid", "x"]
    again = NodeBans(_FakeNode(tmp_path / "d", "n1"))
    assert again.version_of(("clientid", "x")) == bans.version_of(("clientid", "x"))
    assert again.apply_remote(newer) is False   # the later removal still wins


async def test_expired_bans_become_tombstones_with_the_same_version(tmp_path: Path) -> None:
    bans = NodeBans(_FakeNode(tmp_path, "n1"))
    NOW = time.time()  # a fresh "now": expiries a few ms away
    e = BanEntry("username", "u", Ban("username", "u", "", NOW - 10, NOW - 1), NOW - 10, "n2")
    assert bans.apply_remote(e) is True          # recorded (it may replace an older live ban)
    assert bans.list() == [] and bans.version_of(("username", "u")) == (NOW - 10, "n2")
    live = BanEntry("username", "v", Ban("username", "v", "", NOW, NOW + 0.05), NOW, "n2")
    assert bans.apply_remote(live) is True and len(bans.list()) == 1
    time.sleep(0.1)
    assert bans.list() == []
    assert bans.removed[("username", "v")] == (NOW, "n2")
    h = state_hash(BanNamespace(lambda: bans).versions())
    assert h == state_hash({"username:u": (NOW - 10, "n2"), "username:v": (NOW, "n2")})


def test_without_the_cluster_no_versions_file_is_written(tmp_path: Path) -> None:
    import asyncio

    bans = NodeBans(_FakeNode(tmp_path, "n1"))
    asyncio.run(bans.add(Ban("cn", "c", "", NOW)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bans.json"]


# ------------------------------------------------------------------------------ messages
def test_heartbeat_hash_mismatch_triggers_a_digest_on_the_second_heartbeat(tmp_path: Path
                                                                           ) -> None:
    r = Replica(tmp_path, "n1")
    s = SyncState()
    mine = r.rep.hashes()
    assert set(mine) == {"psk", "bans"}
    other = {k: "0" * 32 for k in mine}
    assert r.rep.heartbeat_hashes(other, s) == []
    assert sorted(r.rep.heartbeat_hashes(other, s)) == ["bans", "psk"]
    assert r.rep.heartbeat_hashes(mine, s) == [] and s.mismatches == {}
    # a namespace the peer does not hold is not compared
    assert r.rep.heartbeat_hashes({}, s) == []


def test_hash_follows_changes_only_when_marked_dirty(tmp_path: Path) -> None:
    r = Replica(tmp_path, "n1")
    h0 = r.rep.hashes()["psk"]
    r.psk.add("dev-q", "0102")
    assert r.rep.hashes()["psk"] == h0   # cached until the service marks it dirty
    r.rep.dirty("psk")
    assert r.rep.hashes()["psk"] != h0


def test_chunking_respects_the_budget_and_keeps_everything() -> None:
    entries = [Entry(f"k{i}", "v" * 50, float(i), "n1") for i in range(100)]
    msgs = chunk_entries("psk", entries, budget=500)
    assert len(msgs) > 10
    assert [e for m in msgs for e in m.entries] == entries
    versions = {f"key-{i}": (float(i), "n1") for i in range(100)}
    digests = chunk_digest("psk", versions, budget=300)
    assert len(digests) > 5 and [d.last for d in digests] == [False] * (len(digests) - 1) + [True]
    merged: dict[str, Any] = {}
    for d in digests:
        merged.update(d.versions)
    assert merged == versions
    assert chunk_digest("psk", {}) == [Digest("psk", {}, last=True)]


def test_psk_namespace_is_unavailable_while_psk_is_disabled() -> None:
    ns = PskNamespace(lambda: None)
    rep = Replicator([ns])
    assert rep.hashes() == {} and rep.digests() == []
    assert rep.apply(Entries("psk", (Entry("61", "00", 1.0, "n2"),)), "n2") == []


def _ticket_replica(name: str, started: float) -> tuple[Any, Replicator, list[bytes]]:
    import os

    from tlsgate.cluster.replication import TicketSecretNamespace
    from tlsgate.server.ticket_secret import NodeTicketSecret

    holder = NodeTicketSecret(os.urandom(32), name, started)
    adopted: list[bytes] = []
    holder.on_change.append(adopted.append)
    return holder, Replicator([TicketSecretNamespace(lambda: holder)]), adopted


def _exchange(a: Replicator, b: Replicator) -> None:
    """One anti-entropy round in both directions (as on a new link)."""
    for src, dst in ((a, b), (b, a)):
        for d in src.digest_for("tickets"):
            for msg in dst.answer_digest(d, SyncState()):
                src.apply(msg, "peer")


def test_the_cluster_adopts_the_longest_running_nodes_ticket_secret() -> None:
    """tlsgate.server.ticket_secret: nodes exchange digests and keep the secret of the node
    that started first, whichever side starts the exchange; a node that restarts (later start)
    adopts the cluster's instead of imposing its new one."""
    n1, r1, ad1 = _ticket_replica("n1", NOW - 100)
    n2, r2, ad2 = _ticket_replica("n2", NOW - 50)
    n3, r3, ad3 = _ticket_replica("n3", NOW - 10)
    first = n1.secret
    _exchange(r3, r2)
    assert n3.secret == n2.secret != first and ad3 == [n2.secret] and ad2 == []
    _exchange(r2, r1)
    _exchange(r3, r2)
    assert n1.secret == n2.secret == n3.secret == first and ad1 == []
    # n2 restarts: a new random secret, a later start; it adopts the cluster's at once
    n2b, r2b, ad2b = _ticket_replica("n2", NOW)
    _exchange(r2b, r1)
    assert n2b.secret == first and ad2b == [first]
    _exchange(r2b, r3)
    assert n3.secret == first


def test_bad_ticket_secret_entries_are_refused() -> None:
    holder, rep, adopted = _ticket_replica("n1", NOW)
    before = holder.secret
    for entry in (Entry("secret", "zz", 1e12, "x"), Entry("secret", "00" * 8, 1e12, "x"),
                  Entry("other", "00" * 32, 1e12, "x"), Entry("secret", None, 1e12, "x")):
        assert rep.apply(Entries("tickets", (entry,)), "peer") == []
    assert holder.secret == before and adopted == []
    # an older version (a later start) never replaces ours
    assert rep.apply(Entries("tickets", (Entry("secret", "11" * 32, -NOW - 1, "z"),)),
                     "peer") == []
    assert holder.secret == before
