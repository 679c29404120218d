"""Issue 7 end to end: three real `tlsgate serve` nodes on 127.0.0.1 (distinct ports) in front
of one mosquitto form a cluster over mutual TLS.

Real peers throughout: mosquitto, `mosquitto_pub --psk`, paho-mqtt, `openssl s_client -status`,
an OCSP responder that counts requests (tests/pkiservers.py), the nodes' admin APIs. Cluster
certificates come from tests/certkit.py (a second PKI plays the foreign CA). Heartbeats are
short (300 ms, down after 1.5 s) so the module runs in well under a minute.

The tests share one cluster and run in file order (each builds on the state the previous one
left: the PSK added in one is used after node 2's restart, the ban is removed while it is down).
"""

from __future__ import annotations

import json
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives import serialization

from tests.certkit import Pki
from tests.clients import connack_code, mqtt_over_tls, need, paho_client, s_client
from tests.loopthread import LoopThread
from tests.pkiservers import OcspResponder, TestCA
from tests.procs import Gate, Mosquitto, free_port, wait_for, wait_port

KEY1 = "00112233445566778899aabbccddeeff"
KEY_NEW = "a1a2a3a4a5a6a7a8a9aaabacadaeaf00"
KEY_LATE = "0f0e0d0c0b0a09080706050403020100"
REFRESH = 1.5   # OCSP refresh_interval of every node (seconds)


@dataclass
class Node:
    name: str
    dir: Path
    config: str
    port: int       # MQTT over TLS listener
    admin: int
    cport: int      # cluster channel
    gate: Gate = field(init=False)

    def start(self, wait: bool = True) -> Node:
        self.gate = Gate(self.dir, self.config, [self.port, self.admin, self.cport]).start(wait)
        return self

    def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.admin}{path}", method=method,
                                     data=json.dumps(body).encode() if body is not None
                                     else None)
        if body is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=15) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def get(self, path: str) -> Any:
        status, doc = self.api("GET", path)
        assert status == 200, (path, status, doc)
        return doc

    def status_of(self) -> dict[str, str]:
        return {n["name"]: n["status"] for n in self.get("/api/v1/cluster/nodes")["nodes"]}

    def metric(self, name: str, **labels: str) -> float | None:
        """One sample of this node's /metrics (None: no such sample)."""
        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/metrics", timeout=15) as r:
            text = r.read().decode()
        for fam in text_string_to_metric_families(text):
            for smp in fam.samples:
                if smp.name == name and all(smp.labels.get(k) == v for k, v in labels.items()):
                    return float(smp.value)
        return None


@dataclass
class World:
    lt: LoopThread
    responder: OcspResponder
    ca_pem: Path                 # trust anchor of the MQTT listeners (root of the OCSP test CA)
    cpki: Pki                    # the cluster CA
    foreign: Pki                 # another CA
    psk_file: Path
    nodes: dict[str, Node]
    tmp: Path
    broker: Mosquitto

    def n(self, name: str) -> Node:
        return self.nodes[name]


def node_toml(w: World, name: str, port: int, admin: int, cport: int, seeds: list[int], *,
              cluster_name: str = "e2e", pki: Pki | None = None, cacert: Path | None = None,
              server: tuple[Path, Path]) -> str:
    pair = (pki or w.cpki).issue_client(f"{name}-node", name,
                                        eku=["serverAuth", "clientAuth"])
    seed_list = ", ".join(f"\"127.0.0.1:{p}\"" for p in seeds)
    return f"""
[node]
name = "{name}"
workers = 1
data_dir = "data"
shutdown_timeout = "1s"

[upstreams.default]
address = "127.0.0.1:{w.broker.port}"
connect_timeout = "2s"

[dashboard]
enable = true
listen = "127.0.0.1:{admin}"

[psk_authentication]
enable = true
init_file = "{w.psk_file}"
format = "hex"

[mqtt]
psk_identity_as_username = true

[cluster]
enable = true
name = "{cluster_name}"
listen = "127.0.0.1:{cport}"
heartbeat_interval = "300ms"
down_after = "1500ms"

[cluster.static]
seeds = [{seed_list}]

[cluster.ssl]
cacertfile = "{cacert or w.cpki.ca_pem}"
certfile = "{pair.cert}"
keyfile = "{pair.key}"

[listeners.ssl.default]
bind = "127.0.0.1:{port}"

[listeners.ssl.default.ssl_options]
certfile = "{server[0]}"
keyfile = "{server[1]}"
cacertfile = "{w.ca_pem}"
handshake_timeout = "5s"

[listeners.ssl.default.ssl_options.ocsp]
enable_ocsp_stapling = true
refresh_interval = "{int(REFRESH * 1000)}ms"
refresh_http_timeout = "2s"
"""


