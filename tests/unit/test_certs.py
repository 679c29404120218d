"""tlsgate.tls.certs and `tlsgate certs`: generated PKI checked by the real OpenSSL CLI and by a
real TLS handshake (stdlib ssl on both ends, loopback); loaders' error messages; inspect."""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import socket
import ssl
import stat
import subprocess
import threading
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from tests.certkit import Pki
from tlsgate.certs_cli import certs
from tlsgate.tls import certs as c

OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl CLI not installed")
NOW = dt.datetime.now(dt.UTC)


def openssl(*args: str | Path) -> subprocess.CompletedProcess[str]:
    assert OPENSSL is not None
    return subprocess.run([OPENSSL, *map(str, args)], capture_output=True, text=True,
                          timeout=30, check=False)


def verify(ca: Path, cert: Path, *extra: str | Path,
           untrusted: Path | None = None) -> subprocess.CompletedProcess[str]:
    args: list[str | Path] = ["verify", "-CAfile", ca]
    if untrusted is not None:
        args += ["-untrusted", untrusted]
    return openssl(*args, *extra, cert)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def ipki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("ipki"), intermediate=True)


# ---------------------------------------------------------------------------------------------
# Builders, checked by `openssl verify`
# ---------------------------------------------------------------------------------------------
@needs_openssl
def test_root_ca_server_and_client_verify_with_openssl(pki: Pki) -> None:
    r = verify(pki.ca_pem, pki.ca_pem)
    assert r.returncode == 0, r.stderr
    r = verify(pki.ca_pem, pki.server.cert, "-purpose", "sslserver")
    assert r.returncode == 0 and ": OK" in r.stdout, r.stderr
    r = verify(pki.ca_pem, pki.client.cert, "-purpose", "sslclient")
    assert r.returncode == 0 and ": OK" in r.stdout, r.stderr


@needs_openssl
def test_bad_clients_fail_openssl_verify_for_the_right_reason(pki: Pki) -> None:
    r = verify(pki.ca_pem, pki.expired.cert)
    assert r.returncode != 0 and "certificate has expired" in r.stdout + r.stderr
    r = verify(pki.ca_pem, pki.not_yet_valid.cert)
    assert r.returncode != 0 and "not yet valid" in r.stdout + r.stderr
    r = verify(pki.ca_pem, pki.foreign.cert)
    assert r.returncode != 0 and "unable to get local issuer" in r.stdout + r.stderr
    r = verify(pki.ca_pem, pki.wrong_eku.cert, "-purpose", "sslclient")
    assert r.returncode != 0 and "unsuitable certificate purpose" in r.stdout + r.stderr
    # ... while the wrong-EKU certificate itself is otherwise valid
    assert verify(pki.ca_pem, pki.wrong_eku.cert).returncode == 0


@needs_openssl
def test_intermediate_chain_written_leaf_then_chain(ipki: Pki) -> None:
    assert ipki.intermediate is not None
    certs_in_file = c.load_pem_chain(ipki.server.cert)
    assert [x.subject for x in certs_in_file] == [ipki.server.issued.cert.subject,
                                                   ipki.intermediate.cert.subject]
    # the file alone (leaf + intermediate as untrusted) verifies against the root
    r = verify(ipki.ca_pem, ipki.server.cert, "-purpose", "sslserver",
               untrusted=ipki.server.cert)
    assert r.returncode == 0, r.stdout + r.stderr
    # without the intermediate it does not
    only_leaf = ipki.dir / "leaf-only.pem"
    only_leaf.write_bytes(ipki.server.issued.cert_pem())
    assert verify(ipki.ca_pem, only_leaf).returncode != 0


@needs_openssl
def test_path_len_zero_forbids_a_further_intermediate(tmp_path: Path) -> None:
    root = c.make_ca("root")
    inter = c.make_ca("inter", parent=root, path_len=0)
    sub = c.make_ca("sub", parent=inter)
    leaf = c.issue_client(sub, "leaf")
    assert leaf.chain == (sub.cert, inter.cert)
    (tmp_path / "root.pem").write_bytes(root.cert_pem())
    cert, _ = leaf.write(tmp_path, "leaf")
    r = verify(tmp_path / "root.pem", cert, untrusted=cert)
    assert r.returncode != 0 and "path length" in (r.stdout + r.stderr).lower()
    ok = c.issue_client(inter, "ok")
    cert2, _ = ok.write(tmp_path, "ok")
    assert verify(tmp_path / "root.pem", cert2, untrusted=cert2).returncode == 0


