"""Issue 8: the admin API, /metrics, `tlsgate ctl` and reload-on-change against a real
`tlsgate serve` (node + 2 workers) in front of a real mosquitto, with real clients
(mosquitto_sub, paho-mqtt, openssl s_client)."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.certkit import Pki
from tests.clients import Sub, connack_code, mosquitto_pub, paho_client, s_client, tls_args
from tests.procs import REPO, Gate, Mosquitto, free_port, wait_for

TOKEN = "e2e-admin-token-4f9a"


def admin_toml(broker_port: int, admin_port: int, token_file: Path, *, workers: int = 2,
               node: str = "") -> str:
    return (f"[node]\nname = \"e2e-admin\"\nworkers = {workers}\ndata_dir = \"data\"\n"
            f"shutdown_timeout = \"2s\"\n{node}\n"
            f"[upstreams.default]\naddress = \"127.0.0.1:{broker_port}\"\n"
            "connect_timeout = \"2s\"\n"
            f"[dashboard]\nenable = true\nlisten = \"127.0.0.1:{admin_port}\"\n"
            f"token_file = \"{token_file}\"\n")


def listener(name: str, port: int, cert: Path, key: Path, ca: Path, extra_ssl: str = "") -> str:
    return (f"[listeners.ssl.{name}]\nbind = \"127.0.0.1:{port}\"\n"
            f"[listeners.ssl.{name}.ssl_options]\ncertfile = \"{cert}\"\nkeyfile = \"{key}\"\n"
            f"cacertfile = \"{ca}\"\nhandshake_timeout = \"3s\"\n{extra_ssl}\n")


class Api:
    def __init__(self, port: int, token: str | None = TOKEN) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.token = token

    def call(self, method: str, path: str, body: Any = None, token: str | None = "default"
             ) -> tuple[int, Any]:
        tok = self.token if token == "default" else token
        req = urllib.request.Request(self.base + path, method=method,
                                     data=json.dumps(body).encode() if body is not None
                                     else None)
        if tok is not None:
            req.add_header("Authorization", f"Bearer {tok}")
        if body is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=15) as r:
                raw = r.read()
                ctype = r.headers.get("Content-Type", "")
                return r.status, json.loads(raw) if "json" in ctype else raw.decode()
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def get(self, path: str) -> Any:
        status, doc = self.call("GET", path)
        assert status == 200, (path, status, doc)
        return doc

    def connections(self, **filters: str) -> list[dict[str, Any]]:
        q = "&".join(f"{k}={v}" for k, v in filters.items())
        return list(self.get(f"/api/v1/connections?{q}")["data"])

    def metric(self, name: str, sample: str | None = None, **labels: str) -> float:
        """Sum of the samples of family ``name`` (sample ``sample``; default: the counter's
        ``_total`` or the gauge itself) whose labels include ``labels``; 0 if none."""
        status, text = self.call("GET", "/metrics", token=None)
        assert status == 200
        total = 0.0
        for fam in text_string_to_metric_families(text):
            if fam.name != name:
                continue
            want = sample or (name + "_total" if fam.type == "counter" else name)
            for s in fam.samples:
                if s.name == want and all(s.labels.get(k) == v for k, v in labels.items()):
                    total += s.value
        return total


def ctl(gate: Gate, *args: str, token_file: Path | None = None,
        timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("TLSGATE_TOKEN", None)
    env.pop("TLSGATE_URL", None)
    return subprocess.run([sys.executable, "-m", "tlsgate", "ctl", "-c", str(gate.config), *args],
                          capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=gate.dir)


@pytest.fixture(scope="module")
def gate(broker: Mosquitto, pki: Pki, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[Gate]:
    d = tmp_path_factory.mktemp("admin-gate")
    tf = d / "token"
    tf.write_text(TOKEN + "\n")
    one, mtls, aport = free_port(), free_port(), free_port()
    cfg = (admin_toml(broker.port, aport, tf)
           + listener("oneway", one, pki.server.cert, pki.server.key, pki.ca_pem)
           + listener("mtls", mtls, pki.server.cert, pki.server.key, pki.ca_pem,
                      "verify = \"verify_peer\"\nfail_if_no_peer_cert = true\n")
           + "[listeners.ssl.mtls.mqtt]\npeer_cert_as_username = \"cn\"\n")
    g = Gate(d / "gate", cfg, [one, mtls, aport]).start()
    g.one, g.mtls, g.aport = one, mtls, aport  # type: ignore[attr-defined]
    g.api = Api(aport)  # type: ignore[attr-defined]
    wait_for(lambda: len(g.worker_pids()) == 2, 15, "two workers")
    yield g
    g.stop()


def api_of(g: Gate) -> Api:
    return g.api  # type: ignore[attr-defined, no-any-return]


# ------------------------------------------------------------------------------------ auth
def test_wrong_or_missing_token_is_401_and_public_paths_are_open(gate: Gate) -> None:
    api = api_of(gate)
    for tok in (None, "wrong", TOKEN[:-1]):
        for method, path in (("GET", "/api/v1/status"), ("GET", "/api/v1/connections"),
                             ("POST", "/api/v1/reload"), ("DELETE", "/api/v1/connections/0.1")):
            status, doc = api.call(method, path, token=tok)
            assert status == 401 and doc["error"] == "unauthorized", (tok, path)
    st = api.get("/api/v1/status")
    assert st["node"] == "e2e-admin" and len(st["workers"]) == 2
    assert all(w["alive"] for w in st["workers"]) and st["errors"] == []
    assert {x["listener"] for x in st["listeners"]} == {"ssl:oneway", "ssl:mtls"}
    status, html = api.call("GET", "/", token=None)
    assert status == 200 and "tlsgate dashboard" in html
    status, spec = api.call("GET", "/api/v1/openapi.json", token=None)
    assert status == 200 and "/api/v1/bans/{kind}/{value}" in spec["paths"]
    gate.wait_log(r"admin API, /metrics and dashboard on http://127\.0\.0\.1:\d+/")


# ------------------------------------------------------------------------------------ kick
def test_kick_cuts_a_real_mosquitto_sub(gate: Gate, pki: Pki) -> None:
    api = api_of(gate)
    sub = Sub(gate.one, "t/kick", *tls_args(pki.ca_pem), "-i", "kick-me",  # type: ignore[attr-defined]
              count=1, wait_s=60)
    try:
        (conn,) = wait_for(lambda: api.connections(clientid="kick-me"), 15, "kick-me listed")
        assert conn["tls_version"] in ("TLSv1.3", "TLSv1.2") and conn["listener"] == "ssl:oneway"
        assert conn["id"].split(".")[0] in ("0", "1")
        assert api.get(f"/api/v1/connections/{conn['id']}")["clientid"] == "kick-me"
        # ctl lists it too, as a table
        out = ctl(gate, "connections", "--clientid", "kick-me")
        assert out.returncode == 0, out.stderr
        assert conn["id"] in out.stdout and "kick-me" in out.stdout
        assert "1 connection(s)" in out.stdout
        # kick with ctl
        out = ctl(gate, "kick", conn["id"])
        assert out.returncode == 0 and f"kicked {conn['id']}" in out.stdout, out.stderr
        gate.wait_log(rf"conn={conn['id'].split('.')[1]} .*reason=\"kicked by operator")
        # that connection is gone (mosquitto_sub may reconnect: as a new connection)
        wait_for(lambda: all(c["id"] != conn["id"] for c in api.connections(clientid="kick-me")),
                 10, "kicked connection gone")
        status, doc = api.call("DELETE", f"/api/v1/connections/{conn['id']}")
        assert status == 404 and doc["error"] == "not_found"
    finally:
        sub.proc.kill()
        sub.proc.wait()


# ------------------------------------------------------------------------------------ bans
def _paho(port: int, pki: Pki, client_id: str, protocol: int = mqtt.MQTTv5
          ) -> tuple[mqtt.Client, Any]:
    return paho_client(port, pki.ca_pem, client_id=client_id, protocol=protocol)


def test_ban_refuses_new_clients_with_0x8a_and_cuts_live_ones(gate: Gate, pki: Pki) -> None:
    api = api_of(gate)
    live, live_res = _paho(gate.one, pki, "ban-me")  # type: ignore[attr-defined]
    try:
        assert connack_code(live_res.rc) == 0
        wait_for(lambda: api.connections(clientid="ban-me"), 10, "ban-me listed")
        t0 = time.monotonic()
        status, doc = api.call("POST", "/api/v1/bans", {"kind": "clientid", "value": "ban-me",
                                                        "reason": "e2e"})
        assert status == 201, doc
        assert len(doc["closed"]) == 1 and doc["errors"] == []
        assert live_res.disconnected.wait(5), "the live banned client was not cut"
        assert time.monotonic() - t0 < 2.0
    finally:
        live.loop_stop()
    try:
        # every worker refuses: try a few new connections (SO_REUSEPORT spreads them)
        for _ in range(4):
            c, res = _paho(gate.one, pki, "ban-me")  # type: ignore[attr-defined]
            c.loop_stop()
            assert connack_code(res.rc) == 0x8A, res.rc  # MQTT 5: Banned
        r = mosquitto_pub(gate.one, "t/x", "m", "-i", "ban-me", "-V", "mqttv311",  # type: ignore[attr-defined]
                          *tls_args(pki.ca_pem))
        assert r.returncode != 0 and "not authorised" in r.stderr.lower(), r.stderr  # 0x05
        gate.wait_log(r"reason=\"refused: banned \(clientid 'ban-me'\)\"")
        assert api.metric("tlsgate_refusals", reason="banned") >= 5
        # others still get in
        ok, ok_res = _paho(gate.one, pki, "not-banned")  # type: ignore[attr-defined]
        ok.disconnect()
        ok.loop_stop()
        assert connack_code(ok_res.rc) == 0
        # the ban is listed (API and ctl) and persisted in node.data_dir
        assert [b["value"] for b in api.get("/api/v1/bans")["data"]] == ["ban-me"]
        out = ctl(gate, "ban", "list")
        assert out.returncode == 0 and "ban-me" in out.stdout and "e2e" in out.stdout
        saved = json.loads((gate.dir / "data" / "bans.json").read_text())
        assert saved[0]["value"] == "ban-me"
        # a restarted worker gets the ban list right away
        before = {w["index"]: w["pid"] for w in api.get("/api/v1/status")["workers"]}
        for pid in before.values():
            os.kill(pid, signal.SIGKILL)

        def restarted() -> bool:
            ws = api.get("/api/v1/status")["workers"]
            return all(w["alive"] and w["pid"] != before[w["index"]] for w in ws)

        wait_for(restarted, 20, "workers restarted")
        wait_for(lambda: len(gate.worker_pids()) == 2, 10, "two workers")
        time.sleep(0.3)
        c, res = _paho(gate.one, pki, "ban-me")  # type: ignore[attr-defined]
        c.loop_stop()
        assert connack_code(res.rc) == 0x8A
    finally:
        out = ctl(gate, "ban", "remove", "clientid", "ban-me")
        assert out.returncode == 0, out.stderr
    c, res = _paho(gate.one, pki, "ban-me")  # type: ignore[attr-defined]
    c.disconnect()
    c.loop_stop()
    assert connack_code(res.rc) == 0


def test_ban_by_certificate_cn(gate: Gate, pki: Pki) -> None:
    api = api_of(gate)
    status, _ = api.call("POST", "/api/v1/bans", {"kind": "cn", "value": "client",
                                                  "duration": "10m"})
    assert status == 201
    try:
        c, res = paho_client(gate.mtls, pki.ca_pem, cert=pki.client.cert,  # type: ignore[attr-defined]
                             key=pki.client.key, client_id="by-cn", protocol=mqtt.MQTTv5)
        c.loop_stop()
        assert connack_code(res.rc) == 0x8A
    finally:
        assert api.call("DELETE", "/api/v1/bans/cn/client")[0] == 200


def test_ban_by_a_user_name_mapped_from_the_certificate(gate: Gate, pki: Pki) -> None:
    """peer_cert_as_username applies before the admission checks: a ban on the mapped user
    name refuses the client, whatever user name its CONNECT carried."""
    api = api_of(gate)
    status, _ = api.call("POST", "/api/v1/bans", {"kind": "username", "value": "client",
                                                  "duration": "10m"})
    assert status == 201
    try:
        c, res = paho_client(gate.mtls, pki.ca_pem, cert=pki.client.cert,  # type: ignore[attr-defined]
                             key=pki.client.key, client_id="mapped", username="someone-else",
                             protocol=mqtt.MQTTv5)
        c.loop_stop()
        assert connack_code(res.rc) == 0x8A
    finally:
        assert api.call("DELETE", "/api/v1/bans/username/client")[0] == 200
    c, res = paho_client(gate.mtls, pki.ca_pem, cert=pki.client.cert,  # type: ignore[attr-defined]
                         key=pki.client.key, client_id="mapped", username="someone-else",
                         protocol=mqtt.MQTTv5)
    c.disconnect()
    c.loop_stop()
    assert connack_code(res.rc) == 0


# ------------------------------------------------------------------------------------ metrics
def test_metrics_parse_and_count_a_refused_handshake(gate: Gate, pki: Pki) -> None:
    api = api_of(gate)
    failed = api.metric("tlsgate_handshakes", listener="ssl:mtls", result="failed")
    unknown_ca = api.metric("tlsgate_handshake_failures", listener="ssl:mtls",
                            reason="unknown_ca")
    out = s_client(gate.mtls, "-CAfile", str(pki.ca_pem),  # type: ignore[attr-defined]
                   "-cert", str(pki.foreign.cert), "-key", str(pki.foreign.key),
                   data=b"\x10\x00").stdout.decode()
    assert "unknown ca" in out, out
    wait_for(lambda: api.metric("tlsgate_handshakes", listener="ssl:mtls", result="failed")
             == failed + 1, 10, "failed handshake counted")
    assert api.metric("tlsgate_handshake_failures", listener="ssl:mtls",
                      reason="unknown_ca") == unknown_ca + 1
    # a good one is counted with its version and lands in the histogram
    ok = api.metric("tlsgate_handshakes", listener="ssl:oneway", result="ok")
    hist = api.metric("tlsgate_handshake_duration_seconds",
                      "tlsgate_handshake_duration_seconds_count", listener="ssl:oneway")
    c, res = _paho(gate.one, pki, "metrics-ok")  # type: ignore[attr-defined]
    c.disconnect()
    c.loop_stop()
    assert connack_code(res.rc) == 0
    wait_for(lambda: api.metric("tlsgate_handshakes", listener="ssl:oneway", result="ok")
             == ok + 1, 10, "handshake counted")
    assert api.metric("tlsgate_handshakes", listener="ssl:oneway", result="ok",
                      tls_version="TLSv1.3") >= 1
    assert api.metric("tlsgate_handshake_duration_seconds",
                      "tlsgate_handshake_duration_seconds_count", listener="ssl:oneway") \
        == hist + 1
    assert api.metric("tlsgate_connections_accepted", listener="ssl:oneway") >= 1
    # a resumed session is counted (on either of the two workers: they share ticket keys)
    resumed = api.metric("tlsgate_handshakes_resumed", listener="ssl:oneway")
    cctx = ssl.create_default_context(cafile=str(pki.ca_pem))
    cctx.minimum_version = ssl.TLSVersion.TLSv1_3
    session = None
    for i in range(3):
        with socket.create_connection(("127.0.0.1", gate.one)) as raw, \
                cctx.wrap_socket(raw, server_hostname="localhost", session=session) as tls:
            tls.sendall(b"\x10\x12\x00\x04MQTT\x04\x02\x00\x3c\x00\x06" + f"resum{i}".encode())
            assert tls.recv(4) == b"\x20\x02\x00\x00"
            assert tls.session_reused == (i > 0)
            session = tls.session
    wait_for(lambda: api.metric("tlsgate_handshakes_resumed", listener="ssl:oneway")
             == resumed + 2, 10, "two resumed handshakes counted")
    (view,) = [x for x in api.get("/api/v1/listeners")["data"] if x["listener"] == "ssl:oneway"]
    assert view["handshakes_resumed"] >= 2
    assert api.metric("tlsgate_certificate_days_to_expiry", listener="ssl:oneway",
                      position="leaf") > 300
    # CPU and memory of the node and of both workers
    assert api.metric("tlsgate_process_resident_memory_bytes", process="node") > 10e6
    for w in ("0", "1"):
        assert api.metric("tlsgate_process_resident_memory_bytes", process="worker",
                          worker=w) > 10e6
        assert api.metric("tlsgate_process_cpu_seconds", process="worker", worker=w) > 0
    assert api.metric("tlsgate_workers", state="running") == 2


# ------------------------------------------------------------------------------------ reload, certs
def test_reload_via_api_and_ctl_answers_what_changed(gate: Gate) -> None:
    api = api_of(gate)
    status, doc = api.call("POST", "/api/v1/reload")
    assert status == 200 and doc["ok"] is True and doc["problems"] == []
    assert "ssl:oneway: new TLS context" in doc["changes"]
    assert "ssl:mtls: new TLS context" in doc["changes"]
    out = ctl(gate, "reload")
    assert out.returncode == 0 and "reloaded:" in out.stdout and "ssl:mtls" in out.stdout
    assert api.get("/api/v1/status")["last_reload"]["ok"] is True


def test_ctl_status_certs_and_listeners_tables(gate: Gate, pki: Pki) -> None:
    out = ctl(gate, "status")
    assert out.returncode == 0, out.stderr
    assert "node e2e-admin" in out.stdout and "ssl:oneway" in out.stdout
    assert "workers 2/2" in out.stdout
    out = ctl(gate, "certs")
    assert out.returncode == 0, out.stderr
    assert "ssl:mtls" in out.stdout and "leaf" in out.stdout and " ok" in out.stdout
    assert "not configured" in out.stdout
    out = ctl(gate, "--json", "certs")
    doc = json.loads(out.stdout)
    leaf = doc["listeners"][0]["chains"][0]["certificates"][0]
    assert leaf["serial"] == format(pki.server.serial, "x") and leaf["status"] == "ok"
    out = ctl(gate, "listeners")
    assert out.returncode == 0 and "hs failed" in out.stdout and "ssl:mtls" in out.stdout
    assert "resumed" in out.stdout.splitlines()[0]
    out = ctl(gate, "psk", "list")
    assert out.returncode == 0 and "not enabled" in out.stdout
    # a wrong token: a clear message and exit status 1
    bad = gate.dir / "bad-token"
    bad.write_text("nope\n")
    out = ctl(gate, "--token-file", str(bad), "status")
    assert out.returncode == 1 and "refused the token (HTTP 401)" in out.stderr


def _served_serial(port: int, ca: Path) -> int:
    from cryptography import x509

    ctx = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_reload_on_file_change_serves_the_new_certificate(broker: Mosquitto, pki: Pki,
                                                          tmp_path: Path, make_gate: Any
                                                          ) -> None:
    cert, key = tmp_path / "srv.pem", tmp_path / "srv.key"
    cert.write_bytes(pki.server.cert.read_bytes())
    key.write_bytes(pki.server.key.read_bytes())
    key.chmod(0o600)
    tf = tmp_path / "token"
    tf.write_text(TOKEN)
    port, aport = free_port(), free_port()
    cfg = (admin_toml(broker.port, aport, tf, workers=1,
                      node="reload_on_change = true\nreload_check_interval = \"200ms\"")
           + listener("w", port, cert, key, pki.ca_pem))
    g = make_gate(cfg, [port, aport])
    g.wait_log(r"reload_on_change: watching \d+ file\(s\)")
    assert _served_serial(port, pki.ca_pem) == pki.server.serial
    new = pki.issue_server("rotated", ["localhost", "127.0.0.1"])
    cert.write_bytes(new.cert.read_bytes())
    key.write_bytes(new.key.read_bytes())
    wait_for(lambda: _served_serial(port, pki.ca_pem) == new.serial, 15,
             "the rotated certificate is served")
    g.wait_log(r"reload_on_change: .*srv\.(pem|key).* changed; reloading")
    g.wait_log(r"reload done: ssl:w: new TLS context")
    api = Api(aport)
    st = api.get("/api/v1/status")
    assert st["reload_on_change"] is True and st["last_reload"]["ok"] is True
    doc = api.get("/api/v1/certificates")
    assert doc["listeners"][0]["chains"][0]["certificates"][0]["serial"] == \
        format(new.serial, "x")


def test_no_token_on_a_public_address_refuses_to_start(broker: Mosquitto, pki: Pki,
                                                       tmp_path: Path, make_gate: Any) -> None:
    port, aport = free_port(), free_port()
    cfg = (f"[node]\nname = \"x\"\nworkers = 1\ndata_dir = \"data\"\n"
           f"[upstreams.default]\naddress = \"127.0.0.1:{broker.port}\"\n"
           f"[dashboard]\nenable = true\nlisten = \"0.0.0.0:{aport}\"\n"
           + listener("w", port, pki.server.cert, pki.server.key, pki.ca_pem))
    g = make_gate(cfg, [], wait=False)
    assert g.proc is not None
    assert g.proc.wait(30) == 2
    assert "dashboard.token: the admin API listens on 0.0.0.0" in g.log_text()
    assert not g.worker_pids()


def test_gm_listener_certificates_are_listed(broker: Mosquitto, pki: Pki, tmp_path: Path,
                                             make_gate: Any) -> None:
    gm = pytest.importorskip("tlsgate.tls.gm")
    from tests.e2e.test_gm_gateway import gm_listener
    from tlsgate.tls.gm_certs import init_sm2_dir

    try:
        gm.library_info()
    except gm.GmUnavailableError as exc:
        pytest.skip(f"Tongsuo library unavailable: {exc}")
    sm2 = init_sm2_dir(tmp_path / "sm2", clients=("dev1",))
    tf = tmp_path / "token"
    tf.write_text(TOKEN)
    port, aport = free_port(), free_port()
    g = make_gate(admin_toml(broker.port, aport, tf, workers=1) + gm_listener("g", port, sm2),
                  [port, aport])
    doc = Api(aport).get("/api/v1/certificates")
    (lst,) = doc["listeners"]
    assert lst["listener"] == "gm:g"
    roles = {ch["role"]: ch["certificates"][0] for ch in lst["chains"]}
    assert set(roles) == {"sign", "encryption"}
    assert roles["sign"]["status"] == "ok" and roles["sign"]["days_left"] > 30
    out = ctl(g, "certs")
    assert out.returncode == 0 and "(sign)" in out.stdout and "(encryption)" in out.stdout
