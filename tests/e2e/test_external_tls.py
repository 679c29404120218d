"""Issue 6 end to end: tlsgate calling out over TLS.

* HTTP authentication over HTTPS: a real aiohttp HTTPS server (tests/authserver.py) on loopback,
  with a certificate from the test CA, optionally requiring a client certificate; every case is
  read from the MQTT client (paho v3.1.1 through mosquitto_pub's exit status, paho v5's reason
  code).
* TLS to the broker: mosquitto's own TLS listener with `require_certificate true` behind
  tlsgate's `[upstreams.<name>.ssl]`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from tests.authserver import AuthServer
from tests.certkit import Pki
from tests.clients import Sub, connack_code, mosquitto_pub, paho_client, tls_args
from tests.conftest import GateFactory, base_toml, listener_toml
from tests.loopthread import LoopThread
from tests.procs import Mosquitto, free_port


class ThreadedAuthServer:
    """tests/authserver.AuthServer on a background loop (tlsgate runs in another process; the
    test drives clients synchronously)."""

    def __init__(self, tls: Any) -> None:
        self.lt = LoopThread()
        self.srv = self.lt.run(AuthServer(tls).start())

    @property
    def port(self) -> int:
        return self.srv.port

    def stop(self) -> None:
        self.lt.run(self.srv.stop())
        self.lt.close()


@pytest.fixture(scope="module")
def authsrv(pki: Pki) -> Iterator[ThreadedAuthServer]:
    s = ThreadedAuthServer(pki.server_context(require_client_cert=False))
    s.srv.decisions.update({"alice": "allow", "mallory": "deny", "eve": "bad_credentials",
                            "ignored": "ignore", "broken": "500", "slow": "hang"})
    yield s
    s.stop()


BODY = ('{ username = "${username}", password = "${password}", clientid = "${clientid}", '
        'cn = "${cert_common_name}" }')


def auth_toml(url: str, pki: Pki, *, extra: str = "", ssl_extra: str = "") -> str:
    return f"""
