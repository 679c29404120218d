"""Client-certificate identity, byte for byte as EMQX derives it.

``peer_cert_as_username`` / ``peer_cert_as_clientid`` (``disabled|cn|dn|crt|pem|md5``) and the
``${cert_common_name}`` / ``${cert_subject}`` placeholders must give an operator migrating from
EMQX exactly the strings their ACLs, auth backends and client ids already use. So this module
reproduces EMQX's code, not its documentation. What EMQX does, as read in its sources:

* ``emqx/emqx`` ``apps/emqx/src/emqx_channel.erl`` (``set_peercert_infos/3``, 2024 ``master``
  and the 2021 5.0 line alike)::

      cn  -> esockd_peercert:common_name(Peercert)
      dn  -> esockd_peercert:subject(Peercert)
      crt -> Peercert                                   % the DER bytes
      pem -> base64:encode(Peercert)                    % base64 of the DER: one line, padded,
                                                        % NO "-----BEGIN" armour, despite the
                                                        % docs saying "converted to PEM"
      md5 -> emqx_passwd:hash_data(md5, Peercert)       % hex of MD5(DER), lowercase
                                                        % (pbkdf2:to_hex, digits 0-9a-f)
      _   -> undefined

  A result of ``undefined`` (``disabled``; ``cn`` on a certificate without a CN) makes EMQX
  keep the user name / client id from the CONNECT packet (``set_username/2`` and
  ``maybe_assign_clientid/2`` only fill in what is still ``undefined``). :func:`identity_from_cert`
  returns ``None`` for those cases: the caller then leaves the CONNECT field as it is.
  An empty subject gives ``dn`` = ``b""`` (not ``None``), as in EMQX.

* ``emqx/esockd`` ``src/esockd_ssl.erl`` (``peer_cert_subject/1``, ``peer_cert_common_name/1``,
  ``format_rdn_sequence/1``, ``escape_rdn_value/2``; code derived from RabbitMQ's
  ``rabbit_ssl``), read at esockd HEAD of 2026-06:

  - ``dn``: the RDNs in *reverse* DER order (RFC 4514 style: a subject written
    ``C, ST, L, O, OU, CN`` reads ``CN=..,OU=..,O=..,L=..,ST=..,C=..``), joined by ``,``; the
    attributes of a multi-valued RDN joined by ``+`` in DER order. Attribute names: ``CN L ST
    O OU C SN GIVENNAME INITIALS GENERATIONQUALIFIER TITLE SERIALNUMBER PSEUDONYM DC
    EMAILADDRESS UID``; any other type is written as its dotted OID (``2.5.4.9=..``: esockd's
    ``STREET`` entry is keyed on a value the OTP decoder never produces, so street addresses
    come out as ``2.5.4.9``, and so they do here).
  - Value escaping (applied to the UTF-8 *bytes* of the value): a leading space or ``#`` and a
    trailing space get a backslash; ``" + , ; < > \\`` get a backslash; every byte below 32 or
    at/above 126 becomes ``\\XX`` (two uppercase hex digits) -- so ``~`` is ``\\7E`` and ``é``
    is ``\\C3\\A9``. Values are decoded first: UTF8String as is, PrintableString/IA5String
    as ASCII, TeletexString as Latin-1, BMPString as UCS-2, UniversalString as UCS-4, all
    re-encoded in UTF-8.
  - ``cn``: the values of *every* CN attribute, in DER order, joined by ``,`` -- unescaped,
    raw UTF-8. (Not the first, not the last: all of them.)
  - An attribute whose type OTP does not know and whose value is not a DirectoryString
    (e.g. an IA5String under a private OID) is printed by Erlang's ``~p`` as the bytes of its
    DER encoding, ``<<22,3,97,98,99>>`` (with a newline and two spaces wherever ``~p`` wraps
    at 80 columns), and then escaped (the newline becomes ``\\0A``). That is reproduced.
  - A known type with the wrong string type (a CN as IA5String) makes OTP refuse the whole
    certificate, so EMQX has no answer; tlsgate decodes the string by its tag.

How this was checked: esockd's ``esockd_ssl.erl`` (HEAD) compiled with OTP 25 (Debian
``erlang-base``) and run on certificates made with :mod:`tlsgate.tls.certs` covering every
case above (escapes, multi-valued RDNs, several CNs, no CN, empty subject, Teletex/BMP/
Universal strings, unknown OIDs, street/UID/DC/email): byte-identical output. The expected
strings in ``tests/unit/test_identity.py`` come from that run.

This module is pure (no I/O) and reads the subject straight from the DER (see
``_subject_rdns``): the gateway calls :func:`identity_from_cert` / :func:`peer_identity` with
the DER bytes the handshake produced.
"""

