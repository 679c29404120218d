"""The configuration reference is generated from the schema and committed: it must be up to date,
complete, and the Chinese one must not drift from the English."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.docs import harness as h
from tlsgate.config import reference as ref
from tlsgate.config.reference_zh import ZH
from tlsgate.config.schema import Config


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_committed_reference_is_current(lang: str) -> None:
    committed = (h.REPO / ref.OUTPUT[lang]).read_text(encoding="utf-8")
    assert committed == ref.render(lang), (  # type: ignore[arg-type]
        f"{ref.OUTPUT[lang]} is not what the schema generates: run `make docs` and commit it")


def test_cli_check_agrees() -> None:
    for args in ([], ["--lang", "zh"]):
        p = subprocess.run([sys.executable, "-m", "tlsgate", "config-reference", "--check", *args],
                           cwd=h.REPO, capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr


def test_every_key_is_documented() -> None:
    ts = ref.tables()
    assert ref.check_descriptions(ts) == []
    page = ref.render("en")
    # every leaf key of the schema appears, by table
    for t in ts:
        for k in t.keys:
            assert f"| `{k.name}` |" in page
    # spot checks against the schema: type, default, required, rules
    assert "| `handshake_timeout` | duration | `\"15s\"` |" in page
    assert "| `workers` | integer 0–256 | `0` |" in page
    assert "| `url` | string | **required** |" in page
    assert '`fail_if_no_peer_cert = true needs verify = "verify_peer"`' in page
    assert "Also accepted as `[demo]`" in page
    assert len(ref.all_keys()) > 150


def test_reference_follows_a_schema_default() -> None:
    """The default shown is the schema's, not a copy: a config with no keys loads to it."""
    cfg = Config.model_validate({"listeners": {"ssl": {"a": {"ssl_options": {
        "certfile": "x", "keyfile": "y"}}}}})
    page = ref.render("en")
    assert f"| `capacity` | integer ≥ 1 | `{cfg.crl_cache.capacity}` |" in page


def test_zh_translation_complete() -> None:
    assert ref.translation_problems(ref.tables(), ZH) == []


def test_zh_generation_refuses_drift() -> None:
    ts = ref.tables()
    some_key = ts[0].keys[0].path
    stale = dict(ZH)
    stale[some_key] = ("an older English text", stale[some_key][1])
    with pytest.raises(ref.TranslationError, match="changed since it was translated"):
        ref.render("zh", stale)
    missing = dict(ZH)
    del missing[some_key]
    with pytest.raises(ref.TranslationError, match="no Chinese translation"):
        ref.render("zh", missing)
    orphan = dict(ZH)
    orphan["node.no_such_key"] = ("x", "y")
    with pytest.raises(ref.TranslationError, match="no such key"):
        ref.render("zh", orphan)
    todo = ref.todo(ts, missing)
    assert repr(some_key) in todo


def test_cli_reports_missing_translation(monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from tlsgate import cli
    from tlsgate.config import reference_zh

    broken = dict(ZH)
    broken.pop("node.workers")
    monkeypatch.setattr(reference_zh, "ZH", broken)
    res = CliRunner().invoke(cli.cli, ["config-reference", "--lang", "zh"])
    assert res.exit_code == 1
    assert "node.workers: no Chinese translation" in res.output
