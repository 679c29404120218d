"""tlsgate.tls.identity: EMQX's peer_cert_as_username / peer_cert_as_clientid, byte for byte.

The expected ``dn``/``cn`` strings below are not hand-written guesses: they are what EMQX's own
formatter (``esockd_ssl:peer_cert_subject/1`` and ``peer_cert_common_name/1`` from
emqx/esockd, compiled with Erlang/OTP 25) printed for certificates built exactly like the ones
these tests build. See the module docstring of tlsgate/tls/identity.py.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID

from tlsgate.tls import certs as c
from tlsgate.tls.identity import (
    IdentityError,
    cert_der,
    common_name,
    identity_from_cert,
    peer_identity,
    subject_string,
)

RDN = x509.RelativeDistinguishedName
A = x509.NameAttribute
OID = x509.ObjectIdentifier
T = _ASN1Type


@pytest.fixture(scope="module")
def ca() -> c.Issued:
    return c.make_ca("identity test CA")


def der_for(ca: c.Issued, *rdns: list[x509.NameAttribute[str]]) -> bytes:
    name = x509.Name([RDN(r) for r in rdns])
    return c.issue_client(ca, None, subject=name).cert_der()


def both(der: bytes) -> tuple[bytes | None, bytes | None]:
    return identity_from_cert(der, "dn"), identity_from_cert(der, "cn")


def test_all_subject_parts_as_in_emqx_docs(ca: c.Issued) -> None:
    """EMQX documents dn as CN=…,OU=…,O=…,L=…,ST=…,C=…"""
    der = c.issue_client(ca, "dev1", ou="iot", o="ACME", l="Hangzhou", st="Zhejiang",
                         c="CN").cert_der()
    assert both(der) == (b"CN=dev1,OU=iot,O=ACME,L=Hangzhou,ST=Zhejiang,C=CN", b"dev1")
    assert subject_string(der) == "CN=dev1,OU=iot,O=ACME,L=Hangzhou,ST=Zhejiang,C=CN"
    assert common_name(der) == "dev1"


def test_raw_modes(ca: c.Issued) -> None:
    der = c.issue_client(ca, "dev1").cert_der()
    assert identity_from_cert(der, "disabled") is None
    assert identity_from_cert(der, "crt") == der
    pem = identity_from_cert(der, "pem")
    # base64 of the DER on one line with padding -- not the PEM text with its armour
    assert pem == base64.b64encode(der)
    assert pem is not None and b"\n" not in pem and b"-----" not in pem
    assert base64.b64decode(pem) == der
    md5 = identity_from_cert(der, "md5")
    assert md5 == hashlib.md5(der).hexdigest().encode()
    assert md5 is not None and len(md5) == 32 and md5 == md5.lower()
    with pytest.raises(ValueError, match="unknown identity mode 'sha1'"):
        identity_from_cert(der, "sha1")  # type: ignore[arg-type]


def test_md5_known_value() -> None:
    # crt/pem/md5 never parse: any bytes work, so the digest can be checked on fixed input
    assert identity_from_cert(b"abc", "md5") == b"900150983cd24fb0d6963f7d28e17f72"
    assert identity_from_cert(b"abc", "pem") == b"YWJj"


def test_no_cn_and_empty_subject(ca: c.Issued) -> None:
    # No CN: cn is None (EMQX keeps the CONNECT's value), dn is still the subject.
    assert both(c.issue_client(ca, None, o="ACME").cert_der()) == (b"O=ACME", None)
    # Empty subject: dn is the empty string (EMQX puts <<>> there, not undefined).
    der = c.issue_client(ca, None, subject=x509.Name([]), hosts=["x.example"]).cert_der()
    assert both(der) == (b"", None)
    assert common_name(der) is None and subject_string(der) == ""


def test_escaping(ca: c.Issued) -> None:
    der = der_for(ca, [A(NameOID.COMMON_NAME, ' #a,b+c;d<e>f"g\\h~i\x7fé中 ')])
    assert both(der) == (
        b'CN=\\ #a\\,b\\+c\\;d\\<e\\>f\\"g\\\\h\\7Ei\\7F\\C3\\A9\\E4\\B8\\AD\\ ',
        ' #a,b+c;d<e>f"g\\h~i\x7fé中 '.encode(),
    )
    der = der_for(ca, [A(NameOID.COMMON_NAME, " ")], [A(NameOID.ORGANIZATION_NAME, "  ")],
                  [A(NameOID.ORGANIZATIONAL_UNIT_NAME, "#")],
                  [A(NameOID.LOCALITY_NAME, "a#b =c")])
    assert both(der) == (b"L=a#b =c,OU=\\#,O=\\ \\ ,CN=\\ ", b" ")


def test_several_cns_and_multi_valued_rdn(ca: c.Issued) -> None:
    der = der_for(ca, [A(NameOID.COMMON_NAME, "one")],
                  [A(NameOID.COMMON_NAME, "two"), A(NameOID.ORGANIZATION_NAME, "O1")],
                  [A(NameOID.COMMON_NAME, "three")])
    # every CN in DER order, joined by "," (not the first, not the last)
    assert both(der) == (b"CN=three,O=O1+CN=two,CN=one", b"one,two,three")


def test_string_types(ca: c.Issued) -> None:
    der = der_for(ca, [A(NameOID.COMMON_NAME, "tele\xe9\xff", T.T61String)],
                  [A(NameOID.ORGANIZATION_NAME, "bmp中", T.BMPString)],
                  [A(NameOID.ORGANIZATIONAL_UNIT_NAME, "uni\U0001F600", T.UniversalString)],
                  [A(NameOID.LOCALITY_NAME, "print", T.PrintableString)])
    # cryptography writes a T61String as UTF-8 bytes; OTP reads T61 as Latin-1, so EMQX
    # double-encodes them -- and so must we.
    assert both(der) == (
        b"L=print,OU=uni\\F0\\9F\\98\\80,O=bmp\\E4\\B8\\AD,"
        b"CN=tele\\C3\\83\\C2\\A9\\C3\\83\\C2\\BF",
        b"tele\xc3\x83\xc2\xa9\xc3\x83\xc2\xbf",
    )


def test_latin1_teletex_that_cryptography_refuses(ca: c.Issued) -> None:
    der = der_for(ca, [A(NameOID.COMMON_NAME, "teleéé", T.T61String)])
    latin = der.replace("teleéé".encode(), b"tele\xe9\xe9\xe9\xe9")  # same length, real Latin-1
    assert latin != der
    with pytest.raises(ValueError):  # cryptography cannot read this subject at all
        x509.load_der_x509_certificate(latin).subject.rdns  # noqa: B018
    assert both(latin) == (b"CN=tele\\C3\\A9\\C3\\A9\\C3\\A9\\C3\\A9",
                           b"tele\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9")


def test_attribute_names_and_unknown_oids(ca: c.Issued) -> None:
    der = der_for(
        ca,
        [A(NameOID.DOMAIN_COMPONENT, "com")], [A(NameOID.DOMAIN_COMPONENT, "example")],
        [A(NameOID.EMAIL_ADDRESS, "a@b.c")], [A(NameOID.USER_ID, "uid1")],
        [A(NameOID.STREET_ADDRESS, "Main St")], [A(NameOID.SERIAL_NUMBER, "SN123")],
        [A(NameOID.TITLE, "Dr")], [A(NameOID.SURNAME, "Smith")],
        [A(NameOID.GIVEN_NAME, "Jo")], [A(NameOID.PSEUDONYM, "ps")],
        [A(NameOID.DN_QUALIFIER, "dq")], [A(NameOID.GENERATION_QUALIFIER, "III")],
        [A(NameOID.INITIALS, "JS")], [A(OID("2.5.4.41"), "nm")],
        [A(NameOID.BUSINESS_CATEGORY, "biz")], [A(NameOID.JURISDICTION_COUNTRY_NAME, "US")],
        [A(OID("1.2.3.4"), "abc", T.IA5String)], [A(OID("1.2.3.5"), "utf", T.UTF8String)],
        [A(NameOID.COMMON_NAME, "x")])
    assert both(der) == (
        b"CN=x,1.2.3.5=utf,1.2.3.4=\\<\\<22\\,3\\,97\\,98\\,99\\>\\>,"
        b"1.3.6.1.4.1.311.60.2.1.3=US,2.5.4.15=biz,2.5.4.41=nm,INITIALS=JS,"
        b"GENERATIONQUALIFIER=III,2.5.4.46=dq,PSEUDONYM=ps,GIVENNAME=Jo,SN=Smith,TITLE=Dr,"
        b"SERIALNUMBER=SN123,2.5.4.9=Main St,UID=uid1,EMAILADDRESS=a@b.c,DC=example,DC=com",
        b"x",
    )


def test_erlang_p_wrapping_of_long_undecoded_values(ca: c.Issued) -> None:
    der = der_for(ca, [A(OID("1.2.3.6"), "pr", T.PrintableString)],
                  [A(OID("1.2.3.7"), "vis", T.VisibleString)],
                  [A(OID("1.2.3.8"), "x" * 80, T.IA5String)],
                  [A(OID("1.2.3.9"), "num 1", T.NumericString)],
                  [A(NameOID.COMMON_NAME, "ok")])
    x19 = "\\,".join(["120"] * 19)
    expected = (
        "CN=ok,1.2.3.9=\\<\\<18\\,5\\,110\\,117\\,109\\,32\\,49\\>\\>,"
        "1.2.3.8=\\<\\<22\\,80\\," + "\\,".join(["120"] * 17) + "\\,\\0A  "
        + x19 + "\\,\\0A  " + x19 + "\\,\\0A  " + x19 + "\\,\\0A  "
        + "\\,".join(["120"] * 6) + "\\>\\>,"
        "1.2.3.7=\\<\\<26\\,3\\,118\\,105\\,115\\>\\>,1.2.3.6=pr")
    assert both(der) == (expected.encode(), b"ok")


def test_peer_identity_parses_once(ca: c.Issued) -> None:
    der = c.issue_client(ca, "dev9", o="ACME").cert_der()
    pid = peer_identity(der)
    assert pid.cn == b"dev9" and pid.cn_text == "dev9" and pid.dn == "CN=dev9,O=ACME"
    for mode in ("disabled", "cn", "dn", "crt", "pem", "md5"):
        assert pid.value(mode) == identity_from_cert(der, mode), mode
    assert "der=" not in repr(pid)


def test_accepts_parsed_certificates(ca: c.Issued) -> None:
    issued = c.issue_client(ca, "dev2", ou="x")
    assert cert_der(issued.cert) == issued.cert_der()
    assert common_name(issued.cert) == "dev2"
    assert subject_string(issued.cert) == "CN=dev2,OU=x"


def _tlv(tag: int, content: bytes) -> bytes:
    assert len(content) < 128
    return bytes([tag, len(content)]) + content


def test_v1_certificate_without_version_field() -> None:
    """A v1 certificate has no [0] version: the subject is then the 4th field, not the 5th."""
    cn = _tlv(0x31, _tlv(0x30, _tlv(0x06, bytes([0x55, 0x04, 0x03])) + _tlv(0x0C, b"old")))
    issuer = _tlv(0x30, _tlv(0x31, _tlv(0x30, _tlv(0x06, bytes([0x55, 0x04, 0x0A]))
                                        + _tlv(0x0C, b"I"))))
    tbs = _tlv(0x30, _tlv(0x02, b"\x01") + _tlv(0x30, b"") + issuer + _tlv(0x30, b"")
               + _tlv(0x30, cn))
    der = _tlv(0x30, tbs + _tlv(0x30, b"") + _tlv(0x03, b"\x00"))
    assert both(der) == (b"CN=old", b"old")


@pytest.mark.parametrize("der", [b"", b"\x30", b"\x04\x00", b"\x30\x05\x30\x03\x02\x01\x01",
                                 b"\x30\x84\xff\xff\xff\xff", b"\x30\x03\x30\x01\x00",
                                 b"not a certificate at all"])
def test_garbage_raises_identity_error(der: bytes) -> None:
    for mode in ("cn", "dn"):
        with pytest.raises(IdentityError):
            identity_from_cert(der, mode)


def test_truncated_real_certificate(ca: c.Issued) -> None:
    der = c.issue_client(ca, "dev1").cert_der()
    for cut in (10, 50, 120):
        with pytest.raises(IdentityError):
            identity_from_cert(der[:cut], "dn")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not installed")
def test_certificate_made_by_openssl_cli(tmp_path: Path) -> None:
    """The usual `openssl req -subj /C=../CN=..` certificate, as EMQX's docs make them."""
    key, cert = tmp_path / "k.pem", tmp_path / "c.pem"
    r = subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(key), "-out",
                        str(cert), "-days", "1", "-subj",
                        "/C=CN/ST=Zhejiang/L=Hangzhou/O=EMQ/OU=EMQX/CN=client-1"],
                       capture_output=True, text=True, timeout=30, check=False)
    assert r.returncode == 0, r.stderr
    der = c.load_pem_chain(cert)[0]
    assert both(cert_der(der)) == (b"CN=client-1,OU=EMQX,O=EMQ,L=Hangzhou,ST=Zhejiang,C=CN",
                                   b"client-1")