@pytest.fixture(scope="module")
def world(broker: Mosquitto, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    need("mosquitto_pub")
    d = tmp_path_factory.mktemp("cluster")
    lt = LoopThread()
    root = TestCA("Cluster e2e root")
    responder = OcspResponder(root)
    lt.run(responder.start())
    ca_pem = d / "root.pem"
    ca_pem.write_bytes(root.cert.public_bytes(serialization.Encoding.PEM))
    server = root.issue("localhost", san=["localhost"], ocsp_url=responder.url)
    cert, key = server.write(d, "server")
    psk_file = d / "psk.txt"
    psk_file.write_text(f"dev1:{KEY1}\n")
    w = World(lt, responder, ca_pem, Pki(d / "cluster-ca"), Pki(d / "foreign-ca"), psk_file,
              {}, d, broker)
    ports = {n: (free_port(), free_port(), free_port()) for n in ("n1", "n2", "n3")}
    cports = [p[2] for p in ports.values()]
    for name, (port, admin, cport) in ports.items():
        # every node gets the same seed list, its own address included (it notices)
        w.nodes[name] = Node(name, d / name, node_toml(w, name, port, admin, cport, cports,
                                                       server=(Path(cert), Path(key))),
                             port, admin, cport)
    for n in w.nodes.values():
        n.start(wait=False)
    try:
        for n in w.nodes.values():
            for p in (n.port, n.admin, n.cport):
                wait_port(p, proc=n.gate.proc, timeout=30)
        yield w
    finally:
        for n in w.nodes.values():
            n.gate.stop()
        lt.run(responder.stop())
        lt.close()


def psk_pub(port: int, identity: str, key: str, client_id: str = "psk-pub"
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mosquitto_pub", "-h", "localhost", "-p", str(port), "--psk", key,
                           "--psk-identity", identity, "-i", client_id, "-t", "t/cluster",
                           "-m", "x"], capture_output=True, text=True, timeout=15)


def paho(w: World, node: Node, client_id: str) -> tuple[mqtt.Client, Any]:
    return paho_client(node.port, w.ca_pem, client_id=client_id, protocol=mqtt.MQTTv5)


def all_up(w: World, names: tuple[str, ...] = ("n1", "n2", "n3")) -> bool:
    for name in names:
        st = w.n(name).status_of()
        if sorted(st) != sorted(names) or any(v != "up" for v in st.values()):
            return False
    return True


# ----------------------------------------------------------------------------------------
def test_nodes_join_each_other_from_the_seeds(world: World) -> None:
    wait_for(lambda: all_up(world), 20, "three nodes up on every node")
    doc = world.n("n1").get("/api/v1/cluster/nodes")
    assert doc["enabled"] is True
    me, *others = doc["nodes"]
    assert me["name"] == "n1" and me["self"] is True and me["connections"] == 0
    for o in others:
        assert o["status"] == "up" and o["linked"] is True
        assert o["heartbeat_age_s"] is not None and o["heartbeat_age_s"] < 1.5
        assert o["last_heartbeat"] > time.time() - 5
        assert isinstance(o["connections"], int) and o["version"]
    n1 = world.n("n1")
    assert n1.metric("tlsgate_cluster_members", state="up") == 2
    assert n1.metric("tlsgate_cluster_members", state="down") == 0
    assert n1.metric("tlsgate_cluster_links") == 2
    assert n1.metric("tlsgate_cluster_member_up", member="n3") == 1
    age = n1.metric("tlsgate_cluster_member_heartbeat_age_seconds", member="n2")
    assert age is not None and 0 <= age < 1.5
    assert n1.metric("tlsgate_cluster_member_events_total", event="joined") == 2
    for n in world.nodes.values():
        log = n.gate.log_text()
        for other in set(world.nodes) - {n.name}:
            assert f"cluster: node {other} joined" in log, (n.name, other)
        # its own address is among the seeds: noticed, never an error
        assert "calls itself" not in log and "Traceback" not in log


