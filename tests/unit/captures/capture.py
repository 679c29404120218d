"""Capture the exact CONNECT bytes real MQTT clients send, as test vectors.

Run from the repository root:  ``/work/main/.venv/bin/python tests/unit/captures/capture.py``

For each client below, a one-shot TCP listener on a free loopback port accepts one connection,
reads exactly one MQTT packet (fixed header, Remaining Length, body -- decoded here on its own,
independently of tlsgate's parser) and closes the connection; the client then fails to get a
CONNACK, which is expected. The packet is written to ``<name>.hex`` in this directory with the
command line (``PORT`` stands for the listener's port) and the client's version in ``#`` comment
lines. These are protocol byte strings (no keys, no certificates); the passwords in them are
made-up test values.

``tests/e2e/test_mqtt_captures.py`` imports :func:`capture_first_packet` and the client table to
check that the clients installed today still send what the stored vectors say.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent


def read_packet(sock: socket.socket) -> bytes:
    """Read one MQTT packet (fixed header + Remaining Length + body) from ``sock``."""
    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise EOFError(f"connection closed after {len(data)} of {n} bytes")
            data += chunk
        return data

    header = exactly(1)
    length = 0
    for shift in (0, 7, 14, 21):
        byte = exactly(1)
        header += byte
        length |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            break
    return header + exactly(length)


def capture_first_packet(run_client: Callable[[int], None], timeout: float = 15.0) -> bytes:
    """Start a one-shot listener, call ``run_client(port)``, return the first packet received."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(timeout)
    port = server.getsockname()[1]
    got: dict[str, bytes | BaseException] = {}

    def serve() -> None:
        try:
            conn, _ = server.accept()
            with conn:
                conn.settimeout(timeout)
                got["packet"] = read_packet(conn)
        except BaseException as exc:  # reported to the caller below
            got["error"] = exc
        finally:
            server.close()

    thread = threading.Thread(target=serve, name="capture-listener", daemon=True)
    thread.start()
    run_client(port)
    thread.join(timeout)
    if "packet" not in got:
        raise RuntimeError(f"no packet captured: {got.get('error', 'listener timed out')!r}")
    packet = got["packet"]
    assert isinstance(packet, bytes)
    return packet


# ---------------------------------------------------------------------------------------------
# The clients
# ---------------------------------------------------------------------------------------------
MOSQUITTO_PUB: dict[str, list[str]] = {
    "mosquitto_pub_v31_will_auth": [
        "mosquitto_pub", "-V", "mqttv31", "-h", "127.0.0.1", "-p", "PORT", "-i", "cap-v31",
        "-k", "30", "-u", "alice", "-P", "pw-v31", "--will-topic", "will/v31",
        "--will-payload", "bye v31", "--will-qos", "1", "--will-retain", "-t", "t", "-m", "x"],
    "mosquitto_pub_v311_will_auth": [
        "mosquitto_pub", "-V", "mqttv311", "-h", "127.0.0.1", "-p", "PORT", "-i", "cap-v311",
        "-k", "45", "-c", "-u", "alice", "-P", "pw-v311", "--will-topic", "will/v311",
        "--will-payload", "bye v311", "--will-qos", "2", "-t", "t", "-m", "x"],
    "mosquitto_pub_v311_minimal": [
        "mosquitto_pub", "-V", "mqttv311", "-h", "127.0.0.1", "-p", "PORT", "-i", "cap-min",
        "-t", "t", "-m", "x"],
    "mosquitto_pub_v5_will_props": [
        "mosquitto_pub", "-V", "mqttv5", "-h", "127.0.0.1", "-p", "PORT", "-i", "cap-v5",
        "-k", "20", "-u", "alice", "-P", "pw-v5",
        "-D", "connect", "user-property", "a", "b",
        "-D", "connect", "session-expiry-interval", "60",
        "-D", "connect", "receive-maximum", "10",
        "--will-topic", "will/v5", "--will-payload", "bye v5", "--will-qos", "1",
        "-D", "will", "will-delay-interval", "30",
        "-D", "will", "content-type", "text/plain",
        "-D", "will", "user-property", "wk", "wv",
        "-t", "t", "-m", "x"],
}


