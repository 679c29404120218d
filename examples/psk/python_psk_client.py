#!/usr/bin/env python3
"""Publish one MQTT message to tlsgate over TLS-PSK with nothing but the standard library.

Needs Python >= 3.13 (``ssl.SSLContext.set_psk_client_callback``). Speaks MQTT 3.1.1 itself:
CONNECT, wait for CONNACK, PUBLISH (QoS 0), DISCONNECT — so it shows exactly what a PSK device
does, with no MQTT library in between.

    python3.13 python_psk_client.py --identity dev1 --psk 7365637265742d6b6579 \\
        --host localhost --port 8883 --topic demo/psk --message hello --tls-version 1.3

``--psk`` is the key in hex, as mosquitto and ``openssl s_client -psk`` take it. For a tlsgate
PSK file in ``format = "emqx"`` the key is the secret's bytes, so ``dev1:secret-key`` is
``--psk $(printf %s secret-key | xxd -p)``; for ``format = "hex"`` it is the hex from the file.

With paho-mqtt (2.x) the same context works: ``client.tls_set_context(make_context(...))``
— paho takes any ``SSLContext`` and, since ``check_hostname`` is off, does not try to match a
certificate that a PSK handshake does not have. This script avoids the dependency so it runs on
a bare Python 3.13.
"""

from __future__ import annotations

import argparse
import socket
import ssl
import struct
import sys


def _utf8(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("!H", len(b)) + b


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _packet(first_byte: int, body: bytes) -> bytes:
    return bytes([first_byte]) + _remaining_length(len(body)) + body


def connect_packet(client_id: str, username: str | None, keepalive: int = 30) -> bytes:
    flags = 0x02  # clean session
    payload = _utf8(client_id)
    if username is not None:
        flags |= 0x80
        payload += _utf8(username)
    variable = _utf8("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive)
    return _packet(0x10, variable + payload)


def publish_packet(topic: str, message: bytes) -> bytes:
    return _packet(0x30, _utf8(topic) + message)


def _recv_exact(sock: ssl.SSLSocket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("server closed the connection")
        buf += chunk
    return buf


CONNACK_CODES = {
    1: "unacceptable protocol version", 2: "identifier rejected", 3: "server unavailable",
    4: "bad user name or password", 5: "not authorised",
}


def make_context(identity: str, key: bytes, tls_version: str) -> ssl.SSLContext:
    if not hasattr(ssl.SSLContext, "set_psk_client_callback"):
        sys.exit("this needs Python >= 3.13 (ssl.SSLContext.set_psk_client_callback)")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # The server is authenticated by the PSK, not by a certificate.
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if tls_version == "1.2":
        ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        # Python's default TLS 1.2 cipher string has no plain PSK suites: ask for PSK only,
        # so a listener that also has a certificate cannot pick a certificate suite.
        ctx.set_ciphers("PSK")
    else:
        ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_3
        # TLS 1.3 external PSKs are SHA-256 PSKs (RFC 8446 default): offer SHA-256 suites.
        # (TLS 1.3 suites are set with set_ciphersuites in OpenSSL; Python only exposes the
        # defaults, which include TLS_AES_128_GCM_SHA256 — tlsgate prefers it.)
    # Called with the server's identity hint (None for TLS 1.3); returns (identity, key).
    ctx.set_psk_client_callback(  # type: ignore[attr-defined,unused-ignore]
        lambda _hint: (identity, key))
    return ctx


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="localhost")
    ap.add_argument("--port", type=int, default=8883)
    ap.add_argument("--identity", required=True, help="PSK identity")
    ap.add_argument("--psk", required=True, help="the key in hex (no 0x)")
    ap.add_argument("--tls-version", choices=["1.2", "1.3"], default="1.3")
    ap.add_argument("--topic", default="demo/psk")
    ap.add_argument("--message", default="hello over TLS-PSK")
    ap.add_argument("--client-id", default="psk-example")
    ap.add_argument("--username", default=None,
                    help="CONNECT user name (tlsgate's psk_identity_as_username replaces it)")
    ap.add_argument("--timeout", type=float, default=10.0)
    args = ap.parse_args(argv)
    try:
        key = bytes.fromhex(args.psk)
    except ValueError:
        ap.error("--psk must be hex digits")

    ctx = make_context(args.identity, key, args.tls_version)
    try:
        return publish(ctx, args)
    except ssl.SSLError as exc:
        # Unknown identity, wrong key, no common suite: the server ends the handshake.
        print(f"TLS handshake refused: {exc.reason or exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"cannot talk to {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1


def publish(ctx: ssl.SSLContext, args: argparse.Namespace) -> int:
    with socket.create_connection((args.host, args.port), timeout=args.timeout) as raw, \
            ctx.wrap_socket(raw, server_hostname=None) as tls:
        cipher = tls.cipher()
        print(f"TLS: {tls.version()} {cipher[0] if cipher else '?'}", flush=True)
        tls.sendall(connect_packet(args.client_id, args.username))
        connack = _recv_exact(tls, 4)
        if connack[0] != 0x20:
            print(f"expected CONNACK, got packet type {connack[0] >> 4}", file=sys.stderr)
            return 2
        if connack[3] != 0:
            print(f"CONNACK refused: {CONNACK_CODES.get(connack[3], connack[3])}",
                  file=sys.stderr)
            return 3
        tls.sendall(publish_packet(args.topic, args.message.encode("utf-8")))
        tls.sendall(b"\xe0\x00")  # DISCONNECT
        print(f"published {args.message!r} to {args.topic!r}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
