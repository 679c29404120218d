"""The admin API app (aiohttp test client) over a FAKE node.

The fake stands in for the node process only: its ``ask_workers`` calls the real worker-side
control operations (``tlsgate.server.worker_ops`` + ``admin_ops``) on two in-process gateways
made of real parts (Registry, ConnRecord, ListenerRuntime with a real TLS context from the test
PKI). Connections are records whose ``conn`` is a recorder of ``close()`` calls, since there
are no sockets here. The real node, workers and clients are exercised by
tests/e2e/test_admin.py.
"""

from __future__ import annotations

import json
import time
import tomllib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from tests.certkit import Pki
from tlsgate.admin.api import make_app
from tlsgate.admin.banstore import NodeBans
from tlsgate.admin.server import TokenSource
from tlsgate.config import Config, parse
from tlsgate.gateway.listener import ListenerRuntime
from tlsgate.gateway.record import ConnRecord
from tlsgate.gateway.registry import Registry
from tlsgate.mqtt import Refusal
from tlsgate.server import worker_ops
from tlsgate.server.app import ReloadResult
from tlsgate.tls.context import build_server_context

TOKEN = "t0k3n-for-tests"
NO_CONNECT: Any = None  # the ban check reads the record only


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("adminpki"))


def config_for(pki: Pki, data_dir: Path, *, psk: bool = False, token: str | None = TOKEN,
               ssl_extra: str = "") -> Config:
    text = (f"[node]\nname = \"unit\"\ndata_dir = \"{data_dir}\"\n"
            "[listeners.ssl.default]\nbind = \"127.0.0.1:0\"\n"
            "[listeners.ssl.default.ssl_options]\n"
            f"certfile = \"{pki.server.cert}\"\nkeyfile = \"{pki.server.key}\"\n{ssl_extra}"
            "[dashboard]\nlisten = \"127.0.0.1:0\"\n"
            + (f"token = \"{token}\"\n" if token else ""))
    if psk:
        pf = data_dir / "psk.txt"
        data_dir.mkdir(parents=True, exist_ok=True)
        pf.write_text("dev:secret\n")
        text += f"[psk_authentication]\nenable = true\ninit_file = \"{pf}\"\n"
    return parse(tomllib.loads(text))


@dataclass
class Closer:
    """Stands in for the connection object (no socket in a unit test): records kicks."""

    rec: ConnRecord
    registry: Registry
    reasons: list[str] = field(default_factory=list)

    def close(self, reason: str) -> None:
        self.reasons.append(reason)
        self.registry.remove(self.rec)
        self.rec.conn = None


@dataclass
class _Run:
    rt: ListenerRuntime


class FakeGateway:
    """The attributes of tlsgate.server.app.Gateway that the worker ops read."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.registry = Registry()
        self.on_listener: list[Any] = []
        self.reloads = 0
        cfg = config.listeners.ssl["default"]
        ctx = build_server_context(cfg.ssl_options, "listeners.ssl.default")
        rt = ListenerRuntime("ssl", "default", cfg, config.listener_mqtt(cfg.mqtt),
                             config.upstreams["default"], ctx, self.registry)
        self.listeners = {"ssl:default": _Run(rt)}

    @property
    def rt(self) -> ListenerRuntime:
        return self.listeners["ssl:default"].rt

    def connect(self, clientid: str, *, username: str | None = None, cn: str | None = None,
                peer: str = "127.0.0.1", started: float | None = None,
                rec_id: str | None = None) -> Closer:
        rec = ConnRecord("ssl:default", (peer, 40000 + len(self.registry)))
        if rec_id is not None:
            rec.id = rec_id
        if started is not None:
            rec.started = started
        rec.client_id, rec.username, rec.cert_cn = clientid, username, cn
        rec.tls_version, rec.cipher = "TLSv1.3", "TLS_AES_128_GCM_SHA256"
        closer = Closer(rec, self.registry)
        rec.conn = closer
        self.registry.add(rec)
        self.rt.active += 1
        return closer


@dataclass
class FakeProc:
    returncode: int | None = None


@dataclass
class FakeHandle:
    index: int
    gw: FakeGateway
    pid: int = 4242
    restarts: int = 0
    proc: FakeProc = field(default_factory=FakeProc)
    peer: Any = None

    def __post_init__(self) -> None:
        ops = worker_ops.handlers(lambda: self.gw)  # type: ignore[arg-type,return-value]
        gw = self.gw

        class Peer:
            async def request(self, op: str, timeout: float = 10.0, **args: Any) -> Any:
                if op == "status":
                    return {"pid": 1, "index": 0, "connections": len(gw.registry),
                            "listeners": {lb: {"active": r.rt.active, "bind": r.rt.cfg.bind}
                                          for lb, r in gw.listeners.items()}}
                # through JSON, as over the real control channel
                return json.loads(json.dumps(await ops[op](json.loads(json.dumps(args)))))

        self.peer = Peer()


class FakePsk:
    """The interface the lead's node.psk object has (identities/add/remove)."""

    def __init__(self) -> None:
        self.table = {"dev": "secret"}

    def identities(self) -> list[str]:
        return sorted(self.table)

    def add(self, identity: str, secret: str) -> None:
        if len(secret) < 4:
            raise ValueError(f"secret {secret!r} is too short (4 bytes at least)")
        self.table[identity] = secret

    def remove(self, identity: str) -> bool:
        return self.table.pop(identity, None) is not None