def test_psk_added_on_node1_works_through_node3_and_removal_replicates(world: World) -> None:
    n1, n3 = world.n("n1"), world.n("n3")
    assert psk_pub(n3.port, "dev-new", KEY_NEW).returncode != 0  # unknown anywhere yet
    status, doc = n1.api("POST", "/api/v1/psk", {"identity": "dev-new", "secret": KEY_NEW})
    assert status == 201, doc
    wait_for(lambda: "dev-new" in n3.get("/api/v1/psk")["identities"], 5, "PSK replicated")
    r = psk_pub(n3.port, "dev-new", KEY_NEW, "via-n3")
    assert r.returncode == 0, r.stderr
    world.broker.wait_log(r"New client connected from \S+ as via-n3 \(.*u'dev-new'\)")
    n3.gate.wait_log(r"cluster: PSK identity 'dev-new' added/changed \(change made on node n1")
    applied = n3.metric("tlsgate_cluster_changes_applied_total", namespace="psk")
    assert applied is not None and applied >= 1
    # the identities added through the API are replicated (file entries are each node's own)
    assert n3.metric("tlsgate_cluster_replicated_keys", namespace="psk") == 1
    assert KEY_NEW not in n3.gate.log_text() and KEY_NEW not in n1.gate.log_text()
    # an identity added to node 1's file (reload) is usable through node 3 too
    n1.gate.config.write_text(n1.gate.config.read_text().replace(
        str(world.psk_file), str(world.psk_file) + ".n1"))
    (world.psk_file.parent / "psk.txt.n1").write_text(f"dev1:{KEY1}\ndev-file:{KEY_LATE}\n")
    assert "reload done" in n1.gate.reload()
    wait_for(lambda: "dev-file" in n3.get("/api/v1/psk")["identities"], 5, "file change")
    assert psk_pub(n3.port, "dev-file", KEY_LATE, "file-via-n3").returncode == 0
    # removed on node 3: refused through node 1
    status, _ = n3.api("DELETE", "/api/v1/psk/dev-new")
    assert status == 200
    wait_for(lambda: "dev-new" not in n1.get("/api/v1/psk")["identities"], 5,
             "removal replicated")
    assert psk_pub(n1.port, "dev-new", KEY_NEW).returncode != 0


def test_ban_on_node2_cuts_a_client_on_node1_within_a_second(world: World) -> None:
    n1, n2 = world.n("n1"), world.n("n2")
    live, res = paho(world, n1, "victim")
    try:
        assert connack_code(res.rc) == 0
        # the cluster-wide lookup on node 2 finds it on node 1
        found = wait_for(lambda: n2.get("/api/v1/connections?clientid=victim&cluster=true")
                         ["data"], 10, "victim listed cluster-wide")
        assert [(c["node"], c["clientid"]) for c in found] == [("n1", "victim")]
        assert found[0]["id"].endswith("@n1")
        assert n2.get("/api/v1/connections?clientid=victim")["data"] == []  # local view
        t0 = time.monotonic()
        status, doc = n2.api("POST", "/api/v1/bans", {"kind": "clientid", "value": "victim",
                                                      "reason": "cluster e2e"})
        assert status == 201, doc
        assert res.disconnected.wait(5), "the client on node 1 was not cut"
        took = time.monotonic() - t0
        print(f"ban on n2 cut the client on n1 after {took:.3f}s")
        assert took < 1.5, f"cut after {took:.2f}s"
    finally:
        live.loop_stop()
    n1.gate.wait_log(r"cluster: ban clientid 'victim' added/changed \(change made on node n2")
    n1.gate.wait_log(r"reason=\"banned \(clientid 'victim'\)\"")
    c, res2 = paho(world, n1, "victim")  # its next CONNECT: refused, MQTT 5 "Banned"
    c.loop_stop()
    assert connack_code(res2.rc) == 0x8A
    assert [b["value"] for b in n1.get("/api/v1/bans")["data"]] == ["victim"]


