"""Issue 9 end to end: 国密 listeners of a real `tlsgate serve`, in front of a real mosquitto.

The client is Tongsuo's own client side in a separate process (tests/gmclient.py shares no code
with tlsgate's server). It completes TLCP and RFC 8998 TLS 1.3 handshakes, verifies tlsgate's
SM2 certificate against the SM2 CA, sends an MQTT CONNECT + PUBLISH and reads the CONNACK; the
message is seen by a subscriber connected straight to mosquitto.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.clients import Sub, s_client
from tests.conftest import GateFactory, base_toml
from tests.procs import Gate, Mosquitto, free_port

gm = pytest.importorskip("tlsgate.tls.gm")
from tlsgate.mqtt import encode_connect  # noqa: E402

GMCLIENT = Path(__file__).resolve().parent.parent / "gmclient.py"


@pytest.fixture(scope="module")
def sm2(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from tlsgate.tls.gm_certs import init_sm2_dir

    try:
        gm.library_info()
    except gm.GmUnavailableError as exc:
        pytest.skip(f"Tongsuo library unavailable: {exc}")
    return init_sm2_dir(tmp_path_factory.mktemp("sm2"), clients=("dev1",))


def gm_listener(name: str, port: int, sm2: Any, extra_ssl: str = "", mqtt: str = "") -> str:
    s = sm2.server
    text = (f"[listeners.gm.{name}]\nbind = \"127.0.0.1:{port}\"\n"
            f"[listeners.gm.{name}.ssl_options]\n"
            f"sign_certfile = \"{s.sign_cert}\"\nsign_keyfile = \"{s.sign_key}\"\n"
            f"enc_certfile = \"{s.enc_cert}\"\nenc_keyfile = \"{s.enc_key}\"\n"
            f"cacertfile = \"{sm2.ca_cert}\"\nhandshake_timeout = \"3s\"\n{extra_ssl}\n")
    if mqtt:
        text += f"[listeners.gm.{name}.mqtt]\n{mqtt}\n"
    return text


@pytest.fixture(scope="module")
def gmgate(broker: Mosquitto, sm2: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    one, mutual = free_port(), free_port()
    cfg = (base_toml(broker.port) + gm_listener("one", one, sm2)
           + gm_listener("mutual", mutual, sm2,
                         extra_ssl="verify = \"verify_peer\"\nfail_if_no_peer_cert = true\n",
                         mqtt="peer_cert_as_username = \"cn\"\n"))
    g = Gate(tmp_path_factory.mktemp("gmgate"), cfg, [one, mutual]).start()
    g.one, g.mutual = one, mutual  # type: ignore[attr-defined]
    yield g
    g.stop()


def _mqtt(client_id: str, topic: str, payload: bytes) -> str:
    connect = encode_connect(protocol_level=4, client_id=client_id.encode(), keepalive=30)
    t = topic.encode()
    body = len(t).to_bytes(2, "big") + t + payload
    publish = bytes([0x30, len(body)]) + body
    return (connect + publish + b"\xe0\x00").hex()  # CONNECT, PUBLISH QoS0, DISCONNECT


def gmclient(port: int, protocol: str, sm2: Any, *, cipher: str = "", client: bool = False,
             send_hex: str = "", expect: int = 0) -> dict[str, Any]:
    args = [sys.executable, str(GMCLIENT), "--connect", f"127.0.0.1:{port}", "--protocol",
            protocol, "--cafile", str(sm2.ca_cert), "--verify-name", "localhost",
            "--servername", "localhost"]
    if cipher:
        args += ["--cipher", cipher]
    if client:
        c = sm2.clients["dev1"]
        args += ["--sign-cert", str(c.sign_cert), "--sign-key", str(c.sign_key)]
        if protocol == "tlcp":
            args += ["--enc-cert", str(c.enc_cert), "--enc-key", str(c.enc_key)]
    if send_hex:
        args += ["--send-hex", send_hex, "--expect", str(expect)]
    r = subprocess.run(args, capture_output=True, text=True, timeout=30)
    return dict(json.loads(r.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize(("protocol", "cipher"), [
    ("tlcp", "ECC-SM2-SM4-GCM-SM3"), ("tlcp", "ECC-SM2-SM4-CBC-SM3"),
    ("tls13", "TLS_SM4_GCM_SM3"), ("tls13", "TLS_SM4_CCM_SM3"),
])
def test_gm_client_publishes_through_the_gm_listener(protocol: str, cipher: str, sm2: Any,
                                                     gmgate: Gate, broker: Mosquitto) -> None:
    topic = f"gm/{protocol}/{cipher}"
    sub = Sub(broker.port, topic, broker=broker)
    out = gmclient(gmgate.one, protocol, sm2, cipher=cipher,  # type: ignore[attr-defined]
                   send_hex=_mqtt(f"gm-{cipher}", topic, b"sm4 says hi"), expect=4)
    assert out["ok"], out
    assert out["received_hex"] == "20020000"  # CONNACK accepted, from mosquitto via tlsgate
    assert out["cipher"] == cipher
    _rc, text, err = sub.wait()
    assert text.strip() == f"{topic} sm4 says hi", err
    gmgate.wait_log(rf"listener=gm:one .*tls={'TLCP|NTLS' if protocol == 'tlcp' else 'TLSv1.3'}")


@pytest.mark.parametrize(("protocol", "cipher"), [("tlcp", "ECDHE-SM2-SM4-GCM-SM3"),
                                                  ("tls13", "TLS_SM4_GCM_SM3")])
def test_mutual_gm_maps_the_sm2_cn_to_the_username(protocol: str, cipher: str, sm2: Any,
                                                   gmgate: Gate, broker: Mosquitto) -> None:
    cid = f"gm-mutual-{protocol}"
    out = gmclient(gmgate.mutual, protocol, sm2, cipher=cipher, client=True,  # type: ignore[attr-defined]
                   send_hex=_mqtt(cid, "gm/mutual", b"x"), expect=4)
    assert out["ok"], out
    assert out["received_hex"] == "20020000"
    broker.wait_log(rf"New client connected from \S+ as {cid} \(.*u'dev1'\)")


def test_gm_listener_refuses_a_client_without_certificate_when_required(
        sm2: Any, gmgate: Gate) -> None:
    out = gmclient(gmgate.mutual, "tlcp", sm2, cipher="ECC-SM2-SM4-GCM-SM3")  # type: ignore[attr-defined]
    assert not out["ok"]
    gmgate.wait_log(r"listener=gm:mutual .*reason=\"handshake failed")


@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
def test_non_gm_client_gets_a_handshake_failure_not_a_crash(version: str, sm2: Any,
                                                            gmgate: Gate, broker: Mosquitto
                                                            ) -> None:
    out = s_client(gmgate.one, version, hold=0.5).stdout.decode()  # type: ignore[attr-defined]
    assert "alert" in out or "Cipher is (NONE)" in out, out
    # still serving
    r = gmclient(gmgate.one, "tlcp", sm2, send_hex=_mqtt("after-non-gm", "gm/after", b"y"),  # type: ignore[attr-defined]
                 expect=4)
    assert r["ok"], r


def test_gm_and_tls_listeners_in_one_process(sm2: Any, pki: Any, broker: Mosquitto,
                                             make_gate: GateFactory) -> None:
    from tests.clients import mosquitto_pub, tls_args
    from tests.conftest import listener_toml

    gp, tp = free_port(), free_port()
    make_gate(base_toml(broker.port) + gm_listener("g", gp, sm2) + listener_toml("t", tp, pki),
              [gp, tp])
    for _ in range(3):
        assert gmclient(gp, "tls13", sm2, send_hex=_mqtt("mix-gm", "mix", b"1"), expect=4)["ok"]
        r = mosquitto_pub(tp, "mix", "2", *tls_args(pki.ca_pem))
        assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("protocol", ["tlcp", "tls13"])
def test_the_gm_example_publishes_by_ip_address(protocol: str, sm2: Any, gmgate: Gate,
                                                broker: Mosquitto) -> None:
    from tests.procs import REPO

    sub = Sub(broker.port, f"demo/gm-{protocol}", broker=broker)
    r = subprocess.run([sys.executable, str(REPO / "examples/gm/gm_publish.py"), "--host",
                        "127.0.0.1", "--port", str(gmgate.one), "--protocol", protocol,  # type: ignore[attr-defined]
                        "--cafile", str(sm2.ca_cert), "--topic", f"demo/gm-{protocol}",
                        "--message", "by address"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    assert sub.wait()[1].strip() == f"demo/gm-{protocol} by address"
