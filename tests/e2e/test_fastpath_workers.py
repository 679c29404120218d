"""Issue 12's correctness side: the relay fast path (TLS 1.3 KeyUpdate from the client,
half-close) and the worker processes (SIGHUP reaches every worker, a killed worker is replaced,
connections spread over workers). Speed itself is measured by benchmarks, not here."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from tests.certkit import Pki
from tests.clients import mqtt_over_tls, need, server_cert_serial
from tests.conftest import GateFactory, base_toml, listener_toml
from tests.procs import Gate, Mosquitto, free_port, wait_for


@pytest.fixture(params=["c", "python"])
def relay_loops(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The relay's loops in the C accelerator (the default) and in pure Python: the tlsgate
    started afterwards inherits the environment."""
    if request.param == "python":
        monkeypatch.setenv("TLSGATE_PURE_PYTHON_RELAY", "1")
    else:
        monkeypatch.delenv("TLSGATE_PURE_PYTHON_RELAY", raising=False)
    return str(request.param)


CONNECT = bytes([0x10, 0x0E, 0, 4]) + b"MQTT" + bytes([4, 0x02, 0, 60, 0, 2]) + b"ku"
PINGREQ, PINGRESP = b"\xc0\x00", b"\xd0\x00"


def test_client_key_update_is_answered_and_traffic_continues(pki: Pki, broker: Mosquitto,
                                                             make_gate: GateFactory,
                                                             relay_loops: str) -> None:
    """`openssl s_client` sends a KeyUpdate that requests ours ("K"); afterwards a PINGREQ
    still gets its PINGRESP through tlsgate (a missed update would end in bad_record_mac)."""
    need("openssl")
    port = free_port()
    gate = make_gate(base_toml(broker.port) + listener_toml("k", port, pki), [port])
    gate.wait_log("TLS relay loops: C accelerator" if relay_loops == "c"
                  else "TLS relay loops: pure Python")
    p = subprocess.Popen(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_3",
                          "-CAfile", str(pki.ca_pem), "-brief"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdin is not None
    time.sleep(0.5)
    p.stdin.write(CONNECT)
    p.stdin.flush()
    time.sleep(0.3)
    for _ in range(3):
        p.stdin.write(b"K\n")   # KeyUpdate, update_requested
        p.stdin.flush()
        time.sleep(0.3)
        p.stdin.write(PINGREQ)
        p.stdin.flush()
        time.sleep(0.3)
    out, err = p.communicate(timeout=15)
    assert out.startswith(b"\x20\x02\x00\x00"), (out, err)
    assert out.count(PINGRESP) == 3, (out, err)
    assert b"KEYUPDATE" in err or b"KEYUPDATE" in out


def test_half_close_the_broker_answer_still_arrives(pki: Pki, broker: Mosquitto,
                                                    make_gate: GateFactory,
                                                    relay_loops: str) -> None:
    """The client sends a QoS 1 PUBLISH, then close_notify + TCP FIN (its writing side is
    done); the broker's PUBACK must still come back over the half-open connection."""
    port = free_port()
    make_gate(base_toml(broker.port) + listener_toml("h", port, pki), [port])
    ctx = ssl.create_default_context(cafile=str(pki.ca_pem))
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    inb, outb = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(inb, outb, server_hostname="localhost")

    def pump_out() -> None:
        data = outb.read()
        if data:
            raw.sendall(data)

    def read_plain(n: int) -> bytes:
        got = b""
        while len(got) < n:
            try:
                got += tls.read(n - len(got))
                continue
            except ssl.SSLWantReadError:
                pass
            chunk = raw.recv(65536)
            assert chunk, f"connection closed after {got!r}"
            inb.write(chunk)
        return got

    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            pump_out()
            inb.write(raw.recv(65536))
    pump_out()
    tls.write(bytes([0x10, 0x0E, 0, 4]) + b"MQTT" + bytes([4, 0x02, 0, 60, 0, 2]) + b"hc")
    pump_out()
    assert read_plain(4) == b"\x20\x02\x00\x00"
    topic = b"t/half"
    body = len(topic).to_bytes(2, "big") + topic + b"\x00\x07" + b"payload"
    tls.write(bytes([0x32, len(body)]) + body)   # PUBLISH QoS 1, packet id 7
    # our side is done: close_notify, then FIN -- but we keep reading
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.unwrap()
    pump_out()
    raw.shutdown(socket.SHUT_WR)
    assert read_plain(4) == b"\x40\x02\x00\x07"  # the PUBACK for packet 7
    raw.close()


@pytest.fixture
def two_workers(pki: Pki, broker: Mosquitto, make_gate: GateFactory, tmp_path: Path
                ) -> tuple[Gate, int, Path, Path]:
    cert, key = tmp_path / "srv.pem", tmp_path / "srv.key"
    cert.write_bytes(pki.server.cert.read_bytes())
    key.write_bytes(pki.server.key.read_bytes())
    key.chmod(0o600)
    port = free_port()
    cfg = base_toml(broker.port).replace("workers = 1", "workers = 2") + f"""
[listeners.ssl.w]
bind = "127.0.0.1:{port}"
[listeners.ssl.w.ssl_options]
certfile = "{cert}"
keyfile = "{key}"
"""
    g = make_gate(cfg, [port])
    wait_for(lambda: len(g.worker_pids()) == 2, 10, "two workers")
    return g, port, cert, key


def _mqtt_session(port: int, ca: Path, n: int) -> None:
    ctx = ssl.create_default_context(cafile=str(ca))
    for i in range(n):
        with socket.create_connection(("127.0.0.1", port)) as raw, \
                ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            cid = f"spread{i:03d}".encode()
            tls.sendall(bytes([0x10, 12 + len(cid), 0, 4]) + b"MQTT"
                        + bytes([4, 0x02, 0, 60, 0, len(cid)]) + cid)
            assert tls.recv(4) == b"\x20\x02\x00\x00"
            tls.sendall(b"\xe0\x00")


def test_connections_spread_over_workers(two_workers: tuple[Gate, int, Path, Path],
                                         pki: Pki) -> None:
    g, port, _, _ = two_workers
    _mqtt_session(port, pki.ca_pem, 40)
    wait_for(lambda: g.count_log(r"\[w0\] tlsgate\.access") + g.count_log(r"\[w1\] tlsgate\.access")
             >= 40, 10, "40 access lines")
    assert g.count_log(r"\[w0\] tlsgate\.access") > 0
    assert g.count_log(r"\[w1\] tlsgate\.access") > 0


def test_sighup_reaches_every_worker(two_workers: tuple[Gate, int, Path, Path],
                                     pki: Pki) -> None:
    g, port, cert, key = two_workers
    new = pki.issue_server("rotated-w", ["localhost", "127.0.0.1"])
    cert.write_bytes(new.cert.read_bytes())
    key.write_bytes(new.key.read_bytes())
    assert "reload done" in g.reload()
    # new connections land on both workers (kernel hash of the source port): all see it
    serials = {server_cert_serial(port, pki.ca_pem) for _ in range(30)}
    assert serials == {new.serial}


def test_a_killed_worker_is_replaced(two_workers: tuple[Gate, int, Path, Path],
                                     pki: Pki) -> None:
    g, port, _, _ = two_workers
    before = set(g.worker_pids())
    victim = sorted(before)[0]
    os.kill(victim, signal.SIGKILL)
    g.wait_log(rf"worker \d \(pid {victim}\) exited with code -9")
    wait_for(lambda: len(set(g.worker_pids()) - before) == 1 and len(g.worker_pids()) == 2,
             15, "a replacement worker")
    g.wait_log(r"worker \d restarted")
    _mqtt_session(port, pki.ca_pem, 10)  # both workers serve


def test_healthz_follows_the_workers(pki: Pki, broker: Mosquitto,
                                     make_gate: GateFactory) -> None:
    import json
    import urllib.error
    import urllib.request

    port, api = free_port(), free_port()
    cfg = (base_toml(broker.port).replace("workers = 1", "workers = 2").replace(
        "[dashboard]\nenable = false\n", f"[dashboard]\nenable = true\n"
                                         f"listen = \"127.0.0.1:{api}\"\ntoken = \"t\"\n")
        + listener_toml("h", port, pki))
    g = make_gate(cfg, [port, api])

    def health() -> tuple[int, dict[str, object]]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{api}/healthz", timeout=5) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    wait_for(lambda: health()[0] == 200, 10, "healthy")
    os.kill(g.worker_pids()[0], signal.SIGKILL)
    _code, doc = wait_for(lambda: (h := health())[0] == 503 and h, 5, "degraded")
    assert doc["workers_up"] == 1
    wait_for(lambda: health()[0] == 200, 15, "healthy again after the restart")


def _resume_once(port: int, ctx: ssl.SSLContext, cid: str,
                 session: ssl.SSLSession | None) -> ssl.SSLSession | None:
    """One MQTT session (CONNECT, CONNACK, DISCONNECT); returns the client's TLS session,
    which holds a ticket once the CONNACK (that the tickets travel with) was read."""
    with mqtt_over_tls(port, ctx, cid, session) as tls:
        tls.sendall(b"\xe0\x00")
        assert tls.session_reused == (session is not None), cid
        return tls.session


def test_a_session_resumes_on_every_worker_and_after_a_reload(
        two_workers: tuple[Gate, int, Path, Path], pki: Pki) -> None:
    """SPEC §8: a client's TLS session resumes on any worker. The ticket keys come from the
    node (tlsgate.tls.unbound sets them), so a ticket the first connection got from one worker
    is accepted by the other, and still after SIGHUP rebuilt every context (same CA, new
    server certificate)."""
    g, port, cert, key = two_workers
    ctx = ssl.create_default_context(cafile=str(pki.ca_pem))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    session = _resume_once(port, ctx, "res-first", None)
    assert session is not None and session.has_ticket
    served: set[str] = set()
    for i in range(40):
        _resume_once(port, ctx, f"res-{i:02d}", session)  # asserts session_reused
        line = g.wait_log(rf"\[w(\d)\] tlsgate\.access: .*resumed=True .*clientid=res-{i:02d} ")
        served.add(line.group(1))
        if served == {"0", "1"} and i >= 5:
            break
    assert served == {"0", "1"}, served
    new = pki.issue_server("renewed-res", ["localhost", "127.0.0.1"])
    cert.write_bytes(new.cert.read_bytes())
    key.write_bytes(new.key.read_bytes())
    assert "reload done" in g.reload()
    for i in range(6):
        _resume_once(port, ctx, f"res-after-{i}", session)
    wait_for(lambda: g.count_log(r"resumed=True .*clientid=res-after-") == 6, 10,
             "six resumed access lines after the reload")


def test_nodes_sharing_a_ticket_secret_file_resume_each_others_sessions(
        pki: Pki, broker: Mosquitto, make_gate: GateFactory, tmp_path: Path) -> None:
    """node.session_ticket_secret_file: two nodes (two `tlsgate serve` processes, as two
    machines behind a load balancer, or one node before and after a restart) given the same
    file accept each other's tickets; a node without it does not."""
    secret = tmp_path / "tickets.key"
    secret.write_bytes(os.urandom(48))
    secret.chmod(0o600)
    ports = [free_port() for _ in range(3)]
    for i, p in enumerate(ports):
        node = f'session_ticket_secret_file = "{secret}"\n' if i < 2 else ""
        # the same listener name on every node: keys are per listener
        make_gate(base_toml(broker.port, node=node) + listener_toml("edge", p, pki), [p],
                  name=f"node{i}")
    ctx = ssl.create_default_context(cafile=str(pki.ca_pem))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    session = _resume_once(ports[0], ctx, "node-a", None)
    assert session is not None and session.has_ticket
    _resume_once(ports[1], ctx, "node-b", session)       # asserts session_reused
    with socket.create_connection(("127.0.0.1", ports[2])) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost", session=session) as tls:
        assert not tls.session_reused


def _two_workers_rotating(pki: Pki, broker: Mosquitto, make_gate: GateFactory,
                          name: str) -> tuple[Gate, int, ssl.SSLContext]:
    """A two-worker node whose ticket keys rotate every 2 s, and a TLS 1.3 client context."""
    port = free_port()
    cfg = base_toml(broker.port, node='session_ticket_key_rotation = "2s"\n').replace(
        "workers = 1", "workers = 2") + listener_toml(name, port, pki)
    g = make_gate(cfg, [port])
    wait_for(lambda: len(g.worker_pids()) == 2, 10, "two workers")
    ctx = ssl.create_default_context(cafile=str(pki.ca_pem))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    return g, port, ctx


def start_of_period() -> None:
    """Wait until 0.1-0.6 s after a 2 s boundary: every worker's re-key timer has run."""
    while not 0.1 < time.time() % 2.0 < 0.6:
        time.sleep(0.02)


def test_ticket_keys_rotate_on_every_worker_at_the_period_boundary(
        pki: Pki, broker: Mosquitto, make_gate: GateFactory) -> None:
    """node.session_ticket_key_rotation = 2s on a two-worker node: within a period a session
    resumes on both workers; after the boundary (every worker re-keys at the same instant) it
    still resumes on both (the previous period's key is still accepted), after the next one
    it does not resume anywhere, and the new period's tickets do."""
    g, port, ctx = _two_workers_rotating(pki, broker, make_gate, "rot")

    start_of_period()
    old = _resume_once(port, ctx, "rot-old", None)
    for i in range(6):  # both workers (kernel hash of the source port), same period
        _resume_once(port, ctx, f"rot-same-{i}", old)
    assert time.time() % 2.0 < 1.9, "the checks above ran into the next period"
    time.sleep(1.0)
    start_of_period()
    for i in range(6):  # the grace period: one rotation later, on every worker
        assert _reused(port, ctx, old), f"old ticket not resumed one period later ({i})"
    assert time.time() % 2.0 < 1.9, "the checks above ran into the next period"
    time.sleep(1.0)
    start_of_period()
    for i in range(6):
        assert not _reused(port, ctx, old), f"old ticket resumed two periods later ({i})"
    new = _resume_once(port, ctx, "rot-new", None)
    for i in range(6):
        _resume_once(port, ctx, f"rot-new-{i}", new)
    assert time.time() % 2.0 < 1.9, "the checks above ran into the next period"
    assert g.count_log(r"Traceback") == 0


def _ping(tls: ssl.SSLSocket) -> None:
    """PINGREQ/PINGRESP: the client reads whatever the server sent before (tickets)."""
    tls.sendall(b"\xc0\x00")
    assert tls.recv(2) == b"\xd0\x00"


def _reused(port: int, ctx: ssl.SSLContext, session: ssl.SSLSession) -> bool:
    with socket.create_connection(("127.0.0.1", port)) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost", session=session) as tls:
        return bool(tls.session_reused)


def test_connections_held_across_a_key_rotation_get_a_ticket_that_resumes(
        pki: Pki, broker: Mosquitto, make_gate: GateFactory) -> None:
    """ssl_options.session_ticket_refresh (default on) with a 2 s key rotation on two workers:
    connections held across the boundary are sent a ticket made with the new key, which
    resumes through the period after; the ticket from their handshake then no longer does
    (without the refresh a client that stays connected past two rotations holds only a dead
    ticket)."""
    g, port, ctx = _two_workers_rotating(pki, broker, make_gate, "fresh")
    start_of_period()
    held = [mqtt_over_tls(port, ctx, f"held-{i}") for i in range(6)]
    try:
        first = [t.session for t in held]
        assert all(s is not None and s.has_ticket for s in first)
        time.sleep(2.0 - time.time() % 2.0 + 0.4)  # into the next period
        for t in held:
            _ping(t)
        fresh = [t.session for t in held]
        for i, (old, new) in enumerate(zip(first, fresh, strict=True)):
            assert new is not None and new != old, f"connection {i} got no fresh ticket"
        assert time.time() % 2.0 < 1.9, "the checks above ran into the next period"
        time.sleep(2.0 - time.time() % 2.0 + 0.4)  # one more rotation
        for i, (old, new) in enumerate(zip(first, fresh, strict=True)):
            assert not _reused(port, ctx, old), f"old ticket {i} resumed two rotations later"
            assert _reused(port, ctx, new), f"fresh ticket {i} did not resume"
        assert time.time() % 2.0 < 1.9, "the checks above ran into the next period"
    finally:
        for t in held:
            t.close()
    assert g.count_log(r"Traceback") == 0


def test_long_lived_connections_get_fresh_tickets_before_theirs_expire(
        pki: Pki, broker: Mosquitto, make_gate: GateFactory) -> None:
    """ssl_options.session_lifetime = 3s: the client is told 3 s, the ticket from the
    handshake stops resuming after that, and a connection held longer is sent fresh tickets
    (every third of the lifetime) that do resume; /metrics counts them."""
    import urllib.request

    port, api = free_port(), free_port()
    cfg = (base_toml(broker.port).replace(
        "[dashboard]\nenable = false\n",
        f"[dashboard]\nenable = true\nlisten = \"127.0.0.1:{api}\"\ntoken = \"t\"\n")
        + listener_toml("life", port, pki, extra_ssl='session_lifetime = "3s"\n'))
    make_gate(cfg, [port, api])
    ctx = ssl.create_default_context(cafile=str(pki.ca_pem))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    t0 = time.time()
    tls = mqtt_over_tls(port, ctx, "long-lived")
    try:
        first = tls.session
        assert first is not None and first.ticket_lifetime_hint == 3
        while time.time() - t0 < 4.2:
            _ping(tls)
            time.sleep(0.3)
        fresh = tls.session
        assert fresh is not None and fresh != first and fresh.ticket_lifetime_hint == 3
        assert not _reused(port, ctx, first), "a ticket older than session_lifetime resumed"
        assert _reused(port, ctx, fresh)
    finally:
        tls.close()
    req = urllib.request.Request(f"http://127.0.0.1:{api}/metrics",
                                 headers={"Authorization": "Bearer t"})
    with urllib.request.urlopen(req, timeout=5) as r:
        text = r.read().decode()
    line = next(x for x in text.splitlines()
                if x.startswith('tlsgate_session_tickets_refreshed_total{listener="ssl:life"}'))
    assert float(line.split()[-1]) >= 2, line
