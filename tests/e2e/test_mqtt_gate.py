"""Issue 3 end to end: identity in the CONNECT a real broker sees, MQTT-level refusals read by
real clients, PROXY headers both ways.

The broker is a real mosquitto with `log_type all`, whose log line
``New client connected from ... as <clientid> (..., u'<username>')`` shows what it received.
Refusal codes are read from the clients: mosquitto_pub's exit status is the CONNACK code it got
(3.1.1), paho-mqtt's on_connect reason code (5.0).
"""

from __future__ import annotations

import base64
import calendar
import contextlib
import hashlib
import json
import re
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from tests.certkit import Pki
from tests.clients import connack_code, mosquitto_pub, need, paho_client, s_client, tls_args
from tests.conftest import GateFactory, base_toml, listener_toml
from tests.procs import Mosquitto, free_port, wait_for
from tlsgate.mqtt import encode_connect, parse_proxy_header
from tlsgate.tls.identity import identity_from_cert


def _connected_line(broker: Mosquitto, client_id: str) -> str:
    m = broker.wait_log(rf"New client connected from \S+ as {re.escape(client_id)} \(.*\)\.")
    return m.group(0)


@pytest.mark.parametrize("mode", ["cn", "dn", "md5", "pem"])
def test_peer_cert_as_username_reaches_the_broker(mode: str, pki: Pki, broker: Mosquitto,
                                                   make_gate: GateFactory) -> None:
    port = free_port()
    cfg = base_toml(broker.port) + listener_toml(
        "m", port, pki, extra_ssl="verify = \"verify_peer\"\n",
        mqtt=f"peer_cert_as_username = \"{mode}\"\n")
    make_gate(cfg, [port])
    cid = f"map-user-{mode}"
    r = mosquitto_pub(port, "t/map", "x", "-i", cid, "-u", "ignored-user",
                      *tls_args(pki.ca_pem, pki.client.cert, pki.client.key))
    assert r.returncode == 0, r.stderr
    expected = identity_from_cert(pki.client.der, mode)  # type: ignore[arg-type]
    assert expected is not None
    literal = {
        "cn": b"client",
        "dn": b"CN=client,OU=devices,O=tlsgate tests,L=Hangzhou,ST=Zhejiang,C=CN",
        "md5": hashlib.md5(pki.client.der).hexdigest().encode(),
        "pem": base64.b64encode(pki.client.der),
    }[mode]
    assert expected == literal
    line = _connected_line(broker, cid)
    assert f"u'{literal.decode()}'" in line, line


def test_peer_cert_as_clientid_reaches_the_broker(pki: Pki, broker: Mosquitto,
                                                  make_gate: GateFactory) -> None:
    port = free_port()
    cfg = base_toml(broker.port) + listener_toml(
        "m", port, pki, extra_ssl="verify = \"verify_peer\"\n",
        mqtt="peer_cert_as_clientid = \"cn\"\npeer_cert_as_username = \"md5\"\n")
    make_gate(cfg, [port])
    r = mosquitto_pub(port, "t/map", "x", "-i", "what-the-device-said",
                      *tls_args(pki.ca_pem, pki.client.cert, pki.client.key))
    assert r.returncode == 0, r.stderr
    line = _connected_line(broker, "client")
    assert hashlib.md5(pki.client.der).hexdigest() in line