def test_ca_extensions() -> None:
    root = c.make_ca("Root", o="Org", key_type="rsa", days=10)
    ext = root.cert.extensions
    bc = ext.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length is None
    ku = ext.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign
    assert root.cert.issuer == root.cert.subject
    assert isinstance(root.key, rsa.RSAPrivateKey) and root.key.key_size == 2048
    assert 9.9 < c.days_left(root.cert) <= 10.0
    assert root.chain == ()


def test_key_types_and_sizes() -> None:
    ca = c.make_ca("ca")
    assert isinstance(ca.key, ec.EllipticCurvePrivateKey) and ca.key.curve.name == "secp256r1"
    big = c.issue_server(ca, ["x"], key_type="rsa", rsa_bits=3072)
    assert isinstance(big.key, rsa.RSAPrivateKey) and big.key.key_size == 3072
    ku = big.cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_encipherment and ku.digital_signature
    with pytest.raises(ValueError, match="2048"):
        c.issue_server(ca, ["x"], key_type="rsa", rsa_bits=1024)
    with pytest.raises(ValueError, match=r"ec.*rsa"):
        c.make_ca("x", key_type="dsa")  # type: ignore[arg-type]


def test_server_sans_and_validation() -> None:
    ca = c.make_ca("ca")
    s = c.issue_server(ca, ["localhost", "127.0.0.1", "::1", "*.example.com", "a_b.local"])
    san = s.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "*.example.com", "a_b.local"]
    assert [str(i) for i in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    assert s.cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == \
        "localhost"
    for bad in ["", "has space", "-lead.example", "a..b", "*", "ünïcode.example"]:
        with pytest.raises(ValueError, match="neither an IP address nor a DNS name"):
            c.issue_server(ca, [bad])
    with pytest.raises(ValueError, match="at least one"):
        c.issue_server(ca, [])


def test_validity_window_and_naive_datetimes() -> None:
    ca = c.make_ca("ca")
    nb, na = dt.datetime(2020, 1, 1), dt.datetime(2020, 6, 1)  # naive = UTC
    old = c.issue_client(ca, "old", not_before=nb, not_after=na)
    assert old.cert.not_valid_before_utc == nb.replace(tzinfo=dt.UTC)
    assert old.cert.not_valid_after_utc == na.replace(tzinfo=dt.UTC)
    assert c.days_left(old.cert) < -365
    with pytest.raises(ValueError, match="must be later"):
        c.issue_client(ca, "x", not_before=na, not_after=nb)


def test_status_extensions_eku_and_must_staple() -> None:
    ca = c.make_ca("ca")
    leaf = c.issue_server(ca, ["h"], crl_urls=["http://crl/a.crl", "http://crl/b.crl"],
                          ocsp_url="http://ocsp:8080", ca_issuers_url="http://ca/ca.der",
                          must_staple=True)
    ext = leaf.cert.extensions
    dps = ext.get_extension_for_class(x509.CRLDistributionPoints).value
    assert [dp.full_name[0].value for dp in dps if dp.full_name] == ["http://crl/a.crl",
                                                                      "http://crl/b.crl"]
    aia = ext.get_extension_for_class(x509.AuthorityInformationAccess).value
    assert {(a.access_method.dotted_string, a.access_location.value) for a in aia} == {
        ("1.3.6.1.5.5.7.48.1", "http://ocsp:8080"), ("1.3.6.1.5.5.7.48.2", "http://ca/ca.der")}
    assert list(ext.get_extension_for_class(x509.TLSFeature).value) == [
        x509.TLSFeatureType.status_request]
    assert list(ext.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH]
    aki = ext.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest

    none = c.issue_client(ca, "n", eku=None)
    with pytest.raises(x509.ExtensionNotFound):
        none.cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    several = c.issue_client(ca, "s", eku=["clientAuth", "OCSPSigning", "1.2.3.4"])
    assert [o.dotted_string for o in
            several.cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value] == [
        "1.3.6.1.5.5.7.3.2", "1.3.6.1.5.5.7.3.9", "1.2.3.4"]
    with pytest.raises(ValueError, match="unknown extended key usage 'clientauth'"):
        c.issue_client(ca, "x", eku=["clientauth"])


@needs_openssl
def test_openssl_reads_must_staple_and_aia(tmp_path: Path) -> None:
    ca = c.make_ca("ca")
    leaf = c.issue_server(ca, ["h"], must_staple=True, ocsp_url="http://127.0.0.1:9/ocsp")
    cert, _ = leaf.write(tmp_path, "leaf")
    text = openssl("x509", "-in", cert, "-noout", "-text").stdout
    assert "TLS Feature" in text and "status_request" in text
    assert "OCSP - URI:http://127.0.0.1:9/ocsp" in text
    assert openssl("x509", "-in", cert, "-noout", "-ocsp_uri").stdout.strip() == \
        "http://127.0.0.1:9/ocsp"


def test_client_subject_order_and_no_cn() -> None:
    ca = c.make_ca("ca")
    cl = c.issue_client(ca, "dev1", ou="iot", o="ACME", l="Hangzhou", st="Zhejiang", c="CN")
    assert cl.cert.subject.rfc4514_string() == \
        "CN=dev1,OU=iot,O=ACME,L=Hangzhou,ST=Zhejiang,C=CN"
    nocn = c.issue_client(ca, None, o="ACME", emails=["a@b.example"])
    assert nocn.cert.subject.rfc4514_string() == "O=ACME"
    empty = c.issue_client(ca, None, subject=x509.Name([]), hosts=["dev.example"])
    san = empty.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical  # RFC 5280: empty subject => critical SAN


def test_reusing_a_key() -> None:
    ca = c.make_ca("ca")
    one = c.issue_client(ca, "a")
    two = c.issue_client(ca, "a", key=one.key)
    assert c.key_matches_cert(one.key, two.cert)
    assert one.serial != two.serial


# ---------------------------------------------------------------------------------------------
# CRLs
# ---------------------------------------------------------------------------------------------
@needs_openssl
def test_crl_revokes_for_openssl(pki: Pki, tmp_path: Path) -> None:
    crl = pki.crl("revoked-client", [pki.client])
    r = verify(pki.ca_pem, pki.client.cert, "-crl_check", "-CRLfile", crl)
    assert r.returncode != 0 and "certificate revoked" in r.stdout + r.stderr
    clean = pki.crl("clean", [12345])
    r = verify(pki.ca_pem, pki.client.cert, "-crl_check", "-CRLfile", clean)
    assert r.returncode == 0, r.stdout + r.stderr
    # an expired CRL is reported as such
    old = pki.crl("old", [], this_update=NOW - dt.timedelta(days=3),
                  next_update=NOW - dt.timedelta(days=1))
    r = verify(pki.ca_pem, pki.client.cert, "-crl_check", "-CRLfile", old)
    assert r.returncode != 0 and "CRL has expired" in r.stdout + r.stderr


@needs_openssl
def test_crl_der_and_contents(pki: Pki) -> None:
    when = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)
    der = c.make_crl(pki.ca, [(7, when), (0xABCDEF, when)], der=True, crl_number=42)
    crl = x509.load_der_x509_crl(der)
    assert crl.is_signature_valid(pki.ca.cert.public_key())  # type: ignore[arg-type]
    assert {r.serial_number for r in crl} == {7, 0xABCDEF}
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 42
    assert crl.next_update_utc is not None and crl.next_update_utc > NOW
    path = pki.dir / "x.crl.der"
    path.write_bytes(der)
    text = openssl("crl", "-inform", "DER", "-in", path, "-noout", "-text").stdout
    assert "ABCDEF" in text and "Serial Number: 07" in text


