"""Certificates, keys and CRLs: build them, load them with clear errors, describe them.

Three groups of functions live here, all built on ``cryptography`` (nothing shells out to
``openssl``):

* **Builders** -- :func:`make_ca`, :func:`issue_server`, :func:`issue_client`, :func:`make_crl`
  -- return an :class:`Issued` (certificate + key + the intermediates above it). The test-suite
  uses them for every odd certificate a feature needs (expired, not yet valid, wrong EKU, with
  CRL distribution points, an OCSP URL, must-staple...), and :func:`init_dir` uses them for
  ``tlsgate certs init``.
* **Loaders** -- :func:`load_pem_chain`, :func:`load_private_key`: what the TLS contexts and
  ``check-config`` use to read operator files. Every error is a :class:`CertError` whose message
  names the file (and the line when there is one) and says what is wrong; a password or key
  material never appears in a message.
* **Inspection** -- :func:`inspect` (``tlsgate certs inspect``), :func:`days_left`,
  :func:`fingerprint`, :func:`describe_public_key`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa, x448, x25519
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    PrivateKeyTypes,
    PublicKeyTypes,
)
from cryptography.x509.oid import (
    AuthorityInformationAccessOID,
    ExtendedKeyUsageOID,
    NameOID,
)

__all__ = [
    "CertError",
    "InitResult",
    "Issued",
    "KeyType",
    "days_left",
    "describe_public_key",
    "fingerprint",
    "init_dir",
    "inspect",
    "is_world_readable",
    "issue_client",
    "issue_server",
    "key_matches_cert",
    "load_pem_chain",
    "load_private_key",
    "make_ca",
    "make_crl",
    "parse_eku",
]

KeyType = Literal["ec", "rsa"]

#: Validity of leaves and of the CA written by ``init_dir``. 825 days is the longest lifetime
#: Apple platforms accept for a TLS server certificate; the CA lives ten years.
DEFAULT_LEAF_DAYS = 825
DEFAULT_CA_DAYS = 3650

#: Backdating of ``not_before`` so that a peer whose clock is a little behind accepts a
#: certificate made a second ago.
_BACKDATE = dt.timedelta(hours=1)

_EKU_NAMES: dict[str, x509.ObjectIdentifier] = {
    "serverAuth": ExtendedKeyUsageOID.SERVER_AUTH,
    "clientAuth": ExtendedKeyUsageOID.CLIENT_AUTH,
    "codeSigning": ExtendedKeyUsageOID.CODE_SIGNING,
    "emailProtection": ExtendedKeyUsageOID.EMAIL_PROTECTION,
    "timeStamping": ExtendedKeyUsageOID.TIME_STAMPING,
    "OCSPSigning": ExtendedKeyUsageOID.OCSP_SIGNING,
    "anyExtendedKeyUsage": ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE,
}
_EKU_BY_OID = {oid: name for name, oid in _EKU_NAMES.items()}
_OID_RE = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")
_DNS_LABEL_RE = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")
_CLIENT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class CertError(Exception):
    """A certificate, key, CRL or file problem, worded for the operator.

    The message names the file (and line) concerned and never contains key material or a
    password.
    """


# ---------------------------------------------------------------------------------------------
# The result of every builder
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Issued:
    """A certificate, its private key, and the intermediates between it and the root.

    ``chain`` holds the issuing intermediates, nearest first, never the self-signed root: it is
    exactly what goes after the leaf in a ``certfile`` (and what :meth:`chain_pem` appends).
    """

    cert: x509.Certificate
    key: CertificateIssuerPrivateKeyTypes = field(repr=False)
    chain: tuple[x509.Certificate, ...] = ()

    @property
    def serial(self) -> int:
        return self.cert.serial_number

    def cert_der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    def cert_pem(self) -> bytes:
        """This certificate alone, PEM."""
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def chain_pem(self) -> bytes:
        """This certificate followed by its intermediates (a ``certfile``), PEM."""
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (self.cert,
                                                                              *self.chain))

    def key_pem(self, password: bytes | None = None) -> bytes:
        """The private key as PKCS#8 PEM, encrypted with ``password`` when one is given."""
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(password) if password
            else serialization.NoEncryption())
        return self.key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8, encryption)

    def write(self, directory: str | os.PathLike[str], name: str, *,
              password: bytes | None = None, with_chain: bool = True) -> tuple[Path, Path]:
        """Write ``<name>.pem`` (leaf, then chain unless ``with_chain=False``) and
        ``<name>.key`` (mode 0600) into ``directory`` (created if missing).

        Returns ``(cert_path, key_path)``. Existing files are replaced atomically.
        """
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        cert_path, key_path = d / f"{name}.pem", d / f"{name}.key"
        _write_file(cert_path, self.chain_pem() if with_chain else self.cert_pem(), 0o644)
        _write_file(key_path, self.key_pem(password), 0o600)
        return cert_path, key_path


