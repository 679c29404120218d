"""`tlsgate ctl` against the admin app on a real loopback HTTP port, over the FAKE node of
test_admin_api.py (the real node: tests/e2e/test_admin.py). The CLI is blocking (urllib), so it
runs in a thread while the event loop serves the app."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer
from click.testing import CliRunner, Result

from tests.certkit import Pki
from tests.procs import free_port
from tests.unit.test_admin_api import TOKEN, FakeGateway, FakeNode, FakePsk, config_for
from tlsgate.admin.api import make_app
from tlsgate.admin.banstore import NodeBans
from tlsgate.admin.server import TokenSource
from tlsgate.cli import cli
from tlsgate.ctl import human_bytes, human_duration, table
from tlsgate.server.app import ReloadResult


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("ctlpki"))


class Ctl:
    def __init__(self, url: str, node: FakeNode, gw: FakeGateway) -> None:
        self.url = url
        self.node = node
        self.gw = gw

    async def __call__(self, *args: str, input: str | None = None,
                       env: dict[str, str] | None = None, auth: bool = True) -> Result:
        argv = ["ctl", "--url", self.url, *(["--token", TOKEN] if auth else []), *args]
        runner = CliRunner()
        return await asyncio.get_running_loop().run_in_executor(
            None, lambda: runner.invoke(cli, argv, input=input, env=env))


@pytest.fixture
async def ctl(pki: Pki, tmp_path: Path) -> AsyncIterator[Ctl]:
    config = config_for(pki, tmp_path / "data")
    gw = FakeGateway(config)
    node = FakeNode(config, [gw])
    server = TestServer(make_app(node, NodeBans(node), TokenSource(node)), host="127.0.0.1")
    await server.start_server()
    for h in node.workers.values():
        await NodeBans(node).push_to(h)
    try:
        yield Ctl(f"http://127.0.0.1:{server.port}", node, gw)
    finally:
        await server.close()


async def test_status_table_and_json(ctl: Ctl) -> None:
    ctl.gw.connect("c1")
    r = await ctl("status")
    assert r.exit_code == 0, r.output
    assert "node unit" in r.output and "connections 1" in r.output and "psk off" in r.output
    assert "ssl:default" in r.output
    r = await ctl("--json", "status")
    assert json.loads(r.output)["connections"] == 1


async def test_token_from_the_environment_and_refusals(ctl: Ctl) -> None:
    r = await ctl("status", auth=False, env={"TLSGATE_TOKEN": TOKEN})
    assert r.exit_code == 0, r.output
    r = await ctl("status", auth=False, env={"TLSGATE_TOKEN": "wrong"})
    assert r.exit_code == 1 and "refused the token (HTTP 401)" in r.output


async def test_unreachable_api_is_a_clear_error() -> None:
    runner = CliRunner()
    url = f"http://127.0.0.1:{free_port()}"
    r = await asyncio.get_running_loop().run_in_executor(
        None, lambda: runner.invoke(cli, ["ctl", "--url", url, "status"]))
    assert r.exit_code == 1 and f"cannot reach the tlsgate admin API at {url}" in r.output


async def test_connections_filters_and_kick(ctl: Ctl) -> None:
    a = ctl.gw.connect("dev-a", username="alice")
    ctl.gw.connect("dev-b")
    r = await ctl("connections", "--username", "alice")
    assert r.exit_code == 0 and "dev-a" in r.output and "dev-b" not in r.output
    assert "1 connection(s); page 1" in r.output
    cid = f"0.{a.rec.id}"
    r = await ctl("connections", cid)
    assert r.exit_code == 0 and "clientid" in r.output and "dev-a" in r.output
    r = await ctl("kick", cid, "0.nope")
    assert r.exit_code == 1
    assert f"kicked {cid}" in r.output and "0.nope: no live connection" in r.output
    assert a.reasons and a.reasons[0].startswith("kicked by operator")


async def test_ban_add_list_remove(ctl: Ctl) -> None:
    live = ctl.gw.connect("evil")
    r = await ctl("ban", "add", "clientid", "evil", "--for", "1h", "--reason", "test")
    assert r.exit_code == 0, r.output
    assert "banned clientid evil for 1h; 1 live connection(s) closed" in r.output
    assert live.reasons == ["banned (clientid 'evil')"]
    r = await ctl("ban", "list")
    assert "evil" in r.output and "test" in r.output and "never" not in r.output
    r = await ctl("ban", "add", "ip", "1.2.3.4")
    assert r.exit_code == 2 and "'ip' is not one of 'clientid'" in r.output
    r = await ctl("ban", "remove", "clientid", "evil")
    assert r.exit_code == 0 and "lifted" in r.output
    r = await ctl("ban", "remove", "clientid", "evil")
    assert r.exit_code == 1 and "no ban on clientid 'evil'" in r.output


async def test_psk_add_from_stdin_list_remove(ctl: Ctl) -> None:
    r = await ctl("psk", "list")
    assert r.exit_code == 0 and "not enabled" in r.output
    r = await ctl("psk", "add", "x", "--secret-file", "-", input="abcd\n")
    assert r.exit_code == 1 and "TLS-PSK is not enabled" in r.output
    psk = FakePsk()
    ctl.node.psk = psk
    r = await ctl("psk", "add", "dev-2", "--secret-file", "-", input="n3w-s3cret\n")
    assert r.exit_code == 0, r.output
    assert psk.table["dev-2"] == "n3w-s3cret" and "n3w-s3cret" not in r.output
    r = await ctl("psk", "add", "dev-3", input="pw12\npw12\n")  # prompted twice, not echoed
    assert r.exit_code == 0 and psk.table["dev-3"] == "pw12"
    r = await ctl("psk", "list")
    assert r.stdout.split() == ["dev", "dev-2", "dev-3"]
    r = await ctl("psk", "remove", "dev-2")
    assert r.exit_code == 0 and "dev-2" not in psk.table


async def test_reload_success_and_failure(ctl: Ctl) -> None:
    r = await ctl("reload")
    assert r.exit_code == 0 and "ssl:default: new TLS context" in r.output
    ctl.node.reload_result = ReloadResult(False, problems=["listeners.ssl.default.ssl_options."
                                                           "certfile: file not found"])
    r = await ctl("reload")
    assert r.exit_code == 1 and "reload FAILED" in r.output and "file not found" in r.output


async def test_certs_and_listeners(ctl: Ctl) -> None:
    r = await ctl("certs")
    assert r.exit_code == 0 and "CN=localhost" in r.output and "leaf" in r.output
    assert "not configured" in r.output
    ctl.gw.rt.stats.refusals["banned"] = 3
    r = await ctl("listeners")
    assert r.exit_code == 0 and "banned" in r.output and "3" in r.output


def test_table_and_human_formats() -> None:
    t = table(["a", "num"], [["x", 1], ["long-value", None]], {1})
    assert t.splitlines() == ["a           num", "----------  ---", "x             1",
                              "long-value    -"]
    assert human_bytes(512) == "512 B" and human_bytes(2048) == "2.0 KiB"
    assert human_duration(59) == "59s" and human_duration(3700) == "1h1m"
    assert human_duration(90000) == "1d1h"


