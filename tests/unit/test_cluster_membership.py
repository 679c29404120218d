"""Membership bookkeeping (sans-IO, the clock passed in): join, down after silence, back,
restarts, bye, gossip."""

from __future__ import annotations

from tlsgate.cluster.membership import DOWN, JOINING, UP, Event, Membership
from tlsgate.cluster.service import rendezvous_owner


def test_join_down_after_silence_and_back() -> None:
    m = Membership("n1", down_after=3.0)
    assert m.heard("n2", 10.0, 1000.0, boot="b1", address="10.0.0.2:5370") == \
        [Event("joined", "n2")]
    assert m.up() == ["n2"] and m.members["n2"].address == "10.0.0.2:5370"
    assert m.heard("n2", 11.0, 1001.0) == []
    assert m.tick(13.9, 1003.9) == []                 # 2.9 s of silence: still up
    (ev,) = m.tick(14.1, 1004.1)
    assert (ev.kind, ev.name) == ("down", "n2") and "no heartbeat for 3.1s" in ev.detail
    assert m.members["n2"].state == DOWN and m.up() == []
    assert m.tick(20.0, 1010.0) == []                 # reported once
    (back,) = m.heard("n2", 21.0, 1011.0, boot="b2")
    assert back.kind == "back" and "no heartbeat" in back.detail
    assert m.is_up("n2") and m.members["n2"].since == 1011.0


def test_a_fast_restart_is_noticed_by_its_boot_id() -> None:
    m = Membership("n1", down_after=3.0)
    m.heard("n2", 0.0, 0.0, boot="b1")
    assert m.heard("n2", 1.0, 1.0, boot="b1") == []
    assert m.heard("n2", 2.0, 2.0, boot="b2") == [Event("restarted", "n2")]


def test_bye_is_down_at_once() -> None:
    m = Membership("n1", down_after=30.0)
    m.heard("n2", 0.0, 0.0)
    (ev,) = m.left("n2", 1.0, "node stopping")
    assert ev == Event("down", "n2", "it left: node stopping")
    assert m.left("n2", 2.0, "again") == []


def test_gossip_learns_unknown_nodes_once_and_never_itself() -> None:
    m = Membership("n1", down_after=3.0)
    assert m.learn("n3", "10.0.0.3:5370") is True
    assert m.learn("n3", "10.0.0.3:5370") is False
    assert m.learn("n1", "10.0.0.1:5370") is False
    assert m.members["n3"].state == JOINING and m.up() == []
    m.heard("n2", 0.0, 0.0, address="10.0.0.2:5370")
    assert m.gossip() == [("n2", "10.0.0.2:5370"), ("n3", "10.0.0.3:5370")]
    # heard directly: joined, never "back"
    assert m.heard("n3", 1.0, 1.0) == [Event("joined", "n3")]
    assert m.members["n3"].state == UP


def test_self_is_never_a_member() -> None:
    m = Membership("n1", down_after=3.0)
    assert m.heard("n1", 0.0, 0.0) == []
    assert m.members == {}


def test_rendezvous_owner_is_stable_and_moves_only_the_leavers_keys() -> None:
    nodes = ["n1", "n2", "n3"]
    keys = [f"http://ocsp.example/{i}".encode() for i in range(300)]
    owners = {k: rendezvous_owner(nodes, k) for k in keys}
    assert owners == {k: rendezvous_owner(list(reversed(nodes)), k) for k in keys}
    assert set(owners.values()) == set(nodes)                 # spread over all three
    without = {k: rendezvous_owner(["n1", "n3"], k) for k in keys}
    for k in keys:
        if owners[k] != "n2":
            assert without[k] == owners[k]                      # only n2's keys move
