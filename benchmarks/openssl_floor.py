"""What the OpenSSL library alone costs per connection, bundled vs system: the floor under
tlsgate's idle-memory and handshake numbers (issue 12's notes quote this).

tlsgate's TLS engine runs on the OpenSSL that `cryptography` bundles (pyOpenSSL); HAProxy, nginx
and stunnel on this machine link the system libssl (Debian 12: OpenSSL 3.0). This prints, for
both libraries, the heap one SSL object takes (glibc mallinfo2 before/after N SSL_new), the
server's CPU for one full TLS 1.3 handshake over memory BIOs (ECDSA P-256 + X25519, the
client's work excluded) and the heap each server connection still holds after its handshake.

The handshake is measured against a client of each library, because the server's CPU depends
on it: client and server run in this one process, and a client of the same library leaves the
server's code and tables warm in the CPU caches. Compare the diagonal (each library against
itself) for the libraries, the other column for what a client in a colder cache costs; in
compare.sh the client is another process on the other core, so neither is the benchmark's
figure. Earlier versions timed both servers against the system client only, which put the
bundled server 50-70 µs above the system one; like for like it is the cheaper of the two
(30 Nov 2026, OpenSSL 4.0.3 vs 3.0.22, both X25519 and TLS_AES_256_GCM_SHA384: 171 vs 197 µs,
and 235-249 µs either way across libraries).

Usage: .venv/bin/python benchmarks/openssl_floor.py [N [ROUNDS]]   (defaults 2000, 2)
"""

from __future__ import annotations

import ctypes
import datetime
import gc
import ssl
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from OpenSSL._util import lib as _lib

N = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 2
_libc = ctypes.CDLL("libc.so.6")


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


_libc.mallinfo2.restype = _MallInfo2


def heap() -> int:
    m = _libc.mallinfo2()
    return int(m.uordblks + m.hblkhd)


