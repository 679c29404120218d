"""Issue 4 end to end: OCSP stapling and CRL checking in a real `tlsgate serve`.

Real servers on loopback (tests/pkiservers.py): an OCSP responder built on cryptography's
OCSPResponseBuilder (it can also answer "revoked" and counts requests) and an HTTP server for
CRLs (swappable content, can be stopped). Clients: `openssl s_client -status` for stapling,
`openssl s_client` / `mosquitto_pub` / paho-mqtt with client certificates for CRLs.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.clients import connack_code, mosquitto_pub, paho_client, s_client, tls_args
from tests.conftest import GateFactory, base_toml
from tests.loopthread import LoopThread
from tests.pkiservers import CrlServer, Issued, OcspResponder, TestCA, crl_pem
from tests.procs import Mosquitto, free_port, wait_for


@dataclass
class Files:
    cert: Path
    key: Path


@dataclass
class World:
    lt: LoopThread
    dir: Path
    root: TestCA
    inter: TestCA
    responder: OcspResponder
    crls: CrlServer
    ca_pem: Path                 # root: the clients' trust anchor and cacertfile
    server: Files                # leaf (with AIA OCSP) + intermediate
    good: Files
    revoked: Files
    later: Files                 # revoked while connected
    issued: dict[str, Issued]

    def write(self, name: str, issued: Issued, chain: list[Any]) -> Files:
        from cryptography.hazmat.primitives import serialization

        cert = self.dir / f"{name}.pem"
        key = self.dir / f"{name}.key"
        cert.write_bytes(issued.cert_pem() + b"".join(
            c.public_bytes(serialization.Encoding.PEM) for c in chain))
        key.write_bytes(issued.key_pem())
        key.chmod(0o600)
        self.issued[name] = issued
        return Files(cert, key)

    def publish_crls(self, *, leaf_revoked: list[int] = (),  # type: ignore[assignment]
                     inter_revoked: bool = False) -> None:
        self.crls.content["root.crl"] = crl_pem(self.root.crl(
            [self.inter.cert.serial_number] if inter_revoked else []))
        self.crls.content["inter.crl"] = crl_pem(self.inter.crl(leaf_revoked))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    from cryptography.hazmat.primitives import serialization

    d = tmp_path_factory.mktemp("revocation")
    lt = LoopThread()
    responder = OcspResponder(TestCA("unused"))  # replaced below once the CA exists
    crls = CrlServer()
    crls.reserve_port()
    root = TestCA("Revocation Test Root")
    inter = root.intermediate("Revocation Test Intermediate", crl_url=crls.url("root.crl"))
    responder = OcspResponder(inter)
    lt.run(responder.start())
    lt.run(crls.start())
    ca_pem = d / "root.pem"
    ca_pem.write_bytes(root.cert.public_bytes(serialization.Encoding.PEM))
    w = World(lt, d, root, inter, responder, crls, ca_pem, None, None, None, None, {})  # type: ignore[arg-type]
    w.server = w.write("server", inter.issue("localhost", san=["localhost"],
                                              ocsp_url=responder.url), [inter.cert])
    leaf = {"crl_url": crls.url("inter.crl")}
    w.good = w.write("good", inter.client_cert("good-device", **leaf), [inter.cert])
    w.revoked = w.write("revoked", inter.client_cert("stolen-device", **leaf), [inter.cert])
    w.later = w.write("later", inter.client_cert("retired-device", **leaf), [inter.cert])
    w.publish_crls(leaf_revoked=[w.issued["revoked"].serial])
    yield w
    lt.run(responder.stop())
    lt.run(crls.stop())
    lt.close()


def listener(name: str, port: int, w: World, *, ssl_extra: str = "", extra: str = "") -> str:
    return (f"[listeners.ssl.{name}]\nbind = \"127.0.0.1:{port}\"\n{extra}\n"
            f"[listeners.ssl.{name}.ssl_options]\ncertfile = \"{w.server.cert}\"\n"
            f"keyfile = \"{w.server.key}\"\ncacertfile = \"{w.ca_pem}\"\n"
            f"handshake_timeout = \"5s\"\n{ssl_extra}\n")


# ---------------------------------------------------------------------------- OCSP stapling
STAPLE = "[listeners.ssl.{n}.ssl_options.ocsp]\nenable_ocsp_stapling = true\n" \
         "refresh_interval = \"{r}\"\nrefresh_http_timeout = \"2s\"\n"


def _status(port: int, w: World, *args: str) -> str:
    return s_client(port, "-CAfile", str(w.ca_pem), "-status", *args,
                    hold=0.5).stdout.decode()


@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
@pytest.mark.parametrize("sni", [True, False])
def test_good_staple_for_every_client(version: str, sni: bool, world: World, broker: Mosquitto,
                                      make_gate: GateFactory) -> None:
    port = free_port()
    g = make_gate(base_toml(broker.port) + listener("o", port, world)
                  + STAPLE.format(n="o", r="5m"), [port])
    g.wait_log(r"OCSP listeners\.ssl\.o: stapling a new response")
    out = _status(port, world, version, *(["-servername", "localhost"] if sni else []))
    assert "OCSP Response Status: successful" in out, out
    assert "Cert Status: good" in out, out


def test_revoked_answer_is_never_stapled(world: World, broker: Mosquitto,
                                         make_gate: GateFactory, tmp_path: Path) -> None:
    serial = world.issued["server"].serial
    world.responder.statuses[serial] = "revoked"
    try:
        port = free_port()
        g = make_gate(base_toml(broker.port) + listener("o", port, world)
                      + STAPLE.format(n="o", r="5m"), [port])
        g.wait_log(r"(?i)OCSP listeners\.ssl\.o: response rejected: .*revoked")
        out = _status(port, world, "-tls1_3")
        assert "OCSP response: no response sent" in out, out
        assert "Verification: OK" in out or "Verify return code: 0" in out
    finally:
        world.responder.statuses.pop(serial, None)


def test_wrongly_signed_answer_is_not_stapled(world: World, broker: Mosquitto,
                                              make_gate: GateFactory) -> None:
    world.responder.mode = "wrong_key"
    try:
        port = free_port()
        g = make_gate(base_toml(broker.port) + listener("o", port, world)
                      + STAPLE.format(n="o", r="5m"), [port])
        g.wait_log(r"OCSP listeners\.ssl\.o: response from .* rejected")
        assert "OCSP response: no response sent" in _status(port, world, "-tls1_2")
    finally:
        world.responder.mode = "normal"


def test_responder_down_keeps_the_last_good_staple_also_after_a_restart(
        world: World, broker: Mosquitto, make_gate: GateFactory, tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "data"
    cfg = (base_toml(broker.port).replace("data_dir = \"data\"", f"data_dir = \"{data}\"")
           + listener("o", port, world) + STAPLE.format(n="o", r="2s"))
    g = make_gate(cfg, [port], name="first")
    g.wait_log(r"stapling a new response")
    world.lt.run(world.responder.stop())
    try:
        g.wait_log(r"OCSP listeners\.ssl\.o: cannot reach .*still stapling the last good",
                   timeout=15)
        assert "Cert Status: good" in _status(port, world, "-tls1_3")
        g.stop()
        # restart with the responder still down: the saved response is stapled at once
        g2 = make_gate(cfg, [port], name="second")
        g2.wait_log(r"OCSP listeners\.ssl\.o: stapling the saved response")
        assert "Cert Status: good" in _status(port, world, "-tls1_2")
    finally:
        world.lt.run(world.responder.start())


def test_two_workers_fetch_once(world: World, broker: Mosquitto,
                                make_gate: GateFactory, tmp_path: Path) -> None:
    port = free_port()
    before = world.responder.requests
    cfg = (base_toml(broker.port).replace("workers = 1", "workers = 2")
           + listener("o", port, world) + STAPLE.format(n="o", r="5m"))
    g = make_gate(cfg, [port])
    wait_for(lambda: g.count_log(r"stapling (a new|the saved) response") >= 2, 15,
             "both workers stapled")
    assert len(g.worker_pids()) == 2
    assert world.responder.requests - before == 1


# ---------------------------------------------------------------------------- CRL
CRL = "verify = \"verify_peer\"\nfail_if_no_peer_cert = true\nenable_crl_check = true\n"


def _crl_gate(w: World, broker: Mosquitto, make_gate: GateFactory, ssl_extra: str = "",
              node: str = "", extra_toml: str = "") -> tuple[int, Any]:
    port = free_port()
    g = make_gate(base_toml(broker.port, extra=extra_toml) + listener("c", port, w,
                                                                      ssl_extra=CRL + ssl_extra),
                  [port])
    return port, g


def test_revoked_client_gets_alert_44_and_a_good_one_connects(
        world: World, broker: Mosquitto, make_gate: GateFactory) -> None:
    port, g = _crl_gate(world, broker, make_gate)
    out = s_client(port, "-CAfile", str(world.ca_pem), "-cert", str(world.revoked.cert),
                   "-cert_chain", str(world.revoked.cert),
                   "-key", str(world.revoked.key), data=b"\x10\x00").stdout.decode()
    assert "certificate revoked" in out, out
    r = mosquitto_pub(port, "t/crl", "x", *tls_args(world.ca_pem, world.revoked.cert,
                                                     world.revoked.key))
    assert r.returncode != 0
    r = mosquitto_pub(port, "t/crl", "x", *tls_args(world.ca_pem, world.good.cert,
                                                     world.good.key))
    assert r.returncode == 0, r.stderr
    g.wait_log(r"reason=\"handshake failed: .*revoked")


@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
def test_revoked_with_the_crl_already_cached(version: str, world: World, broker: Mosquitto,
                                             make_gate: GateFactory) -> None:
    port, _g = _crl_gate(world, broker, make_gate)
    # a good client first: the CRLs are fetched and cached
    assert mosquitto_pub(port, "t/crl", "x", *tls_args(world.ca_pem, world.good.cert,
                                                        world.good.key)).returncode == 0
    hits = dict(world.crls.hits)
    out = s_client(port, version, "-CAfile", str(world.ca_pem), "-cert",
                   str(world.revoked.cert), "-cert_chain", str(world.revoked.cert),
                   "-key", str(world.revoked.key), data=b"\x10\x00").stdout.decode()
    assert "certificate revoked" in out, out
    assert dict(world.crls.hits) == hits  # answered from the cache


def test_intermediate_revoked_refuses_with_chain_depth(world: World, broker: Mosquitto,
                                                       make_gate: GateFactory) -> None:
    world.publish_crls(leaf_revoked=[world.issued["revoked"].serial], inter_revoked=True)
    try:
        port, g = _crl_gate(world, broker, make_gate)
        r = mosquitto_pub(port, "t/crl", "x", *tls_args(world.ca_pem, world.good.cert,
                                                         world.good.key))
        assert r.returncode != 0
        g.wait_log(r"handshake failed: certificate .*Intermediate.* is revoked")
        # leaf-only checking lets it through
        port2, _ = _crl_gate(world, broker, make_gate, ssl_extra="crl_check_depth = \"leaf\"\n")
        r = mosquitto_pub(port2, "t/crl", "x", *tls_args(world.ca_pem, world.good.cert,
                                                          world.good.key))
        assert r.returncode == 0, r.stderr
    finally:
        world.publish_crls(leaf_revoked=[world.issued["revoked"].serial])


def test_crl_server_down_with_nothing_cached_fails_closed_or_soft(
        world: World, broker: Mosquitto, make_gate: GateFactory) -> None:
    world.lt.run(world.crls.stop())
    try:
        port, g = _crl_gate(world, broker, make_gate)
        r = mosquitto_pub(port, "t/crl", "x", *tls_args(world.ca_pem, world.good.cert,
                                                         world.good.key))
        assert r.returncode != 0
        g.wait_log(r"no CRL obtainable")
        port2, _g2 = _crl_gate(world, broker, make_gate, ssl_extra="crl_soft_fail = true\n")
        r = mosquitto_pub(port2, "t/crl", "x", *tls_args(world.ca_pem, world.good.cert,
                                                          world.good.key))
        assert r.returncode == 0, r.stderr
    finally:
        world.lt.run(world.crls.start())


def test_client_revoked_after_it_connected_is_cut_at_the_next_refresh(
        world: World, broker: Mosquitto, make_gate: GateFactory) -> None:
    port, g = _crl_gate(world, broker, make_gate,
                        extra_toml="[crl_cache]\nrefresh_interval = \"2s\"\n")
    c, res = paho_client(port, world.ca_pem, cert=world.later.cert, key=world.later.key,
                         client_id="retired")
    try:
        assert connack_code(res.rc) == 0
        time.sleep(0.5)
        assert not res.disconnected.is_set()
        world.publish_crls(leaf_revoked=[world.issued["revoked"].serial,
                                         world.issued["later"].serial])
        assert res.disconnected.wait(15), "not cut after the CRL refresh"
        g.wait_log(r"reason=\"certificate revoked by a refreshed CRL")
    finally:
        c.loop_stop()
        world.publish_crls(leaf_revoked=[world.issued["revoked"].serial])


def test_local_crlfile(world: World, broker: Mosquitto, make_gate: GateFactory,
                       tmp_path: Path) -> None:
    crlfile = tmp_path / "inter.crl.pem"
    crlfile.write_bytes(crl_pem(world.inter.crl([world.issued["revoked"].serial])))
    rootcrl = tmp_path / "root.crl.pem"
    rootcrl.write_bytes(crl_pem(world.root.crl([])))
    world.lt.run(world.crls.stop())  # only the files can answer
    try:
        port, _g = _crl_gate(world, broker, make_gate,
                            ssl_extra=f"crlfile = [\"{crlfile}\", \"{rootcrl}\"]\n")
        ok = mosquitto_pub(port, "t/crl", "x", *tls_args(world.ca_pem, world.good.cert,
                                                          world.good.key))
        assert ok.returncode == 0, ok.stderr
        bad = s_client(port, "-CAfile", str(world.ca_pem), "-cert", str(world.revoked.cert),
                       "-cert_chain", str(world.revoked.cert),
                       "-key", str(world.revoked.key), data=b"\x10\x00").stdout.decode()
        assert "certificate revoked" in bad, bad
    finally:
        world.lt.run(world.crls.start())