# ---------------------------------------------------------------------------------------------
# Writing and loading files
# ---------------------------------------------------------------------------------------------
def test_write_modes_and_encrypted_key(tmp_path: Path) -> None:
    ca = c.make_ca("ca")
    leaf = c.issue_client(ca, "x")
    cert, key = leaf.write(tmp_path / "sub", "x", password=b"s3cret pass")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(cert.stat().st_mode) == 0o644
    assert b"ENCRYPTED PRIVATE KEY" in key.read_bytes()
    assert not c.is_world_readable(key) and c.is_world_readable(cert)
    loaded = c.load_private_key(key, "s3cret pass")
    assert c.key_matches_cert(loaded, leaf.cert)
    with pytest.raises(c.CertError, match=r"line 1: wrong password") as e:
        c.load_private_key(key, b"nope")
    assert "nope" not in str(e.value) and "s3cret" not in str(e.value)
    with pytest.raises(c.CertError, match="encrypted and no password was given"):
        c.load_private_key(key)
    assert "s3cret" not in repr(leaf)  # no key material or password in repr
    assert "key=" not in repr(leaf)


def test_load_private_key_formats(tmp_path: Path) -> None:
    ca = c.make_ca("ca", key_type="rsa")
    key = ca.key
    fmts = {
        "pkcs8.pem": key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()),
        "pkcs1.pem": key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.TraditionalOpenSSL,
                                       serialization.NoEncryption()),
        "key.der": key.private_bytes(serialization.Encoding.DER,
                                     serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()),
        # certificate and key in one file: the key is found
        "combined.pem": ca.cert_pem() + ca.key_pem(),
    }
    for name, data in fmts.items():
        (tmp_path / name).write_bytes(data)
        loaded = c.load_private_key(tmp_path / name, password="unneeded")
        assert c.key_matches_cert(loaded, ca.cert), name
    legacy = key.private_bytes(serialization.Encoding.PEM,
                               serialization.PrivateFormat.TraditionalOpenSSL,
                               serialization.BestAvailableEncryption(b"pw"))
    (tmp_path / "legacy-enc.pem").write_bytes(legacy)
    assert b"Proc-Type: 4,ENCRYPTED" in legacy
    assert c.key_matches_cert(c.load_private_key(tmp_path / "legacy-enc.pem", b"pw"), ca.cert)
    with pytest.raises(c.CertError, match="wrong password"):
        c.load_private_key(tmp_path / "legacy-enc.pem", b"bad")
    enc_der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                serialization.BestAvailableEncryption(b"pw"))
    (tmp_path / "enc.der").write_bytes(enc_der)
    with pytest.raises(c.CertError, match="encrypted and no password"):
        c.load_private_key(tmp_path / "enc.der")
    assert c.key_matches_cert(c.load_private_key(tmp_path / "enc.der", b"pw"), ca.cert)


