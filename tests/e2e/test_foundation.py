"""Issue 2: one-way and mutual TLS in front of a real mosquitto, failures, reload, no leaks.

Every test drives the real `tlsgate serve` process with real clients (mosquitto_pub/sub,
paho-mqtt, openssl s_client) and a real mosquitto started by the fixtures.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from tests.certkit import Pki
from tests.clients import (
    Sub,
    connack_code,
    mosquitto_pub,
    paho_client,
    s_client,
    server_cert_serial,
    tls_args,
)
from tests.conftest import base_toml, listener_toml
from tests.procs import Gate, Mosquitto, free_port, wait_for


@pytest.fixture(scope="module")
def gate(broker: Mosquitto, pki: Pki, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[Gate]:
    one, mtls = free_port(), free_port()
    cfg = (base_toml(broker.port)
           + listener_toml("oneway", one, pki)
           + listener_toml("mtls", mtls, pki,
                           extra_ssl="verify = \"verify_peer\"\nfail_if_no_peer_cert = true\n",
                           mqtt="peer_cert_as_username = \"cn\"\n"))
    g = Gate(tmp_path_factory.mktemp("gate"), cfg, [one, mtls]).start()
    g.one, g.mtls = one, mtls  # type: ignore[attr-defined]
    yield g
    g.stop()


def test_one_way_tls_publish_reaches_a_direct_subscriber(gate: Gate, broker: Mosquitto,
                                                         pki: Pki) -> None:
    sub = Sub(broker.port, "t/oneway", broker=broker)  # straight to the broker, plain MQTT
    r = mosquitto_pub(gate.one, "t/oneway", "hello via tlsgate",  # type: ignore[attr-defined]
                      *tls_args(pki.ca_pem))
    assert r.returncode == 0, r.stderr
    rc, out, err = sub.wait()
    assert rc == 0, err
    assert out.strip() == "t/oneway hello via tlsgate"


def test_one_way_tls_subscriber_receives_from_the_broker(gate: Gate, broker: Mosquitto,
                                                         pki: Pki) -> None:
    sub = Sub(gate.one, "t/back", *tls_args(pki.ca_pem), broker=broker)  # type: ignore[attr-defined]
    r = mosquitto_pub(broker.port, "t/back", "from the broker side")
    assert r.returncode == 0, r.stderr
    rc, out, err = sub.wait()
    assert rc == 0, err
    assert out.strip() == "t/back from the broker side"


def test_mutual_tls_with_paho_maps_cn_to_username(gate: Gate, broker: Mosquitto,
                                                  pki: Pki) -> None:
    sub = Sub(broker.port, "t/mtls", broker=broker)
    c, res = paho_client(gate.mtls, pki.ca_pem, cert=pki.client.cert,  # type: ignore[attr-defined]
                         key=pki.client.key, client_id="paho-mtls")
    try:
        assert res.connected.is_set() and connack_code(res.rc) == 0
        c.publish("t/mtls", b"mutual", qos=1).wait_for_publish(5)
    finally:
        c.disconnect()
        c.loop_stop()
    _rc, out, _err = sub.wait()
    assert out.strip() == "t/mtls mutual"
    # the broker saw the certificate's CN as the user name
    broker.wait_log(r"New client connected from .* as paho-mtls .*u'client'")


@pytest.mark.parametrize("version", ["-tls1_3", "-tls1_2"])
def test_client_without_certificate_is_refused_with_an_alert(gate: Gate, pki: Pki,
                                                             version: str) -> None:
    out = s_client(gate.mtls, "-CAfile", str(pki.ca_pem), version,  # type: ignore[attr-defined]
                   data=b"\x10\x00").stdout.decode()
    # TLS 1.3: alert 116 certificate_required; TLS 1.2: handshake_failure
    assert ("certificate required" in out) or ("handshake failure" in out), out
    gate.wait_log(r"reason=\"handshake failed: client sent no certificate")


def test_client_from_a_foreign_ca_is_refused_with_unknown_ca(gate: Gate, pki: Pki) -> None:
    out = s_client(gate.mtls, "-CAfile", str(pki.ca_pem),  # type: ignore[attr-defined]
                   "-cert", str(pki.foreign.cert), "-key", str(pki.foreign.key),
                   data=b"\x10\x00").stdout.decode()
    assert "unknown ca" in out, out
    gate.wait_log(r"handshake failed: client certificate verify failed: unable to get local "
                  r"issuer certificate")


def test_expired_client_certificate_is_refused(gate: Gate, pki: Pki) -> None:
    out = s_client(gate.mtls, "-CAfile", str(pki.ca_pem),  # type: ignore[attr-defined]
                   "-cert", str(pki.expired.cert), "-key", str(pki.expired.key),
                   data=b"\x10\x00").stdout.decode()
    assert "certificate expired" in out, out
    gate.wait_log(r"client certificate verify failed: certificate has expired")


def test_mosquitto_pub_with_a_foreign_certificate_fails(gate: Gate, pki: Pki) -> None:
    r = mosquitto_pub(gate.mtls, "t/x", "nope",  # type: ignore[attr-defined]
                      *tls_args(pki.ca_pem, pki.foreign.cert, pki.foreign.key))
    assert r.returncode != 0


def test_garbage_stalls_and_vanishing_clients_leave_it_serving_without_leaks(
        gate: Gate, broker: Mosquitto, pki: Pki) -> None:
    (worker,) = gate.worker_pids()
    fds_before = Gate.fds_of(worker)
    socks = []
    # 1. garbage instead of TLS
    for payload in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x10\x0c\x00\x04MQTT\x04\x02\x00<",
                    bytes(range(256)) * 4):
        s = socket.create_connection(("127.0.0.1", gate.one))  # type: ignore[attr-defined]
        s.sendall(payload)
        socks.append(s)
    # 2. opens TCP and says nothing (handshake_timeout = 3s)
    for _ in range(5):
        socks.append(socket.create_connection(("127.0.0.1", gate.one)))  # type: ignore[attr-defined]
    # 3. disappears mid-handshake (ClientHello sent, then gone)
    for _ in range(5):
        raw = socket.create_connection(("127.0.0.1", gate.mtls))  # type: ignore[attr-defined]
        ctx = ssl.create_default_context(cafile=str(pki.ca_pem))
        obj = ctx.wrap_bio(ssl.MemoryBIO(), out := ssl.MemoryBIO(), server_hostname="localhost")
        with contextlib.suppress(ssl.SSLWantReadError):
            obj.do_handshake()
        raw.sendall(out.read())
        raw.close()
    # others are still served meanwhile
    sub = Sub(broker.port, "t/alive", broker=broker)
    r = mosquitto_pub(gate.one, "t/alive", "still here", *tls_args(pki.ca_pem))  # type: ignore[attr-defined]
    assert r.returncode == 0, r.stderr
    assert sub.wait()[1].strip() == "t/alive still here"
    # the garbage senders were dropped with a reason
    gate.wait_log(r"handshake failed: client (sent plain HTTP|did not speak TLS)")
    # the silent ones hit handshake_timeout
    gate.wait_log(r"TLS handshake not finished within handshake_timeout", timeout=10)
    for s in socks:
        s.close()
    wait_for(lambda: Gate.tcp_connections_of(worker) == 0, 10, "all client sockets closed")
    wait_for(lambda: Gate.fds_of(worker) <= fds_before, 10,
             f"fds back to {fds_before} (now {Gate.fds_of(worker)})")


def test_broker_down_refuses_with_server_unavailable(tmp_path: Path, pki: Pki,
                                                     make_gate: object) -> None:
    dead = free_port()  # nothing listens here
    port = free_port()
    g = make_gate(base_toml(dead) + listener_toml("x", port, pki), [port])  # type: ignore[operator]
    c, res = paho_client(port, pki.ca_pem, client_id="lonely", protocol=mqtt.MQTTv5)
    try:
        assert res.connected.wait(10)
        assert connack_code(res.rc) == 0x88  # server unavailable (v5)
        assert res.disconnected.wait(10)
    finally:
        c.loop_stop()
    g.wait_log(r"reason=\"refused: broker 127.0.0.1:\d+ unreachable")
    (worker,) = g.worker_pids()
    wait_for(lambda: Gate.tcp_connections_of(worker) == 0, 10, "client socket closed")


def test_sighup_swaps_the_certificate_for_new_clients_and_keeps_live_ones(
        tmp_path: Path, pki: Pki, broker: Mosquitto, make_gate: object) -> None:
    cert, key = tmp_path / "srv.pem", tmp_path / "srv.key"
    cert.write_bytes(pki.server.cert.read_bytes())
    key.write_bytes(pki.server.key.read_bytes())
    port = free_port()
    cfg = base_toml(broker.port) + f"""
