"""Real MQTT/TLS clients for tests: mosquitto_pub/sub, openssl s_client, paho-mqtt, and a raw
MQTT client on the stdlib ``ssl`` module (:func:`mqtt_over_tls`)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest


def need(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed (.ci/run installs it)")


def tls_args(ca: Path, cert: Path | None = None, key: Path | None = None) -> list[str]:
    args = ["--cafile", str(ca)]
    if cert is not None and key is not None:
        args += ["--cert", str(cert), "--key", str(key)]
    return args


def mosquitto_pub(port: int, topic: str, message: str, *extra: str,
                  timeout: float = 15.0) -> subprocess.CompletedProcess[str]:
    need("mosquitto_pub")
    return subprocess.run(["mosquitto_pub", "-h", "localhost", "-p", str(port), "-t", topic,
                           "-m", message, *extra], capture_output=True, text=True,
                          timeout=timeout)


class Sub:
    """mosquitto_sub in the background; ``wait(n)`` returns the first n lines.

    With ``broker`` (the mosquitto the subscription reaches, directly or through tlsgate) the
    constructor returns once the broker has sent the SUBACK, so a publish that follows cannot
    overtake the subscription (a fixed sleep could, on a slow machine)."""

    def __init__(self, port: int, topic: str, *extra: str, count: int = 1,
                 wait_s: float = 10.0, broker: Any = None) -> None:
        need("mosquitto_sub")
        if broker is not None and "-i" not in extra:
            extra = (*extra, "-i", f"sub-{os.urandom(4).hex()}")
        self.proc = subprocess.Popen(
            ["mosquitto_sub", "-h", "localhost", "-p", str(port), "-t", topic, "-v",
             "-C", str(count), "-W", str(int(wait_s)), *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if broker is not None:
            cid = extra[extra.index("-i") + 1]
            try:
                broker.wait_log(rf"Sending SUBACK to {re.escape(cid)}\b", timeout=15)
            except BaseException:
                self.proc.kill()
                raise

    def wait(self, timeout: float = 15.0) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, err


def s_client(port: int, *args: str, data: bytes = b"", hold: float = 1.0,
             timeout: float = 15.0) -> subprocess.CompletedProcess[bytes]:
    """`openssl s_client` against 127.0.0.1:port; stdout+stderr in .stdout.

    stdin stays open ``hold`` seconds after ``data`` so that s_client reads what the server
    answers (a TLS 1.3 server's alert about the client certificate comes after the client's
    Finished; with stdin closed at once, s_client would quit before reading it).
    """
    need("openssl")
    proc = subprocess.Popen(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", *args],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    assert proc.stdin is not None
    try:
        proc.stdin.write(data)
        proc.stdin.flush()
    except BrokenPipeError:
        pass
    deadline = time.monotonic() + hold
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    out, _ = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, b"")


@dataclass
class PahoResult:
    rc: Any = None
    reason: Any = None
    connected: threading.Event = field(default_factory=threading.Event)
    disconnected: threading.Event = field(default_factory=threading.Event)
    messages: list[tuple[str, bytes]] = field(default_factory=list)


def paho_client(port: int, ca: Path, *, cert: Path | None = None, key: Path | None = None,
                client_id: str = "", protocol: int = mqtt.MQTTv311,
                username: str | None = None, password: str | None = None,
                tls_version: int | None = None) -> tuple[mqtt.Client, PahoResult]:
    """A paho-mqtt client over TLS, connected (or refused) when this returns."""
    res = PahoResult()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)
    ctx = ssl.create_default_context(cafile=str(ca))
    if cert is not None and key is not None:
        ctx.load_cert_chain(str(cert), str(key))
    if tls_version is not None:
        ctx.minimum_version = ctx.maximum_version = tls_version  # type: ignore[assignment]
    c.tls_set_context(ctx)
    if username is not None:
        c.username_pw_set(username, password)

    def on_connect(_c: Any, _u: Any, _f: Any, rc: Any, _p: Any = None) -> None:
        res.rc = rc
        res.connected.set()

    def on_disconnect(_c: Any, _u: Any, _f: Any, rc: Any, _p: Any = None) -> None:
        res.reason = rc
        res.disconnected.set()
        res.connected.set()

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        res.messages.append((msg.topic, msg.payload))

    c.on_connect = on_connect
    c.on_disconnect = on_disconnect
    c.on_message = on_message
    c.connect("localhost", port, keepalive=30)
    c.loop_start()
    res.connected.wait(10)
    return c, res


def connack_code(rc: Any) -> int:
    """paho's ReasonCode (v5) or int (v3) -> the number on the wire."""
    value = getattr(rc, "value", rc)
    return int(value)


def server_cert_serial(port: int, ca: Path) -> int:
    """The serial number of the certificate a TLS server on 127.0.0.1:port presents."""
    import socket as _socket

    from cryptography import x509

    ctx = ssl.create_default_context(cafile=str(ca))
    with _socket.create_connection(("127.0.0.1", port)) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def mqtt_over_tls(port: int, ctx: ssl.SSLContext, client_id: str,
                  session: ssl.SSLSession | None = None) -> ssl.SSLSocket:
    """A raw MQTT 3.1.1 client on the stdlib ``ssl`` module (TLS session control that paho does
    not give): connects, sends CONNECT (clean session, keepalive 60 s), asserts the CONNACK
    accepted it, and returns the open socket. TLS 1.3 session tickets travel with the CONNACK,
    so ``sock.session`` holds one from here on."""
    tls = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)),
                          server_hostname="localhost", session=session)
    c = client_id.encode()
    tls.sendall(bytes([0x10, 12 + len(c), 0, 4]) + b"MQTT" + bytes([4, 0x02, 0, 60, 0, len(c)])
                + c)
    assert tls.recv(4) == b"\x20\x02\x00\x00", client_id
    return tls
