"""Shared fixtures: a test PKI per session, a real mosquitto, `tlsgate serve` processes."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.certkit import Pki
from tests.procs import Gate, Mosquitto, free_port


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    if shutil.which("mosquitto") is None:
        pytest.skip("mosquitto is not installed (apt install mosquitto); .ci/run installs it")
    m = Mosquitto(tmp_path_factory.mktemp("mosquitto")).start()
    yield m
    m.stop()


def listener_toml(name: str, port: int, pki: Pki, *, upstream: str = "default",
                  extra_ssl: str = "", extra: str = "", mqtt: str = "") -> str:
    """A [listeners.ssl.<name>] table using the session PKI's server certificate."""
    text = (f"[listeners.ssl.{name}]\nbind = \"127.0.0.1:{port}\"\nupstream = \"{upstream}\"\n"
            f"{extra}\n"
            f"[listeners.ssl.{name}.ssl_options]\ncertfile = \"{pki.server.cert}\"\n"
            f"keyfile = \"{pki.server.key}\"\ncacertfile = \"{pki.ca_pem}\"\n"
            f"handshake_timeout = \"3s\"\n{extra_ssl}\n")
    if mqtt:
        text += f"[listeners.ssl.{name}.mqtt]\n{mqtt}\n"
    return text


def base_toml(broker_port: int, *, node: str = "", extra: str = "") -> str:
    return (f"[node]\nname = \"test\"\nworkers = 1\ndata_dir = \"data\"\n"
            f"shutdown_timeout = \"2s\"\n{node}\n"
            f"[upstreams.default]\naddress = \"127.0.0.1:{broker_port}\"\n"
            f"connect_timeout = \"2s\"\n"
            f"[dashboard]\nenable = false\n{extra}\n")


GateFactory = Callable[..., Gate]


@pytest.fixture
def make_gate(tmp_path: Path) -> Iterator[GateFactory]:
    """Start `tlsgate serve` with a config; every gate started is stopped at the end."""
    started: list[Gate] = []

    def make(config_text: str, ports: list[int], name: str = "gate",
             wait: bool = True) -> Gate:
        g = Gate(tmp_path / name, config_text, ports).start(wait=wait)
        started.append(g)
        return g

    yield make
    for g in started:
        g.stop()


@pytest.fixture
def port() -> int:
    return free_port()
