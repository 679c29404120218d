"""Issue 10: TLS configuration audit of a default listener with testssl.sh (Debian package
`testssl.sh`, command `testssl`), run against a real `tlsgate serve`.

Only the checks that say something about tlsgate run (a full testssl.sh run takes minutes):
protocols (-p), cipher categories (-s), server preference (-P) and every vulnerability check
(-U) on a listener with nothing but certfile/keyfile set, with an RSA certificate (the case
where weak key exchanges such as RSA, ROBOT, DROWN could apply at all); and the server
defaults (-S) on a listener with OCSP stapling configured, which must report the staple.
Results are read from testssl.sh's JSON output: every finding must be OK or INFO (no LOW,
MEDIUM, HIGH, CRITICAL, and no WARN, which means a check could not run), and the findings the
audit is about must be present, so a scan that silently did nothing fails.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from tests.certkit import Pki
from tests.conftest import GateFactory, base_toml
from tests.loopthread import LoopThread
from tests.pkiservers import OcspResponder, TestCA
from tests.procs import Mosquitto, free_port

BAD = {"LOW", "MEDIUM", "HIGH", "CRITICAL", "WARN", "FATAL"}


def _testssl() -> str:
    exe = shutil.which("testssl") or shutil.which("testssl.sh")
    if exe is None:
        pytest.skip("testssl.sh is not installed (apt install testssl.sh); .ci/run installs it")
    return exe


def _scan(port: int, out: Path, *checks: str, timeout: float = 240) -> dict[str, dict[str, Any]]:
    """Run testssl.sh with ``checks`` against 127.0.0.1:port; findings by id."""
    jsonfile = out / f"testssl-{port}.json"
    proc = subprocess.run(
        [_testssl(), "--quiet", "--color", "0", "--warnings", "off", "--ip", "one",
         "--connect-timeout", "10", "--openssl-timeout", "10", "--jsonfile", str(jsonfile),
         *checks, f"127.0.0.1:{port}"],
        capture_output=True, text=True, timeout=timeout)
    assert jsonfile.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    findings = {f["id"]: f for f in json.loads(jsonfile.read_text())}
    assert "scanProblem" not in findings, findings["scanProblem"]
    return findings


def _bad(findings: dict[str, dict[str, Any]]) -> list[str]:
    return [f"{f['id']} [{f['severity']}] {f['finding']}" for f in findings.values()
            if f["severity"] in BAD]


@pytest.fixture(scope="module")
def rsa_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("rsa-pki"), key_type="rsa")


def test_default_listener_has_no_vulnerability_or_weak_protocol_or_cipher(
        rsa_pki: Pki, broker: Mosquitto, make_gate: GateFactory, tmp_path: Path) -> None:
    port = free_port()
    make_gate(base_toml(broker.port) + f"""
[listeners.ssl.audit]
bind = "127.0.0.1:{port}"
[listeners.ssl.audit.ssl_options]
certfile = "{rsa_pki.server.cert}"
keyfile = "{rsa_pki.server.key}"
""", [port])
    f = _scan(port, tmp_path, "-p", "-s", "-P", "-U")
    assert _bad(f) == [], "\n".join(_bad(f))
    # protocols: TLS 1.2 and 1.3 only
    for old in ("SSLv2", "SSLv3", "TLS1", "TLS1_1"):
        assert f[old]["finding"] == "not offered", f[old]
    assert f["TLS1_2"]["finding"] == "offered", f["TLS1_2"]
    assert f["TLS1_3"]["finding"].startswith("offered"), f["TLS1_3"]
    # no weak cipher category at all; only strong ones
    for weak in ("cipherlist_NULL", "cipherlist_aNULL", "cipherlist_EXPORT", "cipherlist_LOW",
                 "cipherlist_3DES_IDEA", "cipherlist_AVERAGE"):
        assert f[weak]["finding"] == "not offered", f[weak]
    assert f["cipherlist_STRONG"]["finding"] == "offered", f["cipherlist_STRONG"]
    assert f["cipher_order"]["finding"].startswith("server"), f["cipher_order"]
    tls12 = f["cipherorder_TLSv1_2"]["finding"].split()
    # forward-secret AEAD suites only (Mozilla "intermediate"): no CBC, no RSA key exchange
    assert tls12 and all(c.startswith(("ECDHE-", "DHE-")) and ("GCM" in c or "CHACHA20" in c)
                         for c in tls12), tls12
    # every vulnerability check ran and found nothing
    for vuln in ("heartbleed", "CCS", "ROBOT", "secure_renego", "secure_client_renego",
                 "CRIME_TLS", "POODLE_SSL", "fallback_SCSV", "SWEET32", "FREAK", "DROWN",
                 "LOGJAM", "BEAST", "LUCKY13", "RC4"):
        assert vuln in f, f"testssl.sh did not report {vuln}"
        assert f[vuln]["severity"] == "OK", f[vuln]


@pytest.fixture(scope="module")
def ocsp_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestCA, Path, Path,
                                                                           Path]]:
    d = tmp_path_factory.mktemp("audit-ocsp")
    lt = LoopThread()
    root = TestCA("Audit Test Root")
    responder = OcspResponder(root)
    lt.run(responder.start())
    leaf = root.server_cert("localhost", ocsp_url=responder.url)
    cert, key, ca = d / "server.pem", d / "server.key", d / "root.pem"
    cert.write_bytes(leaf.cert_pem())
    key.write_bytes(leaf.key_pem())
    key.chmod(0o600)
    ca.write_bytes(root.cert.public_bytes(serialization.Encoding.PEM))
    yield root, cert, key, ca
    lt.run(responder.stop())
    lt.close()


def test_ocsp_staple_is_confirmed_by_testssl(ocsp_world: tuple[TestCA, Path, Path, Path],
                                             broker: Mosquitto, make_gate: GateFactory,
                                             tmp_path: Path) -> None:
    _root, cert, key, ca = ocsp_world
    port = free_port()
    g = make_gate(base_toml(broker.port) + f"""
[listeners.ssl.stapled]
bind = "127.0.0.1:{port}"
[listeners.ssl.stapled.ssl_options]
certfile = "{cert}"
keyfile = "{key}"
cacertfile = "{ca}"
[listeners.ssl.stapled.ssl_options.ocsp]
enable_ocsp_stapling = true
refresh_http_timeout = "2s"
""", [port])
    g.wait_log(r"OCSP listeners\.ssl\.stapled: stapling a new response")
    f = _scan(port, tmp_path, "-S")
    staple = f.get("OCSP_stapling")
    assert staple is not None, sorted(f)
    assert staple["severity"] == "OK" and staple["finding"].startswith("offered"), staple
    # nothing else in the server defaults is weak either; findings about the test
    # certificate itself (a private CA, 30-day lifetime, no DNS CAA record for "localhost")
    # are the test PKI's, not tlsgate's
    weak = [b for b in _bad(f) if not b.startswith(("cert_", "DNS_CAArecord"))]
    assert weak == [], "\n".join(weak)