def run_mosquitto_pub(argv: list[str]) -> Callable[[int], None]:
    def run(port: int) -> None:
        cmd = [str(port) if a == "PORT" else a for a in argv]
        # It gets no CONNACK and exits non-zero: that is expected.
        subprocess.run(cmd, capture_output=True, timeout=15, check=False)
    return run


def run_paho(name: str) -> Callable[[int], None]:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    def run(port: int) -> None:
        if name == "paho_v311_will_auth":
            c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="paho-311",
                            protocol=mqtt.MQTTv311)
            c.username_pw_set("bob", "pw-paho311")
            c.will_set("will/paho311", b"gone 311", qos=1, retain=True)
            c.connect("127.0.0.1", port, keepalive=50)
        elif name == "paho_v31":
            c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="paho-31",
                            protocol=mqtt.MQTTv31)
            c.username_pw_set("bob")
            c.connect("127.0.0.1", port, keepalive=15)
        elif name == "paho_v5_will_props":
            c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="paho-5",
                            protocol=mqtt.MQTTv5)
            c.username_pw_set("bob", "pw-paho5")
            will_props = Properties(PacketTypes.WILLMESSAGE)  # type: ignore[no-untyped-call]
            will_props.WillDelayInterval = 10
            will_props.MessageExpiryInterval = 300
            will_props.ContentType = "application/json"
            will_props.UserProperty = [("wk", "wv")]
            c.will_set("will/paho5", b'{"state":"gone"}', qos=2, retain=False,
                       properties=will_props)
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 3600
            props.ReceiveMaximum = 20
            props.MaximumPacketSize = 65536
            props.TopicAliasMaximum = 5
            props.UserProperty = [("k1", "v1"), ("k2", "v2")]
            c.connect("127.0.0.1", port, keepalive=25, clean_start=True, properties=props)
        else:
            raise KeyError(name)
        # paho sends CONNECT inside connect(); the listener has it once it closes.
        c.loop(timeout=1.0)
        c.socket() and c.disconnect()
    return run


PAHO = ["paho_v311_will_auth", "paho_v31", "paho_v5_will_props"]


def client_versions() -> dict[str, str]:
    import paho.mqtt
    out = subprocess.run(["mosquitto_pub", "--help"], capture_output=True, text=True,
                         check=False).stdout.splitlines()
    mosq = out[1].strip() if len(out) > 1 else "mosquitto_pub (unknown version)"
    return {"mosquitto": mosq, "paho": f"paho-mqtt {paho.mqtt.__version__} (Python)"}


def write_vector(name: str, packet: bytes, how: str, version: str) -> Path:
    path = HERE / f"{name}.hex"
    hexed = packet.hex()
    lines = [hexed[i:i + 64] for i in range(0, len(hexed), 64)]
    path.write_text(f"# {how}\n# client: {version}\n"
                    f"# captured by tests/unit/captures/capture.py (one-shot listener, first "
                    f"packet)\n" + "\n".join(lines) + "\n")
    return path


def load_vector(name: str) -> bytes:
    text = (HERE / f"{name}.hex").read_text()
    return bytes.fromhex("".join(line for line in text.splitlines()
                                 if not line.startswith("#")))


def main() -> int:
    versions = client_versions()
    for name, argv in MOSQUITTO_PUB.items():
        packet = capture_first_packet(run_mosquitto_pub(argv))
        print(write_vector(name, packet, " ".join(argv), versions["mosquitto"]))
    for name in PAHO:
        packet = capture_first_packet(run_paho(name))
        print(write_vector(name, packet, f"paho client {name!r} as in capture.py run_paho()",
                           versions["paho"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
