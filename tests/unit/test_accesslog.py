"""The access log: line format (text and JSON), quoting, batching, and that a connection's record
is formatted when its batch is written, from what it held when the connection finished."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tlsgate.accesslog import AccessLog, text_value
from tlsgate.gateway.record import ConnRecord


def _generic(fields: dict[str, Any]) -> str:
    """The k=v text of a field dict, written the plain way (what access_text must equal)."""
    return " ".join(f"{k}={text_value(v)}" for k, v in fields.items())


def _record(**kw: Any) -> ConnRecord:
    rec = ConnRecord(kw.pop("listener", "ssl:default"), kw.pop("peer", ("192.0.2.7", 40001)))
    for k, v in kw.items():
        setattr(rec, k, v)
    return rec


def _log(tmp_path: Path, fmt: str = "text", tag: str = "w3") -> tuple[AccessLog, Path]:
    path = tmp_path / "access.log"
    log = AccessLog()
    log.configure(enabled=True, fmt=fmt, file=str(path), tag=tag)
    return log, path


def test_text_value_quotes_only_what_would_break_the_pairs() -> None:
    assert text_value(None) == "-"
    assert text_value("") == "-"
    assert text_value(0) == "0"
    assert text_value(False) == "False"
    assert text_value("TLSv1.3") == "TLSv1.3"
    assert text_value("设备-ü") == "设备-ü"  # not escaped: the log is UTF-8
    assert text_value("broker closed") == '"broker closed"'
    assert text_value("a=b") == '"a=b"'
    assert text_value('say "hi"') == '"say \\"hi\\""'
    assert text_value("two\nlines") == '"two\\nlines"'
    assert text_value("CN=dev 1,O=Acme") == '"CN=dev 1,O=Acme"'


_text = st.one_of(st.none(), st.text(max_size=40),
                  st.sampled_from(["", "a b", 'q"q', "k=v", "x\ny", "CN=é 1,O=Acme"]))


@settings(max_examples=300, deadline=None)
@given(listener=st.text(min_size=1, max_size=20), host=st.sampled_from(["10.0.0.1", "::1"]),
       port=st.integers(0, 65535), sni=_text, tls=st.sampled_from([None, "TLSv1.2", "TLSv1.3"]),
       cipher=_text, group=_text, resumed=st.booleans(), cert=_text, psk=_text,
       client_id=_text, username=_text, bin_=st.integers(0, 2**40), bout=st.integers(0, 2**40),
       dur=st.floats(0, 1e6), reason=_text)
def test_access_text_equals_the_generic_formatting_of_access_fields(
        listener: str, host: str, port: int, sni: str | None, tls: str | None,
        cipher: str | None, group: str | None, resumed: bool, cert: str | None,
        psk: str | None, client_id: str | None, username: str | None, bin_: int, bout: int,
        dur: float, reason: str | None) -> None:
    rec = _record(listener=listener, peer=(host, port), server_name=sni, tls_version=tls,
                  cipher=cipher, group=group, session_reused=resumed, cert_subject=cert,
                  psk_identity=psk, client_id=client_id, username=username, bytes_in=bin_,
                  bytes_out=bout, close_reason=reason)
    rec.closed_at = rec.started + dur
    assert rec.access_text() == _generic(rec.access_fields())


def test_text_line_is_stamped_with_the_close_time_and_the_process_tag(tmp_path: Path) -> None:
    log, path = _log(tmp_path)
    rec = _record(tls_version="TLSv1.3", cipher="TLS_AES_128_GCM_SHA256", group="x25519",
                  client_id="dev 1", close_reason="client closed", bytes_in=12, bytes_out=34)
    rec.started, rec.closed_at = 1_700_000_000.0, 1_700_000_000.25
    log.write_entry(rec)  # no running loop: written at once
    line = path.read_text()
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(1_700_000_000))
    assert line == (f"{stamp},250 INFO [w3] tlsgate.access: connection closed "
                    f"conn={rec.id} listener=ssl:default peer=192.0.2.7:40001 sni=- "
                    "tls=TLSv1.3 cipher=TLS_AES_128_GCM_SHA256 group=x25519 resumed=False "
                    'cert=- psk=- clientid="dev 1" user=- in=12 out=34 dur=0.250 '
                    'reason="client closed"\n')


def test_json_line_carries_the_fields_and_a_utc_timestamp(tmp_path: Path) -> None:
    log, path = _log(tmp_path, fmt="json", tag="w0")
    rec = _record(tls_version="TLSv1.2", session_reused=True, client_id="c-1",
                  close_reason="broker closed", bytes_in=5)
    rec.closed_at = 1_700_000_000.5
    log.write_entry(rec)
    doc = json.loads(path.read_text())
    assert doc["ts"] == "2023-11-14T22:13:20.500Z"
    assert doc["logger"] == "tlsgate.access" and doc["proc"] == "w0"
    assert doc["msg"] == "connection closed"
    assert doc["clientid"] == "c-1" and doc["resumed"] is True and doc["in"] == 5
    assert doc["reason"] == "broker closed" and doc["sni"] is None


def test_lines_are_written_in_batches_from_the_records_as_they_were_queued(
        tmp_path: Path) -> None:
    log, path = _log(tmp_path)

    async def run() -> tuple[str, str, str]:
        recs = []
        for i in range(3):
            rec = _record(client_id=f"c{i}", close_reason="client closed")
            rec.closed_at = time.time()
            log.write_entry(rec)
            recs.append(rec)
        before = path.read_text()
        await asyncio.sleep(0.3)  # the batch timer (0.1 s) fires
        after = path.read_text()
        for i in range(300):  # 256 queued: written at once, without waiting for the timer
            log.write_entry(_record(client_id=f"bulk{i}", closed_at=time.time()))
        return before, after, path.read_text()

    before, after, bulk = asyncio.run(run())
    assert before == ""
    assert [ln.split("clientid=")[1].split()[0] for ln in after.splitlines()] == ["c0", "c1", "c2"]
    assert bulk.count("clientid=bulk") == 256
    log.flush()
    assert path.read_text().count("clientid=bulk") == 300


def test_a_record_that_cannot_be_formatted_costs_its_own_line_only(tmp_path: Path) -> None:
    log, path = _log(tmp_path)

    class Broken(ConnRecord):
        __slots__ = ()

        def access_text(self) -> str:
            raise ValueError("boom")

    good = _record(client_id="ok-1")
    good.closed_at = time.time()
    bad = Broken("ssl:default", ("192.0.2.9", 1))
    bad.client_id = "bad-1"
    bad.closed_at = time.time()
    log._lines.extend([good, bad])  # one batch
    log.flush()
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    assert "clientid=ok-1" in lines[0]
    assert " INFO [w3] tlsgate.access: connection closed (unformattable) " in lines[1]
    assert "'clientid': 'bad-1'" in lines[1]


def test_disabled_log_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = AccessLog()
    log.configure(enabled=False, fmt="text", file=str(path), tag="")
    rec = _record(close_reason="x")
    rec.closed_at = time.time()
    log.write_entry(rec)
    log.flush()
    assert path.read_text() == ""


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_reconfiguring_writes_what_was_queued_in_the_old_format(tmp_path: Path, fmt: str) -> None:
    log, path = _log(tmp_path, fmt=fmt)

    async def run() -> None:
        rec = _record(client_id="before-reload")
        rec.closed_at = time.time()
        log.write_entry(rec)
        log.configure(enabled=True, fmt="json" if fmt == "text" else "text",
                      file=str(path), tag="w3")

    asyncio.run(run())
    line = path.read_text().splitlines()[0]
    assert line.startswith("{") == (fmt == "json")
    assert "before-reload" in line
