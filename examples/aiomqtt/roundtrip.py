#!/usr/bin/env python3
"""aiomqtt (asyncio) through tlsgate: a subscriber and a publisher, one message, MQTT 3.1.1 or 5.0.

The TLS mode follows from the options (or the environment variables in brackets):
  one-way TLS : --cafile [TLS_CAFILE]                           the CA of tlsgate's certificate
  mutual TLS  : --cafile + --cert [TLS_CERT] + --key [TLS_KEY]  the device's certificate
  TLS-PSK     : --psk-identity [PSK_IDENTITY] + --psk [PSK_KEY] the key in hex (Python >= 3.13)

aiomqtt takes a ready ``ssl.SSLContext`` (``tls_context=``), so every mode is a matter of building
that context. Exit status: 0 the subscriber received the message, 1 it did not (the reason is
printed), 3 the combination is not possible with this client (TLS-PSK on Python < 3.13).

    python examples/aiomqtt/roundtrip.py --port 8884 --cafile certs/ca.pem \\
        --cert certs/client.pem --key certs/client.key
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import sys

import aiomqtt

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


def client(args: argparse.Namespace, ctx: ssl.SSLContext, suffix: str) -> aiomqtt.Client:
    protocol = (aiomqtt.ProtocolVersion.V5 if args.mqtt_version == "5"
                else aiomqtt.ProtocolVersion.V311)
    return aiomqtt.Client(args.host, args.port, identifier=f"{args.client_id}-{suffix}",
                          protocol=protocol, tls_context=ctx, username=args.username,
                          password=args.password, timeout=args.timeout)


async def roundtrip(args: argparse.Namespace) -> bytes:
    ctx = tls_context(args)
    async with client(args, ctx, "sub") as sub:
        await sub.subscribe(args.topic, qos=1)          # returns after the SUBACK
        async with client(args, ctx, "pub") as pub:
            await pub.publish(args.topic, args.message.encode(), qos=1)  # after the PUBACK
        async with asyncio.timeout(args.timeout):
            async for message in sub.messages:
                payload = message.payload
                assert isinstance(payload, bytes)
                return payload
    raise RuntimeError("the subscription ended without a message")


def run(args: argparse.Namespace) -> int:
    mode = "TLS-PSK" if args.psk_identity else "mutual TLS" if args.cert else "one-way TLS"
    what = f"({mode}, MQTT {args.mqtt_version})"
    try:
        payload = asyncio.run(roundtrip(args))
    except TimeoutError:
        print(f"FAIL: the message did not arrive within {args.timeout}s {what}", file=sys.stderr)
        return 1
    except (aiomqtt.MqttError, OSError, RuntimeError) as exc:
        print(f"FAIL: {exc} {what}", file=sys.stderr)
        return 1
    if payload != args.message.encode():
        print(f"FAIL: received {payload!r}, not {args.message!r} {what}", file=sys.stderr)
        return 1
    print(f"OK: aiomqtt received {args.message!r} on {args.topic!r} {what}")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--host", default=env("MQTT_HOST", "localhost"))
    ap.add_argument("--port", type=int, default=int(env("MQTT_PORT", "8883")))
    ap.add_argument("--mqtt-version", choices=["3.1.1", "5"],
                    default=env("MQTT_VERSION", "3.1.1"))
    ap.add_argument("--topic", default=env("MQTT_TOPIC", "examples/aiomqtt"))
    ap.add_argument("--message", default=env("MQTT_MESSAGE", "hello from aiomqtt"))
    ap.add_argument("--client-id", default=env("MQTT_CLIENT_ID", "aiomqtt-example"),
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
