"""The dashboard page in a real headless Chromium (Debian's `chromium`, driven by Playwright for
Python through `executable_path`; no browser download), against a real `tlsgate serve` with a
real mosquitto_sub connected through it: the page asks for the token, lists the live
connection, filters, and its Kick button disconnects it. The screenshot is saved as
test-artifacts/dashboard.png."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.certkit import Pki
from tests.clients import Sub, tls_args
from tests.e2e.test_admin import TOKEN, Api, admin_toml, listener
from tests.procs import REPO, Gate, Mosquitto, free_port, wait_for

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright; it is in the dev "
                    "extra) -- the dashboard test needs it")
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run installs it)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def dash_gate(broker: Mosquitto, pki: Pki, tmp_path: Path, make_gate: Any) -> Gate:
    tf = tmp_path / "token"
    tf.write_text(TOKEN + "\n")
    port, aport = free_port(), free_port()
    cfg = admin_toml(broker.port, aport, tf, workers=1) + listener(
        "dash", port, pki.server.cert, pki.server.key, pki.ca_pem)
    g: Gate = make_gate(cfg, [port, aport])
    g.port, g.aport = port, aport  # type: ignore[attr-defined]
    return g


def test_dashboard_lists_a_live_connection_and_kicks_it(dash_gate: Gate, pki: Pki,
                                                        browser: Any) -> None:
    # (the page's Content-Security-Policy forbids eval: wait with locators, not JS strings)
    from playwright.sync_api import expect

    g = dash_gate
    api = Api(g.aport)  # type: ignore[attr-defined]
    sub = Sub(g.port, "t/dash", *tls_args(pki.ca_pem), "-i", "dash-sub",  # type: ignore[attr-defined]
              "-q", "1", count=1, wait_s=120)
    page = None
    try:
        (conn,) = wait_for(lambda: api.connections(clientid="dash-sub"), 15, "dash-sub listed")
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        problems: list[str] = []
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.goto(f"http://127.0.0.1:{g.aport}/")  # type: ignore[attr-defined]

        # 1. it asks for the token; a wrong one is refused
        page.wait_for_selector("#login:not([hidden])", timeout=10_000)
        assert page.is_hidden("#main")
        page.fill("#token-input", "not-the-token")
        page.click("#token-submit")
        expect(page.locator("#login-error")).to_contain_text("refused", timeout=10_000)

        # 2. the right token opens it: status, listener, certificate, the live connection
        page.fill("#token-input", TOKEN)
        page.click("#token-submit")
        page.wait_for_selector("#main:not([hidden])", timeout=10_000)
        row = f"#connections tr[data-conn-id='{conn['id']}']"
        page.wait_for_selector(row, timeout=10_000)
        assert "dash-sub" in page.inner_text(row)
        assert page.inner_text("#s-node") == "e2e-admin"
        assert "ssl:dash" in page.inner_text("#listeners")
        certs = page.inner_text("#certificates")
        assert "ssl:dash" in certs and "ok" in certs
        assert page.inner_text("#s-connections") == "1"

        # 3. the filter narrows the list
        page.fill("#f-clientid", "nobody")
        page.click("#conn-apply")
        expect(page.locator("#connections tbody")).to_contain_text("no connections",
                                                                   timeout=10_000)
        page.fill("#f-clientid", "dash-sub")
        page.click("#conn-apply")
        page.wait_for_selector(row, timeout=10_000)

        # the token survives a page reload in this tab (sessionStorage)
        page.reload()
        page.wait_for_selector(row, timeout=10_000)
        assert page.is_hidden("#login")

        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

        # 4. Kick (after the confirmation dialog) disconnects the real client
        page.once("dialog", lambda d: d.accept())
        page.click(f"{row} button.kick")
        expect(page.locator("#message")).to_contain_text("kicked", timeout=10_000)
        g.wait_log(rf"conn={conn['conn_id']} .*clientid=dash-sub .*"
                   r"reason=\"kicked by operator")
        wait_for(lambda: all(c["id"] != conn["id"] for c in api.connections()), 10,
                 "the kicked connection is gone")
        page.wait_for_selector(row, state="detached", timeout=10_000)
        # no script errors, no CSP violations (the 401s of the token prompt are expected)
        problems = [p for p in problems if "status of 401" not in p]
        assert problems == [], problems
    finally:
        if page is not None:
            page.close()
        sub.proc.kill()
        sub.proc.wait()
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000