def test_kick_through_another_node(world: World) -> None:
    n1, n3 = world.n("n1"), world.n("n3")
    live, res = paho(world, n3, "kick-me")
    try:
        assert connack_code(res.rc) == 0
        (conn,) = wait_for(lambda: n1.get("/api/v1/connections?clientid=kick-me&cluster=true")
                           ["data"], 10, "kick-me listed")
        assert conn["node"] == "n3"
        status, doc = n1.api("GET", f"/api/v1/connections/{conn['id']}")
        assert status == 200 and doc["clientid"] == "kick-me", doc
        status, doc = n1.api("DELETE", f"/api/v1/connections/{conn['id']}")
        assert status == 200 and doc["kicked"] is True, doc
        assert res.disconnected.wait(5)
        n3.gate.wait_log(r"reason=\"kicked by operator \(127\.0\.0\.1 via node n1\)\"")
    finally:
        live.loop_stop()


def test_ocsp_responder_sees_one_fetch_per_refresh_for_the_whole_cluster(world: World
                                                                         ) -> None:
    for n in world.nodes.values():
        out = s_client(n.port, "-CAfile", str(world.ca_pem), "-status", hold=0.3
                       ).stdout.decode()
        assert "Cert Status: good" in out, (n.name, out)
    before = world.responder.requests
    periods = 4
    time.sleep(REFRESH * periods)
    fetched = world.responder.requests - before
    print(f"{fetched} OCSP fetches in {periods} refresh periods of {REFRESH}s (3 nodes)")
    # three nodes, each refreshing every REFRESH seconds: 3 * periods without the cluster
    assert 1 <= fetched <= periods + 1, f"{fetched} fetches in {periods} refresh periods"
    for n in world.nodes.values():  # and every node still staples a good response
        out = s_client(n.port, "-CAfile", str(world.ca_pem), "-status", hold=0.3
                       ).stdout.decode()
        assert "Cert Status: good" in out, (n.name, out)


#: A TLS session from node 1, kept across tests (it must still resume on node 2 after node 2's
#: restart).
_SESSIONS: dict[str, tuple[ssl.SSLContext, ssl.SSLSession]] = {}


def _tls_ctx(world: World) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(world.ca_pem))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    return ctx


def _mqtt_session(port: int, ctx: ssl.SSLContext, cid: str,
                  session: ssl.SSLSession | None = None) -> tuple[bool, ssl.SSLSession | None]:
    """CONNECT/CONNACK (the ticket travels with the CONNACK); (resumed?, the session)."""
    with mqtt_over_tls(port, ctx, cid, session) as tls:
        return bool(tls.session_reused), tls.session


def test_a_tls_session_resumes_on_every_node(world: World) -> None:
    """No node.session_ticket_secret_file anywhere: the cluster agreed on one ticket secret
    (tlsgate.server.ticket_secret, the longest-running node's), so a client that got its
    session on node 1 resumes it on nodes 2 and 3 behind the same load balancer."""
    ctx = _tls_ctx(world)
    resumed, session = _mqtt_session(world.n("n1").port, ctx, "tls-n1")
    assert not resumed and session is not None and session.has_ticket
    for name in ("n2", "n3"):
        assert _mqtt_session(world.n(name).port, ctx, f"tls-on-{name}", session)[0], name
    _SESSIONS["n1"] = ctx, session  # a session is only usable with its own context


