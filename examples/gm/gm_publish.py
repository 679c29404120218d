#!/usr/bin/env python3
"""Publish one MQTT message through a tlsgate 国密 (GM) listener, from Python.

The TLS side is the Tongsuo library that the ``tongsuopy`` wheel bundles (``pip install
tongsuopy``), driven through ctypes: TLCP (GB/T 38636-2020) with an SM2 sign/enc certificate
pair, or TLS 1.3 with the RFC 8998 suites. The MQTT side is a minimal MQTT 3.1.1 client
(CONNECT, PUBLISH QoS 0/1, DISCONNECT) written out below, so the file has no other dependency
and shows every byte a device sends.

    python gm_publish.py --host 127.0.0.1 --port 8884 --cafile certs/sm2-ca.pem \\
        --topic demo/gm --message "你好, TLCP"
    # mutual TLCP with a client pair from `tlsgate certs init --sm2`:
    python gm_publish.py ... --sign-cert certs/client-sign.pem --sign-key certs/client-sign.key \\
        --enc-cert certs/client-enc.pem --enc-key certs/client-enc.key
    # TLS 1.3 + SM4 (RFC 8998) instead of TLCP:
    python gm_publish.py ... --protocol tls13

Exit status 0 when the broker acknowledged the message (QoS 1) or it was sent (QoS 0).
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
import ipaddress
import os
import socket
import struct
import sys
from ctypes import c_char_p, c_int, c_long, c_size_t, c_ulong, c_void_p
from pathlib import Path
from typing import Any

P = c_void_p
FUNCTIONS: dict[str, tuple[Any, list[Any]]] = {
    "NTLS_client_method": (P, []), "TLS_client_method": (P, []),
    "SSL_CTX_new": (P, [P]), "SSL_CTX_free": (None, [P]),
    "SSL_CTX_ctrl": (c_long, [P, c_int, c_long, P]),
    "SSL_CTX_enable_ntls": (None, [P]), "SSL_CTX_enable_sm_tls13_strict": (None, [P]),
    "SSL_CTX_set_cipher_list": (c_int, [P, c_char_p]),
    "SSL_CTX_set_ciphersuites": (c_int, [P, c_char_p]),
    "SSL_CTX_load_verify_locations": (c_int, [P, c_char_p, c_char_p]),
    "SSL_CTX_set_verify": (None, [P, c_int, P]),
    "SSL_CTX_use_sign_certificate_file": (c_int, [P, c_char_p, c_int]),
    "SSL_CTX_use_sign_PrivateKey_file": (c_int, [P, c_char_p, c_int]),
    "SSL_CTX_use_enc_certificate_file": (c_int, [P, c_char_p, c_int]),
    "SSL_CTX_use_enc_PrivateKey_file": (c_int, [P, c_char_p, c_int]),
    "SSL_CTX_use_certificate_file": (c_int, [P, c_char_p, c_int]),
    "SSL_CTX_use_PrivateKey_file": (c_int, [P, c_char_p, c_int]),
    "SSL_new": (P, [P]), "SSL_free": (None, [P]), "SSL_set_fd": (c_int, [P, c_int]),
    "SSL_ctrl": (c_long, [P, c_int, c_long, P]),
    "SSL_get0_param": (P, [P]),
    "X509_VERIFY_PARAM_set1_host": (c_int, [P, c_char_p, c_size_t]),
    "X509_VERIFY_PARAM_set1_ip_asc": (c_int, [P, c_char_p]),
    "SSL_connect": (c_int, [P]), "SSL_read": (c_int, [P, P, c_int]),
    "SSL_write": (c_int, [P, c_char_p, c_int]), "SSL_shutdown": (c_int, [P]),
    "SSL_get_version": (c_char_p, [P]), "SSL_get_current_cipher": (P, [P]),
    "SSL_CIPHER_get_name": (c_char_p, [P]),
    "ERR_get_error": (c_ulong, []), "ERR_error_string_n": (None, [c_ulong, c_char_p, c_size_t]),
}
PEM, VERIFY_PEER, TLS1_3 = 1, 1, 0x0304
CTRL_SET_HOSTNAME, CTRL_GROUPS, CTRL_MIN_PROTO, CTRL_MAX_PROTO = 55, 92, 123, 124


def load_tongsuo() -> Any:
    spec = importlib.util.find_spec("tongsuopy")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("this example needs the Tongsuo library: pip install tongsuopy")
    path = sorted(Path(next(iter(spec.submodule_search_locations)), "backends")
                  .glob("_tongsuo*.so"))[0]
    # RTLD_DEEPBIND: Tongsuo's own calls must stay inside Tongsuo even if another OpenSSL is
    # loaded in this process (see tlsgate/tls/gm/_lib.py for why).
    lib = ctypes.CDLL(str(path), mode=os.RTLD_NOW | os.RTLD_LOCAL | os.RTLD_DEEPBIND)
    for name, (restype, argtypes) in FUNCTIONS.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    return lib


def tls_errors(lib: Any) -> str:
    buf, out = ctypes.create_string_buffer(256), []
    while code := lib.ERR_get_error():
        lib.ERR_error_string_n(code, buf, 256)
        out.append(buf.value.decode())
    return "; ".join(out) or "no details"


class GmTls:
    """A blocking TLCP / TLS 1.3-SM client connection over a socket."""

    def __init__(self, lib: Any, a: argparse.Namespace) -> None:
        self.lib = lib
        tlcp = a.protocol == "tlcp"
        ctx = lib.SSL_CTX_new(lib.NTLS_client_method() if tlcp else lib.TLS_client_method())
        if tlcp:
            lib.SSL_CTX_enable_ntls(ctx)
            if a.cipher and lib.SSL_CTX_set_cipher_list(ctx, a.cipher.encode()) != 1:
                sys.exit(f"--cipher {a.cipher}: {tls_errors(lib)}")
        else:
            lib.SSL_CTX_ctrl(ctx, CTRL_MIN_PROTO, TLS1_3, None)
            lib.SSL_CTX_ctrl(ctx, CTRL_MAX_PROTO, TLS1_3, None)
            lib.SSL_CTX_set_ciphersuites(ctx, (a.cipher or "TLS_SM4_GCM_SM3").encode())
            lib.SSL_CTX_enable_sm_tls13_strict(ctx)
            lib.SSL_CTX_ctrl(ctx, CTRL_GROUPS, 0, b"SM2")
        if lib.SSL_CTX_load_verify_locations(ctx, a.cafile.encode(), None) != 1:
            sys.exit(f"--cafile {a.cafile}: {tls_errors(lib)}")
        lib.SSL_CTX_set_verify(ctx, VERIFY_PEER, None)
        if a.sign_cert:
            pairs = ([(lib.SSL_CTX_use_sign_certificate_file, a.sign_cert),
                      (lib.SSL_CTX_use_sign_PrivateKey_file, a.sign_key),
                      (lib.SSL_CTX_use_enc_certificate_file, a.enc_cert),
                      (lib.SSL_CTX_use_enc_PrivateKey_file, a.enc_key)] if tlcp else
                     [(lib.SSL_CTX_use_certificate_file, a.sign_cert),
                      (lib.SSL_CTX_use_PrivateKey_file, a.sign_key)])
            for use, path in pairs:
                if not path or use(ctx, path.encode(), PEM) != 1:
                    sys.exit(f"client certificate/key {path!r}: {tls_errors(lib)}")
        self.sock = socket.create_connection((a.host, a.port), timeout=a.timeout)
        self.sock.setblocking(True)  # Tongsuo reads the fd itself; use kernel timeouts
        tv = struct.pack("ll", int(a.timeout), 0)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
        self.ssl = lib.SSL_new(ctx)
        lib.SSL_CTX_free(ctx)  # the connection keeps its own reference
        lib.SSL_set_fd(self.ssl, self.sock.fileno())
        name = a.servername or a.host
        try:
            ipaddress.ip_address(name)
        except ValueError:  # a host name: SNI + name check
            lib.SSL_ctrl(self.ssl, CTRL_SET_HOSTNAME, 0, name.encode())
            lib.X509_VERIFY_PARAM_set1_host(lib.SSL_get0_param(self.ssl), name.encode(), 0)
        else:  # an address: no SNI (RFC 6066), check the certificate's IP SAN instead
            lib.X509_VERIFY_PARAM_set1_ip_asc(lib.SSL_get0_param(self.ssl), name.encode())
        if lib.SSL_connect(self.ssl) != 1:
            sys.exit(f"GM TLS handshake failed: {tls_errors(lib)}")
        self.buf = ctypes.create_string_buffer(16384)

    def describe(self) -> str:
        c = self.lib.SSL_CIPHER_get_name(self.lib.SSL_get_current_cipher(self.ssl)).decode()
        return f"{self.lib.SSL_get_version(self.ssl).decode()} {c}"

    def send(self, data: bytes) -> None:
        if self.lib.SSL_write(self.ssl, data, len(data)) != len(data):
            sys.exit(f"TLS write failed: {tls_errors(self.lib)}")

    def recv_exact(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            got = self.lib.SSL_read(self.ssl, self.buf, n - len(out))
            if got <= 0:
                sys.exit("connection closed by the gateway (see its log for the reason)")
            out += ctypes.string_at(self.buf, got)
        return out

    def close(self) -> None:
        self.lib.SSL_shutdown(self.ssl)
        self.lib.SSL_free(self.ssl)
        self.sock.close()


# ----------------------------------------------------------------- MQTT 3.1.1, just enough
def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(b)) + b


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + _varint(len(body)) + body


def connect_packet(client_id: str, username: str, password: str, keepalive: int = 60) -> bytes:
    flags = 0x02 | (0x80 if username else 0) | (0x40 if password else 0)  # clean session
    body = _str("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive) + _str(client_id)
    if username:
        body += _str(username)
    if password:
        body += _str(password)
    return _packet(0x10, body)


def read_packet(conn: GmTls) -> tuple[int, bytes]:
    first = conn.recv_exact(1)[0]
    length, shift = 0, 0
    while True:
        b = conn.recv_exact(1)[0]
        length |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            break
    return first, conn.recv_exact(length) if length else b""


def main() -> int:
    ap = argparse.ArgumentParser(description="Publish one MQTT message over 国密 TLS.")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8884)
    ap.add_argument("--protocol", choices=["tlcp", "tls13"], default="tlcp")
    ap.add_argument("--cipher", default="", help="e.g. ECC-SM2-SM4-GCM-SM3, TLS_SM4_GCM_SM3")
    ap.add_argument("--cafile", required=True, help="SM2 CA that signed the gateway's certs")
    ap.add_argument("--servername", default="", help="SNI and name to check (default: host)")
    ap.add_argument("--sign-cert", default="")
    ap.add_argument("--sign-key", default="")
    ap.add_argument("--enc-cert", default="", help="TLCP only")
    ap.add_argument("--enc-key", default="", help="TLCP only")
    ap.add_argument("--client-id", default="gm-example")
    ap.add_argument("--username", default="")
    ap.add_argument("--password", default="")
    ap.add_argument("--topic", default="demo/gm")
    ap.add_argument("--message", default="hello over GM TLS")
    ap.add_argument("--qos", type=int, choices=[0, 1], default=1)
    ap.add_argument("--timeout", type=float, default=10.0)
    a = ap.parse_args()

    conn = GmTls(load_tongsuo(), a)
    print(f"connected: {conn.describe()}", file=sys.stderr)
    conn.send(connect_packet(a.client_id, a.username, a.password))
    kind, body = read_packet(conn)
    if kind >> 4 != 2 or len(body) < 2:
        sys.exit(f"expected CONNACK, got packet type {kind >> 4}")
    if body[1] != 0:
        sys.exit(f"the broker/gateway refused the connection: CONNACK code {body[1]}")
    payload = a.message.encode()
    if a.qos == 0:
        conn.send(_packet(0x30, _str(a.topic) + payload))
    else:
        conn.send(_packet(0x32, _str(a.topic) + struct.pack("!H", 1) + payload))
        kind, body = read_packet(conn)
        if kind >> 4 != 4 or body[:2] != b"\x00\x01":
            sys.exit(f"expected PUBACK for packet id 1, got packet type {kind >> 4}")
    conn.send(b"\xe0\x00")  # DISCONNECT
    conn.close()
    print(f"published {len(payload)} bytes to {a.topic!r} (QoS {a.qos})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
