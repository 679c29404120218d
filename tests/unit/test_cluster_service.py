"""Cluster services in one event loop, over real mutual TLS on loopback: links, duplicate
links, heartbeat-driven anti-entropy, fetches shared through the owner (a real HTTP server
counts them) and the fallback when the owner is gone, config errors naming keys, reload.

The node around each service is a fake (config, fetcher and PSK table are the real classes;
it has no workers): whole nodes are tested in tests/e2e/test_cluster.py."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.certkit import Pki
from tests.pkiservers import CrlServer
from tests.procs import free_port
from tlsgate.cluster import ClusterService
from tlsgate.cluster.channel import build_contexts, explain_tls_error
from tlsgate.config import Config, ConfigError, parse
from tlsgate.server.fetch import NodeFetcher
from tlsgate.server.pskstore import PskStore


class FakeNode:
    def __init__(self, config: Config, psk: PskStore | None) -> None:
        self.config = config
        self.path = None
        self.fetcher = NodeFetcher()
        self.psk = psk
        self.workers: dict[int, Any] = {}
        self.on_worker_started: list[Any] = []
        self.started_at = time.time()
        self.bans: Any = None
        self.cluster: Any = None

    async def ask_workers(self, op: str, timeout: float = 10.0, **args: Any
                          ) -> list[tuple[int, Any]]:
        return []


def config(tmp: Path, pki: Pki, name: str, cport: int, seeds: list[int], *,
           cluster: str = "unit", hb: float = 0.1, down: float = 0.6) -> Config:
    pair = pki.issue_client(f"svc-{name}", name, eku=["serverAuth", "clientAuth"])
    return parse({
        "node": {"name": name, "data_dir": str(tmp / name)},
        "cluster": {"enable": True, "name": cluster, "listen": f"127.0.0.1:{cport}",
                    "heartbeat_interval": hb, "down_after": down,
                    "static": {"seeds": [f"127.0.0.1:{p}" for p in seeds]},
                    "ssl": {"cacertfile": str(pki.ca_pem), "certfile": str(pair.cert),
                            "keyfile": str(pair.key)}},
        "psk_authentication": {"enable": True, "init_file": str(tmp / "psk.txt"),
                               "format": "hex"},
        # never started here (the fake node has no workers); the schema wants one
        "listeners": {"ssl": {"default": {"bind": "127.0.0.1:1", "ssl_options": {
            "certfile": str(pki.server.cert), "keyfile": str(pki.server.key)}}}},
    })


Make = Callable[..., "asyncio.Future[ClusterService]"]


@pytest.fixture
async def make(tmp_path: Path, pki: Pki) -> AsyncIterator[Any]:
    (tmp_path / "psk.txt").write_text("")
    started: list[ClusterService] = []
    ports: dict[str, int] = {}

    async def _make(name: str, seeds: list[str], **kw: Any) -> ClusterService:
        for n in [name, *seeds]:
            ports.setdefault(n, free_port())
        cfg = config(tmp_path, pki, name, ports[name], [ports[s] for s in seeds], **kw)
        store = PskStore(cfg.psk_authentication, cfg.node.data_dir, name)
        store.load()
        svc = ClusterService(FakeNode(cfg, store))
        await svc.start()
        started.append(svc)
        return svc

    yield _make
    for svc in started:
        with contextlib.suppress(Exception):
            await svc.stop()
        await svc.node.fetcher.close()


async def until(pred: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


async def test_nodes_that_seed_each_other_keep_one_link_per_pair(make: Any) -> None:
    a = await make("a", ["b", "c"])
    b = await make("b", ["a", "c"])
    c = await make("c", ["a", "b"])
    for svc in (a, b, c):
        def sees_two(svc: ClusterService = svc) -> bool:
            return len(svc.membership.up()) == 2

        await until(sees_two, what=f"{svc.name} sees 2")
    await asyncio.sleep(0.5)  # let duplicate links be resolved
    for svc in (a, b, c):
        assert sorted(svc.links) == sorted({"a", "b", "c"} - {svc.name})
    # both ends of each pair hold the same (single) connection: the one opened by the
    # node whose name sorts first
    assert a.links["b"].outbound and not b.links["a"].outbound
    assert b.links["c"].outbound and not c.links["b"].outbound
    nodes = await a.nodes()
    assert [(n["name"], n["status"]) for n in nodes] == [("a", "up"), ("b", "up"), ("c", "up")]


async def test_gossip_introduces_nodes_that_only_know_one_seed(make: Any) -> None:
    await make("a", [])
    b = await make("b", ["a"])
    c = await make("c", ["a"])
    await until(lambda: sorted(b.links) == ["a", "c"] and sorted(c.links) == ["a", "b"],
                what="b and c linked through a's gossip")


async def test_state_missed_by_deltas_is_repaired_by_heartbeat_hashes(make: Any) -> None:
    from tlsgate.server.pskstore import OverlayEntry

    a = await make("a", [])
    b = await make("b", ["a"])
    await until(lambda: "a" in b.links and "b" in a.links)
    # a change that reaches a's table without a delta (as if the delta was lost)
    a.node.psk.apply_remote(b"sneaky", OverlayEntry(b"\x01\x02", time.time(), "zz"))
    a.replicator.dirty("psk")
    await until(lambda: b"sneaky" in b.node.psk.merged(), 3.0, "digest-driven sync")


async def test_a_local_ban_and_psk_reach_the_other_node(make: Any) -> None:
    from tlsgate.gateway.bans import Ban

    a = await make("a", [])
    b = await make("b", ["a"])
    await until(lambda: "a" in b.links and "b" in a.links)
    await a.node.bans.add(Ban("clientid", "evil", "unit", time.time()))
    a.node.psk.add("dev-z", "0a0b0c")
    await until(lambda: b.node.bans.bans.get("clientid", "evil") is not None, 2.0, "ban")
    await until(lambda: b.node.psk.merged().get(b"dev-z") == b"\x0a\x0b\x0c", 2.0, "psk")
    await b.node.bans.remove("clientid", "evil")
    await until(lambda: a.node.bans.list() == [], 2.0, "ban removal")


async def test_psk_file_changes_on_one_node_replicate(make: Any, tmp_path: Path) -> None:
    a = await make("a", [])
    b = await make("b", ["a"])
    await until(lambda: "a" in b.links and "b" in a.links)
    await until(lambda: a.node.psk.file_changes_to_overlay, what="a hooked its PSK table")
    psk_file = tmp_path / "psk.txt"
    psk_file.write_text("from-file:0a0b\n")
    assert a.node.psk.reload_file(a.node.config.psk_authentication) is None
    await until(lambda: b.node.psk.merged().get(b"from-file") == b"\x0a\x0b", 2.0, "added")
    psk_file.write_text("")
    assert a.node.psk.reload_file(a.node.config.psk_authentication) is None
    await until(lambda: b"from-file" not in b.node.psk.merged(), 2.0, "removed")
    assert b"from-file" not in a.node.psk.merged()


async def test_fetches_go_through_the_owner_once_and_fall_back_without_it(make: Any) -> None:
    crls = CrlServer()
    await crls.start()
    try:
        crls.content["ca.crl"] = b"not really a CRL: the workers validate, not the node"
        a = await make("a", ["b"])
        b = await make("b", ["a"])
        await until(lambda: "a" in b.links and "b" in a.links)
        url = crls.url("ca.crl")
        args = {"kind": "crl", "url": url, "timeout_s": 2.0, "max_age": 5.0, "refresh": 10.0}
        answers = await asyncio.gather(*(svc.node.fetcher.handle(dict(args))
                                         for svc in (a, b, a, b)))
        assert {r["body"] for r in answers} == {answers[0]["body"]}
        assert crls.hits["ca.crl"] == 1
        owner = a.owner_of("crl", url, b"")
        other = b if owner == "a" else a
        # the owner goes away: the other node fetches for itself
        await (a if owner == "a" else b).stop()
        other.node.fetcher._cache.clear()
        await other.node.fetcher.handle(dict(args))
        assert crls.hits["ca.crl"] == 2
    finally:
        await crls.stop()


async def test_a_node_of_another_cluster_is_refused_on_both_sides(
        make: Any, caplog: pytest.LogCaptureFixture) -> None:
    a = await make("a", [])
    x = await make("x", ["a"], cluster="elsewhere")
    await until(lambda: "belongs to cluster 'elsewhere'" in caplog.text, what="a refuses x")
    await until(lambda: "belongs to cluster 'unit'" in caplog.text, what="x refuses a")
    await asyncio.sleep(0.3)
    assert a.links == {} and x.links == {}


async def test_down_after_silence_and_back(make: Any) -> None:
    a = await make("a", [])
    b = await make("b", ["a"])
    await until(lambda: a.membership.is_up("b"))
    await b.stop()                      # says bye: down at once
    await until(lambda: a.membership.members["b"].state == "down", 1.0, "b down")
    assert "it left" in a.membership.members["b"].down_reason


def _with_ssl(cfg: Config, **changes: Any) -> Any:
    assert cfg.cluster.ssl is not None
    return cfg.cluster.model_copy(update={"ssl": cfg.cluster.ssl.model_copy(update=changes)})


def test_build_contexts_names_the_key(tmp_path: Path, pki: Pki) -> None:
    from tlsgate.config.types import Secret

    cfg = config(tmp_path, pki, "a", 1, [])
    build_contexts(cfg.cluster, "t.toml")  # the good one loads
    other = pki.issue_client("other-key", "other", eku=["serverAuth", "clientAuth"])
    (tmp_path / "junk.pem").write_text("junk")
    for changes, key in (({"certfile": str(tmp_path / "missing.pem")}, "cluster.ssl.certfile"),
                         ({"keyfile": str(other.key)}, "cluster.ssl.keyfile"),
                         ({"cacertfile": str(tmp_path / "junk.pem")}, "cluster.ssl.cacertfile"),
                         ({"password": Secret(f"file://{tmp_path}/nope")},
                          "cluster.ssl.password")):
        with pytest.raises(ConfigError) as exc:
            build_contexts(_with_ssl(cfg, **changes), "t.toml")
        assert [p.key for p in exc.value.problems] == [key], changes


async def test_start_fails_with_the_listen_key_when_the_port_is_taken(make: Any, tmp_path: Path,
                                                                      pki: Pki) -> None:
    a = await make("a", [])
    cfg = config(tmp_path, pki, "b", a.listen_port, [])
    svc = ClusterService(FakeNode(cfg, None))
    with pytest.raises(ConfigError) as exc:
        await svc.start()
    assert exc.value.problems[0].key == "cluster.listen"


def test_explain_tls_error_readings() -> None:
    import ssl

    e = ssl.SSLCertVerificationError(1, "x")
    e.verify_message = "unable to get local issuer certificate"
    assert "does not chain to cluster.ssl.cacertfile" in explain_tls_error(e)
    e.verify_message = "unsupported certificate purpose"
    assert "serverAuth and clientAuth" in explain_tls_error(e)
    assert "timed out" in explain_tls_error(TimeoutError())
    assert "may have refused our certificate" in explain_tls_error(ConnectionResetError())


async def test_reload_says_restart_for_settings_and_rereads_certificates(
        make: Any, tmp_path: Path, pki: Pki) -> None:
    a = await make("a", [])
    old = a.node.config
    same = old.model_copy()
    assert a.config_changed(old, same) == []          # nothing changed: nothing to say
    assert old.cluster.ssl is not None
    cert = Path(old.cluster.ssl.certfile)
    cert.write_bytes(cert.read_bytes())               # rotated (same content, new mtime)
    os.utime(cert, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    assert a.config_changed(old, same) == ["cluster: certificates re-read for new links"]
    assert a.config_changed(old, same) == []
    moved = old.model_copy(update={"cluster": old.cluster.model_copy(
        update={"heartbeat_interval": 9.0})})
    assert a.config_changed(old, moved) == ["cluster: settings changed, restart needed"]


async def test_admin_api_cluster_paths(make: Any, tmp_path: Path, pki: Pki) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from tlsgate.admin.api import make_app
    from tlsgate.admin.server import TokenSource

    a = await make("a", [])
    b = await make("b", ["a"])
    await until(lambda: "a" in b.links and "b" in a.links)
    node = a.node
    async with TestClient(TestServer(make_app(node, node.bans, TokenSource(node)))) as c:
        r = await c.get("/api/v1/cluster/nodes")
        doc = await r.json()
        assert [(n["name"], n["status"]) for n in doc["nodes"]] == [("a", "up"), ("b", "up")]
        r = await c.get("/api/v1/connections?cluster=true")
        doc = await r.json()
        assert r.status == 200 and doc["data"] == [] and doc["errors"] == []
        r = await c.get("/api/v1/connections/0.1@b")           # b has no such connection
        assert r.status == 404
        r = await c.delete("/api/v1/connections/0.1@nowhere")  # no such node
        assert r.status == 502 and "not connected" in (await r.json())["message"]
    # a node without the cluster
    lone = FakeNode(node.config, None)
    from tlsgate.admin.banstore import NodeBans

    async with TestClient(TestServer(make_app(lone, NodeBans(lone), TokenSource(lone)))) as c:
        r = await c.get("/api/v1/connections?cluster=true")
        assert r.status == 409 and (await r.json())["error"] == "cluster_disabled"
        r = await c.delete("/api/v1/connections/0.1@b")
        assert r.status == 404