def test_node2_killed_is_reported_down_and_catches_up_when_it_returns(world: World) -> None:
    n1, n2, n3 = world.n("n1"), world.n("n2"), world.n("n3")
    workers = n2.gate.worker_pids()
    t0 = time.monotonic()
    n2.gate.stop(signal.SIGKILL)
    for n in (n1, n3):
        def n2_down(n: Node = n) -> bool:
            return n.status_of().get("n2") == "down"

        wait_for(n2_down, 6, f"{n.name} reports n2 down")
    took = time.monotonic() - t0
    print(f"n2 reported down by n1 and n3 after {took:.2f}s")
    assert took < 5.0, f"reported down after {took:.1f}s"
    n1.gate.wait_log(r"cluster: node n2 is down \(no heartbeat for")
    assert n1.metric("tlsgate_cluster_member_up", member="n2") == 0
    assert n1.metric("tlsgate_cluster_members", state="down") == 1
    assert n1.metric("tlsgate_cluster_member_events_total", event="down") == 1
    doc = n3.get("/api/v1/cluster/nodes")
    (n2_view,) = [x for x in doc["nodes"] if x["name"] == "n2"]
    assert n2_view["down_reason"] and n2_view["connections"] is None
    # the others keep serving
    assert psk_pub(n1.port, "dev1", KEY1, "still-n1").returncode == 0
    assert psk_pub(n3.port, "dev1", KEY1, "still-n3").returncode == 0
    # changes node 2 misses: a PSK added on n3, a ban made on n1, the victim's ban lifted
    assert n3.api("POST", "/api/v1/psk", {"identity": "dev-late",
                                          "secret": KEY_LATE})[0] == 201
    assert n1.api("POST", "/api/v1/bans", {"kind": "username", "value": "late-ban"})[0] == 201
    assert n3.api("DELETE", "/api/v1/bans/clientid/victim")[0] == 200
    # node 2's orphaned worker notices its node is gone and exits (it holds the port)
    wait_for(lambda: not any(Path(f"/proc/{p}").exists() for p in workers), 10,
             "n2's worker gone")
    n2.start()
    wait_for(lambda: all_up(world), 15, "n2 back on every node")
    n1.gate.wait_log(r"cluster: node n2 is back")
    wait_for(lambda: "dev-late" in n2.get("/api/v1/psk")["identities"], 5, "n2 has dev-late")
    bans = {b["value"] for b in n2.get("/api/v1/bans")["data"]}
    assert bans == {"late-ban"}, bans
    assert "dev-new" not in n2.get("/api/v1/psk")["identities"]  # removed before: stays so
    r = psk_pub(n2.port, "dev-late", KEY_LATE, "late-via-n2")
    assert r.returncode == 0, r.stderr
    c, res = paho(world, n2, "victim")  # no longer banned anywhere
    c.disconnect()
    c.loop_stop()
    assert connack_code(res.rc) == 0


def test_a_restarted_node_adopts_the_clusters_ticket_secret(world: World) -> None:
    """Node 2 came back with a new random secret and a later start: it took the cluster's
    secret instead of imposing its own, so the session node 1 issued before the restart still
    resumes on it, and on the others."""
    if "n1" not in _SESSIONS:
        pytest.skip("needs test_a_tls_session_resumes_on_every_node")
    ctx, session = _SESSIONS["n1"]
    world.n("n2").gate.wait_log(r"session tickets: this node now uses the cluster's ticket")
    for name in ("n2", "n1", "n3"):
        assert _mqtt_session(world.n(name).port, ctx, f"tls-again-{name}", session)[0], name