[listeners.ssl.r]
bind = "127.0.0.1:{port}"
[listeners.ssl.r.ssl_options]
certfile = "{cert}"
keyfile = "{key}"
"""
    g = make_gate(cfg, [port])  # type: ignore[operator]
    old_serial = server_cert_serial(port, pki.ca_pem)
    assert old_serial == pki.server.serial
    # a live client that keeps publishing across the reload
    c, res = paho_client(port, pki.ca_pem, client_id="live")
    assert connack_code(res.rc) == 0
    c.subscribe("t/live", qos=1)
    time.sleep(0.3)
    # new certificate in place, then SIGHUP
    new = pki.issue_server("rotated", ["localhost", "127.0.0.1"])
    cert.write_bytes(new.cert.read_bytes())
    key.write_bytes(new.key.read_bytes())
    line = g.reload()
    assert "reload done" in line, line
    assert server_cert_serial(port, pki.ca_pem) == new.serial
    for i in range(3):
        c.publish("t/live", f"after reload {i}".encode(), qos=1).wait_for_publish(5)
    wait_for(lambda: len(res.messages) >= 3, 10, "live client's messages back")
    assert not res.disconnected.is_set()
    c.disconnect()
    c.loop_stop()


def test_sighup_with_a_broken_key_keeps_the_old_certificate(
        tmp_path: Path, pki: Pki, broker: Mosquitto, make_gate: object) -> None:
    cert, key = tmp_path / "srv.pem", tmp_path / "srv.key"
    cert.write_bytes(pki.server.cert.read_bytes())
    key.write_bytes(pki.server.key.read_bytes())
    key.chmod(0o600)
    port = free_port()
    cfg = base_toml(broker.port) + f"""
