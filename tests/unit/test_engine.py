"""The TLS engine's fast path against a real peer: CPython's `ssl` (the system OpenSSL 3) over
memory BIOs, no sockets. The server side is tlsgate's ServerSession on pyOpenSSL/OpenSSL 4."""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
from collections.abc import Iterator

import pytest
from OpenSSL import SSL

from tests.certkit import Pki
from tlsgate.tls import engine
from tlsgate.tls.context import ServerContext, build_server_context
from tlsgate.tls.engine import INBUF, OUT_VIEW, HandshakeError, ServerSession, TlsError


def test_c_accelerator_is_built() -> None:
    """make test's install builds tlsgate.tls._relayc (CI has gcc and python3-dev): a build
    that silently stopped working would otherwise only show as CPU in the benchmarks."""
    if os.environ.get("TLSGATE_PURE_PYTHON_RELAY"):
        pytest.skip("TLSGATE_PURE_PYTHON_RELAY is set")
    assert engine.ACCEL_MISSING == ""


class Peer:
    """A stdlib TLS client over memory BIOs talking to one ServerSession."""

    def __init__(self, pki: Pki, version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3,
                 server_opts: dict[str, object] | None = None, *,
                 ctx: ServerContext | None = None, session: ssl.SSLSession | None = None,
                 cctx: ssl.SSLContext | None = None) -> None:
        """``ctx``: a server context built elsewhere; ``session``/``cctx``: resume a session
        (it must come from the same client context)."""
        from tlsgate.config.schema import ServerSslOptions

        if ctx is None:
            opts = ServerSslOptions(certfile=str(pki.server.cert), keyfile=str(pki.server.key),
                                    **(server_opts or {}))
            ctx = build_server_context(opts, "listeners.ssl.t")
        self.ctx = ctx
        self.sent: list[bytes] = []  # what the server sent (ciphertext)
        self.sess = ServerSession(self.ctx.ctx, self.sent.append)
        if cctx is None:
            cctx = ssl.create_default_context(cafile=str(pki.ca_pem))
            cctx.minimum_version = cctx.maximum_version = version
        self.cin, self.cout = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.cli = cctx.wrap_bio(self.cin, self.cout, server_hostname="localhost",
                                 session=session)

    def to_server(self, data: bytes, chunk: int | None = None) -> bytes:
        """Feed client bytes through INBUF as socket reads would, return decrypted plaintext."""
        out = b""
        step = chunk or len(data) or 1
        for i in range(0, len(data), step):
            part = data[i:i + step]
            INBUF[:len(part)] = part
            out += self.sess.decrypt(len(part))
        return out

    def pump_to_client(self) -> None:
        for b in self.sent:
            self.cin.write(b)
        self.sent.clear()

    def handshake(self) -> None:
        done = False
        for _ in range(10):
            try:
                self.cli.do_handshake()
                cdone = True
            except ssl.SSLWantReadError:
                cdone = False
            data = self.cout.read()
            if data and not done:
                INBUF[:len(data)] = data
                self.sess.feed_in(len(data))
                done = self.sess.handshake()
            self.pump_to_client()
            if cdone and done:
                return
        raise AssertionError("handshake did not finish")

    def client_records(self, plaintext: bytes) -> bytes:
        self.cli.write(plaintext)
        return self.cout.read()

    def client_read(self) -> bytes:
        self.pump_to_client()
        out = b""
        while True:
            try:
                out += self.cli.read(65536)
            except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                return out


@pytest.fixture(params=[ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2], ids=["tls13", "tls12"])
def peer(request: pytest.FixtureRequest, pki: Pki) -> Iterator[Peer]:
    p = Peer(pki, request.param)
    p.handshake()
    yield p


def test_many_records_in_one_read_come_out_in_one_call(peer: Peer) -> None:
    wire = b"".join(peer.client_records(f"message {i};".encode()) for i in range(50))
    assert peer.to_server(wire) == b"".join(f"message {i};".encode() for i in range(50))


def test_a_record_split_across_reads(peer: Peer) -> None:
    wire = peer.client_records(b"A" * 3000)
    assert peer.to_server(wire, chunk=1) == b"A" * 3000
    wire = peer.client_records(b"B" * 40000)  # several full records, odd splits
    assert peer.to_server(wire, chunk=7919) == b"B" * 40000


