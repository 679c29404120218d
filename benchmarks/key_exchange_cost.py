"""What the key exchange group a client picks costs the server: CPU per full TLS 1.3 handshake
and heap held per connection afterwards, for a client offering the post-quantum hybrid
X25519MLKEM768 (OpenSSL 4's default, and what recent clients send first) and one offering only
X25519. Both sides run in this process over memory BIOs; only the server's work (tlsgate's
ServerSession on the bundled OpenSSL) is timed, and the heap is glibc's (mallinfo2) with every
server session kept alive. docs/deployment.md's sizing notes quote this.

Usage: .venv/bin/python -m benchmarks.key_exchange_cost [N]   (from the repository root)
"""

from __future__ import annotations

import contextlib
import gc
import sys
import tempfile
import time
from pathlib import Path

from OpenSSL import SSL
from OpenSSL._util import lib as _lib

from benchmarks.openssl_floor import bundled_ctx, heap, make_cert
from tlsgate.tls.engine import ServerSession

N = int(sys.argv[1]) if len(sys.argv) > 1 else 1500


def measure(sctx: SSL.Context, client_groups: str) -> tuple[float, float, str]:
    """(server µs CPU per handshake, KiB heap per held session, negotiated group)."""
    cctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    if _lib.SSL_CTX_set1_curves_list(cctx._context, client_groups.encode()) != 1:
        raise SystemExit(f"the bundled OpenSSL does not know {client_groups}")
    out: list[bytes] = []
    keep: list[ServerSession] = []
    spent = 0.0
    group = "?"
    gc.collect()
    h0 = heap()
    for _ in range(N):
        t = time.process_time()
        s = ServerSession(sctx, out.append)
        spent += time.process_time() - t
        cli = SSL.Connection(cctx, None)
        cli.set_connect_state()
        done = False
        while not done:
            with contextlib.suppress(SSL.WantReadError):
                cli.do_handshake()
            try:
                data = cli.bio_read(65536)
            except SSL.WantReadError:
                data = b""
            t = time.process_time()
            if data:
                s.feed(data)
            done = s.handshake()
            spent += time.process_time() - t
            for b in out:
                cli.bio_write(b)
            out.clear()
        if s.conn is not None:
            group = s.conn.get_group_name() or "?"
        s.release_wrapper()  # what the relay does: the SSL object stays, pyOpenSSL's wrapper goes
        keep.append(s)
    gc.collect()
    held = (heap() - h0) / N / 1024
    return spent / N * 1e6, held, group


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = make_cert(Path(tmp))
        sctx = bundled_ctx(cert, key)
        print(f"{'client offers':28} {'negotiated':16} {'server CPU':>12} {'heap held':>12}")
        for offer in ("X25519", "X25519MLKEM768:X25519"):
            us, kib, group = measure(sctx, offer)
            print(f"{offer:28} {group:16} {us:9.0f} µs {kib:8.1f} KiB")


if __name__ == "__main__":
    main()
