#!/usr/bin/env python3
"""Full handshakes per server CPU-second on the GM engine (a benchmark: prints numbers).

Server = ``tlsgate.tls.gm.GmSession`` (the engine the GM listener uses); client = Tongsuo's own
client side (``tests/gmclient.py``'s MemoryClient), both over memory BIOs in this one thread.
Only the server's calls (``feed``/``handshake`` and its output, session create/free) are timed
with ``time.thread_time()``, so the figure is the server's CPU per handshake, without socket
syscalls and without the client's work. For scale, the same measurement is made for the
pyOpenSSL engine (TLS 1.3, ECDSA P-256, X25519) with a stdlib ``ssl`` client.

    python benchmarks/gm_handshakes.py [-n 300]
"""

from __future__ import annotations

import argparse
import datetime
import ssl
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import OpenSSL.crypto  # noqa: E402
import OpenSSL.SSL  # noqa: E402
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.hazmat.primitives.serialization import Encoding  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

from tests import gmclient  # noqa: E402
from tlsgate.config.schema import GmSslOptions  # noqa: E402
from tlsgate.tls.gm import GmServerContext, library_info  # noqa: E402
from tlsgate.tls.gm_certs import Sm2Dir, init_sm2_dir  # noqa: E402


def gm_case(pki: Sm2Dir, lib: Any, protocol: str, cipher: str,
            mutual: bool) -> Callable[[], float]:
    o: dict[str, Any] = dict(sign_certfile=str(pki.server.sign_cert),
                             sign_keyfile=str(pki.server.sign_key),
                             enc_certfile=str(pki.server.enc_cert),
                             enc_keyfile=str(pki.server.enc_key))
    if mutual:
        o.update(verify="verify_peer", cacertfile=str(pki.ca_cert), fail_if_no_peer_cert=True)
    ctx = GmServerContext.build(GmSslOptions(**o))
    pair = pki.clients["dev"]
    certs = ([str(pair.sign_cert), str(pair.sign_key), str(pair.enc_cert), str(pair.enc_key)]
             if mutual else [])
    cctx = gmclient.client_ctx(lib, protocol, cipher, str(pki.ca_cert), *certs)
    want = "TLCP" if protocol == "tlcp" else "TLSv1.3"

    def one() -> float:
        c = gmclient.MemoryClient(lib, cctx)
        sent: list[bytes] = []
        t = time.thread_time()
        s = ctx.new_session(sent.append)
        spent = time.thread_time() - t
        sdone = False
        for _ in range(20):
            cdone = c.handshake()
            data = c.take_output()
            t = time.thread_time()
            s.feed(data)
            sdone = s.handshake()
            spent += time.thread_time() - t
            c.feed(b"".join(sent))
            sent.clear()
            if cdone and sdone:
                break
        assert sdone and s.version == want and s.cipher == cipher, (s.version, s.cipher)
        t = time.thread_time()
        s.free()
        spent += time.thread_time() - t
        c.free()
        return spent

    return one


def pyopenssl_case() -> Callable[[], float]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), False)
            .sign(key, hashes.SHA256()))
    sctx = OpenSSL.SSL.Context(OpenSSL.SSL.TLS_SERVER_METHOD)
    sctx.use_certificate(OpenSSL.crypto.X509.from_cryptography(cert))
    sctx.use_privatekey(OpenSSL.crypto.PKey.from_cryptography_key(key))
    cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cctx.load_verify_locations(cadata=cert.public_bytes(Encoding.PEM).decode())

    def one() -> float:
        i, o = ssl.MemoryBIO(), ssl.MemoryBIO()
        cli = cctx.wrap_bio(i, o, server_hostname="localhost")
        t = time.thread_time()
        srv = OpenSSL.SSL.Connection(sctx, None)
        srv.set_accept_state()
        spent = time.thread_time() - t
        for _ in range(20):
            try:
                cli.do_handshake()
                cdone = True
            except ssl.SSLWantReadError:
                cdone = False
            data = o.read()
            t = time.thread_time()
            if data:
                srv.bio_write(data)
            try:
                srv.do_handshake()
                sdone = True
            except OpenSSL.SSL.WantReadError:
                sdone = False
            out = b""
            try:
                while True:
                    out += srv.bio_read(65536)
            except OpenSSL.SSL.WantReadError:
                pass
            spent += time.thread_time() - t
            i.write(out)
            if cdone and sdone:
                break
        return spent

    return one


def measure(name: str, one: Callable[[], float], n: int) -> None:
    for _ in range(max(3, n // 20)):  # warm-up
        one()
    cpu = 0.0
    wall = time.perf_counter()
    for _ in range(n):
        cpu += one()
    wall = time.perf_counter() - wall
    print(f"{name:<44} {n / cpu:8.0f} /server-CPU-s {cpu / n * 1e6:8.0f} µs   "
          f"(client+server wall {n / wall:6.0f}/s)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("-n", type=int, default=300, help="handshakes per case")
    a = ap.parse_args()
    info = library_info()
    print(f"# {info.version} ({info.openssl_base}) from {info.path}")
    print(f"# {a.n} full handshakes per case, one thread, memory BIOs, no resumption")
    with tempfile.TemporaryDirectory() as d:
        pki = init_sm2_dir(d, ["localhost"], ["dev"], days=1)
        lib = gmclient.load()
        measure("TLCP ECC-SM2-SM4-GCM-SM3", gm_case(pki, lib, "tlcp", "ECC-SM2-SM4-GCM-SM3",
                                                    False), a.n)
        measure("TLCP ECDHE-SM2-SM4-GCM-SM3 (mutual)",
                gm_case(pki, lib, "tlcp", "ECDHE-SM2-SM4-GCM-SM3", True), a.n)
        measure("TLS1.3 TLS_SM4_GCM_SM3", gm_case(pki, lib, "tls13", "TLS_SM4_GCM_SM3", False),
                a.n)
        measure("TLS1.3 TLS_SM4_GCM_SM3 (mutual)",
                gm_case(pki, lib, "tls13", "TLS_SM4_GCM_SM3", True), a.n)
        measure("reference: pyOpenSSL TLS1.3 ECDSA-P256", pyopenssl_case(), a.n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
