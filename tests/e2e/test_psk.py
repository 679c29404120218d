"""Issue 5 end to end: TLS-PSK through a real `tlsgate serve` to a real mosquitto.

Clients: `mosquitto_pub/sub --psk` (TLS 1.2 and 1.3; the examples/psk script itself),
`openssl s_client -psk`, and Python 3.13's `ssl` PSK callbacks (examples/psk client) when a
Python 3.13 is installed (pyenv has one on these machines).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.certkit import Pki
from tests.clients import mosquitto_pub, s_client, tls_args
from tests.conftest import GateFactory, base_toml, listener_toml
from tests.procs import REPO, Mosquitto, free_port, wait_for

KEY1 = "00112233445566778899aabbccddeeff"
KEY2 = "deadbeefdeadbeefdeadbeefdeadbeef"
TLS12_CONF = """openssl_conf = t
[t]
ssl_conf = t_ssl
[t_ssl]
system_default = t_tls
[t_tls]
MaxProtocol = TLSv1.2
"""


def psk_config(broker: int, port: int, pki: Pki, psk_file: Path, extra: str = "") -> str:
    return (base_toml(broker, extra=f"[psk_authentication]\nenable = true\n"
                                    f"init_file = \"{psk_file}\"\nformat = \"hex\"\n"
                                    "[mqtt]\npsk_identity_as_username = true\n" + extra)
            + listener_toml("p", port, pki))


@pytest.fixture
def psk_file(tmp_path: Path) -> Path:
    f = tmp_path / "psk.txt"
    f.write_text(f"# device keys\ndev1:{KEY1}\n\ndev2:{KEY2}\n")
    return f


def psk_pub(port: int, identity: str, key: str, version: str = "tlsv1.3",
            client_id: str = "psk-pub", env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mosquitto_pub", "-h", "localhost", "-p", str(port), "--psk", key,
                           "--psk-identity", identity, "--tls-version", version, "-i", client_id,
                           "-t", "t/psk", "-m", "x"], capture_output=True, text=True,
                          timeout=15, env=env)


@pytest.mark.parametrize("version", ["tlsv1.2", "tlsv1.3"])
def test_mosquitto_psk_identity_becomes_the_username(version: str, pki: Pki, broker: Mosquitto,
                                                     psk_file: Path, make_gate: GateFactory,
                                                     tmp_path: Path) -> None:
    port = free_port()
    g = make_gate(psk_config(broker.port, port, pki, psk_file), [port])
    env = dict(os.environ)
    if version == "tlsv1.2":  # mosquitto's --tls-version is a minimum: cap the client
        (tmp_path / "tls12.cnf").write_text(TLS12_CONF)
        env["OPENSSL_CONF"] = str(tmp_path / "tls12.cnf")
    cid = f"psk-{version}"
    r = psk_pub(port, "dev1", KEY1, version, cid, env)
    assert r.returncode == 0, r.stderr
    broker.wait_log(rf"New client connected from \S+ as {cid} \(.*u'dev1'\)")
    want = "TLSv1.2" if version == "tlsv1.2" else "TLSv1.3"
    g.wait_log(rf"tls={want} cipher=\S*PSK?\S* .*psk=dev1 clientid={cid}"
               if version == "tlsv1.2" else rf"tls={want} .*psk=dev1 clientid={cid}")


def test_the_psk_example_script_runs_against_tlsgate(pki: Pki, broker: Mosquitto,
                                                     make_gate: GateFactory,
                                                     tmp_path: Path) -> None:
    f = tmp_path / "emqx-psk.txt"
    f.write_text("dev1:secret-key\n")
    port = free_port()
    make_gate(base_toml(broker.port, extra=f"[psk_authentication]\nenable = true\n"
                                           f"init_file = \"{f}\"\n")
              + listener_toml("p", port, pki), [port])
    r = subprocess.run(["sh", str(REPO / "examples/psk/mosquitto_psk.sh")],
                       env={**os.environ, "PORT": str(port)}, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "subscriber got both messages" in r.stdout


@pytest.mark.parametrize("flag", ["-tls1_2", "-tls1_3"])
def test_openssl_s_client_psk(flag: str, pki: Pki, broker: Mosquitto, psk_file: Path,
                              make_gate: GateFactory) -> None:
    port = free_port()
    make_gate(psk_config(broker.port, port, pki, psk_file), [port])
    connect = bytes([0x10, 0x10, 0, 4]) + b"MQTT" + bytes([4, 0x02, 0, 60, 0, 4]) + b"sslc"
    out = s_client(port, flag, "-psk", KEY2, "-psk_identity", "dev2",
                   data=connect).stdout.decode(errors="replace")
    if flag == "-tls1_2":
        assert "Cipher is ECDHE-PSK-" in out or "Cipher is PSK-" in out, out
    else:
        assert "Cipher is TLS_AES_128_GCM_SHA256" in out, out
    # The broker saw the PSK identity as the user name:
    broker.wait_log(r"New client connected from \S+ as sslc \(.*u'dev2'\)")


def test_wrong_key_and_unknown_identity_are_refused(pki: Pki, broker: Mosquitto,
                                                    psk_file: Path,
                                                    make_gate: GateFactory) -> None:
    port = free_port()
    g = make_gate(psk_config(broker.port, port, pki, psk_file), [port])
    assert psk_pub(port, "dev1", KEY2).returncode != 0  # dev2's key
    assert psk_pub(port, "nobody", KEY1).returncode != 0
    g.wait_log(r"unknown identity 'nobody'")
    assert KEY1 not in g.log_text() and KEY2 not in g.log_text()


def test_certificate_clients_share_the_listener(pki: Pki, broker: Mosquitto, psk_file: Path,
                                                make_gate: GateFactory) -> None:
    port = free_port()
    make_gate(psk_config(broker.port, port, pki, psk_file), [port])
    for flag in ("-tls1_2", "-tls1_3"):
        out = s_client(port, flag, "-CAfile", str(pki.ca_pem), hold=0.3).stdout.decode()
        assert "Verification: OK" in out or "Verify return code: 0 (ok)" in out, out
    r = mosquitto_pub(port, "t/cert", "x", *tls_args(pki.ca_pem))
    assert r.returncode == 0, r.stderr
    assert psk_pub(port, "dev1", KEY1).returncode == 0


def test_reload_removes_an_identity_and_keeps_live_clients(pki: Pki, broker: Mosquitto,
                                                          psk_file: Path,
                                                          make_gate: GateFactory) -> None:
    port = free_port()
    g = make_gate(psk_config(broker.port, port, pki, psk_file), [port])
    sub = subprocess.Popen(["mosquitto_sub", "-h", "localhost", "-p", str(port), "--psk", KEY2,
                            "--psk-identity", "dev2", "-t", "t/live", "-C", "1", "-W", "20",
                            "-i", "live-dev2"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    broker.wait_log(r"New client connected from \S+ as live-dev2 .*u'dev2'")
    broker.wait_log(r"live-dev2 0 t/live")  # subscribed
    psk_file.write_text(f"dev1:{KEY1}\n")  # dev2 removed
    line = g.reload()
    assert "reload done" in line and "1 removed" in line, line
    assert psk_pub(port, "dev2", KEY2, client_id="after-removal").returncode != 0
    assert psk_pub(port, "dev1", KEY1, client_id="still-there").returncode == 0
    # the already connected dev2 subscriber is still up and gets a message
    r = mosquitto_pub(broker.port, "t/live", "still subscribed")
    assert r.returncode == 0
    out, err = sub.communicate(timeout=20)
    assert out.strip() == "still subscribed", err


def test_bad_psk_file_on_reload_keeps_the_old_table(pki: Pki, broker: Mosquitto,
                                                    psk_file: Path,
                                                    make_gate: GateFactory) -> None:
    port = free_port()
    g = make_gate(psk_config(broker.port, port, pki, psk_file), [port])
    psk_file.write_text(f"dev1:{KEY1}\nthis line has no separator\n")
    line = g.reload()
    assert "reload failed" in line and f"{psk_file}:2" in line, line
    assert psk_pub(port, "dev2", KEY2).returncode == 0  # the old table still serves


def test_malformed_psk_file_is_a_start_error_naming_file_and_line(pki: Pki, tmp_path: Path
                                                                   ) -> None:
    import sys

    bad = tmp_path / "bad.txt"
    bad.write_text(f"dev1:{KEY1}\ndev2:not-hex\n")
    cfg = tmp_path / "t.toml"
    cfg.write_text(psk_config(1883, free_port(), pki, bad))
    r = subprocess.run([sys.executable, "-m", "tlsgate", "check-config", "-c", str(cfg)],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2
    assert f"{bad}:2" in r.stderr and "not-hex" not in r.stderr, r.stderr


def _python313() -> str | None:
    """A Python 3.13 interpreter (pyenv's shim may exist without the version being active)."""
    for cand in [*sorted(Path("/root/.pyenv/versions").glob("3.13*/bin/python3")),
                 shutil.which("python3.13")]:
        if cand and subprocess.run([str(cand), "-c", "import ssl; ssl.HAS_PSK or exit(1)"],
                                   capture_output=True).returncode == 0:
            return str(cand)
    return None


PY313 = _python313()


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_python_313_ssl_psk_client(version: str, pki: Pki, broker: Mosquitto, psk_file: Path,
                                   make_gate: GateFactory) -> None:
    if PY313 is None:
        pytest.skip("no Python 3.13 here (stdlib ssl PSK needs 3.13)")
    port = free_port()
    make_gate(psk_config(broker.port, port, pki, psk_file), [port])
    r = subprocess.run([PY313, str(REPO / "examples/psk/python_psk_client.py"), "--port",
                        str(port), "--identity", "dev1", "--psk", KEY1, "--tls-version",
                        version, "--client-id", f"py313-{version}"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    broker.wait_log(rf"as py313-{version} \(.*u'dev1'\)")


def test_psk_added_through_the_admin_api_works_for_the_next_client(
        pki: Pki, broker: Mosquitto, psk_file: Path, make_gate: GateFactory) -> None:
    import json
    import urllib.request

    port, api = free_port(), free_port()
    cfg = psk_config(broker.port, port, pki, psk_file).replace(
        "[dashboard]\nenable = false\n",
        f"[dashboard]\nenable = true\nlisten = \"127.0.0.1:{api}\"\ntoken = \"t0k3n\"\n")
    g = make_gate(cfg, [port, api])
    key3 = "0123456789abcdef0123456789abcdef"
    assert psk_pub(port, "dev3", key3).returncode != 0

    def call(method: str, path: str, body: Any = None) -> Any:
        req = urllib.request.Request(f"http://127.0.0.1:{api}{path}", method=method,
                                     data=json.dumps(body).encode() if body else None,
                                     headers={"Authorization": "Bearer t0k3n",
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read() or b"null")

    call("POST", "/api/v1/psk", {"identity": "dev3", "secret": key3})
    listed = call("GET", "/api/v1/psk")
    assert "dev3" in json.dumps(listed) and key3 not in json.dumps(listed)
    wait_for(lambda: psk_pub(port, "dev3", key3).returncode == 0, 10, "dev3 accepted")
    call("DELETE", "/api/v1/psk/dev1")
    wait_for(lambda: psk_pub(port, "dev1", KEY1).returncode != 0, 10, "dev1 refused")
    # API changes survive a file reload (the overlay is kept)
    assert "reload done" in g.reload()
    assert psk_pub(port, "dev3", key3).returncode == 0
    assert psk_pub(port, "dev1", KEY1).returncode != 0
    assert key3 not in g.log_text()