# ---------------------------------------------------------------------------------------------
# Builders
# ---------------------------------------------------------------------------------------------
def make_ca(cn: str, *, key_type: KeyType = "ec", rsa_bits: int = 2048,
            days: int = DEFAULT_CA_DAYS, parent: Issued | None = None,
            path_len: int | None = None,
            not_before: dt.datetime | None = None, not_after: dt.datetime | None = None,
            o: str | None = None, ou: str | None = None, c: str | None = None,
            crl_urls: Sequence[str] = (), ocsp_url: str | None = None,
            ca_issuers_url: str | None = None, serial: int | None = None,
            key: CertificateIssuerPrivateKeyTypes | None = None) -> Issued:
    """A self-signed root CA, or an intermediate CA when ``parent`` is given.

    ``path_len`` limits how many intermediates may follow (``None`` = no limit). ``crl_urls``,
    ``ocsp_url`` and ``ca_issuers_url`` only make sense on an intermediate: they say where the
    status of *this* CA certificate is published by its parent. ``key`` reuses an existing key
    (e.g. to renew a CA without changing its key).
    """
    key = key if key is not None else _new_key(key_type, rsa_bits)
    subject = _name(cn=cn, o=o, ou=ou, c=c)
    nb, na = _validity(days, not_before, not_after)
    exts: list[tuple[x509.ExtensionType, bool]] = [
        (x509.BasicConstraints(ca=True, path_length=path_len), True),
        (x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                       crl_sign=True, encipher_only=False, decipher_only=False), True),
        (x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False),
    ]
    if parent is not None:
        exts.append((_aki(parent), False))
        exts += _status_extensions(crl_urls, ocsp_url, ca_issuers_url)
        chain: tuple[x509.Certificate, ...] = _chain_above(parent)
        issuer_name, signer = parent.cert.subject, parent.key
    else:
        chain, issuer_name, signer = (), subject, key
    cert = _sign(subject, issuer_name, key.public_key(), signer, nb, na, exts, serial)
    return Issued(cert, key, chain)


def issue_server(ca: Issued, hosts: Sequence[str], *, cn: str | None = None,
                 key_type: KeyType = "ec", rsa_bits: int = 2048,
                 days: int = DEFAULT_LEAF_DAYS,
                 not_before: dt.datetime | None = None, not_after: dt.datetime | None = None,
                 o: str | None = None, ou: str | None = None,
                 eku: Sequence[str | x509.ObjectIdentifier] | None = ("serverAuth",),
                 crl_urls: Sequence[str] = (), ocsp_url: str | None = None,
                 ca_issuers_url: str | None = None, must_staple: bool = False,
                 serial: int | None = None,
                 key: CertificateIssuerPrivateKeyTypes | None = None) -> Issued:
    """A TLS server certificate for ``hosts`` (DNS names, ``*.wildcards`` and IP addresses, all
    put in the subjectAltName); the subject CN is ``cn`` or the first host.

    ``eku=None`` (or ``[]``) leaves the extended key usage out; ``must_staple`` adds the TLS
    feature extension ``status_request`` (RFC 7633).
    """
    if not hosts:
        raise ValueError("a server certificate needs at least one host name or IP address")
    sans = [_general_name(h) for h in hosts]
    return _issue_leaf(ca, _name(cn=cn or hosts[0], o=o, ou=ou), sans=sans, key_type=key_type,
                       rsa_bits=rsa_bits, days=days, not_before=not_before,
                       not_after=not_after, eku=eku, crl_urls=crl_urls, ocsp_url=ocsp_url,
                       ca_issuers_url=ca_issuers_url, must_staple=must_staple, serial=serial,
                       key=key)


def issue_client(ca: Issued, cn: str | None, *, ou: str | None = None, o: str | None = None,
                 l: str | None = None, st: str | None = None,  # noqa: E741 - the X.500 name
                 c: str | None = None, subject: x509.Name | None = None,
                 hosts: Sequence[str] = (), emails: Sequence[str] = (),
                 key_type: KeyType = "ec", rsa_bits: int = 2048,
                 days: int = DEFAULT_LEAF_DAYS,
                 not_before: dt.datetime | None = None, not_after: dt.datetime | None = None,
                 eku: Sequence[str | x509.ObjectIdentifier] | None = ("clientAuth",),
                 crl_urls: Sequence[str] = (), ocsp_url: str | None = None,
                 ca_issuers_url: str | None = None, must_staple: bool = False,
                 serial: int | None = None,
                 key: CertificateIssuerPrivateKeyTypes | None = None) -> Issued:
    """A TLS client certificate.

    The subject is written C, ST, L, O, OU, CN (the usual order, so its RFC 4514 / EMQX ``dn``
    form reads ``CN=..,OU=..,O=..,L=..,ST=..,C=..``); parts left ``None`` are omitted, and
    ``cn=None`` makes a certificate without a CN. ``subject`` replaces all of that with an exact
    :class:`x509.Name`. ``hosts`` and ``emails`` add subjectAltNames (none by default).
    """
    name = subject if subject is not None else _name(cn=cn, o=o, ou=ou, l=l, st=st, c=c)
    sans = [_general_name(h) for h in hosts] + [x509.RFC822Name(e) for e in emails]
    return _issue_leaf(ca, name, sans=sans, key_type=key_type, rsa_bits=rsa_bits, days=days,
                       not_before=not_before, not_after=not_after, eku=eku, crl_urls=crl_urls,
                       ocsp_url=ocsp_url, ca_issuers_url=ca_issuers_url,
                       must_staple=must_staple, serial=serial, key=key)