def test_load_private_key_errors(tmp_path: Path) -> None:
    ca = c.make_ca("ca")
    other = c.make_ca("other")
    cases: dict[str, tuple[bytes, str]] = {
        "cert.pem": (ca.cert_pem(), "holds a certificate, not a private key"),
        "cert.der": (ca.cert_der(), "holds a DER certificate, not a private key"),
        "empty.key": (b"", "is empty"),
        "garbage.key": (b"\x01\x02hello", "not a valid private key"),
        "two.key": (ca.key_pem() + other.key_pem(), "holds 2 private keys"),
        "truncated.key": (ca.key_pem()[:-30], "line 1: BEGIN PRIVATE KEY without a matching "
                                              "END"),
        "corrupt.key": (ca.key_pem().replace(b"\n", b"\n#", 1),
                        "line 1: not a valid private key"),
    }
    for name, (data, msg) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(c.CertError, match=re.escape(msg)) as e:
            c.load_private_key(tmp_path / name)
        assert str(tmp_path / name) in str(e.value), name
    with pytest.raises(c.CertError, match="not found"):
        c.load_private_key(tmp_path / "missing.key")
    with pytest.raises(c.CertError, match="is a directory"):
        c.load_private_key(tmp_path)


@needs_openssl
def test_load_private_key_unsupported_type(tmp_path: Path) -> None:
    """An SM2 key (what the GM listeners use) is a key cryptography cannot load: the message
    says "unsupported", not "corrupt"."""
    r = openssl("genpkey", "-algorithm", "SM2", "-out", tmp_path / "sm2.key")
    if r.returncode != 0:
        pytest.skip("this openssl cannot make SM2 keys")
    with pytest.raises(c.CertError, match="unsupported private key type"):
        c.load_private_key(tmp_path / "sm2.key")


