#!/usr/bin/env python3
"""An independent 国密 TLS client for tests: Tongsuo's own *client* side, on a real socket.

It shares nothing with tlsgate's server code (it does not import ``tlsgate``): it loads the
Tongsuo library from the ``tongsuopy`` wheel with its own few ctypes declarations, drives
``NTLS_client_method`` (TLCP) or ``TLS_client_method`` with ``SSL_enable_sm_tls13_strict``
(RFC 8998) over ``SSL_set_fd``, verifies the server's SM2 certificate against ``--cafile`` (and
the name with ``--verify-name``), optionally presents an SM2 client certificate, sends
``--send`` and reads ``--expect`` bytes back. Run it as a separate process; it prints one JSON
line and exits 0 on success, 1 on failure (the JSON then has ``"error"``).

    gmclient.py --connect 127.0.0.1:8884 --protocol tlcp --cipher ECC-SM2-SM4-GCM-SM3 \\
        --cafile sm2-ca.pem --send hello --expect 5
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
import json
import os
import socket
import struct
import sys
import time
from ctypes import c_char_p, c_int, c_long, c_size_t, c_ulong, c_void_p
from pathlib import Path
from typing import Any

P = c_void_p
SIGS: dict[str, tuple[Any, list[Any]]] = {
    "NTLS_client_method": (P, []), "TLS_client_method": (P, []),
    "SSL_CTX_new": (P, [P]), "SSL_CTX_free": (None, [P]),
    "SSL_CTX_ctrl": (c_long, [P, c_int, c_long, P]),
    "SSL_CTX_set_cipher_list": (c_int, [P, c_char_p]),
    "SSL_CTX_set_ciphersuites": (c_int, [P, c_char_p]),
    "SSL_CTX_enable_sm_tls13_strict": (None, [P]), "SSL_CTX_enable_ntls": (None, [P]),
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
    "SSL_connect": (c_int, [P]), "SSL_get_error": (c_int, [P, c_int]),
    "SSL_read": (c_int, [P, P, c_int]), "SSL_write": (c_int, [P, c_char_p, c_int]),
    "SSL_shutdown": (c_int, [P]),
    "SSL_get_version": (c_char_p, [P]), "SSL_get_current_cipher": (P, [P]),
    "SSL_CIPHER_get_name": (c_char_p, [P]), "SSL_get_verify_result": (c_long, [P]),
    "X509_verify_cert_error_string": (c_char_p, [c_long]),
    "SSL_get_peer_certificate": (P, [P]), "X509_free": (None, [P]),
    "X509_get_subject_name": (P, [P]),
    "X509_NAME_oneline": (c_char_p, [P, c_char_p, c_int]),
    "SSL_session_reused": (c_int, [P]),
    "ERR_get_error": (c_ulong, []), "ERR_error_string_n": (None, [c_ulong, c_char_p, c_size_t]),
    "ERR_clear_error": (None, []),
    # memory-BIO mode (MemoryClient)
    "BIO_s_mem": (P, []), "BIO_new": (P, [P]), "BIO_write": (c_int, [P, c_char_p, c_int]),
    "BIO_read": (c_int, [P, P, c_int]), "BIO_ctrl": (c_long, [P, c_int, c_long, P]),
    "SSL_set_bio": (None, [P, P, P]), "SSL_set_connect_state": (None, [P]),
    "SSL_do_handshake": (c_int, [P]),
}
PEM = 1
SSL_VERIFY_PEER = 1
SSL_CTRL_SET_TLSEXT_HOSTNAME = 55
SSL_CTRL_SET_GROUPS_LIST = 92
SSL_CTRL_SET_MIN_PROTO_VERSION = 123
SSL_CTRL_SET_MAX_PROTO_VERSION = 124
TLS1_3_VERSION = 0x0304


class ClientError(Exception):
    pass


def load() -> Any:
    spec = importlib.util.find_spec("tongsuopy")
    if spec is None or not spec.submodule_search_locations:
        raise ClientError("tongsuopy is not installed")
    path = next(iter(sorted(Path(next(iter(spec.submodule_search_locations)))
                            .joinpath("backends").glob("_tongsuo*.so"))))
    dll = ctypes.CDLL(str(path), mode=os.RTLD_NOW | os.RTLD_LOCAL | os.RTLD_DEEPBIND)
    for name, (res, args) in SIGS.items():
        fn = getattr(dll, name)
        fn.restype, fn.argtypes = res, args
    return dll


def errors(lib: Any) -> str:
    out = []
    buf = ctypes.create_string_buffer(256)
    while code := lib.ERR_get_error():
        lib.ERR_error_string_n(code, buf, 256)
        out.append(buf.value.decode())
    return "; ".join(out)


def make_ctx(lib: Any, a: argparse.Namespace) -> Any:
    tlcp = a.protocol == "tlcp"
    ctx = lib.SSL_CTX_new(lib.NTLS_client_method() if tlcp else lib.TLS_client_method())
    if tlcp:
        lib.SSL_CTX_enable_ntls(ctx)  # the NTLS state machine needs it even on NTLS_method
        if a.cipher and lib.SSL_CTX_set_cipher_list(ctx, a.cipher.encode()) != 1:
            raise ClientError(f"cipher {a.cipher}: {errors(lib)}")
    else:
        lib.SSL_CTX_ctrl(ctx, SSL_CTRL_SET_MIN_PROTO_VERSION, TLS1_3_VERSION, None)
        lib.SSL_CTX_ctrl(ctx, SSL_CTRL_SET_MAX_PROTO_VERSION, TLS1_3_VERSION, None)
        suites = a.cipher or "TLS_SM4_GCM_SM3:TLS_SM4_CCM_SM3"
        if lib.SSL_CTX_set_ciphersuites(ctx, suites.encode()) != 1:
            raise ClientError(f"ciphersuites {suites}: {errors(lib)}")
        lib.SSL_CTX_enable_sm_tls13_strict(ctx)
        lib.SSL_CTX_ctrl(ctx, SSL_CTRL_SET_GROUPS_LIST, 0, b"SM2")
    if a.cafile:
        if lib.SSL_CTX_load_verify_locations(ctx, a.cafile.encode(), None) != 1:
            raise ClientError(f"cafile: {errors(lib)}")
        lib.SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, None)
    if a.sign_cert:
        loads = ([(lib.SSL_CTX_use_sign_certificate_file, a.sign_cert),
                  (lib.SSL_CTX_use_sign_PrivateKey_file, a.sign_key),
                  (lib.SSL_CTX_use_enc_certificate_file, a.enc_cert),
                  (lib.SSL_CTX_use_enc_PrivateKey_file, a.enc_key)] if tlcp else
                 [(lib.SSL_CTX_use_certificate_file, a.sign_cert),
                  (lib.SSL_CTX_use_PrivateKey_file, a.sign_key)])
        for fn, path in loads:
            if path and fn(ctx, path.encode(), PEM) != 1:
                raise ClientError(f"{path}: {errors(lib)}")
    return ctx


def one(lib: Any, ctx: Any, a: argparse.Namespace, report: bool) -> dict[str, Any]:
    host, port = a.connect.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=a.timeout)
    # Tongsuo does blocking I/O on the fd: make it blocking, with kernel-level timeouts.
    sock.setblocking(True)
    tv = struct.pack("ll", int(a.timeout), int((a.timeout % 1) * 1e6))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
    ssl = lib.SSL_new(ctx)
    try:
        lib.SSL_set_fd(ssl, sock.fileno())
        if a.servername:
            lib.SSL_ctrl(ssl, SSL_CTRL_SET_TLSEXT_HOSTNAME, 0, a.servername.encode())
        if a.verify_name:
            lib.X509_VERIFY_PARAM_set1_host(lib.SSL_get0_param(ssl), a.verify_name.encode(), 0)
        lib.ERR_clear_error()
        rc = lib.SSL_connect(ssl)
        if rc != 1:
            vr = lib.SSL_get_verify_result(ssl)
            raise ClientError(f"handshake failed (SSL_get_error={lib.SSL_get_error(ssl, rc)}, "
                              f"verify={lib.X509_verify_cert_error_string(vr).decode()}): "
                              f"{errors(lib)}")
        out: dict[str, Any] = {"ok": True}
        if report:
            out["version"] = lib.SSL_get_version(ssl).decode()
            out["cipher"] = lib.SSL_CIPHER_get_name(lib.SSL_get_current_cipher(ssl)).decode()
            vr = lib.SSL_get_verify_result(ssl)
            out["verify_result"] = vr
            out["verify"] = lib.X509_verify_cert_error_string(vr).decode()
            x = lib.SSL_get_peer_certificate(ssl)
            if x:
                buf = ctypes.create_string_buffer(512)
                lib.X509_NAME_oneline(lib.X509_get_subject_name(x), buf, 512)
                out["peer_subject"] = buf.value.decode()
                lib.X509_free(x)
        if a.send or a.send_hex:
            data = bytes.fromhex(a.send_hex) if a.send_hex else a.send.encode()
            if lib.SSL_write(ssl, data, len(data)) != len(data):
                raise ClientError(f"write failed: {errors(lib)}")
        got = b""
        buf = ctypes.create_string_buffer(16384)
        while len(got) < a.expect:
            n = lib.SSL_read(ssl, buf, 16384)
            if n <= 0:
                raise ClientError(f"read failed after {len(got)} bytes "
                                  f"(SSL_get_error={lib.SSL_get_error(ssl, n)}): {errors(lib)}")
            got += ctypes.string_at(buf, n)
        if a.expect:
            out["received"] = got.decode("utf-8", "replace")
            out["received_hex"] = got.hex()
        lib.SSL_shutdown(ssl)
        return out
    finally:
        lib.SSL_free(ssl)
        sock.close()


def client_ctx(lib: Any, protocol: str, cipher: str = "", cafile: str = "",
               sign_cert: str = "", sign_key: str = "", enc_cert: str = "",
               enc_key: str = "") -> Any:
    """An SSL_CTX with the same settings as the command line would make."""
    return make_ctx(lib, argparse.Namespace(
        protocol=protocol, cipher=cipher, cafile=cafile, sign_cert=sign_cert, sign_key=sign_key,
        enc_cert=enc_cert, enc_key=enc_key))


class MemoryClient:
    """The same client over memory BIOs, for in-process tests and benchmarks (no sockets)."""

    def __init__(self, lib: Any, ctx: Any) -> None:
        self.lib = lib
        self.ssl = lib.SSL_new(ctx)
        self.rbio, self.wbio = lib.BIO_new(lib.BIO_s_mem()), lib.BIO_new(lib.BIO_s_mem())
        lib.SSL_set_bio(self.ssl, self.rbio, self.wbio)
        lib.SSL_set_connect_state(self.ssl)
        self.buf = ctypes.create_string_buffer(65536)

    def feed(self, data: bytes) -> None:
        if data:
            self.lib.BIO_write(self.rbio, data, len(data))

    def take_output(self) -> bytes:
        n = self.lib.BIO_ctrl(self.wbio, 10, 0, None)
        if n <= 0:
            return b""
        buf = ctypes.create_string_buffer(n)
        got = self.lib.BIO_read(self.wbio, buf, n)
        return ctypes.string_at(buf, got)

    def handshake(self) -> bool:
        rc = self.lib.SSL_do_handshake(self.ssl)
        if rc == 1:
            return True
        if self.lib.SSL_get_error(self.ssl, rc) in (2, 3):
            return False
        raise ClientError(f"client handshake failed: {errors(self.lib)}")

    def write(self, data: bytes) -> bytes:
        if self.lib.SSL_write(self.ssl, data, len(data)) != len(data):
            raise ClientError(f"write failed: {errors(self.lib)}")
        return self.take_output()

    def read(self) -> bytes:
        out = b""
        while (n := self.lib.SSL_read(self.ssl, self.buf, 65536)) > 0:
            out += ctypes.string_at(self.buf, n)
        self.lib.ERR_clear_error()
        return out

    def close(self) -> bytes:
        """Send close_notify; returns the bytes to deliver to the server."""
        self.lib.SSL_shutdown(self.ssl)
        return self.take_output()

    @property
    def version(self) -> str:
        return str(self.lib.SSL_get_version(self.ssl).decode())

    @property
    def cipher(self) -> str:
        return str(self.lib.SSL_CIPHER_get_name(self.lib.SSL_get_current_cipher(self.ssl))
                   .decode())

    def free(self) -> None:
        if self.ssl:
            self.lib.SSL_free(self.ssl)
            self.ssl = None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--connect", required=True, help="host:port")
    ap.add_argument("--protocol", choices=["tlcp", "tls13"], required=True)
    ap.add_argument("--cipher", default="", help="TLCP cipher list / TLS 1.3 ciphersuites")
    ap.add_argument("--cafile", default="", help="SM2 CA to verify the server with")
    ap.add_argument("--verify-name", default="", help="check this name in the server cert")
    ap.add_argument("--servername", default="", help="SNI")
    ap.add_argument("--sign-cert", default="")
    ap.add_argument("--sign-key", default="")
    ap.add_argument("--enc-cert", default="")
    ap.add_argument("--enc-key", default="")
    ap.add_argument("--send", default="")
    ap.add_argument("--send-hex", default="", help="bytes to send, hex (e.g. an MQTT CONNECT)")
    ap.add_argument("--expect", type=int, default=0, help="bytes to read back")
    ap.add_argument("--repeat", type=int, default=1, help="handshakes to do (benchmark)")
    ap.add_argument("--timeout", type=float, default=10.0)
    a = ap.parse_args(argv)
    try:
        lib = load()
        ctx = make_ctx(lib, a)
        t0 = time.perf_counter()
        out = one(lib, ctx, a, True)
        for _ in range(a.repeat - 1):
            one(lib, ctx, a, False)
        if a.repeat > 1:
            out["handshakes"] = a.repeat
            out["seconds"] = time.perf_counter() - t0
        lib.SSL_CTX_free(ctx)
    except (ClientError, OSError) as exc:
        print(json.dumps({"ok": False, "error": str(exc)}))
        return 1
    print(json.dumps(out, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