def test_mapping_keeps_will_and_v5_properties(pki: Pki, broker: Mosquitto,
                                              make_gate: GateFactory) -> None:
    """A v5 client with a will and user properties: the broker gets them intact after the
    rewrite (the will is published when the client vanishes)."""
    port = free_port()
    cfg = base_toml(broker.port) + listener_toml(
        "m", port, pki, extra_ssl="verify = \"verify_peer\"\n",
        mqtt="peer_cert_as_username = \"cn\"\n")
    make_gate(cfg, [port])
    need("mosquitto_sub")
    sub = subprocess.Popen(["mosquitto_sub", "-p", str(broker.port), "-t", "t/will", "-v",
                            "-C", "1", "-W", "15", "-V", "5", "-F", "%t %p %P"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="will-v5",
                    protocol=mqtt.MQTTv5)
    ctx = ssl.create_default_context(cafile=str(pki.ca_pem))
    ctx.load_cert_chain(str(pki.client.cert), str(pki.client.key))
    c.tls_set_context(ctx)
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
    will_props = Properties(PacketTypes.WILLMESSAGE)
    will_props.UserProperty = ("origin", "tlsgate-test")
    c.will_set("t/will", b"gone", qos=1, properties=will_props)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 0
    c.connect("localhost", port, keepalive=30, properties=props)
    c.loop_start()
    time.sleep(1.0)
    line = _connected_line(broker, "will-v5")
    assert "u'client'" in line
    # vanish without DISCONNECT: the broker publishes the will
    c._sock.close()  # type: ignore[attr-defined]
    c.loop_stop()
    out, err = sub.communicate(timeout=20)
    assert out.strip().startswith("t/will gone"), (out, err)
    assert "origin:tlsgate-test" in out, out


# ---------------------------------------------------------------------------- refusals
def _raw_tls(port: int, pki: Pki) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(pki.ca_pem))
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    return ctx.wrap_socket(raw, server_hostname="localhost")


def _read_all(s: ssl.SSLSocket, timeout: float = 10.0) -> bytes:
    s.settimeout(timeout)
    data = b""
    try:
        while chunk := s.recv(4096):
            data += chunk
    except (ssl.SSLError, ConnectionError, TimeoutError):
        pass
    return data


def _paho5_code(port: int, pki: Pki, client_id: str = "v5-client") -> int:
    c, res = paho_client(port, pki.ca_pem, client_id=client_id, protocol=mqtt.MQTTv5)
    try:
        assert res.connected.wait(10), "no CONNACK and no disconnect"
        return connack_code(res.rc) if res.rc is not None else -1
    finally:
        c.disconnect()
        c.loop_stop()


def _pub311_code(port: int, pki: Pki) -> int:
    r = mosquitto_pub(port, "t/x", "x", "-V", "mqttv311", "-i", "v311-client",
                      *tls_args(pki.ca_pem))
    return r.returncode


def test_upstream_unreachable_v311_and_v5(pki: Pki, make_gate: GateFactory) -> None:
    port = free_port()
    make_gate(base_toml(free_port()) + listener_toml("u", port, pki), [port])
    assert _pub311_code(port, pki) == 0x03
    assert _paho5_code(port, pki) == 0x88


def test_upstream_connect_that_hangs_times_out(pki: Pki, make_gate: GateFactory) -> None:
    """A broker whose TCP connect never completes (its accept queue is full, so Linux drops
    our SYNs): upstream.connect_timeout (2 s here) ends the dial with a CONNACK 0x03 and
    "timed out" in the access log, and the next client is served the same way."""
    black = socket.socket()
    black.bind(("127.0.0.1", 0))
    black.listen(0)  # never accepted: one queued connection fills it
    fillers = []
    try:
        for _ in range(3):
            f = socket.socket()
            f.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                f.connect(black.getsockname())
            fillers.append(f)
        time.sleep(0.2)
        port = free_port()
        g = make_gate(base_toml(black.getsockname()[1]) + listener_toml("h", port, pki), [port])
        for _ in range(2):
            t0 = time.monotonic()
            assert _pub311_code(port, pki) == 0x03
            elapsed = time.monotonic() - t0
            assert 1.5 < elapsed < 6, elapsed
        wait_for(lambda: g.count_log(r"unreachable: timed out") == 2, 5,
                 "two 'unreachable: timed out' access lines")
    finally:
        for f in fillers:
            f.close()
        black.close()