def test_load_pem_chain(tmp_path: Path, ipki: Pki) -> None:
    chain = c.load_pem_chain(ipki.server.cert)
    assert len(chain) == 2
    first, second = ipki.server.issued.cert_pem(), ipki.ca.cert_pem()
    bad_second = first + second.replace(b"\n", b"\n!!", 2)
    second_line = first.count(b"\n") + 1
    cases: dict[str, tuple[bytes, str]] = {
        "empty.pem": (b"", "no PEM certificate found (the file is empty)"),
        "key.pem": (ipki.ca.key_pem(), "no PEM certificate found (it holds: PRIVATE KEY)"),
        "cert.der": (ipki.ca.cert_der(), "the file is a DER certificate; convert it with: "
                                         "openssl x509 -inform der"),
        "text.pem": (b"hello\nworld\n", "no PEM certificate found"),
        "bad-second.pem": (bad_second,
                           f"line {second_line}: the certificate cannot be parsed"),
        "truncated.pem": (first + second[:40], f"line {second_line}: BEGIN "
                                               "CERTIFICATE without a matching END"),
        "mismatch.pem": (first.replace(b"END CERTIFICATE", b"END X509 CRL"),
                         "END X509 CRL does not match BEGIN CERTIFICATE on line 1"),
    }
    for name, (data, msg) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(c.CertError, match=re.escape(msg)) as e:
            c.load_pem_chain(tmp_path / name)
        assert str(e.value).startswith(f"file {tmp_path / name}"), str(e.value)
    # text around blocks (openssl's "Bag Attributes", a -text dump) is ignored
    noisy = b"Bag Attributes\n    friendlyName: x\nsubject=CN = x\n" + first + b"junk\n" + \
        second
    (tmp_path / "noisy.pem").write_bytes(noisy)
    assert len(c.load_pem_chain(tmp_path / "noisy.pem")) == 2


def test_key_matches_cert_and_days_left(pki: Pki) -> None:
    assert c.key_matches_cert(pki.server.issued.key, pki.server.issued.cert)
    assert not c.key_matches_cert(pki.client.issued.key, pki.server.issued.cert)
    assert c.days_left(pki.expired.issued.cert) < 0
    left = c.days_left(pki.server.issued.cert)
    assert c.DEFAULT_LEAF_DAYS - 1 < left <= c.DEFAULT_LEAF_DAYS
    assert c.days_left(pki.server.issued.cert, now=NOW + dt.timedelta(days=10)) == \
        pytest.approx(left - 10, abs=0.01)


@needs_openssl
def test_fingerprint_matches_openssl(pki: Pki) -> None:
    out = openssl("x509", "-in", pki.client.cert, "-noout", "-fingerprint", "-sha256").stdout
    assert out.strip().split("=", 1)[1] == c.fingerprint(pki.client.issued.cert)


# ---------------------------------------------------------------------------------------------
# inspect
# ---------------------------------------------------------------------------------------------
def test_inspect_certificate_fields(tmp_path: Path) -> None:
    ca = c.make_ca("Test Root", o="ACME")
    leaf = c.issue_server(ca, ["mqtt.example.com", "10.0.0.1"], crl_urls=["http://c/x.crl"],
                          ocsp_url="http://o/", must_staple=True, serial=0x1234ABCD)
    cert, _ = leaf.write(tmp_path, "leaf")
    out = c.inspect(cert)
    assert "Subject:      CN=mqtt.example.com" in out
    assert "Issuer:       CN=Test Root,O=ACME" in out
    assert "Serial:       1234ABCD" in out
    assert "SANs:         DNS:mqtt.example.com, IP:10.0.0.1" in out
    assert "Key:          EC P-256" in out
    assert "EKU:          serverAuth" in out
    assert "CRL DPs:      http://c/x.crl" in out
    assert "OCSP:         http://o/" in out
    assert "Must-staple:  yes" in out
    assert f"SHA-256:      {c.fingerprint(leaf.cert)}" in out
    assert re.search(r"Not after:    \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC  \(82[45]\.\d days left\)",
                     out)
    assert "EXPIRED" not in out
    assert "As dn:        CN=mqtt.example.com" in out