def test_large_chunks_in_both_directions_and_bio_recycling(peer: Peer) -> None:
    big = os.urandom(200_000)
    wire = peer.client_records(big)
    got = b""
    for i in range(0, len(wire), 65536 + 17):   # > the recycle threshold, records split
        part = wire[i:i + 65536 + 17]
        INBUF[:len(part)] = part
        got += peer.sess.decrypt(len(part))
    assert got == big
    INBUF[:150_000] = big[:150_000]
    peer.sent.append(peer.sess.encrypt_in(150_000))
    assert peer.client_read() == big[:150_000]
    # The BIOs are swapped by the periodic sweep, not after each large chunk: the first sweep
    # after the transfer keeps them (it may still be going on), the next one swaps them.
    before = (peer.sess._rbio, peer.sess._wbio)
    assert peer.sess in engine._BIG
    engine.sweep_bios()
    assert (peer.sess._rbio, peer.sess._wbio) == before
    engine.sweep_bios()
    assert peer.sess not in engine._BIG
    assert peer.sess._rbio != before[0] and peer.sess._wbio != before[1]
    # and traffic still flows both ways after the BIOs were swapped
    assert peer.to_server(peer.client_records(b"ping")) == b"ping"
    INBUF[:4] = b"pong"
    peer.sent.append(peer.sess.encrypt_in(4))
    assert peer.client_read() == b"pong"


def test_a_swap_between_records_keeps_a_partial_record(peer: Peer) -> None:
    """A sweep can fall between two reads of one record: the bytes already in the BIO move."""
    data = os.urandom(40_000)
    wire = peer.client_records(data)
    INBUF[:20_000] = wire[:20_000]
    got = peer.sess.decrypt(20_000)
    engine.sweep_bios()
    engine.sweep_bios()
    rest = wire[20_000:]
    INBUF[:len(rest)] = rest
    got += peer.sess.decrypt(len(rest))
    assert got == data


def test_close_notify_from_the_client(peer: Peer) -> None:
    with contextlib.suppress(ssl.SSLWantReadError):
        peer.cli.unwrap()
    assert peer.to_server(peer.cout.read()) == b""
    assert peer.sess.peer_closed


def test_data_then_close_notify_in_one_read(peer: Peer) -> None:
    wire = peer.client_records(b"last words")
    with contextlib.suppress(ssl.SSLWantReadError):
        peer.cli.unwrap()
    assert peer.to_server(wire + peer.cout.read()) == b"last words"
    assert peer.sess.peer_closed


def test_our_close_notify_reaches_the_client(peer: Peer) -> None:
    peer.sess.close_notify()
    peer.pump_to_client()
    assert peer.cli.read(10) == b""  # CPython's SSLObject: b"" = close_notify received
    peer.cli.unwrap()  # completes at once: the server's close_notify is already in


def test_tampered_record_is_a_tls_error_with_an_alert(peer: Peer) -> None:
    wire = bytearray(peer.client_records(b"x" * 100))
    wire[-5] ^= 0xFF
    with pytest.raises(TlsError):
        peer.to_server(bytes(wire))
    assert peer.sent, "an alert was sent"


def test_tls13_tickets_wait_for_the_first_write(pki: Pki) -> None:
    p = Peer(pki, ssl.TLSVersion.TLSv1_3)
    p.handshake()
    assert p.sent == []  # tickets not sent on their own ...
    INBUF[:4] = b"\x20\x02\x00\x00"
    first = p.sess.encrypt_in(4)  # ... they lead the first write (the CONNACK)
    p.sent.append(first)
    assert p.client_read() == b"\x20\x02\x00\x00"
    assert p.cli.session is not None and p.cli.session.has_ticket


@pytest.mark.parametrize("alpn", [[], ["mqtt"]], ids=["direct", "pyopenssl-connection"])
def test_recycling_moves_unread_bytes_of_both_bios(pki: Pki, alpn: list[str]) -> None:
    """recycle_bios swaps both BIOs and keeps what they hold: a TLS 1.3 handshake leaves the
    session tickets queued in the write BIO, and a client record already fed but not read
    waits in the read BIO. Both ways a session is made (directly, or through pyOpenSSL's
    Connection when the context has a pyOpenSSL callback: here ALPN)."""
    p = Peer(pki, ssl.TLSVersion.TLSv1_3, {"alpn": alpn})
    assert (p.sess.conn is not None) == bool(alpn)
    p.handshake()  # recycles once: the tickets must have survived that
    wire = p.client_records(b"queued before the swap")
    p.sess.feed(wire)
    before = (p.sess._rbio, p.sess._wbio)
    p.sess.recycle_bios()
    assert (p.sess._rbio, p.sess._wbio) != before
    if alpn:  # pyOpenSSL's view of the BIOs follows
        assert p.sess.conn is not None and p.sess.conn._into_ssl == p.sess._rbio
    assert p.sess.read_plain() == b"queued before the swap"
    INBUF[:4] = b"\x20\x02\x00\x00"
    p.sent.append(p.sess.encrypt_in(4))
    assert p.client_read() == b"\x20\x02\x00\x00"
    assert p.cli.session is not None and p.cli.session.has_ticket


