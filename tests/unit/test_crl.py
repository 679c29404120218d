"""CRL checking: the cache against a real HTTP CRL server, and what a real client
(``openssl s_client``) sees from a memory-BIO TLS server using ClientRevocationGuard.

PKI used by the handshake tests: Root (cacertfile) -> Intermediate (sent by the client; its CDP
is root.crl) -> devices (CDP inter.crl). So CRLs come from the distribution points of the client
certificate and of its intermediate, as SPEC §4 asks.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL

from tests.pkiservers import (
    CrlServer,
    GuardedTlsServer,
    Issued,
    TestCA,
    crl_der,
    crl_pem,
    s_client,
    start_s_client,
)
from tlsgate.config.schema import CrlCacheConfig, ServerSslOptions
from tlsgate.tls.crl import (
    ALERT_CERTIFICATE_REVOKED,
    ALERT_UNKNOWN_CA,
    CertId,
    CrlCache,
    CrlError,
    CrlFetchError,
    CrlValidationError,
    check_crl,
    crl_distribution_urls,
    load_crl,
)
from tlsgate.tls.revocation_guard import (
    ClientRevocationGuard,
    LiveConnectionIndex,
    peer_cert_ids,
    tls12_alert_record,
    tls13_alert_record,
)
from tlsgate.tls.revocation_status import RevocationStatus

REVOKED_ALERT = "alert certificate revoked"
UNKNOWN_CA_ALERT = "alert unknown ca"


def _now() -> float:
    return dt.datetime.now(dt.UTC).timestamp()


# ------------------------------------------------------------------------------------------------
# fixtures
# ------------------------------------------------------------------------------------------------
@pytest.fixture
async def crl_server():
    s = CrlServer()
    s.reserve_port()
    await s.start()
    yield s
    await s.stop()


@dataclasses.dataclass
class Pki:
    root: TestCA
    inter: TestCA
    server: Issued
    good: Issued
    bad: Issued
    dir: Path
    ca_file: str

    def client_args(self, who: Issued, name: str) -> list[str]:
        cert, key = who.write(self.dir, name)
        chain = self.dir / "chain.pem"
        chain.write_bytes(self.inter.cert.public_bytes(serialization.Encoding.PEM))
        return ["-cert", cert, "-cert_chain", str(chain), "-key", key, "-CAfile", self.ca_file]


@pytest.fixture
def pki(crl_server: CrlServer, tmp_path: Path) -> Pki:
    root = TestCA("CRL Test Root")
    inter = root.intermediate("CRL Test Intermediate", crl_url=crl_server.url("root.crl"))
    good = inter.client_cert("device-good", crl_url=crl_server.url("inter.crl"))
    bad = inter.client_cert("device-bad", crl_url=crl_server.url("inter.crl"))
    crl_server.content["inter.crl"] = crl_der(inter.crl([bad.serial]))
    crl_server.content["root.crl"] = crl_pem(root.crl([]))          # PEM and DER both served
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(root.cert.public_bytes(serialization.Encoding.PEM))
    return Pki(root, inter, root.server_cert("localhost"), good, bad, tmp_path, str(ca_file))


@pytest.fixture
async def cache(tmp_path: Path):
    c = CrlCache(CrlCacheConfig(failure_threshold=60.0, http_timeout=5.0),
                 data_dir=tmp_path / "data", status=RevocationStatus())
    yield c
    await c.close()


def make_guard(pki: Pki, cache: CrlCache, **opts: object) -> tuple[ClientRevocationGuard,
                                                                  SSL.Context]:
    options = ServerSslOptions(verify="verify_peer", fail_if_no_peer_cert=True,
                               cacertfile=pki.ca_file, enable_crl_check=True, **opts)
    guard = ClientRevocationGuard(options, cache, name="listeners.ssl.test")
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.use_certificate(pki.server.cert)
    ctx.use_privatekey(pki.server.key)
    ctx.load_verify_locations(pki.ca_file)       # the listener's store (as context.py does)
    guard.attach(ctx, SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT)
    return guard, ctx


async def serve(guard: ClientRevocationGuard, ctx: SSL.Context, **kw: object) -> GuardedTlsServer:
    srv = GuardedTlsServer(ctx, guard, **kw)  # type: ignore[arg-type]
    await srv.start()
    return srv


TLS_VARIANTS = [
    pytest.param(["-tls1_2"], id="tls1.2"),
    pytest.param(["-tls1_3", "-ciphersuites", "TLS_AES_128_GCM_SHA256"], id="tls1.3-aes128"),
    pytest.param(["-tls1_3", "-ciphersuites", "TLS_AES_256_GCM_SHA384"], id="tls1.3-aes256"),
    pytest.param(["-tls1_3", "-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256"], id="tls1.3-chacha"),
]


# ------------------------------------------------------------------------------------------------
# parsing and validation (pure)
# ------------------------------------------------------------------------------------------------
def test_load_pem_and_der(pki: Pki) -> None:
    crl = pki.inter.crl([1, 2, 3])
    assert load_crl(crl_pem(crl), "x").issuer == crl.issuer
    assert load_crl(crl_der(crl), "x") == crl
    with pytest.raises(CrlValidationError, match="src: not a DER CRL"):
        load_crl(b"\x30\x03junk", "src")
    with pytest.raises(CrlValidationError, match="not a PEM CRL"):
        load_crl(b"-----BEGIN X509 CRL-----\nnope\n-----END X509 CRL-----\n", "src")


def test_check_crl_signature_issuer_and_dates(pki: Pki) -> None:
    now = _now()
    check_crl(pki.inter.crl(), pki.inter.cert, now=now, source="ok")
    forged = pki.inter.crl(key=pki.root.key)          # right name, wrong key
    with pytest.raises(CrlValidationError, match="signature does not verify"):
        check_crl(forged, pki.inter.cert, now=now, source="s")
    with pytest.raises(CrlValidationError, match="CRL issued by"):
        check_crl(pki.root.crl(), pki.inter.cert, now=now, source="s")
    old = pki.inter.crl(this_update=dt.datetime.now(dt.UTC) - dt.timedelta(days=3),
                        next_update=dt.datetime.now(dt.UTC) - dt.timedelta(days=1))
    with pytest.raises(CrlValidationError, match="expired at"):
        check_crl(old, pki.inter.cert, now=now, source="s")
    check_crl(old, pki.inter.cert, now=now, source="s", allow_expired=True)
    future = pki.inter.crl(this_update=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
    with pytest.raises(CrlValidationError, match="in the future"):
        check_crl(future, pki.inter.cert, now=now, source="s")


def test_distribution_points(pki: Pki, crl_server: CrlServer) -> None:
    assert crl_distribution_urls(pki.good.cert) == [crl_server.url("inter.crl")]
    assert crl_distribution_urls(pki.inter.cert) == [crl_server.url("root.crl")]
    assert crl_distribution_urls(pki.root.cert) == []


def test_alert_records() -> None:
    assert tls12_alert_record(44) == bytes.fromhex("15030300020 22c".replace(" ", ""))
    rec = tls13_alert_record("TLS_AES_128_GCM_SHA256", b"\x01" * 32, 44)
    assert rec[:3] == b"\x17\x03\x03" and len(rec) == 5 + 3 + 16
    assert tls13_alert_record("TLS_SM4_GCM_SM3", b"\x01" * 32, 44) == b""


# ------------------------------------------------------------------------------------------------
# the cache against the CRL server
# ------------------------------------------------------------------------------------------------
async def test_fetch_validates_caches_and_dedups(pki: Pki, crl_server: CrlServer,
                                                 cache: CrlCache) -> None:
    url = crl_server.url("inter.crl")
    crl_server.delay = 0.1
    got = await asyncio.gather(*(cache.fetch(url, pki.inter.cert) for _ in range(5)))
    assert all(g is got[0] for g in got)
    assert crl_server.hits["inter.crl"] == 1                    # one download for five callers
    assert await cache.fetch(url, pki.inter.cert) is got[0]     # held and current: no request
    assert crl_server.hits["inter.crl"] == 1
    assert cache.revocation_of(pki.inter.cert.subject.public_bytes(), pki.bad.serial)
    assert cache.revocation_of(pki.inter.cert.subject.public_bytes(), pki.good.serial) is None


async def test_wrongly_signed_crl_not_cached(pki: Pki, crl_server: CrlServer,
                                             cache: CrlCache) -> None:
    crl_server.content["inter.crl"] = crl_der(pki.inter.crl(key=pki.root.key))
    with pytest.raises(CrlValidationError, match="signature does not verify"):
        await cache.fetch(crl_server.url("inter.crl"), pki.inter.cert)
    assert cache.get(crl_server.url("inter.crl")) is None
    snap = cache._status.snapshot()["crls"][0]
    assert "signature does not verify" in snap["last_error"] and not snap["cached"]


async def test_failure_threshold_backoff(pki: Pki, crl_server: CrlServer) -> None:
    t = [_now()]
    c = CrlCache(CrlCacheConfig(failure_threshold=60.0), status=RevocationStatus(),
                 clock=lambda: t[0])
    url = crl_server.url("inter.crl")
    crl_server.status = 503
    with pytest.raises(CrlFetchError, match="HTTP 503"):
        await c.fetch(url, pki.inter.cert)
    assert c.in_backoff(url)
    with pytest.raises(CrlFetchError, match="failure_threshold"):
        await c.fetch(url, pki.inter.cert)
    assert crl_server.hits["inter.crl"] == 1                    # no request during back-off
    crl_server.status = 200
    t[0] += 61
    assert not c.in_backoff(url)
    assert await c.fetch(url, pki.inter.cert)
    assert crl_server.hits["inter.crl"] == 2
    await c.close()


async def test_refresh_keeps_old_crl_when_server_down(pki: Pki, crl_server: CrlServer,
                                                      cache: CrlCache) -> None:
    url = crl_server.url("inter.crl")
    held = await cache.fetch(url, pki.inter.cert)
    await crl_server.stop()
    assert await cache.refresh_all() == 0
    assert cache.get(url) is held
    assert "cannot fetch" in (cache._status.crl(url).last_error or "")


async def test_lru_eviction(pki: Pki, crl_server: CrlServer, tmp_path: Path) -> None:
    c = CrlCache(CrlCacheConfig(capacity=2), data_dir=tmp_path / "d", status=RevocationStatus())
    for name in ("a", "b", "c"):
        crl_server.content[name] = crl_der(pki.inter.crl())
    a, b, cc = (crl_server.url(n) for n in "abc")
    await c.fetch(a, pki.inter.cert)
    await c.fetch(b, pki.inter.cert)
    assert c.get(a) is not None                                 # a used more recently than b
    await c.fetch(cc, pki.inter.cert)
    assert c.get(b) is None and c.get(a) is not None and c.get(cc) is not None
    sources = {e["source"] for e in c._status.snapshot()["crls"]}
    assert sources == {a, cc}
    assert len(list((tmp_path / "d" / "crl").glob("*.der"))) == 2
    await c.close()


async def test_handshakes_count_as_use_for_lru(pki: Pki, crl_server: CrlServer) -> None:
    """A handshake decided in the verify callback (no fetch) marks its CRL as used."""
    c = CrlCache(CrlCacheConfig(capacity=2), status=RevocationStatus())
    crl_server.content["other.crl"] = crl_der(pki.root.crl())
    guard, ctx = make_guard(pki, c, crl_check_depth="leaf")
    srv = await serve(guard, ctx)
    out = await s_client(srv.port, "-tls1_3", *pki.client_args(pki.good, "good"))
    assert "welcome" in out
    await c.fetch(crl_server.url("other.crl"), pki.root.cert)   # newer than inter.crl
    out = await s_client(srv.port, "-tls1_3", *pki.client_args(pki.good, "good"))
    assert "welcome" in out                                     # handled by OpenSSL alone
    crl_server.content["third.crl"] = crl_der(pki.root.crl())
    await c.fetch(crl_server.url("third.crl"), pki.root.cert)
    assert c.get(crl_server.url("inter.crl")) is not None       # the used one survived
    assert c.get(crl_server.url("other.crl")) is None
    await srv.stop()
    await c.close()


async def test_on_revoked_reports_new_entries_only(pki: Pki, crl_server: CrlServer,
                                                   cache: CrlCache) -> None:
    seen: list[frozenset[CertId]] = []
    cache.on_revoked(seen.append)
    url = crl_server.url("inter.crl")
    await cache.fetch(url, pki.inter.cert)
    issuer = pki.inter.cert.subject.public_bytes()
    assert seen == [frozenset({(issuer, pki.bad.serial)})]
    crl_server.content["inter.crl"] = crl_der(pki.inter.crl([pki.bad.serial, pki.good.serial]))
    assert await cache.refresh_all() == 1
    assert seen[-1] == frozenset({(issuer, pki.good.serial)})


async def test_restore_after_restart(pki: Pki, crl_server: CrlServer, tmp_path: Path) -> None:
    url = crl_server.url("inter.crl")
    first = CrlCache(data_dir=tmp_path / "d", status=RevocationStatus())
    await first.fetch(url, pki.inter.cert)
    await first.close()
    await crl_server.stop()
    second = CrlCache(data_dir=tmp_path / "d", status=RevocationStatus())
    assert second.restore() == 1
    held = second.get(url)
    assert held is not None and pki.bad.serial in held.serials()
    await second.close()


async def test_background_refresh(pki: Pki, crl_server: CrlServer) -> None:
    c = CrlCache(CrlCacheConfig(refresh_interval=0.1), status=RevocationStatus())
    await c.start()
    await c.fetch(crl_server.url("inter.crl"), pki.inter.cert)
    for _ in range(100):
        if crl_server.hits["inter.crl"] >= 3:
            break
        await asyncio.sleep(0.02)
    assert crl_server.hits["inter.crl"] >= 3
    await c.close()


async def test_local_files_loaded_checked_and_reloaded(pki: Pki, tmp_path: Path) -> None:
    c = CrlCache(status=RevocationStatus())
    f = tmp_path / "root.crl"
    f.write_bytes(crl_pem(pki.root.crl()))
    c.set_files("l1", [str(f)], [pki.root.cert])
    assert len(c.crls()) == 1
    changes: list[int] = []
    c.on_change(lambda: changes.append(1))
    f.write_bytes(crl_der(pki.root.crl([pki.inter.cert.serial_number])))
    os.utime(f, ns=(1, 1))
    assert c.poll_files() == 1 and changes
    assert c.revocation_of(pki.root.cert.subject.public_bytes(), pki.inter.cert.serial_number)
    # a file that turns bad keeps the old CRL
    f.write_bytes(crl_der(pki.root.crl(key=pki.inter.key)))
    os.utime(f, ns=(2, 2))
    assert c.poll_files() == 0
    assert c.revocation_of(pki.root.cert.subject.public_bytes(), pki.inter.cert.serial_number)
    assert "signature does not verify" in (c._status.crl(str(f)).last_error or "")
    # at load time a bad file is an error naming it, and the previous set stays
    with pytest.raises(CrlError, match=r"crlfile '.*root\.crl'"):
        c.set_files("l1", [str(f)], [pki.root.cert])
    with pytest.raises(CrlError, match="cannot read"):
        c.set_files("l1", [str(tmp_path / "missing.crl")], [pki.root.cert])
    assert len(c.crls()) == 1
    await c.close()


# ------------------------------------------------------------------------------------------------
# handshakes seen by openssl s_client
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", TLS_VARIANTS)
async def test_revoked_client_missing_crl_fetched_then_alert_44(
        pki: Pki, crl_server: CrlServer, cache: CrlCache, variant: list[str]) -> None:
    """Nothing cached: the verdict is deferred, the CRLs are fetched, the late alert is 44."""
    guard, ctx = make_guard(pki, cache)
    srv = await serve(guard, ctx)
    out = await s_client(srv.port, *variant, *pki.client_args(pki.bad, "bad"))
    assert REVOKED_ALERT in out and "alert number 44" in out, out
    rec = srv.records[0]
    assert rec.verdict is not None and not rec.verdict.allow
    assert rec.verdict.alert == ALERT_CERTIFICATE_REVOKED and rec.verdict.alert_record
    assert "revoked by the CRL" in rec.verdict.reason and "keyCompromise" in rec.verdict.reason
    assert crl_server.hits["inter.crl"] == 1 and crl_server.hits["root.crl"] == 1
    assert "welcome" not in out
    await srv.stop()


@pytest.mark.parametrize("variant", TLS_VARIANTS[:2])
async def test_good_client_connects_and_next_handshake_needs_no_fetch(
        pki: Pki, crl_server: CrlServer, cache: CrlCache, variant: list[str]) -> None:
    guard, ctx = make_guard(pki, cache)
    srv = await serve(guard, ctx)
    out = await s_client(srv.port, *variant, *pki.client_args(pki.good, "good"))
    assert "welcome" in out, out
    assert srv.records[0].verdict.allow and srv.records[0].held_bytes > 0
    out = await s_client(srv.port, *variant, *pki.client_args(pki.good, "good"))
    assert "welcome" in out
    assert crl_server.hits["inter.crl"] == 1 and crl_server.hits["root.crl"] == 1
    await srv.stop()


@pytest.mark.parametrize("variant", TLS_VARIANTS[:2])
async def test_revoked_client_refused_by_openssl_when_crl_held(
        pki: Pki, crl_server: CrlServer, cache: CrlCache, variant: list[str]) -> None:
    await cache.fetch(crl_server.url("inter.crl"), pki.inter.cert)
    await cache.fetch(crl_server.url("root.crl"), pki.root.cert)
    guard, ctx = make_guard(pki, cache)
    srv = await serve(guard, ctx)
    out = await s_client(srv.port, *variant, *pki.client_args(pki.bad, "bad"))
    assert REVOKED_ALERT in out and "alert number 44" in out, out
    assert "handshake failed" in srv.records[0].error        # OpenSSL refused it in the handshake
    assert srv.records[0].verdict is None
    await srv.stop()


@pytest.mark.parametrize("variant", TLS_VARIANTS[:2])
async def test_revoked_intermediate_refused_with_chain_depth(
        pki: Pki, crl_server: CrlServer, cache: CrlCache, variant: list[str]) -> None:
    crl_server.content["root.crl"] = crl_der(pki.root.crl([pki.inter.cert.serial_number]))
    guard, ctx = make_guard(pki, cache, crl_check_depth="chain")
    srv = await serve(guard, ctx)
    out = await s_client(srv.port, *variant, *pki.client_args(pki.good, "good"))
    assert REVOKED_ALERT in out, out
    assert "CRL Test Intermediate" in srv.records[0].verdict.reason
    # once the CRLs are held, OpenSSL itself refuses the chain
    out = await s_client(srv.port, *variant, *pki.client_args(pki.good, "good"))
    assert REVOKED_ALERT in out and "handshake failed" in srv.records[1].error
    await srv.stop()


async def test_revoked_intermediate_allowed_with_leaf_depth(
        pki: Pki, crl_server: CrlServer, cache: CrlCache) -> None:
    crl_server.content["root.crl"] = crl_der(pki.root.crl([pki.inter.cert.serial_number]))
    guard, ctx = make_guard(pki, cache, crl_check_depth="leaf")
    srv = await serve(guard, ctx)
    out = await s_client(srv.port, "-tls1_3", *pki.client_args(pki.good, "good"))
    assert "welcome" in out, out
    assert crl_server.hits["root.crl"] == 0                  # only the leaf's CRL was needed
    await srv.stop()


@pytest.mark.parametrize("variant", TLS_VARIANTS[:2])
async def test_crl_server_down_nothing_cached_fails_closed(
        pki: Pki, crl_server: CrlServer, cache: CrlCache, variant: list[str]) -> None:
    await crl_server.stop()
    guard, ctx = make_guard(pki, cache)
    srv = await serve(guard, ctx)
    out = await s_client(srv.port, *variant, *pki.client_args(pki.good, "good"))
    assert UNKNOWN_CA_ALERT in out and "welcome" not in out, out
    assert srv.records[0].verdict.alert == ALERT_UNKNOWN_CA
    assert "no CRL obtainable" in srv.records[0].verdict.reason
    # within failure_threshold: refused at once inside the handshake, no fetch attempted
    out = await s_client(srv.port, *variant, *pki.client_args(pki.good, "good"))
    assert UNKNOWN_CA_ALERT in out and "handshake failed" in srv.records[1].error
    await srv.stop()


@pytest.mark.parametrize("variant", TLS_VARIANTS[:2])
async def test_crl_server_down_allowed_with_soft_fail(
        pki: Pki, crl_server: CrlServer, cache: CrlCache, variant: list[str],
        caplog: pytest.LogCaptureFixture) -> None:
    await crl_server.stop()
    guard, ctx = make_guard(pki, cache, crl_soft_fail=True)
    srv = await serve(guard, ctx)
    out = await s_client(srv.port, *variant, *pki.client_args(pki.good, "good"))
    assert "welcome" in out, out
    out = await s_client(srv.port, *variant, *pki.client_args(pki.good, "good"))
    assert "welcome" in out                                   # in back-off: allowed at once
    assert any("crl_soft_fail = true" in r.getMessage() for r in caplog.records)
    await srv.stop()


async def test_local_crlfile_revokes_without_any_fetch(pki: Pki, crl_server: CrlServer,
                                                       cache: CrlCache, tmp_path: Path) -> None:
    inter_file, root_file = tmp_path / "inter.crl", tmp_path / "root.crl"
    inter_file.write_bytes(crl_pem(pki.inter.crl([pki.bad.serial])))
    root_file.write_bytes(crl_der(pki.root.crl()))
    guard, ctx = make_guard(pki, cache, crlfile=[str(inter_file), str(root_file)])
    srv = await serve(guard, ctx)
    out = await s_client(srv.port, "-tls1_2", *pki.client_args(pki.bad, "bad"))
    assert REVOKED_ALERT in out, out
    out = await s_client(srv.port, "-tls1_3", *pki.client_args(pki.good, "good"))
    assert "welcome" in out, out
    assert sum(crl_server.hits.values()) == 0
    # the file changes: the store is rebuilt and the next handshake sees it
    inter_file.write_bytes(crl_pem(pki.inter.crl([pki.bad.serial, pki.good.serial])))
    os.utime(inter_file, ns=(5, 5))
    assert cache.poll_files() == 1
    out = await s_client(srv.port, "-tls1_3", *pki.client_args(pki.good, "good"))
    assert REVOKED_ALERT in out, out
    await srv.stop()


async def test_close_revoked_connections(pki: Pki, crl_server: CrlServer,
                                         cache: CrlCache) -> None:
    guard, ctx = make_guard(pki, cache)
    index: LiveConnectionIndex[int] = LiveConnectionIndex()
    srv = GuardedTlsServer(ctx, guard, keep_open=True)
    srv.on_allowed = lambda h, conn: index.register(h, peer_cert_ids(conn, "chain"))
    cache.on_revoked(lambda ids: srv.close_handles(index.affected(ids), "revoked by CRL"))
    await srv.start()
    proc = await start_s_client(srv.port, "-tls1_3", *pki.client_args(pki.good, "good"))
    for _ in range(200):
        if srv.live:
            break
        await asyncio.sleep(0.02)
    assert srv.live and len(index) == 1
    assert proc.returncode is None
    # the CA revokes the device; the next refresh cuts the live connection
    crl_server.content["inter.crl"] = crl_der(pki.inter.crl([pki.bad.serial, pki.good.serial]))
    assert await cache.refresh_all() == 2
    await asyncio.wait_for(proc.wait(), 10)
    assert srv.records[0].closed_reason == "revoked by CRL" and not srv.live
    # and a reconnect is refused inside the handshake (the store was rebuilt)
    srv.keep_open = False
    out = await s_client(srv.port, "-tls1_3", *pki.client_args(pki.good, "good"))
    assert REVOKED_ALERT in out, out
    await srv.stop()


async def test_resumed_session_of_revoked_client_refused(pki: Pki, crl_server: CrlServer,
                                                         cache: CrlCache, tmp_path: Path) -> None:
    guard, ctx = make_guard(pki, cache)
    ctx.set_session_id(b"tlsgate-test")
    srv = await serve(guard, ctx)
    sess = tmp_path / "sess.pem"
    out = await s_client(srv.port, "-tls1_3", "-sess_out", str(sess),
                         *pki.client_args(pki.good, "good"))
    assert "welcome" in out and sess.exists()
    crl_server.content["inter.crl"] = crl_der(pki.inter.crl([pki.bad.serial, pki.good.serial]))
    await cache.refresh_all()
    out = await s_client(srv.port, "-tls1_3", "-sess_in", str(sess),
                         *pki.client_args(pki.good, "good"))
    assert "Reused, TLSv1.3" in out and REVOKED_ALERT in out, out
    assert "resumed session" in srv.records[1].verdict.reason
    await srv.stop()


async def test_status_snapshot_is_json(pki: Pki, crl_server: CrlServer, cache: CrlCache,
                                       tmp_path: Path) -> None:
    await cache.fetch(crl_server.url("inter.crl"), pki.inter.cert)
    f = tmp_path / "r.crl"
    f.write_bytes(crl_der(pki.root.crl()))
    cache.set_files("l", [str(f)], [pki.root.cert])
    snap = json.loads(json.dumps(cache._status.snapshot()))
    by_source = {e["source"]: e for e in snap["crls"]}
    u = by_source[crl_server.url("inter.crl")]
    assert u["kind"] == "url" and u["cached"] and u["revoked_count"] == 1
    assert u["age_seconds"] >= 0 and u["next_refresh"] and u["last_error"] is None
    assert by_source[str(f)]["kind"] == "file"


async def test_guard_config_errors_name_the_key(pki: Pki, cache: CrlCache,
                                                tmp_path: Path) -> None:
    bad = tmp_path / "bad.crl"
    bad.write_bytes(b"not a crl")
    with pytest.raises(CrlError, match=r"ssl_options\.crlfile: .*bad\.crl"):
        ClientRevocationGuard(ServerSslOptions(
            verify="verify_peer", cacertfile=pki.ca_file, enable_crl_check=True,
            crlfile=[str(bad)]), cache)
    with pytest.raises(CrlError, match=r"ssl_options\.cacertfile"):
        ClientRevocationGuard(ServerSslOptions(
            verify="verify_peer", cacertfile=str(tmp_path / "nope.pem"),
            enable_crl_check=True), cache)


def test_live_connection_index() -> None:
    idx: LiveConnectionIndex[str] = LiveConnectionIndex()
    a, b = (b"issuer", 1), (b"issuer", 2)
    idx.register("c1", [a])
    idx.register("c2", [a, b])
    assert idx.affected([b]) == {"c2"} and idx.affected([a]) == {"c1", "c2"}
    idx.unregister("c2")
    assert idx.affected([a, b]) == {"c1"} and len(idx) == 1


async def test_guard_on_a_context_from_build_server_context(
        pki: Pki, crl_server: CrlServer, cache: CrlCache) -> None:
    """The guard as a context hook of the real context builder (listener + SNI contexts)."""
    from tlsgate.tls.context import build_server_context

    cert, key = pki.server.write(pki.dir, "server")
    opts = ServerSslOptions(certfile=cert, keyfile=key, verify="verify_peer",
                            fail_if_no_peer_cert=True, cacertfile=pki.ca_file,
                            enable_crl_check=True)
    guard = ClientRevocationGuard(opts, cache, name="listeners.ssl.default")
    sc = build_server_context(opts, "listeners.ssl.default",
                              hooks=[lambda ctx, _opts: guard.attach(ctx)])
    srv = await serve(guard, sc.ctx)
    out = await s_client(srv.port, "-tls1_3", *pki.client_args(pki.bad, "bad"))
    assert REVOKED_ALERT in out, out
    out = await s_client(srv.port, "-tls1_2", *pki.client_args(pki.good, "good"))
    assert "welcome" in out, out
    await srv.stop()


async def test_attach_keeps_an_existing_verify_check(pki: Pki, crl_server: CrlServer,
                                                     cache: CrlCache) -> None:
    options = ServerSslOptions(verify="verify_peer", cacertfile=pki.ca_file,
                               enable_crl_check=True)
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.use_certificate(pki.server.cert)
    ctx.use_privatekey(pki.server.key)
    ctx.load_verify_locations(pki.ca_file)
    refused: list[int] = []

    def no_good_device(_c: SSL.Connection, cert: object, errno: int, depth: int,
                       ok: int) -> bool:
        if depth == 0 and "device-good" in cert.to_cryptography().subject.rfc4514_string():
            refused.append(depth)
            return False
        return bool(ok)

    ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, no_good_device)
    guard = ClientRevocationGuard(options, cache)
    with pytest.raises(ValueError, match="verify_next"):
        guard.attach(ctx)
    guard.attach(ctx, verify_next=no_good_device)
    srv = await serve(guard, ctx)
    out = await s_client(srv.port, "-tls1_3", *pki.client_args(pki.good, "good"))
    assert "welcome" not in out and refused, out        # the chained check still refuses
    out = await s_client(srv.port, "-tls1_3", *pki.client_args(pki.bad, "bad"))
    assert REVOKED_ALERT in out                          # and revocation still applies
    await srv.stop()


async def test_fetcher_hook_replaces_http(pki: Pki) -> None:
    """The node can fetch for all workers: the cache then validates what it is handed."""
    calls: list[tuple[str, float]] = []
    good = crl_der(pki.inter.crl([pki.bad.serial]))

    async def fetcher(url: str, timeout: float) -> bytes:
        calls.append((url, timeout))
        if url.endswith("down.crl"):
            raise CrlFetchError(f"{url}: node says the server is down")
        return good if url.endswith("inter.crl") else crl_der(pki.inter.crl(key=pki.root.key))

    c = CrlCache(CrlCacheConfig(http_timeout=7.0), status=RevocationStatus(), fetcher=fetcher)
    held = await c.fetch("http://ca.invalid/inter.crl", pki.inter.cert)
    assert pki.bad.serial in held.serials() and calls == [("http://ca.invalid/inter.crl", 7.0)]
    with pytest.raises(CrlValidationError):
        await c.fetch("http://ca.invalid/forged.crl", pki.inter.cert)
    with pytest.raises(CrlFetchError, match="node says"):
        await c.fetch("http://ca.invalid/down.crl", pki.inter.cert)
    assert c.in_backoff("http://ca.invalid/down.crl")
    await c.close()
