"""Bans (pure): parsing API input, matching a connection record, expiry, JSON round trip, and
the node's persisted list (atomic file, bad file tolerated)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tlsgate.admin.banstore import NodeBans
from tlsgate.gateway.bans import Ban, BanError, BanList, parse_ban
from tlsgate.gateway.record import ConnRecord

NOW = 1_700_000_000.0


def rec(clientid: str | None = None, username: str | None = None, cn: str | None = None,
        psk: str | None = None) -> ConnRecord:
    r = ConnRecord("ssl:default", ("127.0.0.1", 5000))
    r.client_id, r.username, r.cert_cn, r.psk_identity = clientid, username, cn, psk
    return r


@pytest.mark.parametrize("kind,field", [("clientid", "clientid"), ("username", "username"),
                                        ("cn", "cn"), ("psk_identity", "psk")])
def test_each_kind_matches_its_own_identity_only(kind: str, field: str) -> None:
    bans = BanList([Ban(kind, "dev-1")])
    assert bans.match(rec(**{field: "dev-1"}), NOW) == Ban(kind, "dev-1")
    for other in ("clientid", "username", "cn", "psk"):
        if other != field:
            assert bans.match(rec(**{other: "dev-1"}), NOW) is None
    assert bans.match(rec(**{field: "dev-2"}), NOW) is None
    assert bans.match(rec(), NOW) is None  # identity not known yet: no match


def test_expired_ban_does_not_match_and_is_pruned() -> None:
    bans = BanList([Ban("clientid", "a", until=NOW - 1), Ban("clientid", "b", until=NOW + 60)])
    assert bans.match(rec("a"), NOW) is None
    assert bans.match(rec("b"), NOW) is not None
    assert bans.match(rec("b"), NOW + 61) is None
    gone = bans.prune(NOW)
    assert [b.value for b in gone] == ["a"] and len(bans) == 1


def test_parse_ban_accepts_duration_until_and_reason() -> None:
    b = parse_ban({"kind": "cn", "value": "x", "duration": "10m", "reason": "stolen"}, NOW)
    assert (b.kind, b.value, b.reason, b.until, b.created_at) == ("cn", "x", "stolen",
                                                                  NOW + 600, NOW)
    assert parse_ban({"kind": "username", "value": "u", "until": NOW + 5}, NOW).until == NOW + 5
    assert parse_ban({"kind": "username", "value": "u"}, NOW).until is None


@pytest.mark.parametrize("doc,needle", [
    ({"kind": "ip", "value": "x"}, "kind must be one of clientid, username, cn, psk_identity"),
    ({"kind": "cn"}, "value must be a non-empty string"),
    ({"kind": "cn", "value": ""}, "value must be a non-empty string"),
    ({"kind": "cn", "value": 5}, "value must be a non-empty string"),
    ({"kind": "cn", "value": "x", "duration": "soon"}, "duration: 'soon' is not a duration"),
    ({"kind": "cn", "value": "x", "duration": "0s"}, "duration must be more than 0"),
    ({"kind": "cn", "value": "x", "until": "tomorrow"}, "until must be a Unix time"),
    ({"kind": "cn", "value": "x", "until": 1, "duration": "1m"}, "not both"),
    ({"kind": "cn", "value": "x", "colour": "red"}, "unknown field(s) colour"),
    ({"kind": "cn", "value": "x" * 70000}, "longer than 65535 bytes"),
    (["cn", "x"], "a ban is a JSON object"),
])
def test_parse_ban_errors_say_what_is_wrong(doc: Any, needle: str) -> None:
    with pytest.raises(BanError) as exc:
        parse_ban(doc, NOW)
    assert needle in str(exc.value)


def test_add_replaces_and_remove_returns_the_ban() -> None:
    bans = BanList()
    assert bans.add(Ban("clientid", "a", reason="1")) is False
    assert bans.add(Ban("clientid", "a", reason="2")) is True
    assert len(bans) == 1 and bans.get("clientid", "a") == Ban("clientid", "a", reason="2")
    assert bans.remove("clientid", "a") == Ban("clientid", "a", reason="2")
    assert bans.remove("clientid", "a") is None
    with pytest.raises(BanError):
        bans.remove("nope", "a")


def test_json_round_trip_and_bad_entry_named() -> None:
    bans = BanList([Ban("clientid", "a", "r", NOW, None), Ban("cn", "b", "", NOW, NOW + 9)])
    again = BanList.from_json(json.loads(json.dumps(bans.to_json())))
    assert list(again) == list(bans)
    with pytest.raises(BanError, match=r"ban #2: kind must be one of"):
        BanList.from_json([{"kind": "cn", "value": "x"}, {"kind": "bad", "value": "y"}])


class _FakeNode:
    """Only what NodeBans reads (a fake: the real node is covered by tests/e2e/test_admin.py)."""

    def __init__(self, data_dir: Path) -> None:
        self.config = SimpleNamespace(node=SimpleNamespace(data_dir=str(data_dir)))
        self.pushed: list[list[dict[str, Any]]] = []

    async def ask_workers(self, op: str, timeout: float = 10.0, **args: Any
                          ) -> list[tuple[int, Any]]:
        assert op == "bans_set"
        self.pushed.append(args["bans"])
        return [(0, {"bans": len(args["bans"]), "closed": ["7"]}),
                (1, RuntimeError("worker down"))]


async def test_node_bans_persist_atomically_and_push(tmp_path: Path) -> None:
    node = _FakeNode(tmp_path / "data")
    store = NodeBans(node)
    res = await store.add(Ban("clientid", "bad-device", "test", NOW))
    assert res["closed"] == ["0.7"] and res["errors"] == ["worker 1: worker down"]
    path = tmp_path / "data" / "bans.json"
    assert json.loads(path.read_text())[0]["value"] == "bad-device"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert [p.name for p in path.parent.iterdir()] == ["bans.json"]  # no temporary left over
    assert node.pushed[-1][0]["kind"] == "clientid"
    # a new node process loads the same list
    assert [b.value for b in NodeBans(_FakeNode(tmp_path / "data")).list()] == ["bad-device"]
    assert await store.remove("clientid", "bad-device") is not None
    assert json.loads(path.read_text()) == []
    assert await store.remove("clientid", "bad-device") is None


def test_node_bans_survive_a_corrupt_file(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                          ) -> None:
    (tmp_path / "bans.json").write_text("{not json")
    store = NodeBans(_FakeNode(tmp_path))
    assert store.list() == []
    assert "is not valid" in caplog.text and "starting with no bans" in caplog.text
    assert (tmp_path / "bans.json").read_text() == "{not json"  # left for the operator