[listeners.ssl.r]
bind = "127.0.0.1:{port}"
[listeners.ssl.r.ssl_options]
certfile = "{cert}"
keyfile = "{key}"
"""
    g = make_gate(cfg, [port])  # type: ignore[operator]
    new = pki.issue_server("rotated2", ["localhost"])
    cert.write_bytes(new.cert.read_bytes())  # new cert ...
    key.write_bytes(b"-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n")
    line = g.reload()
    assert "reload failed" in line and "keyfile" in line, line
    assert server_cert_serial(port, pki.ca_pem) == pki.server.serial  # ... old one serves
    r = mosquitto_pub(port, "t/x", "still works", *tls_args(pki.ca_pem))
    assert r.returncode == 0, r.stderr


def test_sigterm_stops_gracefully(tmp_path: Path, pki: Pki, broker: Mosquitto,
                                  make_gate: object) -> None:
    port = free_port()
    g = make_gate(base_toml(broker.port) + listener_toml("s", port, pki), [port])  # type: ignore[operator]
    c, res = paho_client(port, pki.ca_pem, client_id="drained")
    assert connack_code(res.rc) == 0
    rc = g.stop()
    assert rc == 0
    assert res.disconnected.wait(10)
    c.loop_stop()
    assert "stopped" in g.log_text()


def test_large_messages_both_ways_arrive_intact(gate: Gate, broker: Mosquitto, pki: Pki,
                                                tmp_path: Path) -> None:
    """1 MiB payloads: many TLS records per socket read, chunks far above 16 KiB, in both
    directions (a partial SSL_write once dropped everything after the first record)."""
    import hashlib
    import os
    import subprocess

    payload = tmp_path / "big.bin"
    payload.write_bytes(os.urandom(1 << 20))
    digest = hashlib.sha256(payload.read_bytes()).hexdigest()
    # broker -> tlsgate -> client
    sub = subprocess.Popen(["mosquitto_sub", "-h", "localhost", "-p", str(gate.one),  # type: ignore[attr-defined]
                            *tls_args(pki.ca_pem), "-t", "t/big-down", "-C", "1", "-W", "20",
                            "-N"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    broker.wait_log(r"\d+ t/big-down")
    r = subprocess.run(["mosquitto_pub", "-h", "localhost", "-p", str(broker.port), "-t",
                        "t/big-down", "-f", str(payload)], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    out, err = sub.communicate(timeout=30)
    assert hashlib.sha256(out).hexdigest() == digest, (len(out), err)
    # client -> tlsgate -> broker
    sub = subprocess.Popen(["mosquitto_sub", "-h", "localhost", "-p", str(broker.port),
                            "-t", "t/big-up", "-C", "1", "-W", "20", "-N"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    broker.wait_log(r"\d+ t/big-up")
    r = subprocess.run(["mosquitto_pub", "-h", "localhost", "-p", str(gate.one),  # type: ignore[attr-defined]
                        "-t", "t/big-up", "-f", str(payload), *tls_args(pki.ca_pem)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    out, err = sub.communicate(timeout=30)
    assert hashlib.sha256(out).hexdigest() == digest, (len(out), err)
