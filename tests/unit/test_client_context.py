"""tlsgate.tls.client_context: every bad file names its key; options reach the handshake.

Handshakes are real: the client context under test against a stdlib ``ssl`` server (OpenSSL) on
loopback, through asyncio streams, as the broker dialler will use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvloop
from cryptography.hazmat.primitives.serialization import Encoding

from tests.authserver import Files, Pki, issue, make_ca
from tlsgate.config.schema import ClientSslOptions
from tlsgate.tls.client_context import ClientTlsError, build_client_tls

KEY = "upstreams.b.ssl"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("ctxpki"))


def opts(**kw: Any) -> ClientSslOptions:
    return ClientSslOptions.model_validate({"enable": True, **kw})


def build(**kw: Any) -> ssl.SSLContext:
    return build_client_tls(opts(**kw), KEY).context


def err(**kw: Any) -> ClientTlsError:
    with pytest.raises(ClientTlsError) as ei:
        build_client_tls(opts(**kw), KEY)
    assert str(ei.value).startswith(ei.value.key + ": ")
    return ei.value


# --------------------------------------------------------------------------------------------
# A real TLS server to shake hands with
# --------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    ok: bool
    version: str | None = None
    cipher: str | None = None
    error: str = ""
    sni: list[str | None] | None = None
    client_cert: dict[str, Any] | None = None


async def handshake(client: ClientSslOptions, server: ssl.SSLContext, *,
                    host: str = "127.0.0.1") -> Outcome:
    sni: list[str | None] = []
    seen_cert: list[dict[str, Any] | None] = []
    server.sni_callback = lambda obj, name, ctx: sni.append(name)

    async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            seen_cert.append(w.get_extra_info("peercert"))
            w.write(b"hello")
            await w.drain()
            await r.read(1)
        except (ssl.SSLError, ConnectionError):
            pass
        finally:
            w.close()

    srv = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server)
    port = srv.sockets[0].getsockname()[1]
    tls = build_client_tls(client, KEY)
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection(
            host, port, ssl=tls.context, server_hostname=tls.server_hostname(host)), 5)
        try:
            data = await asyncio.wait_for(r.readexactly(5), 5)  # TLS 1.3: client-cert errors
            assert data == b"hello"                               # arrive after the handshake
            obj = w.get_extra_info("ssl_object")
            cipher = obj.cipher()
            return Outcome(True, obj.version(), cipher[0] if cipher else None, sni=sni,
                           client_cert=seen_cert[0] if seen_cert else None)
        finally:
            w.close()
            with contextlib.suppress(ssl.SSLError, ConnectionError, OSError):
                await w.wait_closed()
    except (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError, OSError) as exc:
        return Outcome(False, error=f"{type(exc).__name__}: {exc}", sni=sni)
    finally:
        srv.close()
        await srv.wait_closed()


def server_ctx(pki: Pki, *, files: Files | None = None, minv: ssl.TLSVersion | None = None,
               maxv: ssl.TLSVersion | None = None, ciphers: str | None = None,
               client_ca: str | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    f = files or pki.server_files
    ctx.load_cert_chain(f.cert, f.key)
    if minv:
        ctx.minimum_version = minv
    if maxv:
        ctx.maximum_version = maxv
    if ciphers:
        ctx.set_ciphers(ciphers)
    if client_ca:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(client_ca)
    return ctx


# --------------------------------------------------------------------------------------------
# Errors name their key
# --------------------------------------------------------------------------------------------
def test_missing_cacertfile(tmp_path: Path) -> None:
    e = err(cacertfile=str(tmp_path / "nope.pem"))
    assert e.key == f"{KEY}.cacertfile" and "does not exist" in e.message


def test_cacertfile_not_pem(tmp_path: Path) -> None:
    p = tmp_path / "ca.pem"
    p.write_text("hello\n")
    e = err(cacertfile=str(p))
    assert e.key == f"{KEY}.cacertfile" and "no PEM certificate" in e.message


def test_cacertfile_corrupt(tmp_path: Path) -> None:
    p = tmp_path / "ca.pem"
    p.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    e = err(cacertfile=str(p))
    assert e.key == f"{KEY}.cacertfile"


def test_cacertfile_is_a_directory(tmp_path: Path) -> None:
    e = err(cacertfile=str(tmp_path))
    assert e.key == f"{KEY}.cacertfile" and "directory" in e.message


def test_cacertfile_checked_even_with_verify_none(tmp_path: Path) -> None:
    e = err(cacertfile=str(tmp_path / "x"), verify="verify_none")
    assert e.key == f"{KEY}.cacertfile"


def test_missing_certfile(pki: Pki, tmp_path: Path) -> None:
    e = err(certfile=str(tmp_path / "c.pem"), keyfile=pki.client_files.key)
    assert e.key == f"{KEY}.certfile"


def test_certfile_holds_a_key(pki: Pki) -> None:
    e = err(certfile=pki.client_files.key, keyfile=pki.client_files.key)
    assert e.key == f"{KEY}.certfile" and "no PEM certificate" in e.message


def test_keyfile_holds_a_certificate(pki: Pki) -> None:
    e = err(certfile=pki.client_files.cert, keyfile=pki.client_files.cert)
    assert e.key == f"{KEY}.keyfile" and "no PEM private key" in e.message


def test_missing_keyfile(pki: Pki, tmp_path: Path) -> None:
    e = err(certfile=pki.client_files.cert, keyfile=str(tmp_path / "k.pem"))
    assert e.key == f"{KEY}.keyfile" and "does not exist" in e.message


def test_corrupt_keyfile(pki: Pki, tmp_path: Path) -> None:
    p = tmp_path / "k.pem"
    p.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    e = err(certfile=pki.client_files.cert, keyfile=str(p))
    assert e.key == f"{KEY}.keyfile"


def test_key_does_not_match_certificate(pki: Pki) -> None:
    e = err(certfile=pki.client_files.cert, keyfile=pki.server_files.key)
    assert e.key == f"{KEY}.keyfile" and "does not match" in e.message


def test_encrypted_key_without_password(pki: Pki) -> None:
    f = pki.write("enc1", pki.client, password=b"right")
    e = err(certfile=f.cert, keyfile=f.key)
    assert e.key == f"{KEY}.password" and "encrypted" in e.message


def test_encrypted_key_wrong_password(pki: Pki) -> None:
    f = pki.write("enc2", pki.client, password=b"right")
    e = err(certfile=f.cert, keyfile=f.key, password="wrong-horse")
    assert e.key == f"{KEY}.password" and "wrong password" in e.message
    assert "wrong-horse" not in str(e)


def test_password_on_plain_key(pki: Pki) -> None:
    e = err(certfile=pki.client_files.cert, keyfile=pki.client_files.key, password="x")
    assert e.key == f"{KEY}.password"


def test_password_file_missing(pki: Pki, tmp_path: Path) -> None:
    f = pki.write("enc3", pki.client, password=b"right")
    e = err(certfile=f.cert, keyfile=f.key, password=f"file://{tmp_path}/nope")
    assert e.key == f"{KEY}.password" and "password file" in e.message


def test_unknown_tls12_cipher() -> None:
    e = err(ciphers=["ECDHE-RSA-AES128-GCM-SHA256", "NOT-A-CIPHER"])
    assert e.key == f"{KEY}.ciphers" and "NOT-A-CIPHER" in e.message
    assert "ECDHE-RSA-AES128-GCM-SHA256," not in e.message


def test_unknown_tls13_suite() -> None:
    e = err(ciphers=["TLS_AES_999_GCM"])
    assert e.key == f"{KEY}.ciphers" and "TLS_AES_999_GCM" in e.message


def test_tls13_suites_with_tls12_only() -> None:
    e = err(ciphers=["TLS_AES_128_GCM_SHA256"], versions=["tlsv1.2"])
    assert e.key == f"{KEY}.ciphers"


def test_tls12_ciphers_with_tls13_only() -> None:
    e = err(ciphers=["ECDHE-RSA-AES128-GCM-SHA256"], versions=["tlsv1.3"])
    assert e.key == f"{KEY}.ciphers"


@pytest.mark.parametrize("name", ["two words", "bad_/slash", "a" * 300, "-leading.dash"])
def test_bad_server_name(name: str) -> None:
    e = err(server_name_indication=name)
    assert e.key == f"{KEY}.server_name_indication"


# --------------------------------------------------------------------------------------------
# What the context is
# --------------------------------------------------------------------------------------------
def test_defaults_verify_with_the_system_store() -> None:
    tls = build_client_tls(opts(), KEY)
    assert tls.context.verify_mode == ssl.CERT_REQUIRED and tls.context.check_hostname
    assert tls.context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert tls.context.maximum_version == ssl.TLSVersion.TLSv1_3
    assert tls.sni is None and not tls.sni_disabled
    assert tls.server_hostname("broker.example") == "broker.example"


def test_verify_none_checks_nothing() -> None:
    ctx = build(verify="verify_none")
    assert ctx.verify_mode == ssl.CERT_NONE and not ctx.check_hostname


def test_sni_override_and_disable() -> None:
    tls = build_client_tls(opts(server_name_indication="broker.internal"), KEY)
    assert tls.sni == "broker.internal" and tls.server_hostname("10.0.0.5") == "broker.internal"
    off = build_client_tls(opts(server_name_indication="disable"), KEY)
    assert off.sni_disabled and off.server_hostname("broker.example") == ""
    assert not off.context.check_hostname and off.context.verify_mode == ssl.CERT_REQUIRED


# --------------------------------------------------------------------------------------------
# Handshakes
# --------------------------------------------------------------------------------------------
async def test_verified_handshake(pki: Pki) -> None:
    out = await handshake(opts(cacertfile=pki.ca_file), server_ctx(pki))
    assert out.ok, out.error
    assert out.version == "TLSv1.3"


async def test_system_store_does_not_trust_the_test_ca(pki: Pki) -> None:
    out = await handshake(opts(), server_ctx(pki))
    assert not out.ok and "CERTIFICATE_VERIFY_FAILED" in out.error


async def test_verify_none_accepts_an_unknown_ca(pki: Pki) -> None:
    out = await handshake(opts(verify="verify_none"), server_ctx(pki))
    assert out.ok, out.error


async def test_host_name_is_checked(pki: Pki) -> None:
    # the certificate names auth.test and 127.0.0.1; "localhost" is not in it
    out = await handshake(opts(cacertfile=pki.ca_file), server_ctx(pki), host="localhost")
    assert not out.ok and "Hostname mismatch" in out.error
    assert out.sni == ["localhost"]


async def test_sni_override_is_sent_and_checked(pki: Pki) -> None:
    out = await handshake(opts(cacertfile=pki.ca_file, server_name_indication="auth.test"),
                          server_ctx(pki), host="localhost")
    assert out.ok, out.error
    assert out.sni == ["auth.test"]


async def _sni_disabled(pki: Pki) -> Outcome:
    return await handshake(opts(cacertfile=pki.ca_file, server_name_indication="disable"),
                           server_ctx(pki), host="localhost")


async def test_sni_disable_sends_none_and_skips_host_check(pki: Pki) -> None:
    out = await _sni_disabled(pki)
    assert out.ok, out.error
    assert out.sni == [None]


def test_sni_disable_under_uvloop(pki: Pki) -> None:
    out = uvloop.run(_sni_disabled(pki))
    assert out.ok, out.error
    assert out.sni == [None]


async def test_tls13_only_server_refuses_tls12_only_client(pki: Pki) -> None:
    srv = server_ctx(pki, minv=ssl.TLSVersion.TLSv1_3)
    out = await handshake(opts(cacertfile=pki.ca_file, versions=["tlsv1.2"]), srv)
    assert not out.ok
    out = await handshake(opts(cacertfile=pki.ca_file, versions=["tlsv1.3"]), srv)
    assert out.ok and out.version == "TLSv1.3"


async def test_tls12_only_client(pki: Pki) -> None:
    out = await handshake(opts(cacertfile=pki.ca_file, versions=["tlsv1.2"]), server_ctx(pki))
    assert out.ok and out.version == "TLSv1.2"


async def test_tls12_ciphers_are_applied(pki: Pki) -> None:
    srv = server_ctx(pki, maxv=ssl.TLSVersion.TLSv1_2, ciphers="ECDHE-ECDSA-AES256-GCM-SHA384")
    out = await handshake(opts(cacertfile=pki.ca_file,
                               ciphers=["ECDHE-ECDSA-AES128-GCM-SHA256"]), srv)
    assert not out.ok
    out = await handshake(opts(cacertfile=pki.ca_file,
                               ciphers="ECDHE-ECDSA-AES128-GCM-SHA256,ECDHE-ECDSA-AES256-GCM-SHA384"
                               ), srv)
    assert out.ok and out.cipher == "ECDHE-ECDSA-AES256-GCM-SHA384"


@pytest.mark.parametrize("suite", ["TLS_CHACHA20_POLY1305_SHA256", "TLS_AES_128_GCM_SHA256"])
async def test_tls13_suites_are_applied(pki: Pki, suite: str) -> None:
    out = await handshake(opts(cacertfile=pki.ca_file, ciphers=[suite]), server_ctx(pki))
    assert out.ok and out.version == "TLSv1.3" and out.cipher == suite


async def test_depth_limits_the_chain(pki: Pki, tmp_path: Path) -> None:
    inter = make_ca("tlsgate test intermediate", parent=pki.ca)
    leaf = issue(inter, "deep.test", ips=("127.0.0.1",))
    files = pki.write("deep", leaf)  # leaf + intermediate
    srv = server_ctx(pki, files=files)
    # levels: 0 leaf, 1 intermediate, 2 root; depth N allows levels 0..N+1
    out0 = await handshake(opts(cacertfile=pki.ca_file, depth=0), srv)
    assert not out0.ok and "certificate chain too long" in out0.error
    out1 = await handshake(opts(cacertfile=pki.ca_file, depth=1), srv)
    assert out1.ok, out1.error
    out_default = await handshake(opts(cacertfile=pki.ca_file), srv)
    assert out_default.ok, out_default.error


async def test_mutual_tls(pki: Pki) -> None:
    srv = server_ctx(pki, client_ca=pki.ca_file)
    out = await handshake(opts(cacertfile=pki.ca_file), srv)
    assert not out.ok
    out = await handshake(opts(cacertfile=pki.ca_file, certfile=pki.client_files.cert,
                               keyfile=pki.client_files.key), srv)
    assert out.ok, out.error
    assert out.client_cert is not None
    assert (("commonName", "device-1"),) in out.client_cert["subject"]


async def test_ca_bundle_with_several_cas(pki: Pki, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle.pem"
    other = make_ca("other")
    bundle.write_bytes(other.cert.public_bytes(Encoding.PEM) + b"\n"
                       + Path(pki.ca_file).read_bytes())
    out = await handshake(opts(cacertfile=str(bundle)), server_ctx(pki))
    assert out.ok, out.error