def test_handshake_failure_names_the_reason(pki: Pki) -> None:
    from tlsgate.config.schema import ServerSslOptions

    ctx = build_server_context(ServerSslOptions(certfile=str(pki.server.cert),
                                                keyfile=str(pki.server.key),
                                                versions=["tlsv1.3"]), "listeners.ssl.t")
    sent: list[bytes] = []
    s = ServerSession(ctx.ctx, sent.append)
    cctx = ssl.create_default_context(cafile=str(pki.ca_pem))
    cctx.maximum_version = ssl.TLSVersion.TLSv1_2
    cin, cout = ssl.MemoryBIO(), ssl.MemoryBIO()
    c = cctx.wrap_bio(cin, cout, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        c.do_handshake()
    s.feed(cout.read())
    with pytest.raises(HandshakeError) as exc:
        s.handshake()
    assert "TLS versions" in exc.value.reason
    assert sent, "the protocol_version alert was sent"


def test_garbage_is_named_not_tls(pki: Pki) -> None:
    p = Peer(pki)
    p.sess.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    with pytest.raises(HandshakeError) as exc:
        p.sess.handshake()
    assert "HTTP" in exc.value.reason or "TLS" in exc.value.reason


def test_engine_self_check_passes() -> None:
    from tlsgate.tls.engine import self_check

    self_check()
    assert SSL.Connection is not None


# -- the relay's C entry points (tlsgate.tls._relayc): decrypt/encrypt + write to a socket ------
needs_c = pytest.mark.skipif(engine.SENT is None,
                             reason=f"no C accelerator: {engine.ACCEL_MISSING}")


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    got = b""
    sock.settimeout(5)
    while len(got) < n:
        chunk = sock.recv(n - len(got))
        assert chunk, f"socket closed after {len(got)} of {n} bytes"
        got += chunk
    return got


@needs_c
def test_decrypt_send_writes_every_record_of_one_read_to_the_socket(peer: Peer) -> None:
    a, b = socket.socketpair()
    with a, b:
        msgs = [os.urandom(100) for _ in range(10)]
        wire = b"".join(peer.client_records(m) for m in msgs)
        INBUF[:len(wire)] = wire
        assert peer.sess.decrypt_send(len(wire), a.fileno()) == 1000
        assert engine.SENT[2] == 1000
        assert _recv_exactly(b, 1000) == b"".join(msgs)


@needs_c
def test_decrypt_send_without_a_socket_leaves_the_plaintext_for_the_caller(peer: Peer) -> None:
    wire = peer.client_records(b"hello")
    INBUF[:len(wire)] = wire
    assert peer.sess.decrypt_send(len(wire), -1) == 5
    assert engine.SENT[2] == 0
    assert bytes(OUT_VIEW[:5]) == b"hello"


@needs_c
def test_decrypt_send_into_a_full_socket_reports_how_much_it_took(peer: Peer) -> None:
    """What the socket does not take stays in OUT_VIEW[SENT[2]:total] for the transport."""
    a, b = socket.socketpair()
    with a, b:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        a.setblocking(False)
        big = os.urandom(200_000)
        wire = peer.client_records(big)
        INBUF[:len(wire)] = wire
        total = peer.sess.decrypt_send(len(wire), a.fileno())
        done = engine.SENT[2]
        assert total == len(big)
        assert 0 < done < total
        assert bytes(OUT_VIEW[:total]) == big
        assert _recv_exactly(b, done) == big[:done]


@needs_c
def test_decrypt_send_close_notify_sets_peer_closed(peer: Peer) -> None:
    with contextlib.suppress(ssl.SSLWantReadError):
        peer.cli.unwrap()
    wire = peer.cout.read()
    INBUF[:len(wire)] = wire
    assert peer.sess.decrypt_send(len(wire), -1) == 0
    assert peer.sess.peer_closed


@needs_c
def test_decrypt_send_tampered_record_writes_nothing_and_raises(peer: Peer) -> None:
    a, b = socket.socketpair()
    with a, b:
        good = peer.client_records(b"first")
        bad = bytearray(peer.client_records(b"second"))
        bad[-3] ^= 0x01
        wire = good + bytes(bad)
        INBUF[:len(wire)] = wire
        with pytest.raises(TlsError):  # OpenSSL's wording depends on the flipped byte
            peer.sess.decrypt_send(len(wire), a.fileno())
        peer.pump_to_client()  # our alert went out: the client reads it as a TLS error
        with pytest.raises(ssl.SSLError, match="ALERT"):
            peer.cli.read(100)
        b.setblocking(False)
        with pytest.raises(BlockingIOError):  # and the plaintext before it did not
            b.recv(100)


@needs_c
def test_encrypt_send_writes_records_the_client_can_read(peer: Peer) -> None:
    a, b = socket.socketpair()
    with a, b:
        data = os.urandom(30_000)
        INBUF[:len(data)] = data
        o = peer.sess.encrypt_send(len(data), a.fileno())
        assert o > len(data) and engine.SENT[2] == o
        peer.sent.append(_recv_exactly(b, o))
        assert peer.client_read() == data
        INBUF[:4] = b"pong"  # without a socket the records stay in OUT_VIEW
        o = peer.sess.encrypt_send(4, -1)
        assert engine.SENT[2] == 0
        peer.sent.append(bytes(OUT_VIEW[:o]))
        assert peer.client_read() == b"pong"


@needs_c
def test_decrypt_send_reads_large_chunks_in_place_across_record_boundaries(peer: Peer) -> None:
    """Reads above the recycle threshold are handed to OpenSSL in place (a read-only BIO over
    INBUF, then a fresh read BIO): records split across such reads, mixed with small reads,
    still come out whole and in order, and nothing is left pointing into INBUF."""
    big = os.urandom(300_000)
    wire = peer.client_records(big)
    got = b""
    sizes = [70_001, 50, 20_000, 3, 65_536 + 17]  # odd splits: records straddle every read
    i = k = 0
    while i < len(wire):
        part = wire[i:i + sizes[k % len(sizes)]]
        i += len(part)
        k += 1
        INBUF[:len(part)] = part
        total = peer.sess.decrypt_send(len(part), -1)
        got += bytes(OUT_VIEW[:total])
        INBUF[:len(part)] = b"\0" * len(part)  # INBUF is reused: the session must not care
        if len(part) > engine._RECYCLE_AT:
            # read in place: no BIO grew, so none is due for a swap (a copy would have been)
            assert peer.sess not in engine._BIG
    assert got == big
    assert peer.to_server(peer.client_records(b"after")) == b"after"


@needs_c
def test_decrypt_send_large_read_ending_in_close_notify(peer: Peer) -> None:
    """A large in-place read whose last record is the client's close_notify: every byte
    before it comes out, peer_closed is set, and the session can still send its own."""
    data = os.urandom(50_000)
    wire = peer.client_records(data)
    with contextlib.suppress(ssl.SSLWantReadError):
        peer.cli.unwrap()
    wire += peer.cout.read()
    INBUF[:len(wire)] = wire
    total = peer.sess.decrypt_send(len(wire), -1)
    assert bytes(OUT_VIEW[:total]) == data
    assert peer.sess.peer_closed
    peer.sess.close_notify()
    peer.pump_to_client()
    peer.cli.unwrap()  # completes only once our close_notify arrived (else SSLWantReadError)


@needs_c
def test_decrypt_send_large_chunk_behind_buffered_bytes_is_copied(peer: Peer) -> None:
    """Bytes already waiting in the read BIO (fed before the relay) come first: a large read
    behind them goes through the BIO, not in place."""
    head = peer.client_records(b"connect-phase leftovers")
    peer.sess.feed(head)
    data = os.urandom(40_000)
    wire = peer.client_records(data)
    INBUF[:len(wire)] = wire
    total = peer.sess.decrypt_send(len(wire), -1)
    assert bytes(OUT_VIEW[:total]) == b"connect-phase leftovers" + data


class _SysClient:
    """A TLS 1.3 client on the system libssl through ctypes, over memory BIOs: CPython's ssl
    module cannot send a KeyUpdate, OpenSSL's SSL_key_update can."""

    def __init__(self) -> None:
        import ctypes
        import ctypes.util

        name = ctypes.util.find_library("ssl") or "libssl.so.3"
        so = ctypes.CDLL(name)
        vp, ci = ctypes.c_void_p, ctypes.c_int
        for fn, res, args in (
                ("TLS_client_method", vp, []), ("SSL_CTX_new", vp, [vp]), ("SSL_new", vp, [vp]),
                ("BIO_s_mem", vp, []), ("BIO_new", vp, [vp]), ("SSL_set_bio", None, [vp, vp, vp]),
                ("SSL_set_connect_state", None, [vp]), ("SSL_do_handshake", ci, [vp]),
                ("SSL_write", ci, [vp, ctypes.c_char_p, ci]), ("SSL_read", ci, [vp, vp, ci]),
                ("SSL_key_update", ci, [vp, ci]), ("BIO_write", ci, [vp, ctypes.c_char_p, ci]),
                ("BIO_read", ci, [vp, vp, ci]),
                ("SSL_CTX_ctrl", ctypes.c_long, [vp, ci, ctypes.c_long, vp])):
            f = getattr(so, fn)
            f.restype, f.argtypes = res, args
        self.so, self.ct = so, ctypes
        ctx = so.SSL_CTX_new(so.TLS_client_method())
        so.SSL_CTX_ctrl(ctx, 124, 0x0304, None)  # SSL_CTRL_SET_MIN_PROTO_VERSION: TLS 1.3
        self.ssl = so.SSL_new(ctx)
        self.rbio, self.wbio = so.BIO_new(so.BIO_s_mem()), so.BIO_new(so.BIO_s_mem())
        so.SSL_set_bio(self.ssl, self.rbio, self.wbio)
        so.SSL_set_connect_state(self.ssl)
        self.buf = ctypes.create_string_buffer(1 << 20)

    def out(self) -> bytes:
        data = b""
        while (n := self.so.BIO_read(self.wbio, self.buf, len(self.buf))) > 0:
            data += self.buf.raw[:n]
        return data

    def into(self, data: bytes) -> None:
        if data:
            self.so.BIO_write(self.rbio, data, len(data))

    def read(self) -> bytes:
        data = b""
        while (n := self.so.SSL_read(self.ssl, self.buf, len(self.buf))) > 0:
            data += self.buf.raw[:n]
        return data


@needs_c
def test_key_update_inside_a_large_in_place_read(pki: Pki) -> None:
    """A client KeyUpdate (update_requested) between records of one large read: everything is
    decrypted under the right keys, our KeyUpdate answer goes out at once, and the client reads
    what we send afterwards under our new keys."""
    try:
        cli = _SysClient()
    except (OSError, AttributeError) as exc:
        pytest.skip(f"no system libssl with SSL_key_update: {exc}")
    from tlsgate.config.schema import ServerSslOptions

    opts = ServerSslOptions(certfile=str(pki.server.cert), keyfile=str(pki.server.key))
    sent: list[bytes] = []
    sess = ServerSession(build_server_context(opts, "listeners.ssl.t").ctx, sent.append)
    so = cli.so
    done = False
    for _ in range(10):
        cdone = so.SSL_do_handshake(cli.ssl) == 1
        data = cli.out()
        if data:
            sess.feed(data)
            done = sess.handshake()
        for b in sent:
            cli.into(b)
        sent.clear()
        if cdone and done:
            break
    assert done
    one, two = os.urandom(30_000), os.urandom(30_000)
    assert so.SSL_write(cli.ssl, one, len(one)) == len(one)
    assert so.SSL_key_update(cli.ssl, 1) == 1  # SSL_KEY_UPDATE_REQUESTED
    assert so.SSL_write(cli.ssl, two, len(two)) == len(two)
    wire = cli.out()
    assert len(wire) > engine._RECYCLE_AT
    INBUF[:len(wire)] = wire
    total = sess.decrypt_send(len(wire), -1)
    assert bytes(OUT_VIEW[:total]) == one + two
    assert sess not in engine._BIG  # it was read in place
    assert sent, "our KeyUpdate answer was not sent"
    INBUF[:5] = b"after"
    o = sess.encrypt_send(5, -1)
    cli.into(b"".join(sent) + bytes(OUT_VIEW[:o]))
    assert cli.read() == b"after"


def test_peer_cert_der_is_the_client_certificate(pki: Pki) -> None:
    """ServerSession.peer_cert_der (what the gate parses the identity from): the DER of the
    certificate the client sent, None without one."""
    from tlsgate.tls.identity import peer_identity

    mutual = {"cacertfile": str(pki.ca_pem), "verify": "verify_peer"}
    cctx = ssl.create_default_context(cafile=str(pki.ca_pem))
    cctx.load_cert_chain(pki.client.cert, pki.client.key)
    with_cert = Peer(pki, server_opts=mutual, cctx=cctx)
    with_cert.handshake()
    assert with_cert.sess.peer_cert_der == pki.client.der
    ident = peer_identity(with_cert.sess.peer_cert_der)
    assert ident.cn_text == "client" and ident.dn.startswith("CN=client,OU=devices,")
    without = Peer(pki, server_opts=mutual)
    without.handshake()
    assert without.sess.peer_cert_der is None