class FakeNode:
    """Stands in for tlsgate.server.node.Node (a fake: see the module docstring)."""

    def __init__(self, config: Config, gateways: list[FakeGateway]) -> None:
        self.config = config
        self.path: str | None = None
        self.started_at = time.time() - 90
        self.workers = {i: FakeHandle(i, gw) for i, gw in enumerate(gateways)}
        self.last_reload: ReloadResult | None = None
        self.reload_result = ReloadResult(True, changes=["ssl:default: new TLS context"])
        self.reloads = 0
        self.psk: Any = None

    async def ask_workers(self, op: str, timeout: float = 10.0, **args: Any
                          ) -> list[tuple[int, Any]]:
        out: list[tuple[int, Any]] = []
        for i, h in self.workers.items():
            try:
                out.append((i, await h.peer.request(op, timeout=timeout, **args)))
            except Exception as exc:
                out.append((i, exc))
        return out

    async def reload(self) -> ReloadResult:
        self.reloads += 1
        self.last_reload = self.reload_result
        return self.reload_result


@dataclass
class Env:
    client: TestClient[Any, Any]
    node: FakeNode
    gws: list[FakeGateway]
    bans: NodeBans
    data: Path

    def auth(self, token: str = TOKEN) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    async def get(self, path: str, **kw: Any) -> Any:
        r = await self.client.get(path, headers=self.auth(), **kw)
        assert r.status == 200, await r.text()
        return await r.json()


@pytest.fixture
async def env(pki: Pki, tmp_path: Path) -> AsyncIterator[Env]:
    config = config_for(pki, tmp_path / "data")
    gws = [FakeGateway(config), FakeGateway(config)]
    node = FakeNode(config, gws)
    bans = NodeBans(node)
    app = make_app(node, bans, TokenSource(node))
    async with TestClient(TestServer(app)) as client:
        for h in node.workers.values():
            await bans.push_to(h)
        yield Env(client, node, gws, bans, tmp_path / "data")


# ------------------------------------------------------------------------------------ auth
@pytest.mark.parametrize("path,method", [
    ("/api/v1/status", "GET"), ("/api/v1/listeners", "GET"), ("/api/v1/connections", "GET"),
    ("/api/v1/connections/0.1", "GET"), ("/api/v1/connections/0.1", "DELETE"),
    ("/api/v1/certificates", "GET"), ("/api/v1/psk", "GET"), ("/api/v1/psk", "POST"),
    ("/api/v1/psk/x", "DELETE"), ("/api/v1/bans", "GET"), ("/api/v1/bans", "POST"),
    ("/api/v1/bans/clientid/x", "DELETE"), ("/api/v1/cluster/nodes", "GET"),
    ("/api/v1/reload", "POST"),
])
async def test_every_api_path_needs_the_token(env: Env, path: str, method: str) -> None:
    for headers in ({}, env.auth("wrong"), {"Authorization": TOKEN},
                    {"Authorization": f"Basic {TOKEN}"}, env.auth(TOKEN + "x")):
        r = await env.client.request(method, path, headers=headers)
        assert r.status == 401, (path, headers)
        doc = await r.json()
        assert doc["error"] == "unauthorized" and "Bearer" in doc["message"]
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert env.node.reloads == 0  # nothing happened