def test_a_node_of_another_ca_or_cluster_cannot_join(world: World) -> None:
    n1 = world.n("n1")
    server = (world.tmp / "server.pem", world.tmp / "server.key")
    # n4: certificate from another CA (it trusts the cluster CA itself, so the refusal is n1's)
    p4, a4, c4 = free_port(), free_port(), free_port()
    n4 = Node("n4", world.tmp / "n4", node_toml(world, "n4", p4, a4, c4, [n1.cport],
                                                pki=world.foreign, cacert=world.cpki.ca_pem,
                                                server=server), p4, a4, c4)
    # n5: a good certificate, another cluster name
    p5, a5, c5 = free_port(), free_port(), free_port()
    n5 = Node("n5", world.tmp / "n5", node_toml(world, "n5", p5, a5, c5, [n1.cport],
                                                cluster_name="other", server=server),
              p5, a5, c5)
    n4.start(wait=False)
    n5.start(wait=False)
    try:
        for n in (n4, n5):
            for p in (n.port, n.admin, n.cport):
                wait_port(p, proc=n.gate.proc, timeout=30)
        n1.gate.wait_log(r"cluster: refused a connection from 127\.0\.0\.1:\d+: its certificate "
                         r"does not chain to cluster\.ssl\.cacertfile", 10)
        n4.gate.wait_log(rf"cluster: cannot connect to 127\.0\.0\.1:{n1.cport}: .*it may have "
                         r"refused our certificate", 10)
        n1.gate.wait_log(r"cluster: refused node n5 \(connection from 127\.0\.0\.1:\d+\): it "
                         r"belongs to cluster 'other', this node to 'e2e'", 10)
        n5.gate.wait_log(rf"cluster: refused node n1 \(node at 127\.0\.0\.1:{n1.cport}\): it "
                         r"belongs to cluster 'e2e', this node to 'other'", 10)
        time.sleep(0.5)
        for n in world.nodes.values():
            assert sorted(n.status_of()) == ["n1", "n2", "n3"]
        assert n4.status_of() == {"n4": "up"} and n5.status_of() == {"n5": "up"}
    finally:
        n4.gate.stop()
        n5.gate.stop()


def _tls_to(port: int, pair: Any, ca: Path) -> ssl.SSLSocket:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(ca)
    ctx.load_cert_chain(pair.cert, pair.key)
    return ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5))


def _closed_by_peer(s: socket.socket | ssl.SSLSocket) -> bool:
    try:
        s.settimeout(5)
        while s.recv(65536):
            pass
    except (OSError, ssl.SSLError):
        pass
    return True


def test_garbage_and_oversized_frames_do_not_hurt_the_cluster(world: World) -> None:
    n1 = world.n("n1")
    # not TLS at all
    with socket.create_connection(("127.0.0.1", n1.cport), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n" + bytes(range(256)) * 4)
        assert _closed_by_peer(s)
    n1.gate.wait_log(r"cluster: refused a connection from 127\.0\.0\.1:\d+: it does not speak "
                     r"TLS")
    # a valid cluster certificate, then garbage instead of frames
    intruder = world.cpki.issue_client("intruder", "intruder",
                                       eku=["serverAuth", "clientAuth"])
    with _tls_to(n1.cport, intruder, world.cpki.ca_pem) as s:
        s.sendall(b"\x00\xff" * 4096)
        assert _closed_by_peer(s)
    n1.gate.wait_log(r"cluster: connection from 127\.0\.0\.1:\d+ sent a bad frame \(not a "
                     r"tlsgate cluster frame \(bad magic\)\); closed")
    # a frame header announcing 2 GiB: cut off after the header
    with _tls_to(n1.cport, intruder, world.cpki.ca_pem) as s:
        s.sendall(b"TG\x01\x00" + (2 ** 31).to_bytes(4, "big"))
        assert _closed_by_peer(s)
    n1.gate.wait_log(r"sent a bad frame \(frame of 2147483648 bytes exceeds the \d+-byte limit")
    # a well-framed hello with nonsense fields
    with _tls_to(n1.cport, intruder, world.cpki.ca_pem) as s:
        payload = json.dumps({"t": "hello", "cluster": 5}).encode()
        s.sendall(b"TG\x01\x00" + len(payload).to_bytes(4, "big") + payload)
        assert _closed_by_peer(s)
    n1.gate.wait_log(r"sent a bad frame \(hello\.proto must be")
    # everything still runs, and the cluster is intact
    assert n1.gate.proc is not None and n1.gate.proc.poll() is None
    wait_for(lambda: all_up(world), 5, "cluster intact")
    assert psk_pub(n1.port, "dev1", KEY1, "after-garbage").returncode == 0
    assert "Traceback" not in n1.gate.log_text()