from __future__ import annotations

import base64
import functools
import hashlib
from dataclasses import dataclass, field
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization

__all__ = [
    "IdentityError",
    "IdentityMode",
    "PeerIdentity",
    "cert_der",
    "common_name",
    "identity_from_cert",
    "peer_identity",
    "subject_string",
]

IdentityMode = Literal["disabled", "cn", "dn", "crt", "pem", "md5"]

_CN = "2.5.4.3"

# esockd_ssl:format_rdn/1's table of short names.
_SHORT_NAMES: dict[str, str] = {
    "2.5.4.4": "SN",
    "2.5.4.42": "GIVENNAME",
    "2.5.4.43": "INITIALS",
    "2.5.4.44": "GENERATIONQUALIFIER",
    _CN: "CN",
    "2.5.4.7": "L",
    "2.5.4.8": "ST",
    "2.5.4.10": "O",
    "2.5.4.11": "OU",
    "2.5.4.12": "TITLE",
    "2.5.4.6": "C",
    "2.5.4.5": "SERIALNUMBER",
    "2.5.4.65": "PSEUDONYM",
    "0.9.2342.19200300.100.1.25": "DC",
    "1.2.840.113549.1.9.1": "EMAILADDRESS",
    "0.9.2342.19200300.100.1.1": "UID",
}

# DER tags of the string types and how OTP turns each into the bytes esockd formats.
_UTF8, _NUMERIC, _PRINTABLE, _T61, _IA5, _VISIBLE, _UNIVERSAL, _BMP = (
    0x0C, 0x12, 0x13, 0x14, 0x16, 0x1A, 0x1C, 0x1E)
_DIRECTORY_STRINGS = frozenset({_T61, _PRINTABLE, _UNIVERSAL, _UTF8, _BMP})

# Attribute types OTP's public_key decodes itself, with the non-DirectoryString tag it expects
# (pubkey_cert_records' attribute table; the others in it are DirectoryStrings). For any other
# type OTP hands esockd the value's raw DER, which esockd decodes only if it is a
# DirectoryString and otherwise prints with ~p.
_OTP_PLAIN_TAG: dict[str, int] = {
    "2.5.4.6": _PRINTABLE,  # countryName
    "2.5.4.5": _PRINTABLE,  # serialNumber
    "2.5.4.46": _PRINTABLE,  # dnQualifier
    "0.9.2342.19200300.100.1.25": _IA5,  # domainComponent
    "1.2.840.113549.1.9.1": _IA5,  # emailAddress
}
_ESCAPED = frozenset(b'"+,;<>\\')


class IdentityError(ValueError):
    """The client certificate could not be parsed to derive an identity."""


@dataclass(frozen=True, slots=True)
class _Attr:
    oid: str
    tag: int
    tlv: bytes  # the value's whole DER encoding
    content: bytes  # the value's content octets


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    """Everything the identity mappings need from one client certificate, parsed once."""

    der: bytes = field(repr=False)
    #: EMQX's ``cn`` as raw bytes (UTF-8), ``None`` without a CN.
    cn: bytes | None
    #: EMQX's ``dn`` (always ASCII).
    dn: str

    def value(self, mode: IdentityMode) -> bytes | None:
        """The identity bytes for ``mode``; ``None`` means "keep what the CONNECT says"."""
        if mode == "cn":
            return self.cn
        if mode == "dn":
            return self.dn.encode("ascii")
        return _raw_value(self.der, mode)

    @property
    def cn_text(self) -> str | None:
        """``cn`` as text (``${cert_common_name}``, logs); undecodable bytes replaced."""
        return None if self.cn is None else self.cn.decode("utf-8", "replace")


def peer_identity(der: bytes) -> PeerIdentity:
    """Parse ``der`` once into a :class:`PeerIdentity` (cn, dn and the raw modes)."""
    rdns = _subject_rdns(der)
    return PeerIdentity(der=der, cn=_cn_bytes(rdns), dn=_dn(rdns))


def identity_from_cert(der: bytes, mode: IdentityMode) -> bytes | None:
    """What EMQX's ``peer_cert_as_username``/``peer_cert_as_clientid`` = ``mode`` yields for
    the client certificate ``der`` (DER bytes).

    ``None`` for ``disabled`` and for ``cn`` on a certificate without a CN: the CONNECT's own
    value then stands. ``crt``/``pem``/``md5`` never parse the certificate. Raises
    :class:`IdentityError` when ``cn``/``dn`` cannot find the subject in ``der``, and
    ``ValueError`` on an unknown mode.
    """
    if mode == "cn":
        return _cn_bytes(_subject_rdns(der))
    if mode == "dn":
        return _dn(_subject_rdns(der)).encode("ascii")
    return _raw_value(der, mode)


