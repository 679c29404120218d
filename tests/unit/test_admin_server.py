"""AdminService start-up rules (token / loopback / TLS / port in use), reload-on-change file
watching and /proc reading. The node here is a FAKE (config + the few attributes the service
reads); the real node is covered by tests/e2e/test_admin.py."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import time
import tomllib
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.certkit import Pki
from tlsgate.admin import procinfo
from tlsgate.admin.server import AdminService, is_loopback
from tlsgate.config import Config, ConfigError, parse
from tlsgate.server.watch import FileWatcher, config_files


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("adminsrvpki"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_config(pki: Pki, tmp: Path, dashboard: str, extra: str = "", *,
                ca: Path | None = None, node: str = "") -> Config:
    text = (f"[node]\nname = \"unit\"\ndata_dir = \"{tmp / 'data'}\"\n{node}\n"
            "[log]\nfile = \"/tmp/never-watched.log\"\n"
            "[listeners.ssl.default]\nbind = \"127.0.0.1:0\"\n"
            "[listeners.ssl.default.ssl_options]\n"
            f"certfile = \"{pki.server.cert}\"\nkeyfile = \"{pki.server.key}\"\n"
            f"cacertfile = \"{ca or pki.ca_pem}\"\n"
            f"[dashboard]\n{dashboard}\n{extra}")
    return parse(tomllib.loads(text))


class FakeNode:
    """Only what AdminService/FileWatcher read from the node (a fake)."""

    def __init__(self, config: Config, path: str | None = None) -> None:
        self.config = config
        self.path = path
        self.started_at = time.time()
        self.workers: dict[int, Any] = {}
        self.last_reload = None
        self.on_worker_started: list[Any] = []
        self.stopping = False
        self.reloads = 0

    async def ask_workers(self, op: str, timeout: float = 10.0, **args: Any
                          ) -> list[tuple[int, Any]]:
        return []

    async def reload(self) -> Any:
        self.reloads += 1


@pytest.mark.parametrize("host,loop", [("127.0.0.1", True), ("127.3.4.5", True), ("::1", True),
                                       ("[::1]", True), ("localhost", True),
                                       ("0.0.0.0", False), ("::", False), ("10.0.0.1", False),
                                       ("example.com", False)])
def test_is_loopback(host: str, loop: bool) -> None:
    assert is_loopback(host) is loop


async def test_no_token_on_a_public_address_refuses_to_start(pki: Pki, tmp_path: Path) -> None:
    svc = AdminService(FakeNode(make_config(pki, tmp_path, f"listen = \"0.0.0.0:{free_port()}\"")))
    with pytest.raises(ConfigError) as exc:
        await svc.start()
    (problem,) = exc.value.problems
    assert problem.key == "dashboard.token" and "not a loopback address" in problem.message


async def test_no_token_on_loopback_starts_with_a_warning(pki: Pki, tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture
                                                         ) -> None:
    port = free_port()
    node = FakeNode(make_config(pki, tmp_path, f"listen = \"127.0.0.1:{port}\""))
    svc = AdminService(node)
    assert node.on_worker_started == [svc.bans.push_to]
    await svc.start()
    try:
        assert "dashboard.token is not set" in caplog.text
        async with aiohttp.ClientSession() as s, \
                s.get(f"http://127.0.0.1:{port}/api/v1/bans") as r:
            assert r.status == 200
        assert svc.url == f"http://127.0.0.1:{port}/"
    finally:
        await svc.stop()


async def test_port_in_use_names_dashboard_listen(pki: Pki, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        svc = AdminService(FakeNode(make_config(
            pki, tmp_path, f"listen = \"127.0.0.1:{port}\"\ntoken = \"x\"")))
        with pytest.raises(ConfigError) as exc:
            await svc.start()
    assert exc.value.problems[0].key == "dashboard.listen"
    assert "cannot listen on" in exc.value.problems[0].message


async def test_missing_token_file_names_the_key(pki: Pki, tmp_path: Path) -> None:
    svc = AdminService(FakeNode(make_config(
        pki, tmp_path, f"listen = \"127.0.0.1:0\"\ntoken_file = \"{tmp_path / 'nope'}\"")))
    with pytest.raises(ConfigError) as exc:
        await svc.start()
    assert exc.value.problems[0].key == "dashboard.token_file"


async def test_https_with_client_certificates(pki: Pki, tmp_path: Path) -> None:
    port = free_port()
    cfg = make_config(pki, tmp_path, f"listen = \"0.0.0.0:{port}\"",
                      "[dashboard.ssl]\nenable = true\n"
                      f"certfile = \"{pki.server.cert}\"\nkeyfile = \"{pki.server.key}\"\n"
                      f"cacertfile = \"{pki.ca_pem}\"\n")
    svc = AdminService(FakeNode(cfg))
    await svc.start()  # no token, not loopback, but mutual TLS: allowed
    try:
        assert svc.url.startswith("https://")
        good = ssl.create_default_context(cafile=str(pki.ca_pem))
        good.load_cert_chain(str(pki.client.cert), str(pki.client.key))
        async with aiohttp.ClientSession() as s:
            async with s.get(f"https://localhost:{port}/api/v1/status", ssl=good) as r:
                assert r.status == 200
                assert (await r.json())["node"] == "unit"
            no_cert = ssl.create_default_context(cafile=str(pki.ca_pem))
            with pytest.raises(aiohttp.ClientError):
                async with s.get(f"https://localhost:{port}/api/v1/status", ssl=no_cert) as r:
                    await r.read()
    finally:
        await svc.stop()


async def test_bad_tls_material_names_the_key(pki: Pki, tmp_path: Path) -> None:
    cfg = make_config(pki, tmp_path, "listen = \"127.0.0.1:0\"\ntoken = \"t\"",
                      "[dashboard.ssl]\nenable = true\n"
                      f"certfile = \"{pki.server.cert}\"\nkeyfile = \"{pki.client.key}\"\n")
    with pytest.raises(ConfigError) as exc:
        await AdminService(FakeNode(cfg)).start()
    assert exc.value.problems[0].key == "dashboard.ssl.keyfile"
    cfg = make_config(pki, tmp_path, "listen = \"127.0.0.1:0\"\ntoken = \"t\"",
                      "[dashboard.ssl]\nenable = true\n")
    with pytest.raises(ConfigError) as exc:
        await AdminService(FakeNode(cfg)).start()
    assert "needs certfile and keyfile" in exc.value.problems[0].message


# ---------------------------------------------------------------------------- file watching
def test_config_files_lists_every_named_file_but_not_the_log(pki: Pki, tmp_path: Path) -> None:
    crl = tmp_path / "a.crl"
    pw = tmp_path / "pw"
    cfg = make_config(pki, tmp_path, "token_file = \"/etc/tok\"",
                      "[listeners.ssl.b]\nbind = \"127.0.0.1:0\"\n"
                      "[listeners.ssl.b.ssl_options]\n"
                      f"certfile = \"{pki.server.cert}\"\nkeyfile = \"/k/b.key\"\n"
                      f"password = \"file://{pw}\"\n"
                      f"cacertfile = \"{pki.ca_pem}\"\nverify = \"verify_peer\"\n"
                      f"enable_crl_check = true\ncrlfile = [\"{crl}\"]\n"
                      "[[listeners.ssl.b.ssl_options.sni]]\nserver_name = \"x\"\n"
                      "certfile = \"/s/x.pem\"\nkeyfile = \"/s/x.key\"\n"
                      "[psk_authentication]\nenable = true\ninit_file = \"/p/psk.txt\"\n")
    files = config_files(cfg)
    assert files == {str(pki.server.cert), str(pki.server.key), str(pki.ca_pem), "/k/b.key",
                     str(pw), str(crl), "/s/x.pem", "/s/x.key", "/p/psk.txt", "/etc/tok"}
    assert "/tmp/never-watched.log" not in files


async def test_watcher_reloads_once_per_change_and_only_when_enabled(pki: Pki, tmp_path: Path
                                                                     ) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(pki.ca_pem.read_bytes())
    on = make_config(pki, tmp_path, "enable = false", ca=ca,
                     node="reload_on_change = true\nreload_check_interval = \"100ms\"")
    node = FakeNode(on)
    w = FileWatcher(node)
    await w.start()
    try:
        await asyncio.sleep(0.3)
        assert node.reloads == 0
        ca.write_bytes(pki.ca_pem.read_bytes() + b"\n")
        for _ in range(50):
            if node.reloads:
                break
            await asyncio.sleep(0.05)
        assert node.reloads == 1 and w.last_changed == [str(ca)]
        await asyncio.sleep(0.5)
        assert node.reloads == 1  # no change, no reload
        node.config = node.config.model_copy(update={"node": node.config.node.model_copy(
            update={"reload_on_change": False})})
        os.utime(ca, ns=(time.time_ns() + 5 * 10**9,) * 2)
        await asyncio.sleep(0.5)
        assert node.reloads == 1  # switched off
    finally:
        await w.stop()


def test_procinfo_reads_this_process() -> None:
    p = procinfo.read(os.getpid())
    assert p is not None and p.pid == os.getpid()
    assert p.rss_bytes > 1_000_000 and p.cpu_seconds > 0 and (p.open_fds or 0) > 2
    assert p.start_time is not None and abs(p.start_time - time.time()) < 7 * 86400
    assert procinfo.read(2**22 + 12345) is None
