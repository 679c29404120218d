"""node.handshake_batch_window against a real `tlsgate serve`: clients that connect at the same
time are handshaken in batches, every one of them is admitted, and clients whose handshakes
fail inside those batches (plain HTTP, a ClientHello followed by garbage, a client that
vanishes mid-handshake) fail alone. The window is 100 ms here so that batches form even on a
slow machine; the scheduling rules themselves: tests/unit/test_handshake_batcher.py."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from tests.certkit import Pki
from tests.clients import mqtt_over_tls
from tests.conftest import GateFactory, base_toml, listener_toml
from tests.procs import Gate, Mosquitto, free_port, wait_for


def _metric(api: int, prefix: str) -> float:
    req = urllib.request.Request(f"http://127.0.0.1:{api}/metrics",
                                 headers={"Authorization": "Bearer t"})
    with urllib.request.urlopen(req, timeout=10) as r:
        text = r.read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix))


def _client_hello(ctx: ssl.SSLContext) -> bytes:
    obj = ctx.wrap_bio(ssl.MemoryBIO(), out := ssl.MemoryBIO(), server_hostname="localhost")
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


def test_clients_connecting_together_are_handshaken_in_batches_and_failures_stay_alone(
        pki: Pki, broker: Mosquitto, make_gate: GateFactory) -> None:
    port, api = free_port(), free_port()
    cfg = (base_toml(broker.port, node='handshake_batch_window = "100ms"').replace(
        "[dashboard]\nenable = false\n",
        f"[dashboard]\nenable = true\nlisten = \"127.0.0.1:{api}\"\ntoken = \"t\"\n")
        + listener_toml("b", port, pki))
    gate = make_gate(cfg, [port, api])
    (worker,) = gate.worker_pids()
    fds_before = Gate.fds_of(worker)
    ctx = ssl.create_default_context(cafile=str(pki.ca_pem))
    start = threading.Barrier(40)

    def good(i: int) -> bool:
        start.wait()
        tls = mqtt_over_tls(port, ctx, f"batch-{i}")  # asserts the CONNACK accepted it
        tls.close()
        return True

    def bad(kind: str) -> bytes:
        start.wait()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            if kind == "http":
                s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            elif kind == "garbage":
                s.sendall(_client_hello(ctx))
                s.sendall(b"\x17\x03\x03\x00\x05hello")  # application data mid-handshake
            else:  # vanishes after its ClientHello
                s.sendall(_client_hello(ctx))
                return b"gone"
            got = b""
            with contextlib.suppress(OSError):
                while chunk := s.recv(4096):
                    got += chunk
            return got  # whatever came before the close (an alert, or nothing)

    with ThreadPoolExecutor(40) as pool:
        goods = [pool.submit(good, i) for i in range(30)]
        bads = [pool.submit(bad, k) for k in ["http", "garbage", "vanish"] * 3 + ["http"]]
        assert all(f.result(timeout=30) for f in goods)
        for f in bads:
            f.result(timeout=30)  # each ended: closed by the gate, not left hanging

    gate.wait_log(r"handshake failed: client sent plain HTTP")
    wait_for(lambda: _metric(api, 'tlsgate_handshakes_total{listener="ssl:b",result="ok"') >= 30,
             10, "30 successful handshakes counted")
    batched = _metric(api, 'tlsgate_handshake_steps_total{listener="ssl:b",run="batched"}')
    immediate = _metric(api, 'tlsgate_handshake_steps_total{listener="ssl:b",run="immediate"}')
    # 30 TLS 1.3 clients = 60 steps, plus the failing ones'; arriving together, nearly all of
    # them wait for a batch (a step runs at once only after a quiet 100 ms)
    assert batched >= 40, (batched, immediate)
    assert _metric(api, 'tlsgate_handshakes_total{listener="ssl:b",result="failed"') >= 7
    # nothing leaked: every client socket closed, fds back where they were
    wait_for(lambda: Gate.tcp_connections_of(worker) == 0, 10, "all client sockets closed")
    wait_for(lambda: Gate.fds_of(worker) <= fds_before, 10,
             f"fds back to {fds_before} (now {Gate.fds_of(worker)})")