def test_max_connections_v311_and_v5(pki: Pki, broker: Mosquitto,
                                     make_gate: GateFactory) -> None:
    port = free_port()
    g = make_gate(base_toml(broker.port) + listener_toml("q", port, pki,
                                                         extra="max_connections = 1\n"), [port])
    holder, res = paho_client(port, pki.ca_pem, client_id="holder")
    try:
        assert connack_code(res.rc) == 0
        assert _pub311_code(port, pki) == 0x03
        assert _paho5_code(port, pki) == 0x97
    finally:
        holder.disconnect()
        holder.loop_stop()
    g.wait_log(r"refused: max_connections reached")


def test_max_conn_rate_v311_and_v5(pki: Pki, broker: Mosquitto, make_gate: GateFactory) -> None:
    port = free_port()
    make_gate(base_toml(broker.port) + listener_toml("r", port, pki,
                                                     extra="max_conn_rate = 1\n"), [port])
    time.sleep(1.1)  # a full bucket
    first, res = paho_client(port, pki.ca_pem, client_id="first")
    first.disconnect()
    first.loop_stop()
    assert connack_code(res.rc) == 0
    assert _pub311_code(port, pki) == 0x03
    assert _paho5_code(port, pki) == 0x9F


def test_access_rules_deny_closes_before_the_handshake(pki: Pki, broker: Mosquitto,
                                                       make_gate: GateFactory) -> None:
    port = free_port()
    g = make_gate(base_toml(broker.port) + listener_toml(
        "a", port, pki, extra="access_rules = [\"allow 10.0.0.0/8\", \"deny all\"]\n"),
        [port])
    out = s_client(port, "-CAfile", str(pki.ca_pem), hold=0.5).stdout.decode()
    assert "Cipher is (NONE)" in out or "errno" in out or "write:errno" in out, out
    g.wait_log(r"refused by access_rules")


def test_first_packet_not_connect_is_closed_with_a_reason(pki: Pki, broker: Mosquitto,
                                                          make_gate: GateFactory) -> None:
    port = free_port()
    g = make_gate(base_toml(broker.port) + listener_toml("p", port, pki), [port])
    with _raw_tls(port, pki) as s:
        s.sendall(b"\xc0\x00")  # PINGREQ
        assert _read_all(s) == b""  # no CONNACK: the version is unknown
    g.wait_log(r"bad CONNECT: .*PINGREQ")


def test_malformed_v5_connect_gets_0x81_and_v311_is_closed(pki: Pki, broker: Mosquitto,
                                                           make_gate: GateFactory) -> None:
    port = free_port()
    g = make_gate(base_toml(broker.port) + listener_toml("p", port, pki), [port])
    # v5 CONNECT whose property block claims more bytes than there are
    bad_v5 = bytes([0x10, 0x0E, 0, 4]) + b"MQTT" + bytes([5, 0x02, 0, 60, 0x09, 0x11, 0, 0])
    bad_v5 += b"\x00\x00"
    with _raw_tls(port, pki) as s:
        s.sendall(bad_v5)
        got = _read_all(s)
    assert got[:1] == b"\x20" and got[3] == 0x81, got.hex()
    # v3.1.1 CONNECT with the reserved flag bit set: no code exists -> closed without CONNACK
    bad_v311 = bytes([0x10, 0x0C, 0, 4]) + b"MQTT" + bytes([4, 0x03, 0, 60, 0, 0])
    with _raw_tls(port, pki) as s:
        s.sendall(bad_v311)
        assert _read_all(s) == b""
    wait_for(lambda: g.count_log(r"bad CONNECT") >= 2, 5, "two bad CONNECT lines")


def test_connect_timeout_just_closes(pki: Pki, broker: Mosquitto,
                                     make_gate: GateFactory) -> None:
    port = free_port()
    g = make_gate(base_toml(broker.port, extra="[mqtt]\nconnect_timeout = \"1s\"\n")
                  + listener_toml("t", port, pki), [port])
    t0 = time.monotonic()
    with _raw_tls(port, pki) as s:
        assert _read_all(s, timeout=10) == b""
    assert 0.8 < time.monotonic() - t0 < 5
    g.wait_log(r"no complete CONNECT within connect_timeout")