def make_crl(ca: Issued, revoked: Iterable[tuple[int, dt.datetime]], *,
             this_update: dt.datetime | None = None, next_update: dt.datetime | None = None,
             der: bool = False, crl_number: int = 1) -> bytes:
    """A CRL signed by ``ca`` listing ``(serial, revocation_time)`` pairs, PEM (or DER).

    ``this_update`` defaults to a minute ago, ``next_update`` to a day after ``this_update``;
    pass past dates to make an expired CRL.
    """
    now = _now()
    tu = _utc(this_update) if this_update is not None else now - dt.timedelta(minutes=1)
    nu = _utc(next_update) if next_update is not None else tu + dt.timedelta(days=1)
    builder = (x509.CertificateRevocationListBuilder()
               .issuer_name(ca.cert.subject)
               .last_update(tu)
               .next_update(nu)
               .add_extension(_aki(ca), critical=False)
               .add_extension(x509.CRLNumber(crl_number), critical=False))
    for serial, when in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial)
            .revocation_date(_utc(when)).build())
    crl = builder.sign(ca.key, _sig_hash(ca.key))
    return crl.public_bytes(serialization.Encoding.DER if der else serialization.Encoding.PEM)


def parse_eku(value: str | x509.ObjectIdentifier) -> x509.ObjectIdentifier:
    """``clientAuth``/``serverAuth``/``OCSPSigning``/... or a dotted OID -> an OID.

    Raises ``ValueError`` naming the accepted names. The config's
    ``verify_peer_ext_key_usage`` uses the same spelling.
    """
    if isinstance(value, x509.ObjectIdentifier):
        return value
    if value in _EKU_NAMES:
        return _EKU_NAMES[value]
    if _OID_RE.match(value):
        return x509.ObjectIdentifier(value)
    raise ValueError(f"unknown extended key usage {value!r}: use one of "
                     f"{', '.join(_EKU_NAMES)} or a dotted OID such as 1.3.6.1.5.5.7.3.2")


def _issue_leaf(ca: Issued, subject: x509.Name, *, sans: list[x509.GeneralName],
                key_type: KeyType, rsa_bits: int, days: int, not_before: dt.datetime | None,
                not_after: dt.datetime | None,
                eku: Sequence[str | x509.ObjectIdentifier] | None,
                crl_urls: Sequence[str], ocsp_url: str | None, ca_issuers_url: str | None,
                must_staple: bool, serial: int | None,
                key: CertificateIssuerPrivateKeyTypes | None) -> Issued:
    key = key if key is not None else _new_key(key_type, rsa_bits)
    nb, na = _validity(days, not_before, not_after)
    is_rsa = isinstance(key, rsa.RSAPrivateKey)
    exts: list[tuple[x509.ExtensionType, bool]] = [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (x509.KeyUsage(digital_signature=True, content_commitment=False,
                       key_encipherment=is_rsa, data_encipherment=False, key_agreement=False,
                       key_cert_sign=False, crl_sign=False, encipher_only=False,
                       decipher_only=False), True),
        (x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False),
        (_aki(ca), False),
    ]
    if eku:
        exts.append((x509.ExtendedKeyUsage([parse_eku(e) for e in eku]), False))
    if sans:
        # RFC 5280 4.2.1.6: critical when the subject is empty.
        exts.append((x509.SubjectAlternativeName(sans), len(subject) == 0))
    exts += _status_extensions(crl_urls, ocsp_url, ca_issuers_url)
    if must_staple:
        exts.append((x509.TLSFeature([x509.TLSFeatureType.status_request]), False))
    cert = _sign(subject, ca.cert.subject, key.public_key(), ca.key, nb, na, exts, serial)
    return Issued(cert, key, _chain_above(ca))


def _chain_above(issuer: Issued) -> tuple[x509.Certificate, ...]:
    """The intermediates a certificate issued by ``issuer`` sends after itself."""
    if _is_self_signed(issuer.cert):
        return ()
    return (issuer.cert, *issuer.chain)


def _status_extensions(crl_urls: Sequence[str], ocsp_url: str | None,
                       ca_issuers_url: str | None) -> list[tuple[x509.ExtensionType, bool]]:
    exts: list[tuple[x509.ExtensionType, bool]] = []
    if crl_urls:
        exts.append((x509.CRLDistributionPoints([
            x509.DistributionPoint(full_name=[x509.UniformResourceIdentifier(u)],
                                   relative_name=None, reasons=None, crl_issuer=None)
            for u in crl_urls]), False))
    access: list[x509.AccessDescription] = []
    if ocsp_url:
        access.append(x509.AccessDescription(AuthorityInformationAccessOID.OCSP,
                                             x509.UniformResourceIdentifier(ocsp_url)))
    if ca_issuers_url:
        access.append(x509.AccessDescription(AuthorityInformationAccessOID.CA_ISSUERS,
                                             x509.UniformResourceIdentifier(ca_issuers_url)))
    if access:
        exts.append((x509.AuthorityInformationAccess(access), False))
    return exts


def _aki(issuer: Issued) -> x509.AuthorityKeyIdentifier:
    try:
        ski = issuer.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key())


def _sign(subject: x509.Name, issuer: x509.Name, public_key: PublicKeyTypes,
          signer: CertificateIssuerPrivateKeyTypes, nb: dt.datetime, na: dt.datetime,
          exts: list[tuple[x509.ExtensionType, bool]], serial: int | None) -> x509.Certificate:
    builder = (x509.CertificateBuilder()
               .subject_name(subject)
               .issuer_name(issuer)
               .public_key(public_key)  # type: ignore[arg-type]
               .serial_number(serial if serial is not None else x509.random_serial_number())
               .not_valid_before(nb)
               .not_valid_after(na))
    for ext, critical in exts:
        builder = builder.add_extension(ext, critical=critical)
    return builder.sign(signer, _sig_hash(signer))


