"""Issue 10: hostile input against a real `tlsgate serve`, each case a test.

Already covered elsewhere (not repeated here): garbage/non-TLS bytes, silent clients and clients
vanishing mid-handshake with fd/socket leak checks (test_foundation.py); a CONNECT split into
one-byte writes, malformed CONNECTs, PROXY headers from an untrusted address and garbage PROXY
headers (test_mqtt_gate.py).

Peers: the real mosquitto (a second one for the "broker never reads" case, which is stopped with
SIGSTOP: a real broker that really stops reading), Python's ``ssl`` over memory BIOs where the
test must shape the client's bytes (one-byte writes, one-byte records), pyOpenSSL for a
renegotiating TLS 1.2 client, `openssl s_client` for the interactive `R` renegotiation, and
hand-built SSLv2/SSLv3 ClientHellos (no client that still speaks them exists on this machine:
OpenSSL 3/4 cannot send either).

Memory is measured as the worker process's VmRSS; bounds are far below what a buffering relay
would need for the data pushed through it, so a regression to buffering fails the test.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import ssl
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from OpenSSL import SSL

from tests.certkit import Pki
from tests.clients import connack_code, mosquitto_pub, paho_client, s_client, tls_args
from tests.conftest import base_toml, listener_toml
from tests.procs import Gate, Mosquitto, free_port, wait_for
from tlsgate.mqtt import decode_connack

MiB = 1024 * 1024


# ---------------------------------------------------------------------------- fixtures
class World:
    def __init__(self, gate: Gate, broker: Mosquitto, stall_broker: Mosquitto,
                 ports: dict[str, int], pki: Pki) -> None:
        self.gate = gate
        self.broker = broker
        self.stall_broker = stall_broker
        self.ports = ports
        self.pki = pki

    @property
    def worker(self) -> int:
        (pid,) = self.gate.worker_pids()
        return pid


def _listener(name: str, port: int, pki: Pki, *, hs_timeout: str = "3s", extra: str = "",
              upstream: str = "default") -> str:
    return listener_toml(name, port, pki, extra=extra, upstream=upstream).replace(
        'handshake_timeout = "3s"', f'handshake_timeout = "{hs_timeout}"')


@pytest.fixture(scope="module")
def world(broker: Mosquitto, pki: Pki, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[World]:
    _raise_nofile()
    stall = Mosquitto(tmp_path_factory.mktemp("stall-broker")).start()
    ports = {n: free_port() for n in ("main", "flood", "tight", "stall")}
    cfg = (base_toml(broker.port)
           + f"[upstreams.stall]\naddress = \"127.0.0.1:{stall.port}\"\n"
             "connect_timeout = \"2s\"\n"
           + _listener("main", ports["main"], pki)
           + _listener("flood", ports["flood"], pki, hs_timeout="1s",
                       extra="max_connections = 2000\n")
           + _listener("tight", ports["tight"], pki, hs_timeout="1s",
                       extra="max_connections = 50\n")
           + _listener("stall", ports["stall"], pki, upstream="stall"))
    g = Gate(tmp_path_factory.mktemp("gate"), cfg, list(ports.values())).start()
    yield World(g, broker, stall, ports, pki)
    g.stop()
    with contextlib.suppress(ProcessLookupError, AssertionError):
        assert stall.proc is not None
        os.kill(stall.proc.pid, signal.SIGCONT)
    stall.stop()


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < min(hard, 4096):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def _connect_packet(client_id: bytes, level: int = 4) -> bytes:
    body = b"\x00\x04MQTT" + bytes([level, 0x02, 0, 60])
    if level == 5:
        body += b"\x00"
    body += struct.pack(">H", len(client_id)) + client_id
    return bytes([0x10, len(body)]) + body


def _publish_packet(topic: bytes, payload_len: int) -> bytes:
    """A QoS 0 PUBLISH (header only up to the payload; the payload follows as zeros)."""
    rl = 2 + len(topic) + payload_len
    out = bytearray([0x30])
    while True:
        b, rl = rl & 0x7F, rl >> 7
        out.append(b | (0x80 if rl else 0))
        if not rl:
            break
    return bytes(out) + struct.pack(">H", len(topic)) + topic


def _tls_client(port: int, pki: Pki, *, rcvbuf: int | None = None,
                sndbuf: int | None = None) -> ssl.SSLSocket:
    raw = socket.socket()
    if rcvbuf is not None:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    if sndbuf is not None:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    raw.settimeout(10)
    raw.connect(("127.0.0.1", port))
    ctx = ssl.create_default_context(cafile=str(pki.ca_pem))
    return ctx.wrap_socket(raw, server_hostname="localhost")


def _mqtt_connect(s: ssl.SSLSocket | socket.socket, client_id: bytes) -> None:
    s.sendall(_connect_packet(client_id))
    got = b""
    while len(got) < 4:
        chunk = s.recv(4 - len(got))
        assert chunk, "closed before CONNACK"
        got += chunk
    assert got == b"\x20\x02\x00\x00", got.hex()


def _served(w: World, what: str) -> None:
    """A normal client is still served end to end (CONNACK 0 from the real broker)."""
    r = mosquitto_pub(w.ports["main"], "t/hostile", what, *tls_args(w.pki.ca_pem))
    assert r.returncode == 0, r.stderr


# ---------------------------------------------------------------------------- old protocols
def _sslv2_client_hello(version: int) -> bytes:
    """An SSLv2-format CLIENT-HELLO (2-byte header with the high bit set), as SSLv2 clients
    and old "SSLv23" compatibility clients sent it."""
    specs = bytes.fromhex("0700c0" "050080" "030080" "010080" "060040" "040080" "020080")
    challenge = os.urandom(16)
    body = (bytes([1]) + struct.pack(">HHHH", version, len(specs), 0, len(challenge))
            + specs + challenge)
    return struct.pack(">H", 0x8000 | len(body)) + body


def _sslv3_client_hello() -> bytes:
    """An SSLv3 ClientHello record (record and client_version 3.0, SSLv3-era suites)."""
    suites = bytes.fromhex("002f" "0035" "000a" "0005")
    body = (struct.pack(">H", 0x0300) + os.urandom(32) + b"\x00"
            + struct.pack(">H", len(suites)) + suites + b"\x01\x00")
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16" + struct.pack(">HH", 0x0300, len(hs)) + hs


def _answer(port: int, hello: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(hello)
        data = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := s.recv(4096):
                data += chunk
        return data


@pytest.mark.parametrize("version", [0x0002, 0x0301], ids=["sslv2", "sslv2-compat-tls1.0"])
def test_sslv2_client_hello_is_refused_cleanly(world: World, version: int) -> None:
    before = world.gate.count_log(r"reason=\"handshake failed")
    got = _answer(world.ports["main"], _sslv2_client_hello(version))
    # No ServerHello (no handshake record) and nothing SSLv2-shaped: closed.
    assert b"\x16\x03" not in got and not (got[:1] and got[0] & 0x80), got.hex()
    wait_for(lambda: world.gate.count_log(r"reason=\"handshake failed") > before, 5,
             "the refusal logged")
    # OpenSSL 4 no longer parses SSLv2-format hellos at all: to it, they are not TLS.
    assert world.gate.count_log(r"handshake failed: client did not speak TLS") >= 1
    _served(world, "after an SSLv2 hello")


def test_sslv3_client_hello_gets_a_protocol_version_alert(world: World) -> None:
    got = _answer(world.ports["main"], _sslv3_client_hello())
    # a fatal (2) protocol_version (70) alert record
    assert got[:1] == b"\x15" and got[5:7] == b"\x02\x46", got.hex()
    world.gate.wait_log(r"handshake failed: client offered only TLS versions this listener "
                        r"does not allow")
    _served(world, "after an SSLv3 hello")


# ---------------------------------------------------------------------------- fragmented hello
def _handshake_over_socket(sock: socket.socket, obj: ssl.SSLObject, incoming: ssl.MemoryBIO,
                           outgoing: ssl.MemoryBIO) -> None:
    sock.settimeout(10)
    while True:
        try:
            obj.do_handshake()
            sock.sendall(outgoing.read())
            return
        except ssl.SSLWantReadError:
            pending = outgoing.read()
            if pending:
                sock.sendall(pending)
            data = sock.recv(65536)
            assert data, "server closed during the handshake"
            incoming.write(data)


def _records(data: bytes) -> list[tuple[int, int, bytes]]:
    out = []
    while data:
        ctype, ver, n = struct.unpack(">BHH", data[:5])
        out.append((ctype, ver, data[5:5 + n]))
        data = data[5 + n:]
    return out


def _mqtt_over(obj: ssl.SSLObject, sock: socket.socket, incoming: ssl.MemoryBIO,
               outgoing: ssl.MemoryBIO, client_id: bytes) -> bytes:
    obj.write(_connect_packet(client_id))
    sock.sendall(outgoing.read())
    while True:
        try:
            return obj.read(4)
        except ssl.SSLWantReadError:
            data = sock.recv(65536)
            assert data, "closed before CONNACK"
            incoming.write(data)


@pytest.mark.parametrize("split", ["one-byte-tcp-writes", "one-byte-records"])
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2],
                         ids=["tls1.3", "tls1.2"])
def test_client_hello_split_still_completes(world: World, split: str,
                                            version: ssl.TLSVersion) -> None:
    ctx = ssl.create_default_context(cafile=str(world.pki.ca_pem))
    ctx.minimum_version = ctx.maximum_version = version
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    hello = outgoing.read()
    assert hello[:1] == b"\x16"
    with socket.create_connection(("127.0.0.1", world.ports["main"]), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if split == "one-byte-tcp-writes":
            for b in hello:
                sock.sendall(bytes([b]))
                time.sleep(0.001)  # separate segments, separate reads on the server
        else:
            # the same handshake message, each byte in its own TLS record (RFC 8446 §5.1
            # allows handshake messages to be fragmented across records)
            frags = b"".join(struct.pack(">BHH", ctype, ver, 1) + bytes([b])
                             for ctype, ver, payload in _records(hello) for b in payload)
            sock.sendall(frags)
        _handshake_over_socket(sock, obj, incoming, outgoing)
        assert obj.version() == ("TLSv1.3" if version is ssl.TLSVersion.TLSv1_3 else "TLSv1.2")
        cid = f"split-{split}-{obj.version()}".encode()
        assert _mqtt_over(obj, sock, incoming, outgoing, cid) == b"\x20\x02\x00\x00"
    world.broker.wait_log(rf"New client connected from \S+ as {cid.decode()} ")


# ---------------------------------------------------------------------------- renegotiation
def test_renegotiation_with_s_client_r_is_refused(world: World) -> None:
    before = world.gate.count_log(r"tls=TLSv1\.2 ")
    out = s_client(world.ports["main"], "-tls1_2", "-CAfile", str(world.pki.ca_pem),
                   data=b"R\n", hold=1.5).stdout.decode()
    assert "RENEGOTIATING" in out, out
    assert "no renegotiation" in out, out
    wait_for(lambda: world.gate.count_log(r"tls=TLSv1\.2 ") > before, 5, "connection closed")
    _served(world, "after a renegotiation attempt")


def test_renegotiation_after_connect_is_refused_and_the_connection_closed(world: World) -> None:
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_max_proto_version(SSL.TLS1_2_VERSION)
    ctx.load_verify_locations(str(world.pki.ca_pem))
    ctx.set_verify(SSL.VERIFY_PEER, lambda *a: bool(a[-1]))
    raw = socket.create_connection(("127.0.0.1", world.ports["main"]))
    # pyOpenSSL wants a blocking socket; SO_RCVTIMEO keeps a read from hanging forever
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 10, 0))
    conn = SSL.Connection(ctx, raw)
    conn.set_tlsext_host_name(b"localhost")
    conn.set_connect_state()
    conn.do_handshake()
    assert conn.get_protocol_version_name() == "TLSv1.2"
    conn.sendall(_connect_packet(b"renegotiator"))
    assert conn.recv(4) == b"\x20\x02\x00\x00"  # relayed: the broker's CONNACK
    assert conn.renegotiate()
    with pytest.raises(SSL.Error, match="no renegotiation"):
        conn.do_handshake()  # tlsgate answered the new ClientHello with no_renegotiation
    # the client gives up (handshake_failure alert); tlsgate closes both sides
    with pytest.raises((SSL.Error, ConnectionError)):
        if conn.recv(10) == b"":
            raise ConnectionError("closed")
    raw.close()
    world.broker.wait_log(r"Client renegotiator closed its connection")
    world.gate.wait_log(r"clientid=renegotiator .*reason=\"tls error: tls alert handshake "
                        r"failure\"")
    _served(world, "after renegotiation in the relay")


# ---------------------------------------------------------------------------- half-open flood
def test_half_open_flood_is_reaped_and_others_are_served(world: World) -> None:
    worker = world.worker
    fds_before = Gate.fds_of(worker)
    timeouts_before = world.gate.count_log(r"TLS handshake not finished within "
                                           r"handshake_timeout")
    t0 = time.monotonic()
    flood = [socket.create_connection(("127.0.0.1", world.ports["flood"]), timeout=5)
             for _ in range(500)]
    tight = [socket.create_connection(("127.0.0.1", world.ports["tight"]), timeout=5)
             for _ in range(60)]
    try:
        # a real client on the flooded listener is served while the flood is there
        r = mosquitto_pub(world.ports["flood"], "t/flood", "served", *tls_args(world.pki.ca_pem))
        assert r.returncode == 0, r.stderr
        # max_connections = 50 holds on the other listener: a clean MQTT refusal, no hang
        r = mosquitto_pub(world.ports["tight"], "t/flood", "x", *tls_args(world.pki.ca_pem))
        assert r.returncode == 0x03, (r.returncode, r.stderr)  # server unavailable (3.1.1)
        c, res = paho_client(world.ports["tight"], world.pki.ca_pem, client_id="quota-v5",
                             protocol=5)
        c.loop_stop()
        assert connack_code(res.rc) == 0x97  # quota exceeded (5.0)
        # handshake_timeout (1 s) reaps every silent socket although the clients keep them
        # open: tlsgate closes its side
        wait_for(lambda: world.gate.count_log(r"TLS handshake not finished within "
                                              r"handshake_timeout") >= timeouts_before + 560,
                 15, "560 handshake timeouts")
        reaped = time.monotonic() - t0
        assert reaped < 10, reaped
        wait_for(lambda: Gate.tcp_connections_of(worker) == 0, 10, "no client socket left")
        for s in flood[:20]:
            s.settimeout(2)
            assert s.recv(10) == b""  # the server closed (FIN), it did not just forget it
        # after the reaping, the tight listener admits again
        r = mosquitto_pub(world.ports["tight"], "t/flood", "again", *tls_args(world.pki.ca_pem))
        assert r.returncode == 0, r.stderr
    finally:
        for s in flood + tight:
            s.close()
    wait_for(lambda: Gate.fds_of(worker) <= fds_before, 10,
             f"fds back to {fds_before} (now {Gate.fds_of(worker)})")


# ---------------------------------------------------------------------------- oversized CONNECT
@pytest.mark.parametrize("level", [4, 5])
def test_connect_with_maximal_remaining_length_is_refused_at_once(world: World,
                                                                  level: int) -> None:
    worker = world.worker
    rss_before = _rss(worker)
    with _tls_client(world.ports["main"], world.pki) as s:
        # fixed header: Remaining Length 268,435,455 (0xFF 0xFF 0xFF 0x7F), then the start of a
        # variable header so the refusal can speak the client's MQTT version
        s.sendall(b"\x10\xff\xff\xff\x7f\x00\x04MQTT" + bytes([level]))
        t0 = time.monotonic()
        s.settimeout(5)
        data = b""
        with contextlib.suppress(ssl.SSLError, ConnectionResetError):
            while chunk := s.recv(64):
                data += chunk
        elapsed = time.monotonic() - t0
    assert elapsed < 2, elapsed  # refused when the length is read, not at connect_timeout
    if level == 5:
        got = decode_connack(data)
        assert got is not None, data.hex()
        assert got[0].code == 0x95, got  # packet too large
    else:
        assert data == b""  # MQTT 3.1.1 has no code for it: closed without CONNACK
    world.gate.wait_log(r"bad CONNECT: CONNECT is 268435460 bytes \(Remaining Length "
                        r"268435455\), larger than")
    assert _rss(worker) - rss_before < 4 * MiB  # nothing near 256 MiB was allocated


# ---------------------------------------------------------------------------- back-pressure
def _direct_publisher(port: int, client_id: bytes) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    _mqtt_connect(s, client_id)
    return s


def test_client_that_never_reads_is_back_pressured_not_buffered(world: World) -> None:
    worker = world.worker
    sink = _tls_client(world.ports["main"], world.pki, rcvbuf=16384)
    _mqtt_connect(sink, b"slow-reader")
    topic = b"t/flood/sink"
    sink.sendall(b"\x82" + bytes([5 + len(topic)]) + b"\x00\x01"
                 + struct.pack(">H", len(topic)) + topic + b"\x00")
    assert sink.recv(5) == b"\x90\x03\x00\x01\x00"  # SUBACK, QoS 0
    rss_before = _rss(worker)
    # The broker sends 96 MiB towards a client that reads nothing.
    chunk, count = 256 * 1024, 384
    pub = _direct_publisher(world.broker.port, b"firehose")
    header = _publish_packet(topic, chunk)
    payload = bytes(chunk)
    pub.settimeout(30)
    for _ in range(count):
        pub.sendall(header)
        pub.sendall(payload)
    time.sleep(1.0)  # let everything that can move, move
    grown = _rss(worker) - rss_before
    assert grown < 24 * MiB, f"worker RSS grew {grown / MiB:.1f} MiB for a reader that reads " \
                             f"nothing (96 MiB sent by the broker)"
    # The data was held back (in the broker and socket buffers), not dropped: once the client
    # reads, it all arrives.
    sink.settimeout(20)
    expected = count * (len(header) + chunk)
    got = 0
    while got < expected:
        data = sink.recv(1024 * 1024)
        assert data, f"closed after {got} of {expected} bytes"
        got += len(data)
    assert got == expected
    pub.close()
    sink.close()


def test_broker_that_never_reads_back_pressures_the_client(world: World) -> None:
    worker = world.worker
    stall = world.stall_broker
    assert stall.proc is not None
    client = _tls_client(world.ports["stall"], world.pki, sndbuf=65536)
    _mqtt_connect(client, b"fast-writer")
    stall.wait_log(r"New client connected from \S+ as fast-writer ")
    rss_before = _rss(worker)
    os.kill(stall.proc.pid, signal.SIGSTOP)  # the broker reads nothing from now on
    try:
        header = _publish_packet(b"t/bulk", 256 * 1024)
        block = header + bytes(256 * 1024)
        total = 384 * len(block)  # whole packets: the stream stays valid MQTT
        client.setblocking(False)
        sent = 0
        last_progress = time.monotonic()
        while sent < total and time.monotonic() - last_progress < 1.5:
            try:
                n = client.send(block[sent % len(block):])
            except (ssl.SSLWantWriteError, BlockingIOError):
                time.sleep(0.01)
                continue
            sent += n
            last_progress = time.monotonic()
        assert sent < 48 * MiB, f"{sent / MiB:.1f} MiB accepted although the broker reads " \
                                "nothing: somebody buffers"
        grown = _rss(worker) - rss_before
        assert grown < 24 * MiB, f"worker RSS grew {grown / MiB:.1f} MiB while the broker " \
                                 "read nothing"
    finally:
        os.kill(stall.proc.pid, signal.SIGCONT)
    # once the broker reads again, the rest flows
    client.settimeout(30)
    client.setblocking(True)
    while sent < total:
        sent += client.send(block[sent % len(block):])
    client.close()
    stall.wait_log(r"Client fast-writer (closed its connection|disconnected)", timeout=20)