def test_inspect_expired_and_not_yet_valid(pki: Pki) -> None:
    out = c.inspect(pki.expired.cert)
    assert re.search(r"\(EXPIRED \d+\.\d days ago\)", out), out
    out = c.inspect(pki.not_yet_valid.cert)
    assert "NOT YET VALID" in out and "EXPIRED" not in out


def test_inspect_chain_order(ipki: Pki, tmp_path: Path) -> None:
    assert "certificate 1 is issued by certificate 2" in c.inspect(ipki.server.cert)
    chain = c.load_pem_chain(ipki.server.cert)
    reversed_file = tmp_path / "reversed.pem"
    reversed_file.write_bytes(b"".join(x.public_bytes(serialization.Encoding.PEM)
                                       for x in reversed(chain)))
    assert "certificate 1 is NOT issued by certificate 2" in c.inspect(reversed_file)


def test_inspect_crl_key_der(pki: Pki, tmp_path: Path) -> None:
    crl = pki.crl("inspect", [pki.client, 0xBEEF])
    out = c.inspect(crl)
    assert "CRL (line 1)" in out and "Revoked:      2" in out
    assert f"{pki.client.serial:X}" in out and "BEEF" in out
    assert "Issuer:       CN=tlsgate test root CA,O=tlsgate tests" in out

    key_out = c.inspect(pki.client.key)
    assert "Private key" in key_out and "EC P-256" in key_out
    body = pki.client.key.read_bytes().decode().splitlines()[1]
    assert body[:20] not in key_out  # never any key material

    enc = tmp_path / "enc.key"
    enc.write_bytes(pki.client.issued.key_pem(b"pw"))
    assert "encrypted" in c.inspect(enc)

    der = tmp_path / "cert.der"
    der.write_bytes(pki.client.der)
    assert "Certificate (DER)" in c.inspect(der) and "CN=client" in c.inspect(der)
    (tmp_path / "junk").write_bytes(b"\x00\x01\x02")
    with pytest.raises(c.CertError, match="no certificate, CRL or private key found"):
        c.inspect(tmp_path / "junk")


# ---------------------------------------------------------------------------------------------
# init_dir
# ---------------------------------------------------------------------------------------------
@needs_openssl
def test_init_dir_writes_a_working_pki(tmp_path: Path) -> None:
    d = tmp_path / "certs"
    res = c.init_dir(d, clients=["dev1", "dev2"])
    names = sorted(p.name for p in d.iterdir())
    assert names == ["ca.key", "ca.pem", "dev1.key", "dev1.pem", "dev2.key", "dev2.pem",
                     "server.key", "server.pem"]
    assert sorted(p.name for p in res.files) == names
    for p in res.files:
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode == (0o600 if p.suffix == ".key" else 0o644), p
    assert verify(res.ca_cert, res.server_cert, "-purpose", "sslserver").returncode == 0
    for cert, key in res.clients.values():
        assert verify(res.ca_cert, cert, "-purpose", "sslclient").returncode == 0
        assert c.key_matches_cert(c.load_private_key(key), c.load_pem_chain(cert)[0])
    server = c.load_pem_chain(res.server_cert)[0]
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(i) for i in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    dev1 = c.load_pem_chain(res.clients["dev1"][0])[0]
    assert dev1.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "dev1"
    assert 3649 < c.days_left(c.load_pem_chain(res.ca_cert)[0]) <= 3650