def _sig_hash(key: CertificateIssuerPrivateKeyTypes) -> hashes.SHA256 | None:
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        return None
    return hashes.SHA256()


def _new_key(key_type: KeyType, rsa_bits: int) -> CertificateIssuerPrivateKeyTypes:
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa":
        if rsa_bits < 2048:
            raise ValueError(f"RSA keys shorter than 2048 bits are refused (got {rsa_bits})")
        return rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
    raise ValueError(f"key type must be \"ec\" or \"rsa\", not {key_type!r}")


def _name(*, cn: str | None = None, o: str | None = None, ou: str | None = None,
          l: str | None = None, st: str | None = None,  # noqa: E741 - the X.500 name
          c: str | None = None) -> x509.Name:
    # Written most-general first (C ... CN), as OpenSSL's `-subj /C=../CN=..` does.
    parts = [(NameOID.COUNTRY_NAME, c), (NameOID.STATE_OR_PROVINCE_NAME, st),
             (NameOID.LOCALITY_NAME, l), (NameOID.ORGANIZATION_NAME, o),
             (NameOID.ORGANIZATIONAL_UNIT_NAME, ou), (NameOID.COMMON_NAME, cn)]
    return x509.Name([x509.NameAttribute(oid, v) for oid, v in parts if v is not None])


