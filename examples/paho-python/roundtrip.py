#!/usr/bin/env python3
"""paho-mqtt (2.x) through tlsgate: a subscriber and a publisher, one message, MQTT 3.1.1 or 5.0.

The TLS mode follows from the options (or the environment variables in brackets):
  one-way TLS : --cafile [TLS_CAFILE]                           the CA of tlsgate's certificate
  mutual TLS  : --cafile + --cert [TLS_CERT] + --key [TLS_KEY]  the device's certificate
  TLS-PSK     : --psk-identity [PSK_IDENTITY] + --psk [PSK_KEY] the key in hex (Python >= 3.13)

Exit status: 0 the subscriber received the message, 1 it did not (the reason is printed),
3 the combination is not possible with this client (TLS-PSK on Python < 3.13).

    python examples/paho-python/roundtrip.py --port 8883 --cafile certs/ca.pem --mqtt-version 5
"""

from __future__ import annotations

import argparse
import os
import ssl
import sys
import threading
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

UNSUPPORTED = 3


def tls_context(args: argparse.Namespace) -> ssl.SSLContext:
    """The client's TLS context for the chosen mode."""
    if args.psk_identity:
        if not hasattr(ssl.SSLContext, "set_psk_client_callback"):
            print("UNSUPPORTED: TLS-PSK needs Python >= 3.13 (ssl set_psk_client_callback); "
                  f"this is {sys.version.split()[0]}", file=sys.stderr)
            sys.exit(UNSUPPORTED)
        key = bytes.fromhex(args.psk)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False          # the PSK authenticates the server, not a certificate
        ctx.verify_mode = ssl.CERT_NONE
        if args.tls_version == "1.2":
            ctx.set_ciphers("PSK")          # Python's default TLS 1.2 list has no PSK suites
        identity = args.psk_identity
        ctx.set_psk_client_callback(  # type: ignore[attr-defined,unused-ignore]
            lambda _hint: (identity, key))
    else:
        if not args.cafile:
            sys.exit("give --cafile (TLS_CAFILE), or --psk-identity and --psk")
        ctx = ssl.create_default_context(cafile=args.cafile)  # verifies chain and host name
        if args.cert:
            ctx.load_cert_chain(args.cert, args.key)
    if args.tls_version:
        version = getattr(ssl.TLSVersion, "TLSv" + args.tls_version.replace(".", "_"))
        ctx.minimum_version = ctx.maximum_version = version
    return ctx


def mode_name(args: argparse.Namespace) -> str:
    return "TLS-PSK" if args.psk_identity else "mutual TLS" if args.cert else "one-way TLS"


class Peer:
    """One paho client, connected, with its events as threading.Events."""

    def __init__(self, args: argparse.Namespace, ctx: ssl.SSLContext, suffix: str) -> None:
        protocol = mqtt.MQTTv5 if args.mqtt_version == "5" else mqtt.MQTTv311
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2,
                                  client_id=f"{args.client_id}-{suffix}", protocol=protocol)
        self.client.tls_set_context(ctx)
        if args.username:
            self.client.username_pw_set(args.username, args.password or None)
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.received = threading.Event()
        self.refusal: str | None = None
        self.payloads: list[bytes] = []
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_a: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect
        self.client.connect(args.host, args.port, keepalive=30)
        self.client.loop_start()

    def _on_connect(self, _c: Any, _u: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            self.refusal = f"CONNACK refused: {reason}"
        self.connected.set()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self.payloads.append(bytes(msg.payload))
        self.received.set()

    def _on_disconnect(self, _c: Any, _u: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if not self.connected.is_set():
            self.refusal = f"disconnected before CONNACK: {reason}"
            self.connected.set()

    def wait_connected(self, timeout: float) -> None:
        if not self.connected.wait(timeout):
            raise RuntimeError("no CONNACK within the timeout")
        if self.refusal:
            raise RuntimeError(self.refusal)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def run(args: argparse.Namespace) -> int:
    ctx = tls_context(args)
    what = f"({mode_name(args)}, MQTT {args.mqtt_version})"
    sub = pub = None
    try:
        sub = Peer(args, ctx, "sub")
        sub.wait_connected(args.timeout)
        sub.client.subscribe(args.topic, qos=1)
        if not sub.subscribed.wait(args.timeout):
            raise RuntimeError("no SUBACK within the timeout")
        pub = Peer(args, ctx, "pub")
        pub.wait_connected(args.timeout)
        info = pub.client.publish(args.topic, args.message.encode(), qos=1)
        info.wait_for_publish(args.timeout)       # PUBACK: the broker has it
        if not sub.received.wait(args.timeout):
            raise RuntimeError("the message did not arrive")
    except (OSError, RuntimeError, ValueError, ssl.SSLError) as exc:
        print(f"FAIL: {exc} {what}", file=sys.stderr)
        return 1
    finally:
        for peer in (pub, sub):
            if peer is not None:
                peer.close()
    if sub.payloads[0] != args.message.encode():
        print(f"FAIL: received {sub.payloads[0]!r}, not {args.message!r} {what}",
              file=sys.stderr)
        return 1
    print(f"OK: paho-mqtt received {args.message!r} on {args.topic!r} {what}")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--host", default=env("MQTT_HOST", "localhost"))
    ap.add_argument("--port", type=int, default=int(env("MQTT_PORT", "8883")))
    ap.add_argument("--mqtt-version", choices=["3.1.1", "5"],
                    default=env("MQTT_VERSION", "3.1.1"))
    ap.add_argument("--topic", default=env("MQTT_TOPIC", "examples/paho-python"))
    ap.add_argument("--message", default=env("MQTT_MESSAGE", "hello from paho-mqtt"))
    ap.add_argument("--client-id", default=env("MQTT_CLIENT_ID", "paho-python-example"),
                    help="-sub and -pub are appended")
    ap.add_argument("--username", default=env("MQTT_USERNAME"))
    ap.add_argument("--password", default=env("MQTT_PASSWORD"))
    ap.add_argument("--cafile", default=env("TLS_CAFILE"))
    ap.add_argument("--cert", default=env("TLS_CERT"))
    ap.add_argument("--key", default=env("TLS_KEY"))
    ap.add_argument("--psk-identity", default=env("PSK_IDENTITY"))
    ap.add_argument("--psk", default=env("PSK_KEY"), help="the PSK in hex")
    ap.add_argument("--tls-version", choices=["1.2", "1.3"], default=env("TLS_VERSION") or None)
    ap.add_argument("--timeout", type=float, default=float(env("TIMEOUT", "10")))
    args = ap.parse_args(argv)
    if args.mqtt_version not in ("3.1.1", "5"):
        ap.error("MQTT_VERSION must be 3.1.1 or 5")
    if args.psk_identity and not args.psk:
        ap.error("--psk (PSK_KEY, hex) is needed with --psk-identity")
    if args.cert and not args.key:
        ap.error("--key (TLS_KEY) is needed with --cert")
    return args


if __name__ == "__main__":
    sys.exit(run(parse_args()))