def test_connect_split_into_one_byte_writes_goes_through(pki: Pki, broker: Mosquitto,
                                                         make_gate: GateFactory) -> None:
    port = free_port()
    make_gate(base_toml(broker.port) + listener_toml("s", port, pki), [port])
    connect = bytes([0x10, 0x12, 0, 4]) + b"MQTT" + bytes([4, 0x02, 0, 60, 0, 6]) + b"split1"
    with _raw_tls(port, pki) as s:
        for b in connect:
            s.sendall(bytes([b]))
            time.sleep(0.005)
        s.settimeout(10)
        assert s.recv(4) == b"\x20\x02\x00\x00"
    _connected_line(broker, "split1")


# ---------------------------------------------------------------------------- PROXY headers
class Capture:
    """A TCP sink standing in for a broker that reads PROXY v2 (mosquitto ≥ 2.1 does; the
    Debian 12 mosquitto here is 2.0): records what tlsgate sends first, answers CONNACK."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.server.getsockname()[1])
        self.data = b""
        self.done = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        conn, _ = self.server.accept()
        conn.settimeout(5)
        try:
            while len(self.data) < 400:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                self.data += chunk
                if b"MQTT" in self.data:
                    conn.sendall(b"\x20\x02\x00\x00")
                    break
        except OSError:
            pass
        self.done.set()
        time.sleep(0.5)
        conn.close()


def test_proxy_v2_to_the_broker_carries_cn_and_sni(pki: Pki, make_gate: GateFactory) -> None:
    cap = Capture()
    port = free_port()
    cfg = (base_toml(cap.port).replace("connect_timeout = \"2s\"\n",
                                       "connect_timeout = \"2s\"\nproxy_protocol = \"v2\"\n")
           + listener_toml("v2", port, pki, extra_ssl="verify = \"verify_peer\"\n"))
    make_gate(cfg, [port])
    r = mosquitto_pub(port, "t/x", "x", "-i", "pp2",
                      *tls_args(pki.ca_pem, pki.client.cert, pki.client.key))
    assert cap.done.wait(10)
    parsed = parse_proxy_header(cap.data)
    assert parsed is not None, cap.data[:64].hex()
    hdr, used = parsed
    assert hdr.version == 2 and hdr.src is not None and hdr.src[0] == "127.0.0.1"
    assert hdr.tls is not None
    assert hdr.tls.cn == "client" and hdr.tls.sni == "localhost"
    assert hdr.tls.version.startswith("TLSv1.")
    assert cap.data[used:used + 1] == b"\x10"  # then the CONNECT
    assert r.returncode == 0, r.stderr


def test_proxy_protocol_from_a_trusted_load_balancer(pki: Pki, broker: Mosquitto,
                                                     make_gate: GateFactory) -> None:
    port = free_port()
    g = make_gate(base_toml(broker.port) + listener_toml(
        "lb", port, pki, extra="proxy_protocol = true\n"
                               "proxy_protocol_trusted = [\"127.0.0.0/8\"]\n"), [port])
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    raw.sendall(b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 8883\r\n")
    ctx = ssl.create_default_context(cafile=str(pki.ca_pem))
    with ctx.wrap_socket(raw, server_hostname="localhost") as s:
        s.sendall(bytes([0x10, 0x10, 0, 4]) + b"MQTT" + bytes([4, 0x02, 0, 60, 0, 4]) + b"lbcl")
        assert s.recv(4) == b"\x20\x02\x00\x00"
    g.wait_log(r"peer=203\.0\.113\.7:40000")


def test_proxy_header_from_an_untrusted_address_is_dropped(pki: Pki, broker: Mosquitto,
                                                           make_gate: GateFactory) -> None:
    port = free_port()
    g = make_gate(base_toml(broker.port) + listener_toml(
        "lb", port, pki, extra="proxy_protocol = true\n"
                               "proxy_protocol_trusted = [\"10.0.0.0/8\"]\n"), [port])
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    raw.sendall(b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 8883\r\n")
    raw.settimeout(5)
    with contextlib.suppress(ConnectionResetError):
        assert raw.recv(10) == b""
    raw.close()
    g.wait_log(r"is not in proxy_protocol_trusted")


def test_garbage_proxy_header_is_dropped(pki: Pki, broker: Mosquitto,
                                         make_gate: GateFactory) -> None:
    port = free_port()
    g = make_gate(base_toml(broker.port) + listener_toml(
        "lb", port, pki, extra="proxy_protocol = true\n"), [port])
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    raw.sendall(b"\x16\x03\x01\x00\xa5" + b"\x00" * 200)  # TLS where a PROXY header belongs
    raw.settimeout(5)
    with contextlib.suppress(ConnectionResetError):
        assert raw.recv(10) == b""
    raw.close()
    g.wait_log(r"bad PROXY header")


def test_far_over_max_connections_sockets_are_closed_before_tls(
        pki: Pki, broker: Mosquitto, make_gate: GateFactory) -> None:
    """max_connections = 2: up to 2 + 64 sockets get a handshake (and a CONNACK refusal when
    over the limit); beyond that a flood of silent sockets is closed at accept, so it buys no
    TLS state. A real client is refused cleanly meanwhile and served once the flood is gone."""
    port = free_port()
    g = make_gate(base_toml(broker.port) + listener_toml(
        "f", port, pki, extra="max_connections = 2\n"), [port])
    flood = [socket.create_connection(("127.0.0.1", port)) for _ in range(100)]
    try:
        wait_for(lambda: g.count_log(r"max_connections far exceeded") >= 30, 10,
                 "sockets beyond the hard limit closed at accept")
        assert g.count_log(r"max_connections far exceeded") <= 100 - 64
    finally:
        for s in flood:
            s.close()
    wait_for(lambda: _pub311_code(port, pki) == 0, 15, "served again after the flood")


def test_json_access_log_from_a_real_gate(pki: Pki, broker: Mosquitto,
                                          make_gate: GateFactory) -> None:
    """log.format = "json": the worker writes one JSON access object per connection, for an
    admitted client (fields from the handshake, the CONNECT and the relay) and for one refused
    before TLS (access_rules), each stamped when its connection closed."""
    port, denied = free_port(), free_port()
    cfg = (base_toml(broker.port, extra='[log]\nformat = "json"\n')
           + listener_toml("j", port, pki)
           + listener_toml("deny", denied, pki, extra='access_rules = ["deny all"]\n'))
    g = make_gate(cfg, [port, denied], wait=False)
    g.wait_log(r'"logger": "tlsgate.node".*"msg": "tlsgate node \S+ ready', timeout=30)
    t0 = time.time()
    r = mosquitto_pub(port, "t/json", "hello", "-i", "json-1", *tls_args(pki.ca_pem))
    assert r.returncode == 0, r.stderr
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", denied), 5) as s:
        s.recv(1)  # closed by the gate before any TLS
    g.wait_log(r'"clientid": "json-1"')
    g.wait_log(r'"reason": "refused by access_rules"')
    docs = [json.loads(line) for line in g.log_text().splitlines()
            if line.startswith("{") and '"tlsgate.access"' in line]
    ok = next(d for d in docs if d.get("clientid") == "json-1")
    assert ok["listener"] == "ssl:j" and ok["tls"] == "TLSv1.3" and ok["proc"] == "w0"
    assert ok["msg"] == "connection closed" and ok["resumed"] is False
    assert ok["in"] > 0 and ok["out"] > 0 and ok["group"]
    refused = next(d for d in docs if d.get("reason") == "refused by access_rules")
    assert refused["listener"] == "ssl:deny" and refused["tls"] is None
    for d in (ok, refused):
        stamp = calendar.timegm(time.strptime(d["ts"][:19], "%Y-%m-%dT%H:%M:%S"))
        assert t0 - 2 <= stamp <= time.time() + 1, d["ts"]
        assert 0 <= float(d["dur"]) < 10


def test_access_log_names_the_key_exchange_group(pki: Pki, broker: Mosquitto,
                                                 make_gate: GateFactory) -> None:
    """ssl_options.groups limits the key exchange; the access line says which group each
    client's handshake used (mosquitto_pub on the system OpenSSL 3.0 offers X25519 first;
    s_client forced to P-256 gets secp256r1)."""
    port = free_port()
    cfg = base_toml(broker.port) + listener_toml(
        "kx", port, pki, extra_ssl="groups = [\"P-256\", \"X25519\"]\n")
    g = make_gate(cfg, [port])
    r = mosquitto_pub(port, "t/kx", "x", "-i", "kx-x25519", *tls_args(pki.ca_pem))
    assert r.returncode == 0, r.stderr
    g.wait_log(r"connection closed .*clientid=kx-x25519 ")
    assert g.count_log(r"group=x25519 resumed=\S+ .*clientid=kx-x25519") == 1
    out = s_client(port, "-groups", "P-256", "-CAfile", str(pki.ca_pem), hold=0.5)
    assert b"BEGIN CERTIFICATE" in out.stdout or b"Verification: OK" in out.stdout, out.stdout
    g.wait_log(r"connection closed .*group=secp256r1 ")
    # a client that offers only groups outside the list is refused in the handshake
    bad = s_client(port, "-groups", "P-384", "-CAfile", str(pki.ca_pem), hold=0.5)
    assert b"handshake failure" in bad.stdout or b"alert" in bad.stdout, bad.stdout


@pytest.mark.parametrize(("extra", "tickets"), [("", 1), ("session_tickets = 2\n", 2),
                                                ("reuse_sessions = false\n", 0)],
                         ids=["default", "two-tickets", "reuse-off"])
def test_session_resumption_follows_reuse_sessions(extra: str, tickets: int, pki: Pki,
                                                   broker: Mosquitto, make_gate: GateFactory,
                                                   tmp_path: Path) -> None:
    """ssl_options.reuse_sessions / session_tickets: by default one TLS 1.3 ticket follows a
    full handshake and a client that saved it resumes on its next connection (s_client says
    "Reused", the access log resumed=True); session_tickets = 2 sends two; with
    reuse_sessions = false none is sent, so there is nothing to resume with (s_client writes
    -sess_out only when a ticket arrives)."""
    port = free_port()
    cfg = base_toml(broker.port) + listener_toml("rs", port, pki, extra_ssl=extra)
    g = make_gate(cfg, [port])
    sess = tmp_path / "session.pem"
    reuse = tickets > 0
    flags = [("-sess_out", 0), ("-sess_in", 1)] if reuse else [("-sess_out", 0)]
    outs = []
    for flag, i in flags:
        # a real CONNECT, so that the CONNACK (with the deferred tickets) comes back
        connect = encode_connect(protocol_level=4, client_id=f"resume-{tickets}-{i}".encode())
        out = s_client(port, flag, str(sess), "-CAfile", str(pki.ca_pem), data=connect, hold=1.0)
        outs.append(out.stdout.decode(errors="replace"))
        g.wait_log(rf"connection closed .*clientid=resume-{tickets}-{i} ")
    assert "New, TLSv1.3" in outs[0], outs[0]
    assert g.count_log(rf"resumed=False .*clientid=resume-{tickets}-0 ") == 1
    assert outs[0].count("New Session Ticket arrived") == tickets, outs[0]
    assert sess.exists() == reuse
    if reuse:
        assert "Reused, TLSv1.3" in outs[1], outs[1]
        assert g.count_log(rf"resumed=True .*clientid=resume-{tickets}-1 ") == 1
        assert outs[1].count("New Session Ticket arrived") == 1, outs[1]  # one per resumption