[authentication]
backend = "http"
method = "post"
url = "{url}"
body = {BODY}
request_timeout = "1s"
{extra}
[authentication.ssl]
enable = true
cacertfile = "{pki.ca_pem}"
verify = "verify_peer"
{ssl_extra}
"""


@pytest.fixture(scope="module")
def authgate(authsrv: ThreadedAuthServer, broker: Mosquitto, pki: Pki,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tests.procs import Gate

    port = free_port()
    cfg = (base_toml(broker.port) + listener_toml("a", port, pki)
           + auth_toml(f"https://localhost:{authsrv.port}/auth", pki))
    g = Gate(tmp_path_factory.mktemp("authgate"), cfg, [port]).start()
    g.port = port  # type: ignore[attr-defined]
    yield g
    g.stop()


def pub311(port: int, pki: Pki, user: str, password: str = "pw") -> int:
    r = mosquitto_pub(port, "t/auth", "x", "-V", "mqttv311", "-i", f"c-{user}", "-u", user,
                      "-P", password, *tls_args(pki.ca_pem))
    return r.returncode


def paho5(port: int, pki: Pki, user: str, password: str = "pw") -> int:
    c, res = paho_client(port, pki.ca_pem, client_id=f"v5-{user}", protocol=mqtt.MQTTv5,
                         username=user, password=password)
    try:
        assert res.connected.wait(10)
        return connack_code(res.rc)
    finally:
        c.disconnect()
        c.loop_stop()


@pytest.mark.parametrize(("user", "v311", "v5"), [
    ("alice", 0x00, 0x00),        # allow
    ("mallory", 0x05, 0x87),      # deny -> not authorised
    ("eve", 0x04, 0x86),          # deny, reason bad_username_or_password
    ("ignored", 0x00, 0x00),      # ignore -> on_ignore = allow: the broker decides
    ("broken", 0x00, 0x00),       # 500 -> ignore
])
def test_http_auth_decisions_reach_the_client(user: str, v311: int, v5: int, authgate: Any,
                                              authsrv: ThreadedAuthServer, pki: Pki) -> None:
    assert pub311(authgate.port, pki, user) == v311
    assert paho5(authgate.port, pki, user) == v5
    seen = [r for r in authsrv.srv.requests if r.username == user]
    assert seen, "the auth server was not asked"
    body = seen[-1].json
    assert body["password"] == "pw" and body["clientid"] in (f"c-{user}", f"v5-{user}")


def test_auth_server_that_hangs_is_an_error_then_on_error_deny(authgate: Any, pki: Pki) -> None:
    t0 = time.monotonic()
    assert paho5(authgate.port, pki, "slow") == 0x88  # server unavailable: retry later
    assert time.monotonic() - t0 < 6
    assert pub311(authgate.port, pki, "slow") == 0x03


def test_password_never_reaches_the_log(authgate: Any, pki: Pki) -> None:
    pub311(authgate.port, pki, "mallory", password="s3cr3t-pa55")
    authgate.wait_log(r"refused: authentication: deny")
    assert "s3cr3t-pa55" not in authgate.log_text()


def test_auth_server_down_follows_on_error(pki: Pki, broker: Mosquitto,
                                           make_gate: GateFactory) -> None:
    port = free_port()
    dead = free_port()
    cfg = (base_toml(broker.port) + listener_toml("a", port, pki)
           + auth_toml(f"https://localhost:{dead}/auth", pki, extra="on_error = \"allow\"\n"))
    make_gate(cfg, [port])
    assert pub311(port, pki, "anyone") == 0  # on_error = allow: the broker decides


def test_auth_server_name_mismatch_is_refused_when_verifying(
        authsrv: ThreadedAuthServer, pki: Pki, broker: Mosquitto,
        make_gate: GateFactory) -> None:
    port = free_port()
    cfg = (base_toml(broker.port) + listener_toml("a", port, pki)
           + auth_toml(f"https://localhost:{authsrv.port}/auth", pki,
                       ssl_extra="server_name_indication = \"auth.example.org\"\n"))
    g = make_gate(cfg, [port])
    assert paho5(port, pki, "alice") == 0x88  # TLS to the auth server failed -> on_error deny
    g.wait_log(r"refused: authentication: error")


def test_mutual_tls_towards_the_auth_server(pki: Pki, broker: Mosquitto,
                                            make_gate: GateFactory) -> None:
    strict = ThreadedAuthServer(pki.server_context(require_client_cert=True))
    strict.srv.decisions["alice"] = "allow"
    try:
        without, with_cert = free_port(), free_port()
        base = base_toml(broker.port)
        make_gate(base + listener_toml("a", without, pki)
                  + auth_toml(f"https://localhost:{strict.port}/auth", pki), [without],
                  name="nocert")
        make_gate(base + listener_toml("a", with_cert, pki)
                  + auth_toml(f"https://localhost:{strict.port}/auth", pki,
                              ssl_extra=f"certfile = \"{pki.client.cert}\"\n"
                                        f"keyfile = \"{pki.client.key}\"\n"),
                  [with_cert], name="withcert")
        assert paho5(without, pki, "alice") == 0x88  # the server refused our TLS
        assert paho5(with_cert, pki, "alice") == 0x00
        assert strict.srv.requests[-1].peercert is not None
    finally:
        strict.stop()


def test_https_url_with_tls_disabled_is_a_config_error(tmp_path: Path, pki: Pki) -> None:
    import subprocess
    import sys

    from tests.procs import REPO

    cfg = tmp_path / "bad.toml"
    cfg.write_text(base_toml(1883) + listener_toml("a", free_port(), pki)
                   + "[authentication]\nurl = \"https://localhost:1/auth\"\n")
    r = subprocess.run([sys.executable, "-m", "tlsgate", "check-config", "-c", str(cfg)],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2
    assert "authentication" in r.stderr and "ssl.enable" in r.stderr, r.stderr


# ---------------------------------------------------------------------------- TLS to the broker
@pytest.fixture(scope="module")
def tls_broker(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    tls_port = free_port()
    m = Mosquitto(tmp_path_factory.mktemp("tlsbroker"), extra_conf=(
        f"listener {tls_port} 127.0.0.1\n"
        f"cafile {pki.ca_pem}\ncertfile {pki.server.cert}\nkeyfile {pki.server.key}\n"
        "require_certificate true\n")).start()
    m.tls_port = tls_port  # type: ignore[attr-defined]
    yield m
    m.stop()


def upstream_tls_toml(port: int, pki: Pki, ca: Path) -> str:
    return f"""
[upstreams.tlsbroker]
address = "127.0.0.1:{port}"
connect_timeout = "3s"
[upstreams.tlsbroker.ssl]
enable = true
cacertfile = "{ca}"
certfile = "{pki.client.cert}"
keyfile = "{pki.client.key}"
server_name_indication = "localhost"
"""


def test_mutual_tls_to_the_broker_carries_the_message(tls_broker: Mosquitto, pki: Pki,
                                                      make_gate: GateFactory) -> None:
    port = free_port()
    cfg = (base_toml(tls_broker.port) + upstream_tls_toml(tls_broker.tls_port, pki, pki.ca_pem)  # type: ignore[attr-defined]
           + listener_toml("a", port, pki, upstream="tlsbroker"))
    make_gate(cfg, [port])
    sub = Sub(tls_broker.port, "t/upstream-tls", broker=tls_broker)  # plain, to the broker
    r = mosquitto_pub(port, "t/upstream-tls", "re-encrypted", "-i", "via-tls",
                      *tls_args(pki.ca_pem))
    assert r.returncode == 0, r.stderr
    assert sub.wait()[1].strip() == "t/upstream-tls re-encrypted"
    tls_broker.wait_log(r"New client connected from \S+ as via-tls")


def test_wrong_ca_towards_the_broker_fails_cleanly(tls_broker: Mosquitto, pki: Pki,
                                                   make_gate: GateFactory) -> None:
    port = free_port()
    cfg = (base_toml(tls_broker.port)
           + upstream_tls_toml(tls_broker.tls_port, pki, pki.foreign_ca_pem)  # type: ignore[attr-defined]
           + listener_toml("a", port, pki, upstream="tlsbroker"))
    g = make_gate(cfg, [port])
    assert pub311(port, pki, "x") == 0x03
    assert paho5(port, pki, "x") == 0x88
    g.wait_log(r"TLS to the broker failed")
