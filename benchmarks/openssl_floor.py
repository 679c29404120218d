"""What the OpenSSL library alone costs per connection, bundled vs system: the floor under
tlsgate's idle-memory and handshake numbers (issue 12's notes quote this).

tlsgate's TLS engine runs on the OpenSSL that `cryptography` bundles (pyOpenSSL); HAProxy, nginx
and stunnel on this machine link the system libssl (Debian 12: OpenSSL 3.0). This prints, for
both libraries, the heap one SSL object takes (glibc mallinfo2 before/after 2000 SSL_new), the
server's CPU for one full TLS 1.3 handshake over memory BIOs (ECDSA P-256 + X25519, the
client's work excluded) and the heap each server connection still holds after its handshake.
Usage: .venv/bin/python benchmarks/openssl_floor.py [N]
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
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from OpenSSL._util import lib as _lib

N = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
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


def _client() -> ssl.SSLContext:
    c = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    c.check_hostname = False
    c.verify_mode = ssl.CERT_NONE
    c.minimum_version = ssl.TLSVersion.TLSv1_3
    return c


def _server_cpu(new_server: Callable[[], Any], feed: Callable[[Any, bytes], None],
                step: Callable[[Any], bool], drain: Callable[[Any], bytes]) -> tuple[float, float]:
    """µs of CPU the server side spends per full handshake (the stdlib client's work is not
    timed) and KiB of heap each finished server connection holds (all N are kept until the
    end; this includes the Python wrapper objects, well under 1 KiB): ``new_server`` makes one,
    ``feed`` gives it client bytes, ``step`` advances it (True when done), ``drain`` returns
    what it wants to send."""
    cctx, spent = _client(), 0.0
    keep = []
    gc.collect()
    h0 = heap()
    for _ in range(N):
        cin, cout = ssl.MemoryBIO(), ssl.MemoryBIO()
        cli = cctx.wrap_bio(cin, cout)
        t = time.process_time()
        srv = new_server()
        spent += time.process_time() - t
        cdone = sdone = False
        while not (cdone and sdone):
            if not cdone:
                try:
                    cli.do_handshake()
                    cdone = True
                except ssl.SSLWantReadError:
                    pass
            data = cout.read()
            t = time.process_time()
            if data:
                feed(srv, data)
            if not sdone:
                sdone = step(srv)
            out = drain(srv)
            spent += time.process_time() - t
            if out:
                cin.write(out)
        keep.append(srv)
    gc.collect()
    held = (heap() - h0) / N / 1024
    return spent / N * 1e6, held


def hs_bundled(ctx: SSL.Context) -> tuple[float, float]:
    def new() -> SSL.Connection:
        c = SSL.Connection(ctx, None)
        c.set_accept_state()
        return c

    def step(c: SSL.Connection) -> bool:
        try:
            c.do_handshake()
            return True
        except SSL.WantReadError:
            return False

    def drain(c: SSL.Connection) -> bytes:
        try:
            return c.bio_read(65536)
        except SSL.WantReadError:
            return b""

    return _server_cpu(new, lambda c, d: c.bio_write(d), step, drain)


def hs_system(cert: str, key: str) -> tuple[float, float]:
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(cert, key)
    Srv = tuple[ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO]

    def new() -> Srv:
        sin, sout = ssl.MemoryBIO(), ssl.MemoryBIO()
        return sctx.wrap_bio(sin, sout, server_side=True), sin, sout

    def step(s: Srv) -> bool:
        try:
            s[0].do_handshake()
            return True
        except ssl.SSLWantReadError:
            return False

    return _server_cpu(new, lambda s, d: s[1].write(d), step, lambda s: s[2].read())


def main() -> None:
    from cryptography.hazmat.backends.openssl import backend

    with tempfile.TemporaryDirectory() as tmp:
        cert, key = make_cert(Path(tmp))
        ctx = bundled_ctx(cert, key)
        bundled = backend.openssl_version_text()
        print(f"{'library':34} {'SSL_new heap':>14} {'server handshake CPU':>22} "
              f"{'heap held after it':>20}")
        us, held = hs_bundled(ctx)
        print(f"{bundled + ' (tlsgate)':34} {ssl_new_bundled(ctx):11.2f} KiB "
              f"{us:18.0f} µs {held:16.2f} KiB")
        us, held = hs_system(cert, key)
        print(f"{ssl.OPENSSL_VERSION + ' (system)':34} {ssl_new_system():11.2f} KiB "
              f"{us:18.0f} µs {held:16.2f} KiB")


if __name__ == "__main__":
    main()