def common_name(cert: x509.Certificate | bytes) -> str | None:
    """EMQX's ``cn`` (``${cert_common_name}``) as text: every CN value in DER order joined by
    ``,``, unescaped; ``None`` when the subject has no CN."""
    cn = _cn_bytes(_subject_rdns(_der_of(cert)))
    return None if cn is None else cn.decode("utf-8", "replace")


def subject_string(cert: x509.Certificate | bytes) -> str:
    """EMQX's ``dn`` (``${cert_subject}``), e.g. ``CN=dev1,OU=iot,O=ACME,L=Hangzhou,ST=ZJ,C=CN``.

    Always ASCII (everything else is ``\\XX``-escaped); ``""`` for an empty subject.
    """
    return _dn(_subject_rdns(_der_of(cert)))


def cert_der(cert: x509.Certificate) -> bytes:
    """DER bytes of a parsed certificate (what :func:`identity_from_cert` takes)."""
    return cert.public_bytes(serialization.Encoding.DER)


def _der_of(cert: x509.Certificate | bytes) -> bytes:
    return cert_der(cert) if isinstance(cert, x509.Certificate) else cert


def _raw_value(der: bytes, mode: str) -> bytes | None:
    if mode == "crt":
        return bytes(der)
    if mode == "pem":
        return base64.b64encode(der)
    if mode == "md5":
        return hashlib.md5(der, usedforsecurity=False).hexdigest().encode("ascii")
    if mode == "disabled":
        return None
    raise ValueError(f"unknown identity mode {mode!r}: expected disabled, cn, dn, crt, pem "
                     "or md5")


# ---------------------------------------------------------------------------------------------
# Formatting, as esockd_ssl does it
# ---------------------------------------------------------------------------------------------
def _cn_bytes(rdns: list[list[_Attr]]) -> bytes | None:
    cns = [_value_bytes(a) for rdn in rdns for a in rdn if a.oid == _CN]
    return b",".join(cns) if cns else None


def _dn(rdns: list[list[_Attr]]) -> str:
    return ",".join("+".join(f"{_SHORT_NAMES.get(a.oid, a.oid)}={_escape(_value_bytes(a))}"
                             for a in rdn) for rdn in reversed(rdns))


def _value_bytes(a: _Attr) -> bytes:
    """The bytes esockd formats: the value in UTF-8 for the string types OTP decodes, else the
    Erlang ``~p`` text of the value's DER (``<<22,3,97,98,99>>``)."""
    if a.tag in _DIRECTORY_STRINGS or _OTP_PLAIN_TAG.get(a.oid) == a.tag:
        return _decode_string(a.tag, a.content)
    if a.oid in _SHORT_NAMES or a.oid in _OTP_PLAIN_TAG:
        # A known type with an unexpected string type. OTP refuses the whole certificate
        # (EMQX cannot map it at all); decoding the string by its tag is the sensible answer.
        return _decode_string(a.tag, a.content)
    return _erlang_p_binary(a.tlv).encode("ascii")


def _erlang_p_binary(data: bytes) -> str:
    """``io_lib:format("~p", [Binary])`` for a binary that is not printable text: the bytes in
    decimal, with the line breaks ``~p`` puts at 80 columns (next lines indented by two).

    The break rule (an element moves to the next line when it would pass column 79, the last
    one, with its ``>>``, when it would pass 81) was fitted to, and checked against, OTP 25's
    output for 2,300 random binaries of 1 to 300 bytes. A DER value whose every byte is
    printable Latin-1 would be printed by ``~p`` as ``<<"...">>``; a string value never is
    (its tag byte is a control character), so that form is not reproduced.
    """
    tokens = [f"{b}," for b in data[:-1]] + [f"{data[-1]}>>"] if data else [">>"]
    out, col = ["<<"], 2
    for i, tok in enumerate(tokens):
        limit = 81 if i == len(tokens) - 1 else 79
        if col + len(tok) > limit:
            out.append("\n  ")
            col = 2
        out.append(tok)
        col += len(tok)
    return "".join(out)