def make_cert(d: Path) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    (d / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "k.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()))
    return str(d / "c.pem"), str(d / "k.pem")


def bundled_ctx(cert: str, key: str) -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.use_certificate_chain_file(cert)
    ctx.use_privatekey_file(key)
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
    return ctx


def ssl_new_bundled(ctx: SSL.Context) -> float:
    h0 = heap()
    keep = [_lib.SSL_new(ctx._context) for _ in range(N)]
    h1 = heap()
    for s in keep:
        _lib.SSL_free(s)
    return (h1 - h0) / N / 1024


def ssl_new_system() -> float:
    so = ctypes.CDLL("libssl.so.3")
    so.TLS_server_method.restype = ctypes.c_void_p
    so.SSL_CTX_new.restype = ctypes.c_void_p
    so.SSL_CTX_new.argtypes = [ctypes.c_void_p]
    so.SSL_new.restype = ctypes.c_void_p
    so.SSL_new.argtypes = [ctypes.c_void_p]
    so.SSL_free.argtypes = [ctypes.c_void_p]
    ctx = so.SSL_CTX_new(so.TLS_server_method())
    h0 = heap()
    keep = [so.SSL_new(ctx) for _ in range(N)]
    h1 = heap()
    for s in keep:
        so.SSL_free(s)
    return (h1 - h0) / N / 1024


class _End:
    """One side of a handshake over memory BIOs: ``feed`` gives it the peer's bytes, ``step``
    advances it (True when its handshake is done), ``out`` returns what it wants to send."""

    def feed(self, data: bytes) -> None: ...
    def step(self) -> bool: ...
    def out(self) -> bytes: ...


class _Bundled(_End):
    """pyOpenSSL: the OpenSSL that `cryptography` bundles (tlsgate's)."""

    def __init__(self, ctx: SSL.Context, server: bool) -> None:
        self.c = SSL.Connection(ctx, None)
        if server:
            self.c.set_accept_state()
        else:
            self.c.set_connect_state()

    def feed(self, data: bytes) -> None:
        self.c.bio_write(data)

    def step(self) -> bool:
        try:
            self.c.do_handshake()
            return True
        except SSL.WantReadError:
            return False

    def out(self) -> bytes:
        try:
            return bytes(self.c.bio_read(65536))
        except SSL.WantReadError:
            return b""


class _System(_End):
    """The stdlib ssl module: the system's libssl (what HAProxy, nginx, stunnel link here)."""

    def __init__(self, ctx: ssl.SSLContext, server: bool) -> None:
        self.i, self.o = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.c = ctx.wrap_bio(self.i, self.o, server_side=server)

    def feed(self, data: bytes) -> None:
        self.i.write(data)

    def step(self) -> bool:
        try:
            self.c.do_handshake()
            return True
        except ssl.SSLWantReadError:
            return False

    def out(self) -> bytes:
        return self.o.read()


def _server_cpu(new_server: Callable[[], _End], new_client: Callable[[], _End]) -> tuple[
        float, float]:
    """µs of CPU the server side spends per full handshake (the client's work is not timed)
    and KiB of heap each finished server connection holds (all N are kept until the end; this
    includes the Python wrapper objects, well under 1 KiB)."""
    spent = 0.0
    keep = []
    gc.collect()
    h0 = heap()
    for _ in range(N):
        cli = new_client()
        t = time.process_time()
        srv = new_server()
        spent += time.process_time() - t
        cdone = sdone = False
        while not (cdone and sdone):
            if not cdone:
                cdone = cli.step()
            data = cli.out()
            t = time.process_time()
            if data:
                srv.feed(data)
            if not sdone:
                sdone = srv.step()
            out = srv.out()
            spent += time.process_time() - t
            if out:
                cli.feed(out)
        keep.append(srv)
    gc.collect()
    held = (heap() - h0) / N / 1024
    return spent / N * 1e6, held


def contexts(cert: str, key: str) -> dict[str, tuple[Callable[[], _End], Callable[[], _End]]]:
    """Per library ("bundled", "system"): (new server, new client). Both clients offer TLS 1.3
    only and X25519, verify nothing and use their library's default cipher suites."""
    bctx = bundled_ctx(cert, key)
    bcli = SSL.Context(SSL.TLS_CLIENT_METHOD)
    bcli.set_min_proto_version(SSL.TLS1_3_VERSION)
    # X25519, as the system client offers: OpenSSL 4 would otherwise agree on X25519MLKEM768
    # with itself (benchmarks/key_exchange_cost.py measures that one)
    _lib.SSL_CTX_set1_curves_list(bcli._context, b"X25519")
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(cert, key)
    scli = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    scli.check_hostname = False
    scli.verify_mode = ssl.CERT_NONE
    scli.minimum_version = ssl.TLSVersion.TLSv1_3
    return {
        "bundled": (lambda: _Bundled(bctx, True), lambda: _Bundled(bcli, False)),
        "system": (lambda: _System(sctx, True), lambda: _System(scli, False)),
    }


def main() -> None:
    from cryptography.hazmat.backends.openssl import backend

    with tempfile.TemporaryDirectory() as tmp:
        cert, key = make_cert(Path(tmp))
        ends = contexts(cert, key)
        names = {"bundled": backend.openssl_version_text().split(" ")[1] + " (tlsgate)",
                 "system": ssl.OPENSSL_VERSION.split(" ")[1] + " (system)"}
        # alternating rounds; the lowest CPU of each pairing is printed (the machine's own
        # noise only ever adds), the heap of the last round
        cpu: dict[tuple[str, str], float] = {}
        held: dict[str, float] = {}
        for _ in range(ROUNDS):
            for srv in ends:
                for cli in ends:
                    us, kib = _server_cpu(ends[srv][0], ends[cli][1])
                    cpu[srv, cli] = min(us, cpu.get((srv, cli), us))
                    if srv == cli:
                        held[srv] = kib
        heap_new = {"bundled": ssl_new_bundled(bundled_ctx(cert, key)), "system": ssl_new_system()}
        print(f"server handshake CPU, µs (N={N}, best of {ROUNDS}): rows = server's OpenSSL, "
              "columns = client's")
        print(f"{'server':22} {'SSL_new heap':>13} {'client ' + names['bundled']:>28} "
              f"{'client ' + names['system']:>26} {'heap held after it':>19}")
        for srv in ends:
            print(f"{names[srv]:22} {heap_new[srv]:9.2f} KiB {cpu[srv, 'bundled']:25.0f} µs "
                  f"{cpu[srv, 'system']:23.0f} µs {held[srv]:15.2f} KiB")


if __name__ == "__main__":
    main()