def test_init_dir_refuses_to_overwrite_and_force_replaces(tmp_path: Path) -> None:
    other = tmp_path / "other"
    tmp_path = tmp_path / "pki"
    c.init_dir(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(c.CertError) as e:
        c.init_dir(tmp_path, clients=["client", "new"])
    msg = str(e.value)
    assert "refusing to overwrite" in msg and str(tmp_path / "ca.pem") in msg
    assert "new.pem" not in msg  # only the files in the way are named
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # nothing written
    # a single existing file is enough to refuse
    other.mkdir()
    (other / "server.key").write_text("mine")
    with pytest.raises(c.CertError, match=r"other/server\.key \(use --force"):
        c.init_dir(other)
    assert (other / "server.key").read_text() == "mine"
    assert sorted(p.name for p in other.iterdir()) == ["server.key"]
    os.chmod(tmp_path / "ca.key", 0o644)
    c.init_dir(tmp_path, force=True)
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert after.keys() == before.keys()
    assert all(after[n] != before[n] for n in before)
    assert stat.S_IMODE((tmp_path / "ca.key").stat().st_mode) == 0o600


def test_init_dir_input_errors(tmp_path: Path) -> None:
    bad: list[tuple[dict[str, object], str]] = [
        ({"clients": ["../evil"]}, "not usable as a file name"),
        ({"clients": ["ca"]}, "would overwrite the ca files"),
        ({"clients": ["a", "a"]}, "given twice: a"),
        ({"hosts": ["not a host"]}, "--host 'not a host' is neither"),
        ({"hosts": []}, "at least one"),
        ({"days": 0}, "at least one day"),
    ]
    for kwargs, msg in bad:
        with pytest.raises(c.CertError, match=re.escape(msg)):
            c.init_dir(tmp_path / "x", **kwargs)  # type: ignore[arg-type]
        assert not (tmp_path / "x").exists()
    (tmp_path / "file").write_text("")
    with pytest.raises(c.CertError, match="is not a directory"):
        c.init_dir(tmp_path / "file")


def test_init_dir_rsa(tmp_path: Path) -> None:
    res = c.init_dir(tmp_path, key_type="rsa", hosts=["broker.local"], clients=[])
    key = c.load_private_key(res.server_key)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
    assert res.clients == {}


# ---------------------------------------------------------------------------------------------
# A real TLS handshake with what init_dir wrote (stdlib ssl on both sides, loopback)
# ---------------------------------------------------------------------------------------------
def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext,
               server_hostname: str) -> tuple[dict[str, object] | BaseException, bytes]:
    """Run one handshake + echo over loopback; return what the server saw (the client's
    certificate, or its exception) and the bytes the client got back."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    seen: list[dict[str, object] | BaseException] = []

    def serve() -> None:
        conn, _ = listener.accept()
        conn.settimeout(10)
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                peer = tls.getpeercert()
                seen.append(dict(peer) if peer else {})
                tls.sendall(tls.recv(100).upper())
        except (ssl.SSLError, OSError) as e:
            seen.append(e)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    got = b""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                client_ctx.wrap_socket(raw, server_hostname=server_hostname) as tls:
            tls.sendall(b"ping")
            got = tls.recv(100)
    except (ssl.SSLError, OSError):
        pass
    t.join(10)
    listener.close()
    assert seen, "server thread produced nothing"
    return seen[0], got


def _ctxs(res: c.InitResult, client: str | None) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(res.server_cert, res.server_key)
    server.load_verify_locations(res.ca_cert)
    server.verify_mode = ssl.CERT_REQUIRED
    cl = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cl.load_verify_locations(res.ca_cert)
    if client is not None:
        cl.load_cert_chain(*res.clients[client])
    return server, cl


@pytest.mark.parametrize("key_type", ["ec", "rsa"])
def test_mutual_tls_with_init_dir_output(tmp_path: Path, key_type: c.KeyType) -> None:
    res = c.init_dir(tmp_path, clients=["dev1"], key_type=key_type)
    for host in ("localhost", "127.0.0.1"):
        server, client = _ctxs(res, "dev1")
        seen, got = _handshake(server, client, host)
        assert got == b"PING"
        assert isinstance(seen, dict)
        subject = dict(x[0] for x in seen["subject"])  # type: ignore[attr-defined]
        assert subject["commonName"] == "dev1"


def test_mutual_tls_refuses_missing_or_foreign_client_cert(tmp_path: Path) -> None:
    res = c.init_dir(tmp_path / "a", clients=["dev1"])
    other = c.init_dir(tmp_path / "b", clients=["dev1"])
    server, client = _ctxs(res, None)
    seen, got = _handshake(server, client, "localhost")
    assert isinstance(seen, ssl.SSLError) and got == b""
    server, _ = _ctxs(res, None)
    foreign = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    foreign.load_verify_locations(res.ca_cert)
    foreign.load_cert_chain(*other.clients["dev1"])
    seen, got = _handshake(server, foreign, "localhost")
    assert isinstance(seen, ssl.SSLError) and "certificate verify failed" in str(seen)
    # and the client refuses a server it does not trust
    server, _ = _ctxs(other, None)
    _, client = _ctxs(res, "dev1")
    seen, got = _handshake(server, client, "localhost")
    assert got == b""


def test_certkit_pki_handshakes(ipki: Pki) -> None:
    seen, got = _handshake(ipki.server_context(), ipki.client_context(ipki.client),
                           "localhost")
    assert got == b"PING" and isinstance(seen, dict)
    for bad in (ipki.expired, ipki.foreign, ipki.not_yet_valid):
        seen, got = _handshake(ipki.server_context(), ipki.client_context(bad), "localhost")
        assert isinstance(seen, ssl.SSLError), bad.cert.name


# ---------------------------------------------------------------------------------------------
# The CLI
# ---------------------------------------------------------------------------------------------
def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(certs, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def test_cli_init_writes_prints_and_refuses_to_overwrite(tmp_path: Path) -> None:
    d = tmp_path / "pki"
    code, out = _run("init", str(d), "--host", "broker.example", "--host", "10.1.2.3",
                     "--client", "dev1", "--client", "dev2")
    assert code == 0, out
    for name in ("ca.pem", "ca.key", "server.pem", "server.key", "dev1.pem", "dev1.key",
                 "dev2.pem", "dev2.key"):
        assert name in out
        assert (d / name).exists()
    for key in d.glob("*.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert f"mosquitto_pub -h broker.example -p 8883 --cafile {d.absolute() / 'ca.pem'}" in out
    assert f"--cert {d.absolute() / 'dev1.pem'} --key {d.absolute() / 'dev1.key'}" in out

    # the printed snippet is a valid tlsgate config for a mutual-TLS listener
    snippet = "\n".join(line[2:] for line in out.splitlines()
                        if line.startswith("  [") or re.match(r"^  [a-z_]+ = ", line))
    from tlsgate.config import parse

    cfg = parse(tomllib.loads(snippet))
    opts = cfg.listeners.ssl["default"].ssl_options
    assert opts.certfile == str(d.absolute() / "server.pem")
    assert opts.cacertfile == str(d.absolute() / "ca.pem")
    assert opts.verify == "verify_peer" and opts.fail_if_no_peer_cert

    before = (d / "ca.key").read_bytes()
    code, out = _run("init", str(d))
    assert code == 1
    assert "refusing to overwrite" in out and str(d.absolute() / "ca.pem") in out
    assert "--force" in out
    assert (d / "ca.key").read_bytes() == before

    code, out = _run("init", str(d), "--force", "--rsa")
    assert code == 0, out
    assert (d / "ca.key").read_bytes() != before
    assert isinstance(c.load_private_key(d / "ca.key"), rsa.RSAPrivateKey)
    assert stat.S_IMODE((d / "server.key").stat().st_mode) == 0o600


def test_cli_init_options(tmp_path: Path) -> None:
    code, out = _run("init", str(tmp_path / "a"), "--key-type", "rsa", "--rsa-bits", "3072",
                     "--days", "30", "--ca-days", "60")
    assert code == 0, out
    key = c.load_private_key(tmp_path / "a" / "server.key")
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 3072
    assert 29 < c.days_left(c.load_pem_chain(tmp_path / "a" / "client.pem")[0]) <= 30
    assert 59 < c.days_left(c.load_pem_chain(tmp_path / "a" / "ca.pem")[0]) <= 60
    code, out = _run("init", str(tmp_path / "b"), "--rsa", "--key-type", "ec")
    assert code == 2 and "--rsa contradicts --key-type ec" in out
    code, out = _run("init", str(tmp_path / "c"), "--rsa-bits", "1024", "--rsa")
    assert code == 2 and "1024" in out
    code, out = _run("init", str(tmp_path / "d"), "--client", "bad/name")
    assert code == 1 and "not usable as a file name" in out
    assert not (tmp_path / "d").exists()


def test_cli_inspect(pki: Pki, tmp_path: Path) -> None:
    code, out = _run("inspect", str(pki.expired.cert))
    assert code == 0 and "EXPIRED" in out and "CN=expired-client" in out
    code, out = _run("inspect", str(pki.server.cert))
    assert code == 0 and "DNS:localhost" in out and "EXPIRED" not in out
    code, out = _run("inspect", str(tmp_path / "missing.pem"))
    assert code == 1 and "not found" in out
