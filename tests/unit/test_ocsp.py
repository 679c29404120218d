"""OCSP stapling and client OCSP checks against real responders on loopback.

Responders: tests.pkiservers.OcspResponder (aiohttp + cryptography; can misbehave) and
``openssl ocsp`` (interop). Clients: ``openssl s_client -status`` against a pyOpenSSL server.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import re
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import ocsp as cocsp
from OpenSSL import SSL

from tests.pkiservers import (
    BlockingTlsServer,
    Issued,
    OcspResponder,
    OpensslOcspResponder,
    TestCA,
    s_client,
)
from tlsgate.config.schema import OcspOptions
from tlsgate.tls.ocsp import (
    ClientOcspChecker,
    OcspConfigError,
    OcspRevokedError,
    OcspStapler,
    OcspValidationError,
    build_request,
    install_stapling,
    is_must_staple,
    refresh_delay,
    retry_delay,
    validate_staple,
    verify_response,
)
from tlsgate.tls.revocation_status import RevocationStatus

HOUR = 3600.0


# ------------------------------------------------------------------------------------------------
# fixtures
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def ca() -> TestCA:
    return TestCA("OCSP Test Root")


@pytest.fixture
async def responder(ca: TestCA):
    r = OcspResponder(ca)
    await r.start()
    yield r
    await r.stop()


def make_stapler(ca: TestCA, leaf: Issued, url: str, tmp_path: Path | None = None,
                 **kw) -> OcspStapler:
    kw.setdefault("status", RevocationStatus())
    kw.setdefault("retry_base", 0.05)
    return OcspStapler(name="listeners.ssl.test", cert=leaf.cert, issuer=ca.cert,
                       responder_url=url, data_dir=tmp_path, http_timeout=5.0, **kw)


# ------------------------------------------------------------------------------------------------
# schedule (pure)
# ------------------------------------------------------------------------------------------------
def test_refresh_at_halfway_when_earlier_than_interval() -> None:
    # 1 h validity, fetched right at thisUpdate: half-way (30 min) < refresh_interval (2 h)
    assert refresh_delay(1000.0, 1000.0, 1000.0 + HOUR, 2 * HOUR) == pytest.approx(HOUR / 2)


def test_refresh_at_interval_when_earlier_than_halfway() -> None:
    # 7-day response, 5-minute interval
    assert refresh_delay(0.0, 0.0, 7 * 86400.0, 300.0) == 300.0


def test_refresh_past_halfway_is_not_a_busy_loop() -> None:
    # a responder serving a 6-day-old response valid 7 days: past half-way already
    now = 6 * 86400.0
    assert refresh_delay(now, 0.0, 7 * 86400.0, 300.0, min_delay=30.0) == 30.0


def test_refresh_before_expiry_when_about_to_expire() -> None:
    # 10 s left: refresh in 5 s, not after the 30 s floor
    assert refresh_delay(90.0, 0.0, 100.0, 300.0, min_delay=30.0) == 5.0


def test_refresh_floor_never_exceeds_short_interval() -> None:
    assert refresh_delay(0.0, 0.0, 7 * 86400.0, 10.0, min_delay=30.0) == 10.0


def test_retry_backoff_doubles_up_to_cap() -> None:
    got = [retry_delay(n, base=2.0, cap=60.0) for n in range(1, 9)]
    assert got == [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
    assert retry_delay(1000, base=2.0, cap=60.0) == 60.0


# ------------------------------------------------------------------------------------------------
# validation (pure, responses built by the test responder)
# ------------------------------------------------------------------------------------------------
def _response(ca: TestCA, leaf: Issued, mode: str = "normal", *, signer: Issued | None = None,
              status: str = "good") -> bytes:
    r = OcspResponder(ca, signer=signer)
    r.statuses[leaf.serial] = status
    req = cocsp.load_der_ocsp_request(build_request(leaf.cert, ca.cert))
    return r.response_for(req, mode)


def _now() -> float:
    return dt.datetime.now(dt.UTC).timestamp()


def test_valid_response_signed_by_issuer(ca: TestCA) -> None:
    leaf = ca.server_cert()
    v = validate_staple(_response(ca, leaf), leaf.cert, ca.cert, now=_now())
    assert v.cert_status == "good" and v.signer == "issuer"
    assert v.this_update <= _now() < v.next_update


def test_valid_response_signed_by_delegated_responder(ca: TestCA) -> None:
    leaf = ca.server_cert()
    v = validate_staple(_response(ca, leaf, signer=ca.ocsp_signer()), leaf.cert, ca.cert,
                        now=_now())
    assert v.signer.startswith("delegated responder") and "OCSP Responder" in v.signer


@pytest.mark.parametrize(("mode", "status", "needle"), [
    ("normal", "revoked", "REVOKED"),
    ("normal", "unknown", "status unknown"),
    ("wrong_key", "good", "signature does not verify"),
    ("bad_delegate", "good", "lacks the id-kp-OCSPSigning"),
    ("expired", "good", "expired at"),
    ("future", "good", "in the future"),
    ("other_serial", "good", "CertID mismatch"),
    ("unauthorized", "good", "unauthorized"),
])
def test_bad_responses_rejected(ca: TestCA, mode: str, status: str, needle: str) -> None:
    leaf = ca.server_cert()
    with pytest.raises(OcspValidationError, match=needle):
        validate_staple(_response(ca, leaf, mode, status=status), leaf.cert, ca.cert, now=_now())


def test_response_from_another_ca_rejected(ca: TestCA) -> None:
    leaf = ca.server_cert()
    other = TestCA("Other Root")
    # the other CA answers about a certificate with the same serial: CertID cannot match
    with pytest.raises(OcspValidationError, match="CertID mismatch"):
        validate_staple(_response(other, Issued(leaf.cert, leaf.key)), leaf.cert, ca.cert,
                        now=_now())


def test_delegate_of_another_ca_rejected(ca: TestCA) -> None:
    leaf = ca.server_cert()
    foreign_signer = TestCA("Foreign").ocsp_signer()
    with pytest.raises(OcspValidationError, match="not issued by it"):
        verify_response(_response(ca, leaf, signer=foreign_signer), leaf.cert, ca.cert,
                        now=_now())


def test_garbage_rejected(ca: TestCA) -> None:
    leaf = ca.server_cert()
    with pytest.raises(OcspValidationError, match="not a DER OCSP response"):
        validate_staple(b"<html>hello</html>", leaf.cert, ca.cert, now=_now())


def test_no_next_update_uses_default_validity(ca: TestCA) -> None:
    leaf = ca.server_cert()
    der = _response(ca, leaf, "no_next_update")
    with pytest.raises(OcspValidationError, match="no nextUpdate"):
        validate_staple(der, leaf.cert, ca.cert, now=_now())
    v = validate_staple(der, leaf.cert, ca.cert, now=_now(), default_validity=300.0)
    assert not v.has_next_update and v.next_update == pytest.approx(v.this_update + 300.0)


def test_revoked_is_its_own_error_type(ca: TestCA) -> None:
    leaf = ca.server_cert()
    with pytest.raises(OcspRevokedError):
        validate_staple(_response(ca, leaf, status="revoked"), leaf.cert, ca.cert, now=_now())


def test_must_staple_detected(ca: TestCA) -> None:
    assert is_must_staple(ca.server_cert(must_staple=True).cert)
    assert not is_must_staple(ca.server_cert().cert)


# ------------------------------------------------------------------------------------------------
# the stapler against a live responder
# ------------------------------------------------------------------------------------------------
async def test_stapler_validates_and_serves(ca: TestCA, responder: OcspResponder,
                                            tmp_path: Path) -> None:
    leaf = ca.server_cert(ocsp_url=responder.url)
    st = make_stapler(ca, leaf, responder.url, tmp_path)
    assert st.current() is None
    assert await st.refresh_now()
    der = st.current()
    assert der is not None and responder.requests == 1
    v = validate_staple(der, leaf.cert, ca.cert, now=_now())
    assert v.cert_status == "good"
    snap = st.status.to_json(_now())
    assert snap["stapled"] and snap["cert_status"] == "good" and snap["last_error"] is None
    assert snap["staple_age_seconds"] >= 0
    json.dumps(snap)
    # persisted atomically under data_dir/ocsp/<sha256>.der
    assert (tmp_path / "ocsp" / f"{st.fingerprint}.der").read_bytes() == der
    await st.stop()


@pytest.mark.parametrize(("mode", "status", "needle"), [
    ("normal", "revoked", "REVOKED"),
    ("wrong_key", "good", "signature does not verify"),
    ("expired", "good", "expired at"),
    ("malformed", "good", "not a DER OCSP response"),
    ("http_500", "good", "HTTP 500"),
])
async def test_stapler_rejects_bad_response_with_logged_reason(
        ca: TestCA, responder: OcspResponder, tmp_path: Path, caplog: pytest.LogCaptureFixture,
        mode: str, status: str, needle: str) -> None:
    leaf = ca.server_cert()
    responder.mode = mode
    responder.statuses[leaf.serial] = status
    st = make_stapler(ca, leaf, responder.url, tmp_path)
    with caplog.at_level(logging.ERROR, logger="tlsgate.ocsp"):
        assert not await st.refresh_now()
    assert st.current() is None
    assert needle in (st.status.last_error or "")
    assert any(needle in r.getMessage() for r in caplog.records)
    assert not (tmp_path / "ocsp" / f"{st.fingerprint}.der").exists()
    await st.stop()


async def test_revoked_answer_withdraws_held_staple(ca: TestCA, responder: OcspResponder,
                                                    tmp_path: Path) -> None:
    leaf = ca.server_cert()
    st = make_stapler(ca, leaf, responder.url, tmp_path)
    assert await st.refresh_now() and st.current() is not None
    responder.statuses[leaf.serial] = "revoked"
    assert not await st.refresh_now()
    assert st.current() is None
    assert not (tmp_path / "ocsp" / f"{st.fingerprint}.der").exists()
    await st.stop()


async def test_bad_response_keeps_last_good(ca: TestCA, responder: OcspResponder) -> None:
    leaf = ca.server_cert()
    st = make_stapler(ca, leaf, responder.url)
    assert await st.refresh_now()
    good = st.current()
    responder.mode = "wrong_key"
    assert not await st.refresh_now()
    assert st.current() == good
    await st.stop()


async def test_responder_down_keeps_last_good_and_backs_off(ca: TestCA, responder: OcspResponder,
                                                           tmp_path: Path) -> None:
    leaf = ca.server_cert()
    st = make_stapler(ca, leaf, responder.url, tmp_path, retry_base=1.0, refresh_interval=300.0)
    assert await st.refresh_now()
    good = st.current()
    await responder.stop()
    delays = []
    for _ in range(3):
        assert not await st.refresh_now()
        delays.append(st.next_refresh_in)
    assert st.current() == good                       # still stapled
    assert delays == [1.0, 2.0, 4.0]                  # exponential back-off
    assert "cannot reach" in (st.status.last_error or "")
    assert st.status.consecutive_failures == 3
    await st.stop()


async def test_staple_dropped_at_next_update(ca: TestCA, responder: OcspResponder) -> None:
    leaf = ca.server_cert()
    responder.validity = dt.timedelta(minutes=10)
    t = [_now()]
    st = make_stapler(ca, leaf, responder.url, clock=lambda: t[0])
    assert await st.refresh_now()
    held = st.held
    assert held is not None
    t[0] = held.next_update - 1
    assert st.current() is not None
    t[0] = held.next_update
    assert st.current() is None                        # never staple an expired response
    await st.stop()


async def test_restart_serves_persisted_response_with_responder_down(
        ca: TestCA, responder: OcspResponder, tmp_path: Path) -> None:
    leaf = ca.server_cert()
    first = make_stapler(ca, leaf, responder.url, tmp_path)
    assert await first.refresh_now()
    der = first.current()
    await first.stop()
    await responder.stop()

    # "restart": a new stapler, same data_dir, responder down
    second = make_stapler(ca, leaf, responder.url, tmp_path)
    await second.start()
    assert second.current() == der                     # before any fetch succeeded
    assert second.status.source == "disk"
    # the background refresh fails (responder down) and the staple stays
    for _ in range(100):
        if second.status.consecutive_failures:
            break
        await asyncio.sleep(0.02)
    assert second.status.consecutive_failures >= 1
    assert second.current() == der
    await second.stop()


async def test_persisted_response_revalidated_at_start(ca: TestCA, responder: OcspResponder,
                                                       tmp_path: Path) -> None:
    leaf = ca.server_cert()
    first = make_stapler(ca, leaf, responder.url, tmp_path)
    assert await first.refresh_now()
    await first.stop()
    # a later start sees the file expired: not stapled, file removed
    later = make_stapler(ca, leaf, responder.url, tmp_path, clock=lambda: _now() + 3 * 86400)
    assert not later.load_persisted()
    assert later.current() is None
    assert not (tmp_path / "ocsp" / f"{later.fingerprint}.der").exists()


async def test_background_refresh_runs_on_schedule(ca: TestCA, responder: OcspResponder) -> None:
    leaf = ca.server_cert()
    st = make_stapler(ca, leaf, responder.url, refresh_interval=0.1, min_refresh=0.1)
    await st.start()
    for _ in range(100):
        if responder.requests >= 3:
            break
        await asyncio.sleep(0.02)
    assert responder.requests >= 3 and st.current() is not None
    await st.stop()


async def test_must_staple_without_staple_warns(ca: TestCA, responder: OcspResponder,
                                                caplog: pytest.LogCaptureFixture) -> None:
    leaf = ca.server_cert(must_staple=True)
    responder.mode = "http_500"
    st = make_stapler(ca, leaf, responder.url)
    with caplog.at_level(logging.WARNING, logger="tlsgate.ocsp"):
        assert not await st.refresh_now()
    assert any("must-staple" in r.getMessage() and r.levelno == logging.WARNING
               for r in caplog.records)
    assert st.status.to_json(_now())["warning"]
    await st.stop()


def test_from_options_finds_issuer_and_url(ca: TestCA, tmp_path: Path) -> None:
    inter = ca.intermediate("OCSP Test Intermediate")
    leaf = inter.server_cert(ocsp_url="http://127.0.0.1:9/ocsp")
    certfile, _ = leaf.write(tmp_path, "server", chain=[inter.cert])
    st = OcspStapler.from_options(name="l", certfile=certfile, options=OcspOptions(),
                                  status=RevocationStatus())
    assert st.issuer == inter.cert and st.responder_url == "http://127.0.0.1:9/ocsp"
    # issuer from cacertfile when certfile has no chain
    lone, _ = leaf.write(tmp_path, "lone")
    (tmp_path / "ca.pem").write_bytes(inter.cert.public_bytes(serialization.Encoding.PEM)
                                      + ca.cert.public_bytes(serialization.Encoding.PEM))
    st = OcspStapler.from_options(name="l", certfile=lone, options=OcspOptions(),
                                  cacertfile=str(tmp_path / "ca.pem"), status=RevocationStatus())
    assert st.issuer == inter.cert


def test_from_options_errors_name_the_key(ca: TestCA, tmp_path: Path) -> None:
    leaf = ca.server_cert()                             # no AIA, no chain
    lone, _ = leaf.write(tmp_path, "lone")
    with pytest.raises(OcspConfigError, match=r"ssl_options\.ocsp\.issuer_pem"):
        OcspStapler.from_options(name="l", certfile=lone, options=OcspOptions(),
                                 status=RevocationStatus())
    (tmp_path / "issuer.pem").write_bytes(ca.cert.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(OcspConfigError, match=r"ssl_options\.ocsp\.responder_url"):
        OcspStapler.from_options(name="l", certfile=lone, options=OcspOptions(
            issuer_pem=str(tmp_path / "issuer.pem")), status=RevocationStatus())
    wrong = TestCA("Wrong")
    (tmp_path / "wrong.pem").write_bytes(wrong.cert.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(OcspConfigError, match="no certificate in"):
        OcspStapler.from_options(name="l", certfile=lone, options=OcspOptions(
            issuer_pem=str(tmp_path / "wrong.pem"), responder_url="http://x/"),
            status=RevocationStatus())


# ------------------------------------------------------------------------------------------------
# interop: openssl ocsp as the responder
# ------------------------------------------------------------------------------------------------
async def test_openssl_ocsp_responder_interop(ca: TestCA, tmp_path: Path) -> None:
    good, bad = ca.server_cert("good.test"), ca.server_cert("revoked.test")
    srv = OpensslOcspResponder(tmp_path / "ocspd", ca, ca.ocsp_signer(),
                               [(good.cert, "V"), (bad.cert, "R")])
    srv.start()
    try:
        st = make_stapler(ca, good, srv.url)
        assert await st.refresh_now(), st.status.last_error
        assert st.held is not None and st.held.signer.startswith("delegated responder")
        await st.stop()
        st2 = make_stapler(ca, bad, srv.url)
        assert not await st2.refresh_now()
        assert "REVOKED" in (st2.status.last_error or "")
        assert st2.current() is None
        await st2.stop()
    finally:
        srv.stop()


# ------------------------------------------------------------------------------------------------
# what a real client sees: openssl s_client -status
# ------------------------------------------------------------------------------------------------
def _server_ctx(leaf: Issued, chain: list[x509.Certificate]) -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.use_certificate(leaf.cert)
    for c in chain:
        ctx.add_extra_chain_cert(c)
    ctx.use_privatekey(leaf.key)
    return ctx


@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
@pytest.mark.parametrize("sni", [True, False])
async def test_s_client_sees_good_staple(ca: TestCA, responder: OcspResponder, tmp_path: Path,
                                         version: str, sni: bool) -> None:
    leaf = ca.server_cert("localhost", ocsp_url=responder.url)
    st = make_stapler(ca, leaf, responder.url)
    assert await st.refresh_now()
    ctx = _server_ctx(leaf, [])
    install_stapling(ctx, lambda: st)
    (tmp_path / "ca.pem").write_bytes(ca.cert.public_bytes(serialization.Encoding.PEM))
    name_args = ["-servername", "localhost"] if sni else ["-noservername"]
    with BlockingTlsServer(ctx) as srv:
        out = await s_client(srv.port, version, "-status", *name_args,
                             "-CAfile", str(tmp_path / "ca.pem"))
    assert "OCSP Response Status: successful" in out, out
    assert "Cert Status: good" in out, out
    assert "hello from tlsgate test" in out
    await st.stop()


@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
async def test_no_staple_means_no_staple_not_failure(ca: TestCA, tmp_path: Path,
                                                     version: str) -> None:
    leaf = ca.server_cert("localhost")
    ctx = _server_ctx(leaf, [])
    install_stapling(ctx, lambda: None)
    with BlockingTlsServer(ctx) as srv:
        out = await s_client(srv.port, version, "-status", "-noservername")
    assert "OCSP response: no response sent" in out, out
    assert "hello from tlsgate test" in out


async def test_sni_context_staples_its_own_certificate(ca: TestCA, responder: OcspResponder,
                                                       tmp_path: Path) -> None:
    default_leaf = ca.server_cert("default.test")
    other_leaf = ca.server_cert("other.test")
    st_default = make_stapler(ca, default_leaf, responder.url)
    st_other = make_stapler(ca, other_leaf, responder.url)
    assert await st_default.refresh_now() and await st_other.refresh_now()
    ctx_default = _server_ctx(default_leaf, [])
    ctx_other = _server_ctx(other_leaf, [])
    install_stapling(ctx_default, lambda: st_default)
    install_stapling(ctx_other, lambda: st_other)

    def pick(conn: SSL.Connection) -> None:
        if conn.get_servername() == b"other.test":
            conn.set_context(ctx_other)
    ctx_default.set_tlsext_servername_callback(pick)
    with BlockingTlsServer(ctx_default) as srv:
        out_other = await s_client(srv.port, "-tls1_3", "-status", "-servername", "other.test")
        out_default = await s_client(srv.port, "-tls1_2", "-status", "-noservername")
    # openssl prints whole bytes of the serial: a leading zero nibble may appear
    assert re.search(rf"Serial Number: 0?{other_leaf.serial:X}\n", out_other), out_other
    assert "Cert Status: good" in out_other
    assert re.search(rf"Serial Number: 0?{default_leaf.serial:X}\n", out_default), out_default
    await st_default.stop()
    await st_other.stop()


async def test_stapling_callback_failure_is_not_a_handshake_failure(ca: TestCA) -> None:
    leaf = ca.server_cert("localhost")
    ctx = _server_ctx(leaf, [])

    def broken() -> OcspStapler:
        raise RuntimeError("boom")
    install_stapling(ctx, broken)
    with BlockingTlsServer(ctx) as srv:
        out = await s_client(srv.port, "-tls1_3", "-status", "-noservername")
    assert "hello from tlsgate test" in out and srv.handshakes == 1


# ------------------------------------------------------------------------------------------------
# client certificates (ocsp.check_client)
# ------------------------------------------------------------------------------------------------
async def test_client_checker_good_revoked_and_cache(ca: TestCA, responder: OcspResponder) -> None:
    good = ca.client_cert("dev-good", ocsp_url=responder.url)
    bad = ca.client_cert("dev-bad", ocsp_url=responder.url)
    responder.statuses[bad.serial] = "revoked"
    status = RevocationStatus()
    chk = ClientOcspChecker(status=status, http_timeout=5.0)
    r1 = await chk.check(good.cert, ca.cert)
    assert r1.status == "good" and not r1.from_cache
    r2 = await chk.check(good.cert, ca.cert)
    assert r2.status == "good" and r2.from_cache
    assert responder.requests == 1                       # cached until nextUpdate
    rb = await chk.check(bad.cert, ca.cert)
    assert rb.status == "revoked" and "revoked" in rb.reason
    assert chk.cached(*child_key(bad)) is not None
    snap = status.snapshot()["client_ocsp"]
    assert snap["good"] == 1 and snap["revoked"] == 1 and snap["cache_hits"] == 1
    await chk.close()


def child_key(i: Issued) -> tuple[bytes, int]:
    return i.cert.issuer.public_bytes(), i.serial


async def test_client_checker_concurrent_checks_share_one_request(
        ca: TestCA, responder: OcspResponder) -> None:
    leaf = ca.client_cert("dev", ocsp_url=responder.url)
    chk = ClientOcspChecker(status=RevocationStatus())
    results = await asyncio.gather(*(chk.check(leaf.cert, ca.cert) for _ in range(10)))
    assert {r.status for r in results} == {"good"} and responder.requests == 1
    await chk.close()


async def test_client_checker_errors_cached_briefly(ca: TestCA, responder: OcspResponder) -> None:
    leaf = ca.client_cert("dev", ocsp_url=responder.url)
    responder.mode = "wrong_key"
    t = [_now()]
    chk = ClientOcspChecker(status=RevocationStatus(), failure_ttl=30.0, clock=lambda: t[0])
    r = await chk.check(leaf.cert, ca.cert)
    assert r.status == "error" and "signature" in r.reason
    await chk.check(leaf.cert, ca.cert)
    assert responder.requests == 1
    t[0] += 31
    responder.mode = "normal"
    assert (await chk.check(leaf.cert, ca.cert)).status == "good"
    assert responder.requests == 2
    await chk.close()


async def test_client_checker_without_aia(ca: TestCA) -> None:
    chk = ClientOcspChecker(status=RevocationStatus())
    r = await chk.check(ca.client_cert("no-aia").cert, ca.cert)
    assert r.status == "no_responder"
    await chk.close()


# ------------------------------------------------------------------------------------------------
# client OCSP through the handshake guard, seen by openssl s_client
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
async def test_client_ocsp_in_handshake(ca: TestCA, responder: OcspResponder, tmp_path: Path,
                                        version: str) -> None:
    from tests.pkiservers import GuardedTlsServer
    from tlsgate.config.schema import ServerSslOptions
    from tlsgate.tls.revocation_guard import ClientRevocationGuard

    good = ca.client_cert("dev-good", ocsp_url=responder.url)
    bad = ca.client_cert("dev-bad", ocsp_url=responder.url)
    responder.statuses[bad.serial] = "revoked"
    (tmp_path / "ca.pem").write_bytes(ca.cert.public_bytes(serialization.Encoding.PEM))
    opts = ServerSslOptions(verify="verify_peer", cacertfile=str(tmp_path / "ca.pem"),
                            ocsp=OcspOptions(check_client=True))
    checker = ClientOcspChecker(status=RevocationStatus())
    guard = ClientRevocationGuard(opts, None, client_ocsp=checker)
    server = ca.server_cert("localhost")
    ctx = _server_ctx(server, [])
    ctx.load_verify_locations(str(tmp_path / "ca.pem"))     # no CRL check: the context's store
    guard.attach(ctx, SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT)
    srv = GuardedTlsServer(ctx, guard)
    await srv.start()
    args = {}
    for who, name in ((good, "good"), (bad, "bad")):
        cert, key = who.write(tmp_path, name)
        args[name] = ["-cert", cert, "-key", key]
    out = await s_client(srv.port, version, *args["bad"])
    assert "alert certificate revoked" in out, out
    out = await s_client(srv.port, version, *args["good"])
    assert "welcome" in out, out
    assert responder.requests == 2
    out = await s_client(srv.port, version, *args["good"])
    assert "welcome" in out
    assert responder.requests == 2            # cached: no hold, no request
    assert srv.records[2].verdict.allow
    await srv.stop()
    await checker.close()


async def test_fetcher_hook_and_forgetting_status(ca: TestCA, responder: OcspResponder) -> None:
    leaf = ca.server_cert()
    seen: list[str] = []

    async def fetcher(url: str, request: bytes, timeout: float) -> bytes:
        seen.append(url)
        return responder.response_for(cocsp.load_der_ocsp_request(request))

    status = RevocationStatus()
    st = make_stapler(ca, leaf, "http://responder.invalid/", status=status, fetcher=fetcher)
    assert await st.refresh_now() and st.current() is not None
    assert seen == ["http://responder.invalid/"] and responder.requests == 0
    assert status.snapshot()["ocsp_staples"]
    await st.stop(forget=True)
    assert status.snapshot()["ocsp_staples"] == []
