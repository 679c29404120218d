"""HTTP authentication client against a real HTTPS auth server on loopback (tests/authserver.py).

Every case talks to a real aiohttp server over real TLS (OpenSSL on both sides); the only pure
tests are the ones of ``interpret_response`` (the EMQX response contract).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import uvloop
from cryptography.hazmat.primitives.serialization import Encoding

from tests.authserver import AuthServer, Pki, Reply, issue, make_ca
from tlsgate.auth import (
    AuthConfigError,
    AuthRequest,
    Decision,
    HttpAuthenticator,
    Refusal,
)
from tlsgate.auth.http import interpret_response
from tlsgate.config.schema import AuthenticationConfig
from tlsgate.mqtt import connack_code
from tlsgate.tls.client_context import ClientTlsError

SECRET = b"s3cr3t-Pa55"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("authpki"))


def cfg(url: str, pki: Pki | None = None, **kw: Any) -> AuthenticationConfig:
    ssl: dict[str, Any] = dict(kw.pop("ssl", {}))
    if url.startswith("https://"):
        ssl.setdefault("enable", True)
        if pki is not None:
            ssl.setdefault("cacertfile", pki.ca_file)
    return AuthenticationConfig.model_validate({"url": url, "ssl": ssl, **kw})


def req(username: str | None = "alice", password: bytes | None = SECRET, **kw: Any) -> AuthRequest:
    base: dict[str, Any] = dict(clientid="c1", peerhost="10.1.2.3")
    base.update(kw)
    return AuthRequest(username=username, password=password, **base)


@pytest.fixture
async def https(pki: Pki) -> Any:
    async with AuthServer(tls=pki.server_context()) as srv:
        yield srv


@pytest.fixture
async def plain() -> Any:
    async with AuthServer() as srv:
        yield srv


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------------------------
# Decisions over HTTPS
# --------------------------------------------------------------------------------------------
async def test_allow_over_https_posts_json(https: AuthServer, pki: Pki) -> None:
    async with HttpAuthenticator(cfg(https.url + "/auth", pki)) as auth:
        r = await auth.authenticate(req())
    assert r.decision is Decision.ALLOW and r.allowed and r.refusal is None
    assert r.is_superuser is False and r.status == 200 and not r.cached
    seen = https.requests[-1]
    assert seen.method == "POST" and seen.path == "/auth"
    assert seen.headers["content-type"].startswith("application/json")
    assert seen.json == {"username": "alice", "password": SECRET.decode()}
    assert https.sni_seen == [None]  # an IP URL sends no SNI


@pytest.mark.parametrize(("reply", "superuser"), [
    ("superuser", True),
    (Reply.json({"result": "allow", "is_superuser": "true"}), True),
    (Reply.json({"result": "allow", "is_superuser": 2}), True),
    (Reply.json({"result": "allow", "is_superuser": "0"}), False),
    (Reply.json({"result": "allow"}), False),
    ("form", True),
    ("204", False),
])
async def test_allow_variants_and_superuser(https: AuthServer, pki: Pki, reply: Any,
                                            superuser: bool) -> None:
    https.decisions["alice"] = reply
    async with HttpAuthenticator(cfg(https.url, pki)) as auth:
        r = await auth.authenticate(req())
    assert r.decision is Decision.ALLOW and r.allowed
    assert r.is_superuser is superuser


async def test_deny_is_not_authorized(https: AuthServer, pki: Pki) -> None:
    https.decisions["alice"] = "deny"
    async with HttpAuthenticator(cfg(https.url, pki, on_ignore="allow")) as auth:
        r = await auth.authenticate(req())
    assert r.decision is Decision.DENY and not r.allowed
    assert r.refusal is Refusal.NOT_AUTHORIZED
    assert (connack_code(4, r.refusal), connack_code(5, r.refusal)) == (0x05, 0x87)


async def test_deny_with_bad_credentials_reason(https: AuthServer, pki: Pki) -> None:
    https.decisions["alice"] = "bad_credentials"
    async with HttpAuthenticator(cfg(https.url, pki)) as auth:
        r = await auth.authenticate(req())
    assert r.decision is Decision.BAD_CREDENTIALS and not r.allowed
    assert r.refusal is Refusal.BAD_CREDENTIALS
    assert (connack_code(3, r.refusal), connack_code(5, r.refusal)) == (0x04, 0x86)


@pytest.mark.parametrize("reply", ["ignore", "500", "404", "302", "badjson", "text",
                                   "not_object"])
@pytest.mark.parametrize("on_ignore", ["allow", "deny"])
async def test_ignore_and_http_errors_follow_on_ignore(https: AuthServer, pki: Pki, reply: str,
                                                      on_ignore: str) -> None:
    https.decisions["alice"] = reply
    async with HttpAuthenticator(cfg(https.url, pki, on_ignore=on_ignore,
                                     on_error="deny")) as auth:
        r = await auth.authenticate(req())
    assert r.decision is Decision.IGNORE
    assert r.allowed is (on_ignore == "allow")
    assert r.refusal is (None if on_ignore == "allow" else Refusal.NOT_AUTHORIZED)
    assert len(https.requests) == 1  # a 302 is not followed


@pytest.mark.parametrize("on_error", ["deny", "allow"])
async def test_hanging_server_times_out(https: AuthServer, pki: Pki, on_error: str) -> None:
    https.decisions["alice"] = "hang"
    timeout = 0.5
    async with HttpAuthenticator(cfg(https.url, pki, request_timeout=timeout,
                                     on_error=on_error, on_ignore="allow")) as auth:
        t0 = time.monotonic()
        r = await auth.authenticate(req())
        elapsed = time.monotonic() - t0
    assert timeout * 0.9 <= elapsed < timeout + 0.5
    assert r.decision is Decision.ERROR and r.status is None
    assert "request_timeout" in r.reason
    assert r.allowed is (on_error == "allow")
    assert r.refusal is (None if on_error == "allow" else Refusal.SERVER_UNAVAILABLE)


async def test_server_down_is_error(pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    async with HttpAuthenticator(cfg(f"https://127.0.0.1:{port}/auth", pki,
                                     on_ignore="allow")) as auth:
        t0 = time.monotonic()
        r = await auth.authenticate(req())
    assert time.monotonic() - t0 < 2.0
    assert r.decision is Decision.ERROR and not r.allowed
    assert r.reason == "cannot connect: Connection refused"
    assert f"authentication backend https://127.0.0.1:{port}: cannot connect" in caplog.text
    assert auth.metrics.decisions["error"] == 1 and auth.metrics.refused == 1


# --------------------------------------------------------------------------------------------
# Server certificate and SNI
# --------------------------------------------------------------------------------------------
async def test_untrusted_server_certificate_is_refused(https: AuthServer, pki: Pki,
                                                       tmp_path: Path) -> None:
    other_ca = tmp_path / "other-ca.pem"
    other_ca.write_bytes(make_ca("another CA").cert.public_bytes(Encoding.PEM))
    c = cfg(https.url, ssl={"cacertfile": str(other_ca)})
    async with HttpAuthenticator(c) as auth:
        r = await auth.authenticate(req())
    assert r.decision is Decision.ERROR
    assert "certificate" in r.reason
    assert https.requests == []


async def test_sni_mismatch_refused_with_verify_peer(https: AuthServer, pki: Pki) -> None:
    c = cfg(https.url, pki, ssl={"server_name_indication": "other.test"})
    async with HttpAuthenticator(c) as auth:
        r = await auth.authenticate(req())
    assert r.decision is Decision.ERROR and "certificate" in r.reason
    assert https.sni_seen == ["other.test"] and https.requests == []


async def test_sni_mismatch_accepted_with_verify_none(https: AuthServer, pki: Pki) -> None:
    c = cfg(https.url, pki, ssl={"server_name_indication": "other.test",
                                 "verify": "verify_none"})
    async with HttpAuthenticator(c) as auth:
        r = await auth.authenticate(req())
    assert r.decision is Decision.ALLOW
    assert https.sni_seen == ["other.test"]


async def test_sni_configured_name_is_sent_and_checked(https: AuthServer, pki: Pki) -> None:
    c = cfg(https.url, pki, ssl={"server_name_indication": "auth.test"})
    async with HttpAuthenticator(c) as auth:
        r = await auth.authenticate(req())
    assert r.decision is Decision.ALLOW
    assert https.sni_seen == ["auth.test"]


async def _host_name_cases(pki: Pki) -> tuple[list[Any], list[str | None]]:
    # The certificate names auth.test and 127.0.0.1, not "localhost": dialling localhost
    # with the default SNI fails the host check; "disable" sends no SNI and skips the check
    # (the chain is still verified).
    async with AuthServer(tls=pki.server_context(), host="127.0.0.1") as srv:
        url = f"https://localhost:{srv.port}/auth"
        out = []
        for sni in ("", "disable"):
            async with HttpAuthenticator(cfg(url, pki, ssl={"server_name_indication": sni},
                                             on_ignore="allow")) as auth:
                out.append(await auth.authenticate(req()))
        return out, list(srv.sni_seen)


async def test_sni_disable_skips_sni_and_host_check(pki: Pki) -> None:
    (default, disabled), seen = await _host_name_cases(pki)
    assert default.decision is Decision.ERROR and "certificate" in default.reason
    assert disabled.decision is Decision.ALLOW
    assert seen == ["localhost", None]


def test_sni_disable_under_uvloop(pki: Pki) -> None:
    (default, disabled), seen = uvloop.run(_host_name_cases(pki))
    assert default.decision is Decision.ERROR
    assert disabled.decision is Decision.ALLOW
    assert seen == ["localhost", None]


async def test_sni_disable_still_verifies_the_chain(pki: Pki, tmp_path: Path) -> None:
    rogue_ca = make_ca("rogue")
    rogue = issue(rogue_ca, "auth.test", dns=("auth.test",), ips=("127.0.0.1",))
    async with AuthServer(tls=pki.server_context(rogue)) as srv:
        c = cfg(srv.url, pki, ssl={"server_name_indication": "disable"})
        async with HttpAuthenticator(c) as auth:
            r = await auth.authenticate(req())
    assert r.decision is Decision.ERROR and srv.requests == []


# --------------------------------------------------------------------------------------------
# Mutual TLS towards the auth server
# --------------------------------------------------------------------------------------------
async def test_mutual_tls_with_client_certificate(pki: Pki) -> None:
    async with AuthServer(tls=pki.server_context(require_client_cert=True)) as srv:
        c = cfg(srv.url, pki, ssl={"certfile": pki.client_files.cert,
                                   "keyfile": pki.client_files.key})
        async with HttpAuthenticator(c) as auth:
            r = await auth.authenticate(req())
    assert r.decision is Decision.ALLOW
    peer = srv.requests[-1].peercert
    assert peer is not None
    assert ((("commonName", "device-1"),) in peer["subject"])


async def test_mutual_tls_without_client_certificate_fails(pki: Pki) -> None:
    async with (AuthServer(tls=pki.server_context(require_client_cert=True)) as srv,
                HttpAuthenticator(cfg(srv.url, pki, on_error="deny")) as auth):
        r = await auth.authenticate(req())
    assert r.decision is Decision.ERROR and not r.allowed
    assert srv.requests == []


async def test_encrypted_client_key_with_password(pki: Pki, tmp_path: Path) -> None:
    files = pki.write("client-enc", pki.client, password=b"keypass")
    pwfile = tmp_path / "pw"
    pwfile.write_text("keypass\n")
    async with AuthServer(tls=pki.server_context(require_client_cert=True)) as srv:
        c = cfg(srv.url, pki, ssl={"certfile": files.cert, "keyfile": files.key,
                                   "password": f"file://{pwfile}"})
        async with HttpAuthenticator(c) as auth:
            r = await auth.authenticate(req())
    assert r.decision is Decision.ALLOW


# --------------------------------------------------------------------------------------------
# Request encoding and placeholders
# --------------------------------------------------------------------------------------------
ALL_BODY = {"u": "${username}", "p": "${password}", "c": "${clientid}", "h": "${peerhost}",
            "cn": "${cert_common_name}", "dn": "${cert_subject}", "psk": "${psk_identity}",
            "port": "${peerport}", "${clientid}-key": "k", "lit": "cost ${$}5 ${unknown}"}


def full_req(**kw: Any) -> AuthRequest:
    base: dict[str, Any] = dict(username="al ice", password=SECRET, clientid="dev/1?x",
                                peerhost="192.0.2.7", cert_common_name="device-1",
                                cert_subject="CN=device-1,O=tlsgate tests", psk_identity=None,
                                peerport=51234)
    base.update(kw)
    return AuthRequest(**base)


async def test_post_json_placeholders(plain: AuthServer,
                                      caplog: pytest.LogCaptureFixture) -> None:
    c = cfg(plain.url + "/auth/${clientid}?src=tlsgate&who=${username}", body=ALL_BODY,
            headers={"X-Client": "${clientid}", "Authorization": "Bearer abc"})
    with caplog.at_level(logging.WARNING, logger="tlsgate.auth"):
        auth = HttpAuthenticator(c)
    assert "${unknown}" in caplog.text
    async with auth:
        r = await auth.authenticate(full_req())
    assert r.decision is Decision.ALLOW
    seen = plain.requests[-1]
    assert seen.method == "POST"
    assert seen.path == "/auth/dev%2F1%3Fx"
    assert seen.query == [("src", "tlsgate"), ("who", "al ice")]
    assert seen.headers["x-client"] == "dev/1?x"
    assert seen.headers["authorization"] == "Bearer abc"
    assert seen.json == {"u": "al ice", "p": SECRET.decode(), "c": "dev/1?x", "h": "192.0.2.7",
                         "cn": "device-1", "dn": "CN=device-1,O=tlsgate tests", "psk": "",
                         "port": "51234", "dev/1?x-key": "k", "lit": "cost $5 ${unknown}"}


async def test_missing_values_render_empty(plain: AuthServer) -> None:
    c = cfg(plain.url, body=ALL_BODY)
    async with HttpAuthenticator(c) as auth:
        await auth.authenticate(AuthRequest(username=None, password=None, clientid="c",
                                            peerhost="::1"))
    body = plain.requests[-1].json
    assert body["u"] == body["p"] == body["cn"] == body["dn"] == body["psk"] == body["port"] == ""


async def test_get_puts_body_in_query(plain: AuthServer) -> None:
    c = cfg(plain.url + "/check?v=1", method="get",
            body={"username": "${username}", "password": "${password}", "cid": "${clientid}"})
    async with HttpAuthenticator(c) as auth:
        r = await auth.authenticate(full_req(password=b"p&=+ %x\xff"))
    assert r.decision is Decision.ALLOW
    seen = plain.requests[-1]
    assert seen.method == "GET" and seen.body == b""
    assert "content-type" not in seen.headers
    assert seen.query[0] == ("v", "1")
    q = dict(seen.query)
    assert q["username"] == "al ice" and q["cid"] == "dev/1?x"
    # a non-UTF-8 password travels percent-encoded, byte for byte
    assert "&password=p%26%3D%2B+%25x%FF&" in "&" + seen.raw_query + "&"


async def test_post_form_body(plain: AuthServer) -> None:
    c = cfg(plain.url, headers={"content-type": "application/x-www-form-urlencoded"})
    async with HttpAuthenticator(c) as auth:
        r = await auth.authenticate(req(username="a b&c"))
    assert r.decision is Decision.ALLOW
    seen = plain.requests[-1]
    assert seen.headers["content-type"] == "application/x-www-form-urlencoded"
    assert seen.form == {"username": "a b&c", "password": SECRET.decode()}


async def test_non_utf8_password_cannot_go_in_json(plain: AuthServer) -> None:
    async with HttpAuthenticator(cfg(plain.url, on_ignore="deny")) as auth:
        r = await auth.authenticate(req(password=b"\xff\xfe"))
    assert r.decision is Decision.IGNORE and not r.allowed
    assert "UTF-8" in r.reason
    assert plain.requests == []


async def test_header_injection_is_refused(plain: AuthServer) -> None:
    c = cfg(plain.url, headers={"X-User": "${username}"})
    async with HttpAuthenticator(c) as auth:
        r = await auth.authenticate(req(username="evil\r\nX-Admin: 1"))
    assert r.decision is Decision.IGNORE and plain.requests == []


@pytest.mark.parametrize(("kw", "key"), [
    (dict(method="get", headers={"Content-Type": "application/json"}), "authentication.headers"),
    (dict(headers={"content-type": "text/plain"}), "authentication.headers"),
    (dict(headers={"bad name": "x"}), "authentication.headers"),
])
def test_config_errors_name_the_key(kw: dict[str, Any], key: str) -> None:
    with pytest.raises(AuthConfigError) as ei:
        HttpAuthenticator(cfg("http://127.0.0.1:1/auth", **kw))
    assert ei.value.key == key and str(ei.value).startswith(key + ": ")


@pytest.mark.parametrize("url", ["http://user:pw@127.0.0.1/auth", "http://127.0.0.1/auth#x"])
def test_url_errors(url: str) -> None:
    with pytest.raises(AuthConfigError) as ei:
        HttpAuthenticator(cfg(url))
    assert ei.value.key == "authentication.url"
    assert "pw" not in str(ei.value)


# --------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------
async def test_cache_hit_avoids_second_request(https: AuthServer, pki: Pki) -> None:
    async with HttpAuthenticator(cfg(https.url, pki, cache_ttl="60s")) as auth:
        r1 = await auth.authenticate(req())
        r2 = await auth.authenticate(req())
        assert len(https.requests) == 1
        assert r1.decision is r2.decision is Decision.ALLOW
        assert not r1.cached and r2.cached and r2.latency == 0.0
        # another password is another request; and a denied user is cached as denied
        r3 = await auth.authenticate(req(password=b"other"))
        assert len(https.requests) == 2 and not r3.cached
        https.decisions["bob"] = "deny"
        await auth.authenticate(req("bob"))
        r5 = await auth.authenticate(req("bob"))
        assert r5.cached and r5.decision is Decision.DENY and len(https.requests) == 3
        assert auth.metrics.cache_hits == 2
        # the cache key holds no password
        for key in auth._cache:
            assert SECRET not in repr(key).encode() and b"other" not in repr(key).encode()


async def test_cache_expires(https: AuthServer, pki: Pki) -> None:
    async with HttpAuthenticator(cfg(https.url, pki, cache_ttl="200ms")) as auth:
        await auth.authenticate(req())
        await asyncio.sleep(0.3)
        r = await auth.authenticate(req())
    assert not r.cached and len(https.requests) == 2


async def test_cache_keeps_no_server_errors(https: AuthServer, pki: Pki) -> None:
    https.decisions["alice"] = "500"
    async with HttpAuthenticator(cfg(https.url, pki, cache_ttl="60s")) as auth:
        await auth.authenticate(req())
        r = await auth.authenticate(req())
    assert not r.cached and len(https.requests) == 2


async def test_cache_coalesces_concurrent_calls(https: AuthServer, pki: Pki) -> None:
    https.decisions["alice"] = Reply.json({"result": "allow"}, delay=0.2)
    async with HttpAuthenticator(cfg(https.url, pki, cache_ttl="60s")) as auth:
        results = await asyncio.gather(*(auth.authenticate(req()) for _ in range(5)))
    assert all(r.decision is Decision.ALLOW for r in results)
    assert len(https.requests) == 1 and auth.metrics.coalesced == 4


async def test_cache_entry_never_outlives_expire_at(https: AuthServer, pki: Pki) -> None:
    https.decisions["alice"] = Reply.json({"result": "allow", "expire_at": int(time.time()) + 1})
    async with HttpAuthenticator(cfg(https.url, pki, cache_ttl="1h")) as auth:
        r = await auth.authenticate(req())
        assert r.expire_at is not None
        await asyncio.sleep(1.2)
        await auth.authenticate(req())
    assert len(https.requests) == 2


async def test_close_during_a_call_returns_error(https: AuthServer, pki: Pki) -> None:
    https.decisions["alice"] = "hang"
    auth = HttpAuthenticator(cfg(https.url, pki, cache_ttl="60s", request_timeout="10s"))
    await auth.start()
    call = asyncio.ensure_future(auth.authenticate(req()))
    await asyncio.sleep(0.2)
    await auth.close()
    r = await asyncio.wait_for(call, 2)
    assert r.decision is Decision.ERROR and r.reason == "authenticator closed"
    late = await auth.authenticate(req())
    assert late.decision is Decision.ERROR and late.reason == "authenticator closed"


# --------------------------------------------------------------------------------------------
# Secrets, metrics, lifecycle
# --------------------------------------------------------------------------------------------
async def test_password_never_logged(https: AuthServer, pki: Pki,
                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    https.decisions["alice"] = "hang"
    get_cfg = dict(method="get", body={"username": "${username}", "pw": "${password}"})
    outcomes = []
    async with HttpAuthenticator(cfg(https.url + "/a?pw=${password}", pki, request_timeout=0.3,
                                     **get_cfg)) as auth:
        outcomes.append(await auth.authenticate(req()))
        https.decisions["alice"] = "allow"
        outcomes.append(await auth.authenticate(req()))
    async with HttpAuthenticator(cfg(f"https://127.0.0.1:{free_port()}/?pw=${{password}}", pki,
                                     **get_cfg)) as auth:
        outcomes.append(await auth.authenticate(req()))
    assert [o.decision for o in outcomes] == [Decision.ERROR, Decision.ALLOW, Decision.ERROR]
    assert https.requests[-1].query.count(("pw", SECRET.decode())) == 2  # it was sent...
    text = caplog.text + "".join(repr(o) + str(o) for o in outcomes) + repr(req())
    assert "auth allow" in caplog.text  # the debug lines are there
    assert SECRET.decode() not in text  # ...but never shown
    assert "s3cr3t" not in text


async def test_metrics(https: AuthServer, pki: Pki) -> None:
    https.decisions.update(bob="deny", carol="500")
    async with HttpAuthenticator(cfg(https.url, pki, on_ignore="allow")) as auth:
        for name in ("alice", "bob", "carol", "alice"):
            await auth.authenticate(req(name))
        m = auth.metrics
    assert m.decisions == {"allow": 2, "deny": 1, "bad_credentials": 0, "ignore": 1, "error": 0}
    assert (m.allowed, m.refused) == (3, 1)
    assert m.http_status == {200: 3, 500: 1}
    assert m.latency_count == 4 and m.latency_sum > 0
    assert m.latency_buckets[-1] == 4
    assert all(a <= b for a, b in zip(m.latency_buckets, m.latency_buckets[1:], strict=False))


async def test_disabled_allows_without_calling(https: AuthServer, pki: Pki) -> None:
    async with HttpAuthenticator(cfg(https.url, pki, enable=False)) as auth:
        r = await auth.authenticate(req())
    assert r.allowed and https.requests == []


async def test_authenticate_before_start_is_a_bug() -> None:
    auth = HttpAuthenticator(cfg("http://127.0.0.1:1/"))
    with pytest.raises(RuntimeError):
        await auth.authenticate(req())


async def test_pool_size_bounds_concurrent_connections(https: AuthServer, pki: Pki) -> None:
    https.default = Reply.json({"result": "allow"}, delay=0.2)
    async with HttpAuthenticator(cfg(https.url, pki, pool_size=2)) as auth:
        t0 = time.monotonic()
        await asyncio.gather(*(auth.authenticate(req(f"u{i}")) for i in range(4)))
        elapsed = time.monotonic() - t0
    assert elapsed >= 0.38  # 4 calls of 0.2 s through 2 connections: two rounds
    assert len(https.requests) == 4


# --------------------------------------------------------------------------------------------
# The response contract, without I/O
# --------------------------------------------------------------------------------------------
NOW = 1_700_000_000


@pytest.mark.parametrize(("status", "ctype", "body", "decision", "superuser"), [
    (204, None, b"", Decision.ALLOW, False),
    (200, "application/json", b'{"result":"allow","is_superuser":true}', Decision.ALLOW, True),
    (200, "application/json; charset=utf-8", b'{"result":"allow","is_superuser":"1"}',
     Decision.ALLOW, True),
    (200, "application/json", b'{"result":"allow","is_superuser":"yes"}', Decision.ALLOW, False),
    (200, "application/json", b'{"result":"allow","is_superuser":1.0}', Decision.ALLOW, False),
    (200, "application/json", b'{"result":"deny"}', Decision.DENY, False),
    (200, "application/json", b'{"result":"deny","reason":"banned"}', Decision.DENY, False),
    (200, "application/json", b'{"result":"deny","reason":"bad_username_or_password"}',
     Decision.BAD_CREDENTIALS, False),
    (200, "application/json", b'{"result":"ignore"}', Decision.IGNORE, False),
    (200, "application/json", b'{"is_superuser":true}', Decision.IGNORE, False),
    (200, "application/json", b'{"result":"ALLOW"}', Decision.IGNORE, False),
    (200, "application/json", b'"allow"', Decision.IGNORE, False),
    (200, "application/json", b"{", Decision.IGNORE, False),
    (200, "text/plain", b'{"result":"allow"}', Decision.IGNORE, False),
    (200, None, b'{"result":"allow"}', Decision.IGNORE, False),
    (200, "application/x-www-form-urlencoded", b"result=allow&is_superuser=true",
     Decision.ALLOW, True),
    (201, "application/json", b'{"result":"allow"}', Decision.IGNORE, False),
    (401, "application/json", b'{"result":"allow"}', Decision.IGNORE, False),
    (503, "application/json", b'{"result":"allow"}', Decision.IGNORE, False),
    (200, "application/json", json.dumps({"result": "allow", "expire_at": NOW + 60}).encode(),
     Decision.ALLOW, False),
    (200, "application/json", json.dumps({"result": "allow", "expire_at": NOW - 1}).encode(),
     Decision.BAD_CREDENTIALS, False),
    (200, "application/json", json.dumps({"result": "allow", "expire_at": NOW * 1000}).encode(),
     Decision.BAD_CREDENTIALS, False),
    (200, "application/json", json.dumps({"result": "allow", "expire_at": "soon"}).encode(),
     Decision.BAD_CREDENTIALS, False),
])
def test_interpret_response(status: int, ctype: str | None, body: bytes, decision: Decision,
                            superuser: bool) -> None:
    a = interpret_response(status, ctype, body, now=NOW)
    assert a.decision is decision
    assert a.is_superuser is superuser


def test_tls_problems_are_found_by_the_constructor(tmp_path: Path) -> None:
    with pytest.raises(ClientTlsError) as ei:
        HttpAuthenticator(cfg("https://127.0.0.1:1/", ssl={"cacertfile": str(tmp_path / "no")}))
    assert ei.value.key == "authentication.ssl.cacertfile"