def _decode_string(tag: int, content: bytes) -> bytes:
    if tag == _T61:
        return content.decode("latin-1").encode("utf-8")
    if tag == _BMP:
        return content.decode("utf-16-be", "replace").encode("utf-8")
    if tag == _UNIVERSAL:
        return content.decode("utf-32-be", "replace").encode("utf-8")
    return content  # UTF8String as is; Printable/IA5/Numeric/Visible are ASCII


def _escape(value: bytes) -> str:
    """esockd_ssl:escape_rdn_value/2 over bytes."""
    out: list[str] = []
    last = len(value) - 1
    for i, byte in enumerate(value):
        ch = chr(byte)
        if i == 0 and ch in " #":
            out.append("\\" + ch)
        elif i == last and ch == " ":
            out.append("\\ ")
        elif byte in _ESCAPED:
            out.append("\\" + ch)
        elif byte < 32 or byte >= 126:
            out.append(f"\\{byte:02X}")
        else:
            out.append(ch)
    return "".join(out)


# ---------------------------------------------------------------------------------------------
# Just enough DER to reach the subject
# ---------------------------------------------------------------------------------------------
# The subject is read straight from the DER rather than through `cryptography`: OTP reads a
# TeletexString as Latin-1, while `cryptography` insists on UTF-8 and rejects the certificate
# otherwise -- a certificate OpenSSL accepted in the handshake must still map. It is also a
# fraction of the cost of a full parse, once per connection.
def _tlv(buf: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """(tag, content start, content end) of the element at ``pos``."""
    if pos + 2 > end:
        raise IdentityError("the client certificate is truncated")
    tag, first = buf[pos], buf[pos + 1]
    if tag & 0x1F == 0x1F:
        raise IdentityError("the client certificate has an unexpected high-number tag")
    pos += 2
    if first < 0x80:
        length = first
    else:
        n = first & 0x7F
        if n == 0 or n > 4 or pos + n > end:
            raise IdentityError("the client certificate has a bad DER length")
        length = int.from_bytes(buf[pos:pos + n], "big")
        pos += n
    if pos + length > end:
        raise IdentityError("the client certificate is truncated")
    return tag, pos, pos + length


def _children(buf: bytes, start: int, end: int) -> list[tuple[int, int, int, int]]:
    """(tag, element start, content start, content end) of each element inside a constructed
    value."""
    out = []
    pos = start
    while pos < end:
        tag, cs, ce = _tlv(buf, pos, end)
        out.append((tag, pos, cs, ce))
        pos = ce
    return out


@functools.lru_cache(maxsize=256)
def _oid(content: bytes) -> str:
    arcs: list[int] = []
    value = 0
    for byte in content:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    if not arcs or content[-1] & 0x80:
        raise IdentityError("the client certificate has a malformed attribute type")
    first = arcs[0]
    head = [0, first] if first < 40 else [1, first - 40] if first < 80 else [2, first - 80]
    return ".".join(str(a) for a in head + arcs[1:])


def _subject_rdns(der: bytes) -> list[list[_Attr]]:
    buf = bytes(der)
    tag, cs, ce = _tlv(buf, 0, len(buf))
    if tag != 0x30:
        raise IdentityError("not a DER certificate")
    tbs_tag, tcs, tce = _tlv(buf, cs, ce)
    if tbs_tag != 0x30:
        raise IdentityError("not a DER certificate")
    # [0] version (absent in v1), serialNumber, signature, issuer, validity, subject
    pos, index, scs, sce = tcs, 0, -1, -1
    while pos < tce:
        tag, fcs, fce = _tlv(buf, pos, tce)
        if index == 0 and tag == 0xA0:
            pos = fce
            continue
        if index == 4:
            if tag != 0x30:
                break
            scs, sce = fcs, fce
            break
        index += 1
        pos = fce
    if scs < 0:
        raise IdentityError("the client certificate has no subject")
    rdns: list[list[_Attr]] = []
    for set_tag, _, rcs, rce in _children(buf, scs, sce):
        if set_tag != 0x31:
            raise IdentityError("the client certificate's subject is malformed")
        rdn: list[_Attr] = []
        for atv_tag, _, acs, ace in _children(buf, rcs, rce):
            parts = _children(buf, acs, ace) if atv_tag == 0x30 else []
            if len(parts) != 2 or parts[0][0] != 0x06:
                raise IdentityError("the client certificate's subject is malformed")
            (_, _, ocs, oce), (vtag, vstart, vcs, vce) = parts
            rdn.append(_Attr(_oid(buf[ocs:oce]), vtag, buf[vstart:vce], buf[vcs:vce]))
        rdns.append(rdn)
    return rdns
