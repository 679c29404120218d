"""Real MQTT clients against the codec, both ways.

1. The clients installed here still send what the stored vectors in tests/unit/captures/ say
   (captured live through a one-shot listener, parsed with tlsgate's parser).
2. Rewritten CONNECTs (new user name and client id, every other byte kept) are accepted by a
   real mosquitto broker, whose log shows the user name it got.
3. The CONNACKs tlsgate encodes are read by real clients as the refusal they mean: a one-shot
   server parses the client's CONNECT with ``parse_connect`` and answers with ``encode_connack``
   for the client's version; the code is read from the client (mosquitto_pub's exit status is
   the CONNACK code; paho-mqtt's on_connect), not from tlsgate.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

import pytest
from paho.mqtt.enums import MQTTProtocolVersion

from tlsgate.mqtt.connack import connack_code, decode_connack, encode_connack
from tlsgate.mqtt.connect import Connect, parse_connect, rewrite_connect
from tlsgate.mqtt.errors import Refusal

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "captures"))
import capture

from tests.procs import Mosquitto

MOSQUITTO_PUB = shutil.which("mosquitto_pub")
MOSQUITTO = shutil.which("mosquitto") or (
    "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
needs_mosquitto_pub = pytest.mark.skipif(MOSQUITTO_PUB is None,
                                         reason="mosquitto_pub is not installed "
                                                "(apt-get install mosquitto-clients)")


def fields(c: Connect) -> tuple[Any, ...]:
    return (c.protocol_name, c.protocol_level, c.flags, c.keepalive, c.client_id, c.username,
            c.password, c.will_topic, c.will_payload, sorted(map(repr, c.property_list())),
            sorted(map(repr, c.will_property_list())))


def parsed(data: bytes) -> Connect:
    got = parse_connect(data, 65536)
    assert got is not None and got[1] == len(data)
    return got[0]


@needs_mosquitto_pub
@pytest.mark.parametrize("name", sorted(capture.MOSQUITTO_PUB))
def test_mosquitto_pub_matches_stored_vector(name: str) -> None:
    live = capture.capture_first_packet(capture.run_mosquitto_pub(capture.MOSQUITTO_PUB[name]))
    assert fields(parsed(live)) == fields(parsed(capture.load_vector(name)))


@pytest.mark.parametrize("name", capture.PAHO)
def test_paho_matches_stored_vector(name: str) -> None:
    live = capture.capture_first_packet(capture.run_paho(name))
    assert fields(parsed(live)) == fields(parsed(capture.load_vector(name)))


# ---------------------------------------------------------------------------------------------
# A real broker accepts rewritten CONNECTs
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mosquitto(broker: Mosquitto) -> Mosquitto:
    """The shared real broker of the e2e tests (tests/conftest.py), `log_type all`."""
    return broker


@pytest.mark.parametrize("name", sorted([*capture.MOSQUITTO_PUB, *capture.PAHO]))
def test_mosquitto_accepts_rewritten_capture(mosquitto: Mosquitto, name: str) -> None:
    original = parsed(capture.load_vector(name))
    username = f"CN=device-{name},O=Acme"
    client_id = f"rw-{name}"
    packet = rewrite_connect(original, username=username.encode(),
                             client_id=client_id.encode())
    with socket.create_connection(("127.0.0.1", mosquitto.port), timeout=5) as conn:
        conn.sendall(packet)
        data = b""
        while (got := decode_connack(data)) is None:
            chunk = conn.recv(1024)
            assert chunk, f"mosquitto closed without CONNACK; log:\n" \
                          f"{mosquitto.log_text()[-1500:]}"
            data += chunk
    assert got[0].code == 0
    # mosquitto's log: "New client connected from ... as <id> (p<protocol>, c<clean>,
    # k<keepalive>, u'<username>')" -- the identity the broker got, with version, clean start
    # and keepalive kept. p is mosquitto's own enum: 1 = 3.1, 2 = 3.1.1, 5 = 5.0.
    mosq_protocol = {3: 1, 4: 2, 5: 5}[original.protocol_level]
    line = f"as {client_id} (p{mosq_protocol}, c{int(original.clean_start)}, " \
           f"k{original.keepalive}, u'{username}')"
    mosquitto.wait_log(re.escape(line))
    if original.will:
        will = (f"Will message specified ({len(original.will_payload or b'')} bytes) "
                f"(r{int(original.will_retain)}, q{original.will_qos}).")
        mosquitto.wait_log(re.escape(will))


# ---------------------------------------------------------------------------------------------
# Real clients read tlsgate's CONNACKs
# ---------------------------------------------------------------------------------------------
REFUSALS = [Refusal.SERVER_UNAVAILABLE, Refusal.SERVER_BUSY, Refusal.BAD_CREDENTIALS,
            Refusal.NOT_AUTHORIZED, Refusal.QUOTA_EXCEEDED, Refusal.RATE_EXCEEDED,
            Refusal.BANNED, Refusal.UNSUPPORTED_VERSION, Refusal.CLIENTID_INVALID]


class OneShotBroker:
    """Accept ``clients`` connections in turn; parse each CONNECT with tlsgate and answer with
    tlsgate's CONNACK for the client's version."""

    def __init__(self, refusal: Refusal, reason: str | None = None, clients: int = 1) -> None:
        self.refusal = refusal
        self.reason = reason
        self.clients = clients
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(15)
        self.port = int(self.server.getsockname()[1])
        self.connects: list[Connect] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._serve, name="one-shot-broker", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            for _ in range(self.clients):
                conn, _ = self.server.accept()
                with conn:
                    conn.settimeout(15)
                    buf = bytearray()
                    while (got := parse_connect(buf, 65536)) is None:
                        chunk = conn.recv(4096)
                        if not chunk:
                            raise EOFError("client closed before a whole CONNECT")
                        buf += chunk
                    self.connects.append(got[0])
                    conn.sendall(encode_connack(got[0].protocol_level, self.refusal,
                                                reason_string=self.reason))
        except BaseException as exc:  # reported by finish()
            self.error = exc
        finally:
            self.server.close()

    def finish(self) -> Connect:
        self.thread.join(15)
        assert self.error is None, self.error
        assert len(self.connects) == self.clients
        return self.connects[0]


@needs_mosquitto_pub
@pytest.mark.parametrize("refusal", REFUSALS, ids=lambda r: r.name)
@pytest.mark.parametrize(("version", "level"), [("mqttv31", 3), ("mqttv311", 4), ("mqttv5", 5)])
def test_mosquitto_pub_reads_our_connack(version: str, level: int, refusal: Refusal) -> None:
    broker = OneShotBroker(refusal, reason="refused by tlsgate test")
    assert MOSQUITTO_PUB is not None
    proc = subprocess.run([MOSQUITTO_PUB, "-V", version, "-h", "127.0.0.1", "-p",
                           str(broker.port), "-i", "refusal-test", "-t", "t", "-m", "x"],
                          capture_output=True, text=True, timeout=15, check=False)
    connect = broker.finish()
    assert connect.protocol_level == level
    # mosquitto_pub exits with the CONNACK code it received.
    assert proc.returncode == connack_code(level, refusal), proc.stdout + proc.stderr
    assert "Connection error" in proc.stdout + proc.stderr


def paho_connect(port: int, protocol: MQTTProtocolVersion) -> dict[str, Any]:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    got: dict[str, Any] = {}
    if protocol == mqtt.MQTTv5:
        def on_connect5(client: Any, userdata: Any, flags: Any, reason_code: Any,
                        properties: Any) -> None:
            got["code"] = reason_code.value
            got["reason_string"] = getattr(properties, "ReasonString", None)
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="paho-refusal",
                        protocol=protocol)
        c.on_connect = on_connect5
    else:
        def on_connect3(client: Any, userdata: Any, flags: Any, rc: int) -> None:
            got["code"] = rc
        with warnings.catch_warnings():
            # The VERSION1 callback API hands over the raw 3.x return code (VERSION2 converts
            # it to an MQTT 5 reason code), which is what this test wants to read.
            warnings.simplefilter("ignore", DeprecationWarning)
            c = mqtt.Client(CallbackAPIVersion.VERSION1, client_id="paho-refusal",
                            protocol=protocol)
        c.on_connect = on_connect3
    c.connect("127.0.0.1", port, keepalive=30)
    for _ in range(50):
        c.loop(timeout=0.1)
        if got:
            break
    c.disconnect()
    return got


@pytest.mark.parametrize("refusal", REFUSALS, ids=lambda r: r.name)
@pytest.mark.parametrize("level", [3, 4, 5])
def test_paho_reads_our_connack(level: int, refusal: Refusal) -> None:
    import paho.mqtt.client as mqtt

    protocol = {3: mqtt.MQTTv31, 4: mqtt.MQTTv311, 5: mqtt.MQTTv5}[level]
    # paho answers "unacceptable protocol version" to its 3.1.1 CONNECT by reconnecting with
    # MQTT 3.1 (and then reports the second CONNACK): serve both.
    downgrade = level == 4 and refusal is Refusal.UNSUPPORTED_VERSION
    broker = OneShotBroker(refusal, reason=f"tlsgate says {refusal.value}",
                           clients=2 if downgrade else 1)
    got = paho_connect(broker.port, protocol)
    connect = broker.finish()
    assert connect.protocol_level == level and connect.client_id == b"paho-refusal"
    if downgrade:
        assert broker.connects[1].protocol_level == 3
    assert got.get("code") == connack_code(level, refusal)
    if level == 5:
        # The Reason String property reached the client intact.
        assert got.get("reason_string") == f"tlsgate says {refusal.value}"