def _general_name(host: str) -> x509.GeneralName:
    """An IP address or a DNS name (``*.`` wildcard allowed), checked."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    name = host[:-1] if host.endswith(".") else host
    labels = name.split(".")
    if labels and labels[0] == "*":
        labels = labels[1:]
    if not name or not labels or not all(_DNS_LABEL_RE.match(lb) for lb in labels):
        raise ValueError(f"{host!r} is neither an IP address nor a DNS name (letters, digits, "
                         "'-' and '_' in dot-separated labels; write internationalised names "
                         "in their xn-- form)")
    return x509.DNSName(name)


def _validity(days: int, not_before: dt.datetime | None,
              not_after: dt.datetime | None) -> tuple[dt.datetime, dt.datetime]:
    now = _now()
    nb = _utc(not_before) if not_before is not None else now - _BACKDATE
    na = _utc(not_after) if not_after is not None else now + dt.timedelta(days=days)
    if na <= nb:
        raise ValueError(f"not_after ({na:%Y-%m-%d %H:%M}) must be later than not_before "
                         f"({nb:%Y-%m-%d %H:%M})")
    return nb, na


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _utc(when: dt.datetime) -> dt.datetime:
    """Naive datetimes are taken as UTC."""
    return when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when.astimezone(dt.UTC)


def _is_self_signed(cert: x509.Certificate) -> bool:
    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


# ---------------------------------------------------------------------------------------------
# tlsgate certs init
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class InitResult:
    """What :func:`init_dir` wrote (absolute paths)."""

    directory: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    #: client name -> (certificate, key), in the order asked for.
    clients: dict[str, tuple[Path, Path]]
    hosts: tuple[str, ...]
    key_type: KeyType

    @property
    def files(self) -> list[Path]:
        out = [self.ca_cert, self.ca_key, self.server_cert, self.server_key]
        for cert, key in self.clients.values():
            out += [cert, key]
        return out


def init_dir(directory: str | os.PathLike[str], *,
             hosts: Sequence[str] = ("localhost", "127.0.0.1"),
             clients: Sequence[str] = ("client",), key_type: KeyType = "ec",
             rsa_bits: int = 2048, days: int = DEFAULT_LEAF_DAYS,
             ca_days: int = DEFAULT_CA_DAYS, force: bool = False) -> InitResult:
    """Create a CA, a server certificate and client certificates in ``directory``.

    Writes ``ca.pem``, ``ca.key``, ``server.pem`` (leaf, then chain -- empty here, the CA
    signs directly), ``server.key`` and ``<client>.pem`` / ``<client>.key`` for each client name
    (the certificate's CN is the name). Keys are PKCS#8 PEM, unencrypted, mode 0600.
    Nothing is written unless every input is valid, and nothing existing is overwritten unless
    ``force``: the :class:`CertError` names the files in the way. Prints nothing.
    """
    d = Path(directory).absolute()
    if d.exists() and not d.is_dir():
        raise CertError(f"{d} exists and is not a directory")
    hosts = list(dict.fromkeys(h.strip() for h in hosts))
    if not hosts or not all(hosts):
        raise CertError("at least one non-empty --host is needed for the server certificate")
    for h in hosts:
        try:
            _general_name(h)
        except ValueError as e:
            raise CertError(f"--host {e}") from None
    names = list(clients)
    for n in names:
        if not _CLIENT_NAME_RE.match(n):
            raise CertError(f"client name {n!r} is not usable as a file name: use letters, "
                            "digits, '.', '_' and '-' (64 at most), starting with a letter "
                            "or digit")
        if n in ("ca", "server"):
            raise CertError(f"client name {n!r} would overwrite the {n} files; pick another")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise CertError(f"client name(s) given twice: {', '.join(dupes)}")
    if key_type not in ("ec", "rsa"):
        raise CertError(f"key type must be \"ec\" or \"rsa\", not {key_type!r}")
    if key_type == "rsa" and rsa_bits < 2048:
        raise CertError(f"RSA keys shorter than 2048 bits are refused (got {rsa_bits})")
    if days < 1 or ca_days < 1:
        raise CertError("validity must be at least one day")

    targets = [d / f for f in ("ca.pem", "ca.key", "server.pem", "server.key")]
    for n in names:
        targets += [d / f"{n}.pem", d / f"{n}.key"]
    existing = [p for p in targets if p.exists() or p.is_symlink()]
    if existing and not force:
        listed = ", ".join(str(p) for p in existing)
        raise CertError(f"refusing to overwrite existing file{'s' if len(existing) > 1 else ''}"
                        f" {listed} (use --force to replace)")

    ca = make_ca("tlsgate CA", o="tlsgate", key_type=key_type, rsa_bits=rsa_bits,
                 days=ca_days)
    server = issue_server(ca, hosts, o="tlsgate", key_type=key_type, rsa_bits=rsa_bits,
                          days=days)
    issued_clients = {n: issue_client(ca, n, o="tlsgate", key_type=key_type,
                                      rsa_bits=rsa_bits, days=days) for n in names}
    try:
        d.mkdir(parents=True, exist_ok=True)
        ca_cert, ca_key = ca.write(d, "ca")
        server_cert, server_key = server.write(d, "server")
        written = {n: iss.write(d, n) for n, iss in issued_clients.items()}
    except OSError as e:
        raise CertError(f"cannot write into {d}: {e.strerror or e}") from None
    return InitResult(directory=d, ca_cert=ca_cert, ca_key=ca_key, server_cert=server_cert,
                      server_key=server_key, clients=written, hosts=tuple(hosts),
                      key_type=key_type)


def _write_file(path: Path, data: bytes, mode: int) -> None:
    """Write atomically (temp file + rename) with ``mode`` set from the first byte on."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# ---------------------------------------------------------------------------------------------
# Loading operator files
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _PemBlock:
    label: str
    line: int  # 1-based line of the BEGIN marker
    text: bytes  # the block, markers included
    headers: bool  # RFC 1421 headers (Proc-Type: 4,ENCRYPTED ...) present


_E = TypeVar("_E", bound=x509.ExtensionType)

_BEGIN_RE = re.compile(rb"^-----BEGIN ([A-Z0-9 ]+)-----\s*$")
_END_RE = re.compile(rb"^-----END ([A-Z0-9 ]+)-----\s*$")


def _pem_blocks(data: bytes, where: str) -> list[_PemBlock]:
    """Every PEM block in ``data``, with its line number. Text outside blocks is ignored
    (``openssl`` writes "Bag Attributes" or a text dump there)."""
    blocks: list[_PemBlock] = []
    lines = data.splitlines(keepends=True)
    i = 0
    while i < len(lines):
        m = _BEGIN_RE.match(lines[i].strip())
        if not m:
            i += 1
            continue
        label, start = m.group(1).decode("ascii"), i
        j = i + 1
        while j < len(lines) and not _END_RE.match(lines[j].strip()):
            if _BEGIN_RE.match(lines[j].strip()):
                raise CertError(f"{where} line {start + 1}: BEGIN {label} without a matching "
                                "END line")
            j += 1
        if j == len(lines):
            raise CertError(f"{where} line {start + 1}: BEGIN {label} without a matching END "
                            "line (file truncated?)")
        end = _END_RE.match(lines[j].strip())
        assert end is not None
        if end.group(1).decode("ascii") != label:
            raise CertError(f"{where} line {j + 1}: END {end.group(1).decode('ascii')} does "
                            f"not match BEGIN {label} on line {start + 1}")
        body = b"".join(lines[start:j + 1])
        headers = any(b":" in ln for ln in lines[start + 1:j])
        blocks.append(_PemBlock(label, start + 1, body, headers))
        i = j + 1
    return blocks


def _read(path: str | os.PathLike[str]) -> tuple[bytes, str]:
    where = f"file {os.fspath(path)}"
    try:
        return Path(path).read_bytes(), where
    except FileNotFoundError:
        raise CertError(f"{where}: not found") from None
    except IsADirectoryError:
        raise CertError(f"{where}: is a directory, not a file") from None
    except PermissionError:
        raise CertError(f"{where}: permission denied (tlsgate runs as uid {os.getuid()})"
                        ) from None
    except OSError as e:
        raise CertError(f"{where}: cannot read: {e.strerror or e}") from None


def load_pem_chain(path: str | os.PathLike[str]) -> list[x509.Certificate]:
    """All certificates of a PEM file, in file order (a ``certfile``: leaf first).

    Other PEM blocks (a private key in the same file) are skipped. Errors name the file and the
    line of the block that is broken.
    """
    data, where = _read(path)
    blocks = _pem_blocks(data, where)
    certs: list[x509.Certificate] = []
    for b in blocks:
        if b.label not in ("CERTIFICATE", "X509 CERTIFICATE"):
            continue
        try:
            certs.append(x509.load_pem_x509_certificate(b.text.replace(
                b"X509 CERTIFICATE", b"CERTIFICATE")))
        except ValueError as e:
            raise CertError(f"{where} line {b.line}: the certificate cannot be parsed: "
                            f"{_short(e)}") from None
    if certs:
        return certs
    if _looks_like_der_cert(data):
        raise CertError(f"{where}: no PEM certificate found (the file is a DER certificate; "
                        f"convert it with: openssl x509 -inform der -in {os.fspath(path)} "
                        "-out cert.pem)")
    if blocks:
        labels = ", ".join(sorted({b.label for b in blocks}))
        raise CertError(f"{where}: no PEM certificate found (it holds: {labels})")
    raise CertError(f"{where}: no PEM certificate found" + (" (the file is empty)"
                                                            if not data.strip() else ""))


def load_private_key(path: str | os.PathLike[str],
                     password: bytes | str | None = None) -> PrivateKeyTypes:
    """The private key in a PEM (PKCS#8, PKCS#1, SEC1, encrypted or not) or DER file.

    Errors tell apart: not a key at all (a certificate, garbage), an encrypted key without a
    password, a wrong password, and a key type or encryption that is not supported. A password
    given for an unencrypted key is ignored.
    """
    data, where = _read(path)
    pw = password.encode("utf-8") if isinstance(password, str) else password
    blocks = _pem_blocks(data, where)
    keys = [b for b in blocks if b.label.endswith("PRIVATE KEY")]
    if len(keys) > 1:
        raise CertError(f"{where}: holds {len(keys)} private keys (lines "
                        f"{', '.join(str(k.line) for k in keys)}); a key file holds one")
    if keys:
        blk = keys[0]
        return _load_key(lambda p: serialization.load_pem_private_key(blk.text, p), pw,
                         f"{where} line {blk.line}")
    if blocks:
        labels = sorted({b.label for b in blocks})
        what = ("a certificate" if any("CERTIFICATE" in x for x in labels)
                else ", ".join(labels))
        raise CertError(f"{where}: holds {what}, not a private key")
    if not data.strip():
        raise CertError(f"{where}: is empty, expected a private key")
    # No PEM markers: maybe DER.
    if _looks_like_der_cert(data):
        raise CertError(f"{where}: holds a DER certificate, not a private key")
    return _load_key(lambda p: serialization.load_der_private_key(data, p), pw, where)


def _load_key(load: Callable[[bytes | None], PrivateKeyTypes], pw: bytes | None,
              loc: str) -> PrivateKeyTypes:
    """Load without a password first: that tells "encrypted" apart from "not a key" without
    reading library error strings; only an encrypted key is tried again with ``pw``."""
    try:
        return load(None)  # a password given for a plain key is simply not needed
    except TypeError:
        pass  # encrypted
    except UnsupportedAlgorithm as e:
        raise CertError(f"{loc}: unsupported private key type: {_short(e)}") from None
    except ValueError as e:
        raise CertError(f"{loc}: not a valid private key (corrupt, or not a key at all): "
                        f"{_short(e)}") from None
    if pw is None:
        raise CertError(f"{loc}: the private key is encrypted and no password was given "
                        "(set ssl_options.password)")
    try:
        return load(pw)
    except UnsupportedAlgorithm as e:
        raise CertError(f"{loc}: unsupported private key encryption: {_short(e)}") from None
    except (ValueError, TypeError):
        raise CertError(f"{loc}: wrong password for the encrypted private key") from None


def _short(e: Exception) -> str:
    """A library error message on one line, without the OpenSSL error stack dump."""
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text.split(" Details:")[0].strip().rstrip(".")


def _looks_like_der_cert(data: bytes) -> bool:
    if not data.startswith(b"\x30"):
        return False
    try:
        x509.load_der_x509_certificate(data)
    except ValueError:
        return False
    return True


def key_matches_cert(key: PrivateKeyTypes, cert: x509.Certificate) -> bool:
    """Whether ``key`` is the private half of ``cert``'s public key."""
    fmt = serialization.PublicFormat.SubjectPublicKeyInfo
    try:
        return (key.public_key().public_bytes(serialization.Encoding.DER, fmt)
                == cert.public_key().public_bytes(serialization.Encoding.DER, fmt))
    except (ValueError, UnsupportedAlgorithm):
        return False


def is_world_readable(path: str | os.PathLike[str]) -> bool:
    """Whether "other" users may read the file (a key file like that deserves a warning)."""
    return bool(os.stat(path).st_mode & stat.S_IROTH)


def days_left(cert: x509.Certificate, now: dt.datetime | None = None) -> float:
    """Days until ``not_after`` (negative once expired)."""
    when = _utc(now) if now is not None else dt.datetime.now(dt.UTC)
    return (cert.not_valid_after_utc - when).total_seconds() / 86400.0


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 fingerprint, ``AB:CD:...`` as ``openssl x509 -fingerprint -sha256`` prints it."""
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def describe_public_key(key: PublicKeyTypes | PrivateKeyTypes) -> str:
    """``EC P-256``, ``RSA 2048 bits``, ``Ed25519``... (never any key material)."""
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return f"RSA {key.key_size} bits"
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        curve = {"secp256r1": "P-256", "secp384r1": "P-384",
                 "secp521r1": "P-521"}.get(key.curve.name)
        return f"EC {curve} ({key.curve.name})" if curve else f"EC {key.curve.name}"
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return "Ed25519"
    if isinstance(key, ed448.Ed448PrivateKey | ed448.Ed448PublicKey):
        return "Ed448"
    if isinstance(key, x25519.X25519PrivateKey | x25519.X25519PublicKey):
        return "X25519"
    if isinstance(key, x448.X448PrivateKey | x448.X448PublicKey):
        return "X448"
    if isinstance(key, dsa.DSAPrivateKey | dsa.DSAPublicKey):
        return f"DSA {key.key_size} bits"
    return type(key).__name__


# ---------------------------------------------------------------------------------------------
# tlsgate certs inspect
# ---------------------------------------------------------------------------------------------
def inspect(path: str | os.PathLike[str], *, now: dt.datetime | None = None) -> str:
    """A human summary of every certificate, CRL and private key in a PEM or DER file.

    Certificates: subject, issuer, serial, key, validity with days left (``EXPIRED`` once
    past), SANs, key usage, EKU, CRL distribution points, OCSP/CA-issuers URLs, must-staple,
    SHA-256 fingerprint, and whether each certificate was issued by the next one (chain order).
    CRLs: issuer, this/next update, revoked serials. Keys: type and size only.
    """
    data, where = _read(path)
    when = _utc(now) if now is not None else _now()
    blocks = _pem_blocks(data, where)
    sections: list[str] = []
    if blocks:
        certs: list[x509.Certificate] = []
        for b in blocks:
            sections.append(_inspect_block(b, where, when, certs))
        _chain_notes(certs, sections)
    else:
        sections.append(_inspect_der(data, where, when))
    return "\n\n".join(sections) + "\n"


def _inspect_block(b: _PemBlock, where: str, now: dt.datetime,
                   certs: list[x509.Certificate]) -> str:
    loc = f"{where} line {b.line}"
    if b.label in ("CERTIFICATE", "X509 CERTIFICATE"):
        try:
            cert = x509.load_pem_x509_certificate(b.text.replace(b"X509 CERTIFICATE",
                                                                 b"CERTIFICATE"))
        except ValueError as e:
            raise CertError(f"{loc}: the certificate cannot be parsed: {_short(e)}") from None
        certs.append(cert)
        return _describe_cert(cert, now, f"Certificate {len(certs)} (line {b.line})")
    if b.label == "X509 CRL":
        try:
            crl = x509.load_pem_x509_crl(b.text)
        except ValueError as e:
            raise CertError(f"{loc}: the CRL cannot be parsed: {_short(e)}") from None
        return _describe_crl(crl, now, f"CRL (line {b.line})")
    if b.label.endswith("PRIVATE KEY"):
        if b.label == "ENCRYPTED PRIVATE KEY" or b.headers:
            return (f"Private key (line {b.line})\n  encrypted: a password is needed to see "
                    "its type")
        try:
            key = serialization.load_pem_private_key(b.text, None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as e:
            raise CertError(f"{loc}: the private key cannot be parsed: {_short(e)}") from None
        return f"Private key (line {b.line})\n  Type:         {describe_public_key(key)}"
    if b.label == "CERTIFICATE REQUEST":
        try:
            csr = x509.load_pem_x509_csr(b.text)
        except ValueError as e:
            raise CertError(f"{loc}: the CSR cannot be parsed: {_short(e)}") from None
        return (f"Certificate request (line {b.line})\n"
                f"  Subject:      {csr.subject.rfc4514_string() or '(empty)'}\n"
                f"  Key:          {describe_public_key(csr.public_key())}")
    if b.label == "PUBLIC KEY":
        try:
            pub = serialization.load_pem_public_key(b.text)
        except (ValueError, UnsupportedAlgorithm) as e:
            raise CertError(f"{loc}: the public key cannot be parsed: {_short(e)}") from None
        return f"Public key (line {b.line})\n  Type:         {describe_public_key(pub)}"
    return f"{b.label} (line {b.line})\n  not a certificate, CRL or key; not described"


def _inspect_der(data: bytes, where: str, now: dt.datetime) -> str:
    if not data.strip():
        raise CertError(f"{where}: is empty")
    try:
        return _describe_cert(x509.load_der_x509_certificate(data), now, "Certificate (DER)")
    except ValueError:
        pass
    try:
        return _describe_crl(x509.load_der_x509_crl(data), now, "CRL (DER)")
    except ValueError:
        pass
    try:
        key = serialization.load_der_private_key(data, None)
        return f"Private key (DER)\n  Type:         {describe_public_key(key)}"
    except TypeError:
        return "Private key (DER)\n  encrypted: a password is needed to see its type"
    except (ValueError, UnsupportedAlgorithm):
        pass
    raise CertError(f"{where}: no certificate, CRL or private key found (neither PEM nor DER)")


def _chain_notes(certs: list[x509.Certificate], sections: list[str]) -> None:
    if len(certs) < 2:
        return
    notes = []
    for i in range(len(certs) - 1):
        ok = _issued_by(certs[i], certs[i + 1])
        notes.append(f"  certificate {i + 1} is {'' if ok else 'NOT '}issued by certificate "
                     f"{i + 2}" + ("" if ok else " (a certfile must list leaf first, then "
                                                  "each issuer)"))
    sections.append("Chain order\n" + "\n".join(notes))


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _when(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S UTC")


def _describe_cert(cert: x509.Certificate, now: dt.datetime, title: str) -> str:
    from tlsgate.tls.identity import common_name, subject_string

    rows: list[tuple[str, str]] = [
        ("Subject", cert.subject.rfc4514_string() or "(empty)"),
        ("Issuer", cert.issuer.rfc4514_string() or "(empty)"),
        ("Serial", f"{cert.serial_number:X}"),
    ]
    try:
        rows.append(("Key", describe_public_key(cert.public_key())))
    except (ValueError, UnsupportedAlgorithm):
        rows.append(("Key", "unsupported key type"))
    sig = cert.signature_algorithm_oid
    rows.append(("Signature", getattr(sig, "_name", sig.dotted_string)))
    nb, na = cert.not_valid_before_utc, cert.not_valid_after_utc
    rows.append(("Not before", _when(nb) + (f"  NOT YET VALID (starts in "
                                            f"{(nb - now).total_seconds() / 86400:.1f} days)"
                                            if nb > now else "")))
    left = days_left(cert, now)
    status = (f"EXPIRED {-left:.1f} days ago" if left < 0 else f"{left:.1f} days left")
    rows.append(("Not after", f"{_when(na)}  ({status})"))
    ext = cert.extensions
    bc = _ext(ext, x509.BasicConstraints)
    if bc is None or not bc.ca:
        # What peer_cert_as_username / _clientid = cn / dn make of it (EMQX's exact strings).
        cn = common_name(cert)
        rows.append(("As cn", "(no CN: the CONNECT's value is kept)" if cn is None else cn))
        rows.append(("As dn", subject_string(cert) or '""'))
    if bc is not None and bc.ca:
        rows.append(("CA", "yes" + (f", path length {bc.path_length}"
                                    if bc.path_length is not None else "")
                     + (", self-signed" if _is_self_signed(cert) else "")))
    san = _ext(ext, x509.SubjectAlternativeName)
    if san is not None:
        rows.append(("SANs", ", ".join(_describe_general_name(g) for g in san)))
    ku = _ext(ext, x509.KeyUsage)
    if ku is not None:
        rows.append(("Key usage", ", ".join(_key_usages(ku))))
    eku = _ext(ext, x509.ExtendedKeyUsage)
    rows.append(("EKU", ", ".join(_EKU_BY_OID.get(o, o.dotted_string) for o in eku)
                 if eku is not None else "(none: any use)"))
    dps = _ext(ext, x509.CRLDistributionPoints)
    if dps is not None:
        urls = [_describe_general_name(g) for dp in dps for g in (dp.full_name or [])]
        rows.append(("CRL DPs", ", ".join(urls) or "(present, without a URL)"))
    aia = _ext(ext, x509.AuthorityInformationAccess)
    if aia is not None:
        for method, label in ((AuthorityInformationAccessOID.OCSP, "OCSP"),
                              (AuthorityInformationAccessOID.CA_ISSUERS, "CA issuers")):
            urls = [_describe_general_name(a.access_location) for a in aia
                    if a.access_method == method]
            if urls:
                rows.append((label, ", ".join(urls)))
    tls = _ext(ext, x509.TLSFeature)
    if tls is not None and x509.TLSFeatureType.status_request in tls:
        rows.append(("Must-staple", "yes (TLS feature status_request)"))
    rows.append(("SHA-256", fingerprint(cert)))
    return title + "\n" + "\n".join(f"  {k + ':':<13} {v}" for k, v in rows)


def _describe_crl(crl: x509.CertificateRevocationList, now: dt.datetime, title: str) -> str:
    rows: list[tuple[str, str]] = [("Issuer", crl.issuer.rfc4514_string() or "(empty)"),
                                   ("This update", _when(crl.last_update_utc))]
    nu = crl.next_update_utc
    if nu is None:
        rows.append(("Next update", "(none)"))
    else:
        days = (nu - now).total_seconds() / 86400
        rows.append(("Next update", f"{_when(nu)}  (" + (f"EXPIRED {-days:.1f} days ago"
                                                         if days < 0
                                                         else f"{days:.1f} days left") + ")"))
    num = _ext(crl.extensions, x509.CRLNumber)
    if num is not None:
        rows.append(("CRL number", str(num.crl_number)))
    revoked = list(crl)
    rows.append(("Revoked", str(len(revoked))))
    shown = 50
    lines = [f"    {r.serial_number:X}  since {_when(r.revocation_date_utc)}"
             for r in revoked[:shown]]
    if len(revoked) > shown:
        lines.append(f"    ... and {len(revoked) - shown} more")
    body = "\n".join(f"  {k + ':':<13} {v}" for k, v in rows)
    return title + "\n" + body + ("\n" + "\n".join(lines) if lines else "")


def _ext(exts: x509.Extensions, cls: type[_E]) -> _E | None:
    try:
        return exts.get_extension_for_class(cls).value
    except x509.ExtensionNotFound:
        return None


def _describe_general_name(g: x509.GeneralName) -> str:
    if isinstance(g, x509.DNSName):
        return f"DNS:{g.value}"
    if isinstance(g, x509.IPAddress):
        return f"IP:{g.value}"
    if isinstance(g, x509.RFC822Name):
        return f"email:{g.value}"
    if isinstance(g, x509.UniformResourceIdentifier):
        return g.value
    if isinstance(g, x509.DirectoryName):
        return f"DirName:{g.value.rfc4514_string()}"
    if isinstance(g, x509.RegisteredID):
        return f"RID:{g.value.dotted_string}"
    return f"othername:{g.type_id.dotted_string}" if isinstance(g, x509.OtherName) else str(g)


def _key_usages(ku: x509.KeyUsage) -> list[str]:
    out = [name for name, attr in (("digitalSignature", "digital_signature"),
                                   ("nonRepudiation", "content_commitment"),
                                   ("keyEncipherment", "key_encipherment"),
                                   ("dataEncipherment", "data_encipherment"),
                                   ("keyAgreement", "key_agreement"),
                                   ("keyCertSign", "key_cert_sign"),
                                   ("cRLSign", "crl_sign")) if getattr(ku, attr)]
    if ku.key_agreement:
        out += [n for n, a in (("encipherOnly", "encipher_only"),
                               ("decipherOnly", "decipher_only")) if getattr(ku, a)]
    return out

