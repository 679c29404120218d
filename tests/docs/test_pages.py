"""The documentation runs: every shell snippet of the guides and feature pages, every TOML block
checked like ``tlsgate check-config`` (see ``tests/docs/harness.py`` for the block markers).

Each page runs in its own temporary directory with its own free ports and its own mosquitto (the
broker the pages call "your broker on 127.0.0.1:1883"), and tlsgate processes it starts are
stopped at the end.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.docs import harness as h
from tests.procs import Mosquitto

#: Pages whose shell snippets run (quick start, guides, feature pages) and their Chinese twins.
RUN_PAGES = [
    "quickstart.md", "certificates.md", "mtls.md", "crl.md", "ocsp.md", "psk.md", "gm.md",
    "http-auth.md", "upstream.md", "cluster.md", "admin.md", "metrics.md", "workers.md",
    "troubleshooting.md", "migrating.md", "deployment.md",
]
# The Chinese guides are not run again: test_chinese_page_in_step checks they hold exactly the
# commands and configs of the English pages, which run.

#: English pages that must have a Chinese version in docs/zh/ (issue 13).
ZH_PAGES = ["quickstart.md", "certificates.md", "gm.md", "configuration.md"]


def _page_ids() -> list[str]:
    return RUN_PAGES


@pytest.mark.parametrize("name", _page_ids())
def test_page_runs(name: str, tmp_path: Path) -> None:
    page = h.DOCS / name
    assert page.exists(), f"{page} is missing"
    blocks = h.blocks(page.read_text(encoding="utf-8"))
    for b in blocks:
        unknown = set(b.attrs) - {"external", "background", "wait", "expect-fail", "expect",
                                  "file", "fragment", "invalid"}
        assert not unknown, f"{name} {b.where}: unknown attribute(s) {unknown}"
    needs_run = any(h.runnable(b) for b in blocks)
    needs_check = any(b.lang == "toml" and not b.has("external") for b in blocks)
    if not needs_run and not needs_check:
        pytest.skip(f"{name} has nothing to run or check")
    for tool in ("mosquitto", "mosquitto_pub", "openssl"):
        if needs_run and shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (apt install mosquitto mosquitto-clients "
                        "openssl; .ci/run does)")

    work = tmp_path / "work"
    work.mkdir()
    (work / "examples").symlink_to(h.REPO / "examples")
    bindir = tmp_path / "bin"
    h.make_shim(bindir)
    env = h.env_for(bindir)
    ports = h.port_map()
    broker = None
    run = h.PageRun(page, work, ports, env)
    try:
        if needs_run:
            broker = Mosquitto(tmp_path / "broker", port=ports[1883]).start()
        for b in blocks:
            if "file" in b.attrs and not b.has("external"):
                run.write_file(b)
            if h.runnable(b):
                run.run_shell(b)
        run.stop()
        if needs_check:
            if not (work / "etc/certs/server.pem").exists():
                h.subprocess.run(["tlsgate", "certs", "init", "etc/certs", "--client",
                                  "device-001"], cwd=work, env=env, check=True,
                                 capture_output=True)
            h.make_fixtures(work, env)
            failures = run.check_tomls(blocks)
            assert not failures, f"{name}: TOML blocks that do not pass check-config:\n" + \
                "\n".join(failures)
    finally:
        run.stop()
        if broker is not None:
            broker.stop()


@pytest.mark.parametrize("name", ZH_PAGES)
def test_chinese_page_exists(name: str) -> None:
    en, zh = h.DOCS / name, h.DOCS / "zh" / name
    assert en.exists(), f"{en} is missing"
    assert zh.exists(), f"{zh} is missing: the quick start, certificate guide, 国密 page and " \
                        "configuration reference are kept in Chinese too"


@pytest.mark.parametrize("name", ["quickstart.md", "certificates.md", "gm.md"])
def test_chinese_page_in_step(name: str) -> None:
    """The Chinese guide runs the same commands and configs as the English one (comments may be
    translated): same shell and TOML blocks, in the same order, once comments are removed."""
    def code(path: Path) -> list[tuple[str, str]]:
        out = []
        for b in h.blocks(path.read_text(encoding="utf-8")):
            if b.lang not in (*h.SHELL, "toml"):
                continue
            lines = [ln.split(" #", 1)[0].rstrip() for ln in b.text.splitlines()
                     if not ln.lstrip().startswith("#")]
            out.append((b.lang, "\n".join(ln for ln in lines if ln)))
        return out

    en, zh = code(h.DOCS / name), code(h.DOCS / "zh" / name)
    assert zh == en, f"docs/zh/{name} and docs/{name} differ in their commands/configs: keep " \
                     "them in step"


def test_every_page_linked_from_index() -> None:
    index = (h.DOCS / "README.md").read_text(encoding="utf-8")
    for page in sorted(h.DOCS.glob("*.md")):
        if page.name != "README.md":
            assert f"({page.name}" in index, f"docs/README.md does not link {page.name}"


def test_relative_links_resolve() -> None:
    import re

    bad = []
    for page in sorted(h.DOCS.rglob("*.md")):
        text = page.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (page.parent / target).exists():
                bad.append(f"{page.relative_to(h.REPO)} -> {target}")
    assert not bad, "broken relative links:\n" + "\n".join(bad)