async def test_public_paths_need_no_token(env: Env) -> None:
    r = await env.client.get("/")
    assert r.status == 200 and "tlsgate dashboard" in await r.text()
    assert "default-src 'self'" in r.headers["Content-Security-Policy"]
    r = await env.client.get("/static/app.js")
    assert r.status == 200 and "textContent" in await r.text()
    r = await env.client.get("/api/v1/openapi.json")
    assert r.status == 200 and (await r.json())["openapi"].startswith("3.")
    r = await env.client.get("/metrics")
    assert r.status == 200


async def test_token_file_is_reread_when_it_changes(pki: Pki, tmp_path: Path) -> None:
    tf = tmp_path / "token"
    tf.write_text("first\n")
    config = config_for(pki, tmp_path / "data", token=None)
    config = config.model_copy(update={"dashboard": config.dashboard.model_copy(
        update={"token_file": str(tf)})})
    node = FakeNode(config, [FakeGateway(config)])
    async with TestClient(TestServer(make_app(node, NodeBans(node), TokenSource(node)))) as c:
        assert (await c.get("/api/v1/bans", headers={"Authorization": "Bearer first"})
                ).status == 200
        tf.write_text("second\n")
        import os
        os.utime(tf, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
        assert (await c.get("/api/v1/bans", headers={"Authorization": "Bearer first"})
                ).status == 401
        assert (await c.get("/api/v1/bans", headers={"Authorization": "Bearer second"})
                ).status == 200
        tf.unlink()  # unreadable token file: fail closed, say why
        r = await c.get("/api/v1/bans", headers={"Authorization": "Bearer second"})
        assert r.status == 503 and "token_file" in (await r.json())["message"]


# ------------------------------------------------------------------------------------ views
async def test_status_counts_workers_and_connections(env: Env) -> None:
    env.gws[0].connect("a")
    env.gws[1].connect("b")
    env.gws[1].connect("c")
    st = await env.get("/api/v1/status")
    assert st["node"] == "unit" and st["connections"] == 3 and st["uptime_s"] >= 90
    assert [w["connections"] for w in st["workers"]] == [1, 2]
    assert st["listeners"] == [{"listener": "ssl:default", "bind": "127.0.0.1:0", "active": 3}]
    assert st["psk"] == {"enabled": False, "identities": 0} and st["bans"] == 0


async def test_listeners_sum_worker_counters(env: Env) -> None:
    for gw, n in zip(env.gws, (2, 3), strict=True):
        st = gw.rt.stats
        st.accepted += n
        st.handshakes["ok", "TLSv1.3"] += n
        st.handshakes["failed", "-"] += 1
        st.resumed += n - 1
        st.refusals["access_denied"] += 1
        st.handshake_failures["unknown_ca"] += 1
    doc = await env.get("/api/v1/listeners")
    (lst,) = doc["data"]
    assert lst["listener"] == "ssl:default" and lst["accepted"] == 5
    assert lst["handshakes_ok"] == 5 and lst["handshakes_failed"] == 2
    assert lst["handshakes_resumed"] == 3
    assert lst["refusals"] == {"access_denied": 2}
    assert lst["handshake_failures"] == {"unknown_ca": 2}
    assert lst["upstream_address"] == "127.0.0.1:1883" and lst["running"] is True


async def test_connections_filter_page_and_composite_ids(env: Env) -> None:
    t = time.time()
    env.gws[0].connect("dev-1", username="alice", started=t - 30)
    env.gws[1].connect("dev-2", cn="device-two", started=t - 20, peer="10.1.2.3")
    env.gws[0].connect("dev-3", username="alice", started=t - 10)
    doc = await env.get("/api/v1/connections")
    assert [c["clientid"] for c in doc["data"]] == ["dev-1", "dev-2", "dev-3"]  # oldest first
    assert doc["meta"] == {"page": 1, "limit": 100, "count": 3, "hasnext": False}
    ids = {c["clientid"]: c["id"] for c in doc["data"]}
    assert ids["dev-2"].startswith("1.") and ids["dev-1"].startswith("0.")
    doc = await env.get("/api/v1/connections", params={"username": "alice", "limit": "1"})
    assert [c["clientid"] for c in doc["data"]] == ["dev-1"]
    assert doc["meta"] == {"page": 1, "limit": 1, "count": 2, "hasnext": True}
    doc = await env.get("/api/v1/connections", params={"username": "alice", "limit": "1",
                                                       "page": "2"})
    assert [c["clientid"] for c in doc["data"]] == ["dev-3"] and not doc["meta"]["hasnext"]
    for params, expect in (({"cn": "device-two"}, ["dev-2"]), ({"peer": "10.1.2.3"}, ["dev-2"]),
                           ({"clientid": "dev-3"}, ["dev-3"]), ({"clientid": "nope"}, [])):
        doc = await env.get("/api/v1/connections", params=params)
        assert [c["clientid"] for c in doc["data"]] == expect, params
    one = await env.get(f"/api/v1/connections/{ids['dev-2']}")
    assert one["clientid"] == "dev-2" and one["worker"] == 1 and one["cert_cn"] == "device-two"


@pytest.mark.parametrize("params,msg", [({"limit": "0"}, "limit must be between 1 and 1000"),
                                        ({"limit": "5000"}, "limit must be between"),
                                        ({"page": "x"}, "page must be an integer"),
                                        ({"page": "101", "limit": "1000"}, "narrow the list")])
async def test_bad_paging_is_a_400(env: Env, params: dict[str, str], msg: str) -> None:
    r = await env.client.get("/api/v1/connections", params=params, headers=env.auth())
    assert r.status == 400 and msg in (await r.json())["message"]


async def test_kick_closes_exactly_that_connection(env: Env) -> None:
    a = env.gws[0].connect("dev-a", rec_id="1")
    b = env.gws[1].connect("dev-b", rec_id="1")  # same per-process id in another worker
    r = await env.client.get("/api/v1/connections/1", headers=env.auth())
    assert r.status == 409 and "0.1" in (await r.json())["message"]
    r = await env.client.delete("/api/v1/connections/1.1", headers=env.auth())
    assert r.status == 200 and await r.json() == {"id": "1.1", "kicked": True}
    assert b.reasons and b.reasons[0].startswith("kicked by operator")
    assert a.reasons == []
    r = await env.client.delete("/api/v1/connections/1.1", headers=env.auth())
    assert r.status == 404 and (await r.json())["error"] == "not_found"
    # the bare id is unambiguous now
    r = await env.client.delete("/api/v1/connections/1", headers=env.auth())
    assert r.status == 200 and a.reasons
    r = await env.client.get("/api/v1/connections/9.1", headers=env.auth())
    assert r.status == 404


async def test_certificates_show_chain_expiry_and_revocation(env: Env, pki: Pki) -> None:
    doc = await env.get("/api/v1/certificates")
    (lst,) = doc["listeners"]
    (chain,) = lst["chains"]
    leaf = chain["certificates"][0]
    assert chain["server_name"] is None and lst["certfile"] == str(pki.server.cert)
    assert "DNS:localhost" in leaf["sans"] and "IP:127.0.0.1" in leaf["sans"]
    assert leaf["status"] == "ok" and 300 < leaf["days_left"] < 10000
    assert leaf["subject"].startswith("CN=") and not leaf["is_ca"]
    assert doc["revocation"] == {"configured": False,
                                 "message": "OCSP stapling / CRL status: not configured"}

    async def status() -> dict[str, Any]:
        return {"ocsp_staples": [{"name": "listeners.ssl.default", "stapled": True,
                                  "staple_age_seconds": 12.5, "fetches": 3, "rejected": 1,
                                  "consecutive_failures": 0}],
                "crls": [{"source": "/etc/x.crl", "cached": True, "age_seconds": 60.0,
                          "fetches": 1, "consecutive_failures": 0}],
                "client_ocsp": {"good": 4, "revoked": 1, "unknown": 0, "errors": 2}}

    env.node.revocation_status = status  # type: ignore[attr-defined]
    doc = await env.get("/api/v1/certificates")
    assert doc["revocation"]["configured"] is True
    assert doc["revocation"]["ocsp_staples"][0]["stapled"] is True
    text = await (await env.client.get("/metrics")).text()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    assert fams["tlsgate_ocsp_staple_age_seconds"].samples[0].value == 12.5
    assert fams["tlsgate_crl_age_seconds"].samples[0].labels == {"source": "/etc/x.crl"}
    checks = {s.labels["result"]: s.value for s in fams["tlsgate_client_ocsp_checks"].samples
              if s.name.endswith("_total")}
    assert checks == {"good": 4, "revoked": 1, "unknown": 0, "error": 2}


async def test_revocation_state_comes_from_the_workers_when_configured(pki: Pki,
                                                                      tmp_path: Path) -> None:
    from tlsgate.tls.revocation_status import default_status

    crl = pki.crl("unit-empty", [])
    config = config_for(pki, tmp_path / "data",
                        ssl_extra=f"cacertfile = \"{pki.ca_pem}\"\nverify = \"verify_peer\"\n"
                                  f"enable_crl_check = true\ncrlfile = [\"{crl}\"]\n")
    node = FakeNode(config, [FakeGateway(config), FakeGateway(config)])
    status = default_status()  # the registry of this process (= of both fake workers)
    entry = status.crl("unit-test://crl", kind="file")
    entry.cached, entry.this_update, entry.fetches = True, time.time() - 30, 2
    entry.last_success = time.time()
    try:
        async with TestClient(TestServer(make_app(node, NodeBans(node),
                                                  TokenSource(node)))) as c:
            r = await c.get("/api/v1/certificates", headers={"Authorization": f"Bearer {TOKEN}"})
            rev = (await r.json())["revocation"]
            assert rev["configured"] is True and rev["errors"] == []
            (held,) = [x for x in rev["crls"] if x["source"] == "unit-test://crl"]
            assert held["cached"] is True and 29 < held["age_seconds"] < 60
            text = await (await c.get("/metrics")).text()
            fams = {f.name: f for f in text_string_to_metric_families(text)}
            assert any(s.labels == {"source": "unit-test://crl"} and s.value == 1
                       for s in fams["tlsgate_crl_held"].samples)
    finally:
        status.drop_crl("unit-test://crl")


def test_merge_revocation_prefers_the_worker_that_holds_a_fresh_staple() -> None:
    from tlsgate.admin.api import merge_revocation

    a = {"generated_at": "2030-01-01T00:00:00Z",
         "ocsp_staples": [{"name": "l", "stapled": False, "last_success": None}],
         "crls": [{"source": "u", "cached": True, "last_success": "2030-01-01T00:00:00Z"}],
         "client_ocsp": {"checks": 2, "last_error": None}}
    b = {"generated_at": "2030-01-01T00:00:05Z",
         "ocsp_staples": [{"name": "l", "stapled": True, "last_success": "2029-12-31T00:00:00Z"}],
         "crls": [{"source": "u", "cached": True, "last_success": "2030-01-01T00:00:04Z"}],
         "client_ocsp": {"checks": 3, "last_error": "timeout"}}
    m = merge_revocation([a, b])
    assert m["generated_at"] == "2030-01-01T00:00:05Z"
    assert m["ocsp_staples"] == b["ocsp_staples"] and m["crls"] == b["crls"]
    assert m["client_ocsp"] == {"checks": 5, "last_error": "timeout"}


# ------------------------------------------------------------------------------------ PSK
async def test_psk_disabled_is_explained(env: Env) -> None:
    doc = await env.get("/api/v1/psk")
    assert doc == {"enabled": False, "format": "emqx", "identities": [], "count": 0}
    r = await env.client.post("/api/v1/psk", json={"identity": "a", "secret": "bbbb"},
                              headers=env.auth())
    assert r.status == 409 and "enable = true" in (await r.json())["message"]
    r = await env.client.delete("/api/v1/psk/a", headers=env.auth())
    assert r.status == 409


async def test_psk_add_list_remove_never_shows_secrets(env: Env) -> None:
    env.node.psk = FakePsk()
    r = await env.client.post("/api/v1/psk", json={"identity": "dev/2", "secret": "s3cr3t!"},
                              headers=env.auth())
    assert r.status == 201, await r.text()
    doc = await env.get("/api/v1/psk")
    assert doc["identities"] == ["dev", "dev/2"] and doc["count"] == 2
    assert "s3cr3t" not in json.dumps(doc) and "secret" not in json.dumps(doc["identities"])
    r = await env.client.post("/api/v1/psk", json={"identity": "x", "secret": "abc"},
                              headers=env.auth())
    body = await r.text()
    assert r.status == 400 and "too short" in body and "abc" not in body.replace("abc'", "")
    assert "'abc'" not in body  # the secret is masked in the error
    for bad in ({"identity": "", "secret": "abcd"}, {"identity": "x"}, ["x"]):
        r = await env.client.post("/api/v1/psk", json=bad, headers=env.auth())
        assert r.status == 400
    r = await env.client.post("/api/v1/psk", data=b"{nope", headers=env.auth())
    assert r.status == 400 and (await r.json())["error"] == "bad_json"
    r = await env.client.delete("/api/v1/psk/dev%2F2", headers=env.auth())
    assert r.status == 200 and (await r.json())["identity"] == "dev/2"
    r = await env.client.delete("/api/v1/psk/dev%2F2", headers=env.auth())
    assert r.status == 404


# ------------------------------------------------------------------------------------ bans
async def test_ban_cuts_live_refuses_new_and_persists(env: Env) -> None:
    live = env.gws[1].connect("bad-device")
    other = env.gws[0].connect("good-device")
    r = await env.client.post("/api/v1/bans", json={"kind": "clientid", "value": "bad-device",
                                                    "reason": "stolen", "duration": "1h"},
                              headers=env.auth())
    assert r.status == 201, await r.text()
    doc = await r.json()
    assert doc["closed"] == [f"1.{live.rec.id}"] and doc["replaced"] is False
    assert live.reasons == ["banned (clientid 'bad-device')"] and other.reasons == []
    assert 3590 < doc["ban"]["expires_in_s"] <= 3600
    saved = json.loads((env.data / "bans.json").read_text())
    assert saved[0]["value"] == "bad-device" and saved[0]["reason"] == "stolen"
    # the admission check is first in every listener of every worker
    for gw in env.gws:
        check = gw.rt.admission[0]
        rec = ConnRecord("ssl:default", ("127.0.0.1", 1))
        rec.client_id = "bad-device"
        assert await check(rec, NO_CONNECT) == (Refusal.BANNED, "banned (clientid 'bad-device')")
        rec.client_id = "fine"
        assert await check(rec, NO_CONNECT) is None
        assert len(gw.rt.admission) == 1
    listed = await env.get("/api/v1/bans")
    assert [(b["kind"], b["value"]) for b in listed["data"]] == [("clientid", "bad-device")]
    r = await env.client.delete("/api/v1/bans/clientid/bad-device", headers=env.auth())
    assert r.status == 200
    rec = ConnRecord("ssl:default", ("127.0.0.1", 1))
    rec.client_id = "bad-device"
    assert await env.gws[0].rt.admission[0](rec, NO_CONNECT) is None
    r = await env.client.delete("/api/v1/bans/clientid/bad-device", headers=env.auth())
    assert r.status == 404


async def test_ban_values_with_slashes_and_bad_bans(env: Env) -> None:
    r = await env.client.post("/api/v1/bans", json={"kind": "cn", "value": "a/b c"},
                              headers=env.auth())
    assert r.status == 201
    r = await env.client.delete("/api/v1/bans/cn/a%2Fb%20c", headers=env.auth())
    assert r.status == 200 and (await r.json())["value"] == "a/b c"
    for bad, msg in (({"kind": "ip", "value": "x"}, "kind must be one of"),
                     ({"kind": "cn", "value": "x", "until": 5}, "until is in the past"),
                     ({"kind": "cn"}, "value must be")):
        r = await env.client.post("/api/v1/bans", json=bad, headers=env.auth())
        assert r.status == 400 and msg in (await r.json())["message"], bad
    r = await env.client.delete("/api/v1/bans/ip/x", headers=env.auth())
    assert r.status == 400


# ------------------------------------------------------------------------------------ reload
async def test_reload_answers_what_changed_or_why_not(env: Env) -> None:
    r = await env.client.post("/api/v1/reload", headers=env.auth())
    assert r.status == 200
    assert await r.json() == {"ok": True, "changes": ["ssl:default: new TLS context"],
                              "problems": []}
    env.node.reload_result = ReloadResult(False, problems=["listeners.ssl.default.ssl_options."
                                                           "keyfile: does not match"])
    r = await env.client.post("/api/v1/reload", headers=env.auth())
    assert r.status == 422 and "does not match" in (await r.json())["problems"][0]
    st = await env.get("/api/v1/status")
    assert st["last_reload"]["ok"] is False


async def test_cluster_nodes_without_a_cluster_is_this_node(env: Env) -> None:
    doc = await env.get("/api/v1/cluster/nodes")
    assert doc["enabled"] is False
    assert [n["name"] for n in doc["nodes"]] == ["unit"] and doc["nodes"][0]["self"]


# ------------------------------------------------------------------------------------ metrics
async def test_metrics_parse_and_carry_the_counters(env: Env) -> None:
    st = env.gws[0].rt.stats
    st.accepted = 4
    st.handshakes["ok", "TLSv1.3"] = 3
    st.handshakes["failed", "-"] = 1
    st.handshake_failures["unknown_ca"] = 1
    st.ciphers["TLS_AES_128_GCM_SHA256"] = 3
    st.groups["X25519MLKEM768"] = 2
    st.groups["x25519"] = 1
    st.resumed = 2
    st.refusals["banned"] = 2
    for s in (0.0004, 0.003, 0.2):
        st.observe_handshake(s)
    st.bytes_in, st.bytes_out = 100, 50
    env.gws[1].rt.stats.handshakes["ok", "TLSv1.3"] = 2
    env.gws[1].connect("x")
    r = await env.client.get("/metrics")
    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    fams = {f.name: f for f in text_string_to_metric_families(await r.text())}

    def value(name: str, sample: str | None = None, **labels: str) -> float:
        for s in fams[name].samples:
            if (sample is None or s.name == sample) and \
                    all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
        raise AssertionError(f"no sample {name} {labels}")

    assert value("tlsgate_handshakes", result="ok", tls_version="TLSv1.3",
                 listener="ssl:default") == 5
    assert value("tlsgate_handshakes", result="failed") == 1
    assert value("tlsgate_handshake_failures", reason="unknown_ca") == 1
    assert value("tlsgate_handshake_groups", group="X25519MLKEM768") == 2
    assert value("tlsgate_handshake_groups", group="x25519") == 1
    assert value("tlsgate_handshakes_resumed", listener="ssl:default") == 2
    assert value("tlsgate_refusals", reason="banned") == 2
    assert value("tlsgate_connections", listener="ssl:default") == 1
    assert value("tlsgate_bytes", direction="client_to_broker") == 100
    assert value("tlsgate_handshake_duration_seconds",
                 "tlsgate_handshake_duration_seconds_count") == 3
    assert value("tlsgate_handshake_duration_seconds",
                 "tlsgate_handshake_duration_seconds_bucket", le="0.001") == 1
    assert value("tlsgate_handshake_duration_seconds",
                 "tlsgate_handshake_duration_seconds_bucket", le="0.005") == 2
    assert value("tlsgate_handshake_duration_seconds",
                 "tlsgate_handshake_duration_seconds_bucket", le="+Inf") == 3
    assert value("tlsgate_certificate_days_to_expiry", position="leaf") > 300
    assert value("tlsgate_process_resident_memory_bytes", process="node") > 1_000_000
    assert value("process_cpu_seconds", "process_cpu_seconds_total") > 0
    assert value("tlsgate_workers", state="running") == 2
    assert "tlsgate_auth_decisions" not in fams  # no authenticator on these gateways


async def test_metrics_export_auth_counters_when_an_authenticator_is_attached(env: Env
                                                                             ) -> None:
    from tlsgate.auth.http import AuthMetrics

    m = AuthMetrics()
    m.decisions["allow"] = 5
    m.allowed, m.refused = 5, 1
    m.http_status[200] = 6
    m.observe_latency(0.02)
    env.gws[0].authenticator = type("A", (), {"metrics": m})()  # type: ignore[attr-defined]
    text = await (await env.client.get("/metrics")).text()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    got = {s.labels.get("decision"): s.value for s in fams["tlsgate_auth_decisions"].samples
           if s.name.endswith("_total")}
    assert got["allow"] == 5
    assert any(s.labels.get("status") == "200" and s.value == 6
               for s in fams["tlsgate_auth_http_responses"].samples)
    assert any(s.name.endswith("_count") and s.value == 1
               for s in fams["tlsgate_auth_request_duration_seconds"].samples)


# ------------------------------------------------------------------------------------ spec
def test_openapi_documents_exactly_the_routes(pki: Pki, tmp_path: Path) -> None:
    config = config_for(pki, tmp_path)
    node = FakeNode(config, [])
    app = make_app(node, NodeBans(node), TokenSource(node))
    routes: set[tuple[str, str]] = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("formatter") or info.get("path")
        if path is None or route.method == "HEAD" or path.startswith("/static"):
            continue
        import re
        routes.add((re.sub(r"\{(\w+)(:[^}]*)?\}", r"{\1}", path), route.method.lower()))
    from tlsgate.admin.api import OPENAPI_FILE
    spec = json.loads(OPENAPI_FILE.read_text())
    documented = {(p, m) for p, ops in spec["paths"].items() for m in ops}
    assert routes == documented
