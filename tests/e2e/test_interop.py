"""Issue 11, the CI subset of the interoperability matrix (`make interop` runs all of it).

The programs in ``examples/`` run against a real ``tlsgate serve`` in front of a real mosquitto,
exactly as ``python -m interop.run`` runs them (same code, ``interop.matrix.run_cell``): each
cell's subscriber must receive what its publisher sent through tlsgate, tlsgate's access log
must show the right listener, TLS version and PSK/certificate, and for mutual TLS and PSK
mosquitto's log must show the identity tlsgate mapped into the CONNECT.

- every shell and Python client (mosquitto_pub/sub, openssl s_client, paho-mqtt, aiomqtt) in
  every TLS mode, MQTT 3.1.1 and 5.0 (the Python PSK cells need a Python >= 3.13 with paho-mqtt
  and aiomqtt in var/interop/py313-site, which `make interop` installs; otherwise skipped);
- one Eclipse Paho Go, one Eclipse Paho C and one MQTT.js cell when their toolchains are here;
- messages larger than one TLS record (the broker -> client path once dropped all but the
  first 16 KiB).

Nothing here downloads: a missing toolchain or package is a skip that says what to install.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from interop.brokers import MosquittoBroker
from interop.clients import CLIENTS, MODES, Client, Toolchain
from interop.matrix import Pki, Secrets, Stage, repo_env, run_cell
from tests.procs import REPO


@pytest.fixture(scope="module")
def toolchain(tmp_path_factory: pytest.TempPathFactory) -> Toolchain:
    return Toolchain(tmp_path_factory.mktemp("interop"), offline=True,
                     cache=REPO / "var/interop")


@pytest.fixture(scope="module")
def stage(toolchain: Toolchain) -> Iterator[Stage]:
    import shutil
    if shutil.which("mosquitto") is None:
        pytest.skip("mosquitto is not installed (apt install mosquitto); .ci/run installs it")
    pki = Pki.make(toolchain.workdir / "certs", repo_env())
    s = Stage(MosquittoBroker(toolchain.workdir), toolchain.workdir, pki, Secrets())
    s.start()
    yield s
    s.stop()


_prepared: dict[str, str | None] = {}


def _client(key: str, tc: Toolchain) -> Client:
    client = CLIENTS[key]()
    if key not in _prepared:
        _prepared[key] = client.prepare(tc)
    why = _prepared[key]
    if why:
        pytest.skip(f"{client.label}: {why}")
    return client


def _check(client_key: str, mode: str, version: str, stage: Stage, tc: Toolchain,
           message_size: int = 0, expect: str = "pass") -> str:
    client = _client(client_key, tc)
    res = run_cell(client, stage, MODES[mode], version, tc, timeout=10,
                   message_size=message_size)
    if res.status == "skipped":
        pytest.skip(res.detail)
    assert res.status == expect, f"{client_key} {mode} MQTT {version}: {res.status}: {res.detail}"
    return res.detail


SHELL_AND_PYTHON = ["mosquitto", "openssl", "paho-python", "aiomqtt"]


@pytest.mark.parametrize("version", ["3.1.1", "5"])
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("client", SHELL_AND_PYTHON)
def test_shell_and_python_clients(client: str, mode: str, version: str, stage: Stage,
                                  toolchain: Toolchain) -> None:
    detail = _check(client, mode, version, stage, toolchain)
    if mode != "one-way":
        assert "mosquitto log:" in detail  # the broker saw the mapped identity


def test_paho_go_mutual_tls(stage: Stage, toolchain: Toolchain) -> None:
    detail = _check("paho-go", "mutual", "3.1.1", stage, toolchain)
    assert "u'interop-device'" in detail


def test_paho_go_says_psk_is_unsupported(stage: Stage, toolchain: Toolchain) -> None:
    # Go's crypto/tls has no TLS-PSK: the example must say so (exit 3), not fail obscurely.
    detail = _check("paho-go", "psk-tls1.3", "3.1.1", stage, toolchain, expect="unsupported")
    assert "TLS-PSK" in detail


def test_paho_c_psk_tls12_mqtt5(stage: Stage, toolchain: Toolchain) -> None:
    # TLS 1.2 pinned through OPENSSL_CONF (Paho C has no maximum-version option).
    detail = _check("paho-c", "psk-tls1.2", "5", stage, toolchain)
    assert detail.startswith("TLSv1.2 ") and "PSK" in detail


def test_mqttjs_mutual_tls_mqtt5(stage: Stage, toolchain: Toolchain) -> None:
    detail = _check("mqttjs", "mutual", "5", stage, toolchain)
    assert "u'interop-device'" in detail


@pytest.mark.parametrize(("client", "mode", "version"), [
    ("mosquitto", "mutual", "5"),
    ("paho-python", "one-way", "3.1.1"),
    ("openssl", "psk-tls1.2", "3.1.1"),
])
def test_messages_larger_than_a_tls_record(client: str, mode: str, version: str, stage: Stage,
                                           toolchain: Toolchain) -> None:
    _check(client, mode, version, stage, toolchain, message_size=100_000)


def test_examples_are_executable() -> None:
    for script in ("mosquitto-clients/roundtrip.sh", "openssl/roundtrip.sh",
                   "paho-python/roundtrip.py", "aiomqtt/roundtrip.py", "mqttjs/roundtrip.js"):
        path = REPO / "examples" / script
        assert path.exists() and Path(path).stat().st_mode & 0o111, f"{script} not executable"
