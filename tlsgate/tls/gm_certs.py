"""SM2 PKI for 国密 listeners: an SM2 CA and SM2 sign + enc certificate pairs.

``init_sm2_dir()`` is what ``tlsgate certs init --sm2 DIR`` calls. It makes, in ``DIR``::

    sm2-ca.pem  sm2-ca.key                      SM2 root CA (SM2-with-SM3, CA:TRUE)
    server-sign.pem  server-sign.key            TLCP signing pair (digitalSignature), SANs = hosts
    server-enc.pem   server-enc.key             TLCP encryption pair (keyEncipherment,
                                                dataEncipherment, keyAgreement), same SANs
    <client>-sign.pem/.key, <client>-enc.pem/.key   for each client name (CN = the name)

Why the Tongsuo library and not the ``openssl`` CLI: certificates are built and signed through
the same Tongsuo library that serves them (``tlsgate.tls.gm._lib``). That library is present
whenever a GM listener can run at all (it comes with the ``tongsuopy`` wheel), it signs SM2 with
the default SM2 ID ``1234567812345678`` that Tongsuo's verifier assumes, and each certificate is
verified against its issuer by the same code before it is written. The system ``openssl`` 3 CLI
would need ``-sm3 -sigopt distid:1234567812345678`` (and ``-vfyopt`` for CSRs) to produce
certificates Tongsuo accepts, is not installed on a minimal Debian image, and its SM2 options
have changed between 3.x releases. ``cryptography`` cannot make SM2 keys at all. The files are
plain PEM (PKCS#8 keys, id-ecPublicKey on the SM2 curve) and also verify with ``openssl verify``.

Keys are written mode 0600 and never printed.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .gm._lib import Tongsuo, load

__all__ = ["GmCertError", "Sm2Dir", "Sm2Pair", "init_sm2_dir"]

_EVP_PKEY_EC = 408
_MBSTRING_UTF8 = 0x1000
_X509V3_CTX_SIZE = 256  # struct v3_ext_ctx is 56 bytes in 1.1.1; room to spare


class GmCertError(Exception):
    """Making the SM2 PKI failed (files exist without --force, library error, bad name)."""


@dataclass(frozen=True)
class Sm2Pair:
    """One TLCP identity: the signing and the encryption certificate with their keys."""

    sign_cert: Path
    sign_key: Path
    enc_cert: Path
    enc_key: Path


@dataclass(frozen=True)
class Sm2Dir:
    ca_cert: Path
    ca_key: Path
    server: Sm2Pair
    clients: dict[str, Sm2Pair] = field(default_factory=dict)

    def files(self) -> list[Path]:
        out = [self.ca_cert, self.ca_key]
        for p in (self.server, *self.clients.values()):
            out += [p.sign_cert, p.sign_key, p.enc_cert, p.enc_key]
        return out


class _Key:
    def __init__(self, lib: Tongsuo) -> None:
        self.lib = lib
        sm2 = lib.nid("SM2")
        ec = lib.EC_KEY_new_by_curve_name(sm2)
        if not ec or int(lib.EC_KEY_generate_key(ec)) != 1:
            if ec:
                lib.EC_KEY_free(ec)
            raise GmCertError(f"SM2 key generation failed: {lib.last_reason('unknown error')}")
        pkey = lib.EVP_PKEY_new()
        if not pkey or int(lib.EVP_PKEY_assign(pkey, _EVP_PKEY_EC, ec)) != 1:
            lib.EC_KEY_free(ec)
            raise GmCertError("EVP_PKEY_assign failed")
        self.ptr: int = pkey
        # Mark the EC key as SM2 so signatures are SM2-with-SM3 with the default SM2 ID.
        if int(lib.EVP_PKEY_set_alias_type(pkey, sm2)) != 1:
            raise GmCertError(f"not an SM2 key: {lib.last_reason('alias failed')}")

    def pem(self) -> bytes:
        with _mem_bio(self.lib) as bio:
            if int(self.lib.PEM_write_bio_PrivateKey(bio, self.ptr, None, None, 0, None,
                                                     None)) != 1:
                raise GmCertError("cannot encode the SM2 key")
            return _bio_bytes(self.lib, bio)

    def free(self) -> None:
        if self.ptr:
            self.lib.EVP_PKEY_free(self.ptr)
            self.ptr = 0


@contextmanager
def _mem_bio(lib: Tongsuo) -> Iterator[int]:
    bio = lib.BIO_new(lib.BIO_s_mem())
    if not bio:
        raise GmCertError("BIO_new failed")
    try:
        yield bio
    finally:
        lib.BIO_free(bio)


def _bio_bytes(lib: Tongsuo, bio: int) -> bytes:
    n = int(lib.BIO_ctrl(bio, 10, 0, None))  # BIO_CTRL_PENDING
    buf = ctypes.create_string_buffer(max(n, 1))
    got = int(lib.BIO_read(bio, buf, n))
    return ctypes.string_at(buf, max(got, 0))


def _san(hosts: Sequence[str]) -> str:
    parts = []
    for h in hosts:
        try:
            parts.append(f"IP:{ipaddress.ip_address(h)}")
        except ValueError:
            if not h or any(c in h for c in ",: \t\n"):
                raise GmCertError(f"host {h!r}: not a DNS name or an IP address") from None
            parts.append(f"DNS:{h}")
    return ",".join(parts)


def _make_cert(lib: Tongsuo, *, cn: str, key: _Key, issuer_cert: int | None,
               issuer_key: _Key, days: int, exts: list[tuple[str, str]]) -> int:
    x = lib.X509_new()
    if not x:
        raise GmCertError("X509_new failed")
    try:
        ok = int(lib.X509_set_version(x, 2)) == 1
        ok &= int(lib.ASN1_INTEGER_set_uint64(lib.X509_get_serialNumber(x),
                                              secrets.randbits(63) | 1)) == 1
        # Back-date an hour so freshly made certificates work on hosts with a little clock skew.
        ok &= bool(lib.X509_time_adj_ex(lib.X509_getm_notBefore(x), 0, -3600, None))
        ok &= bool(lib.X509_time_adj_ex(lib.X509_getm_notAfter(x), days, 0, None))
        ok &= int(lib.X509_set_pubkey(x, key.ptr)) == 1
        name = lib.X509_get_subject_name(x)
        ok &= int(lib.X509_NAME_add_entry_by_txt(name, b"CN", _MBSTRING_UTF8, cn.encode(),
                                                 -1, -1, 0)) == 1
        if issuer_cert is None:
            ok &= int(lib.X509_set_issuer_name(x, name)) == 1
        else:
            ok &= int(lib.X509_set_issuer_name(x, lib.X509_get_subject_name(issuer_cert))) == 1
        if not ok:
            raise GmCertError(f"building the certificate for {cn!r} failed: "
                              f"{lib.last_reason('unknown error')}")
        v3 = ctypes.create_string_buffer(_X509V3_CTX_SIZE)
        lib.X509V3_set_ctx(v3, issuer_cert if issuer_cert is not None else x, x, None, None, 0)
        for ext_name, value in exts:
            ext = lib.X509V3_EXT_nconf(None, v3, ext_name.encode(), value.encode())
            if not ext:
                raise GmCertError(f"extension {ext_name} = {value!r}: "
                                  f"{lib.last_reason('rejected')}")
            try:
                if int(lib.X509_add_ext(x, ext, -1)) != 1:
                    raise GmCertError(f"cannot add extension {ext_name}")
            finally:
                lib.X509_EXTENSION_free(ext)
        if int(lib.X509_sign(x, issuer_key.ptr, lib.EVP_sm3())) <= 0:
            raise GmCertError(f"SM2 signing failed: {lib.last_reason('unknown error')}")
        if int(lib.X509_get_signature_nid(x)) != lib.nid("SM2-SM3"):
            raise GmCertError("the certificate was not signed SM2-with-SM3")
        # Verify with Tongsuo's own verifier (default SM2 ID) before anything is written.
        if int(lib.X509_verify(x, issuer_key.ptr)) != 1:
            raise GmCertError(f"the new certificate for {cn!r} does not verify: "
                              f"{lib.last_reason('bad signature')}")
        return int(x)
    except BaseException:
        lib.X509_free(x)
        raise


def _cert_pem(lib: Tongsuo, x: int) -> bytes:
    with _mem_bio(lib) as bio:
        if int(lib.PEM_write_bio_X509(bio, x)) != 1:
            raise GmCertError("cannot encode the certificate")
        return _bio_bytes(lib, bio)


def _write(path: Path, data: bytes, secret: bool) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret else 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _check_name(kind: str, name: str) -> None:
    if not name or "/" in name or name.startswith(".") or "\0" in name:
        raise GmCertError(f"{kind} name {name!r} cannot be used as a file name")


def init_sm2_dir(dir: str | os.PathLike[str], hosts: Sequence[str] = ("localhost", "127.0.0.1"),
                 clients: Sequence[str] = ("client",), days: int = 825,
                 force: bool = False) -> Sm2Dir:
    """Create an SM2 CA, the server's sign/enc pairs and one sign/enc pair per client.

    ``hosts`` become the server certificates' subjectAltNames (DNS names or IP addresses; the
    first is the CN). ``clients`` are the client certificates' CNs (and file name stems).
    Existing files are an error unless ``force``. Raises :class:`GmCertError` (bad input,
    existing files) or :class:`~tlsgate.tls.gm.GmUnavailableError` (no Tongsuo library).
    """
    if not hosts:
        raise GmCertError("at least one host name or address is needed for the server "
                          "certificates")
    if days < 1:
        raise GmCertError(f"days = {days}: must be at least 1")
    for c in clients:
        _check_name("client", c)
    if len(set(clients)) != len(clients) or "server" in clients or "sm2-ca" in clients:
        raise GmCertError("client names must be distinct and not 'server' or 'sm2-ca'")
    san = _san(hosts)
    lib = load()

    root = Path(dir)

    def pair(stem: str) -> Sm2Pair:
        return Sm2Pair(root / f"{stem}-sign.pem", root / f"{stem}-sign.key",
                       root / f"{stem}-enc.pem", root / f"{stem}-enc.key")

    out = Sm2Dir(root / "sm2-ca.pem", root / "sm2-ca.key", pair("server"),
                 {c: pair(c) for c in clients})
    if not force:
        existing = [str(p) for p in out.files() if p.exists()]
        if existing:
            raise GmCertError(f"{len(existing)} file(s) already exist ({existing[0]}...): "
                              "use --force to overwrite")
    root.mkdir(parents=True, exist_ok=True)

    keys: list[_Key] = []
    certs: list[int] = []

    def new_key() -> _Key:
        k = _Key(lib)
        keys.append(k)
        return k

    try:
        ca_key = new_key()
        ca = _make_cert(lib, cn="tlsgate SM2 CA", key=ca_key, issuer_cert=None,
                        issuer_key=ca_key, days=days, exts=[
                            ("basicConstraints", "critical,CA:TRUE"),
                            ("keyUsage", "critical,keyCertSign,cRLSign"),
                            ("subjectKeyIdentifier", "hash"),
                            ("authorityKeyIdentifier", "keyid:always"),
                        ])
        certs.append(ca)
        files: list[tuple[Path, bytes, bool]] = [(out.ca_cert, _cert_pem(lib, ca), False),
                                                  (out.ca_key, ca_key.pem(), True)]

        def issue(p: Sm2Pair, cn: str, eku: str, alt: str | None) -> None:
            for usage, cert_path, key_path in (
                ("critical,digitalSignature", p.sign_cert, p.sign_key),
                ("critical,keyEncipherment,dataEncipherment,keyAgreement",
                 p.enc_cert, p.enc_key),
            ):
                k = new_key()
                exts = [("basicConstraints", "critical,CA:FALSE"), ("keyUsage", usage),
                        ("extendedKeyUsage", eku), ("subjectKeyIdentifier", "hash"),
                        ("authorityKeyIdentifier", "keyid:always")]
                if alt:
                    exts.append(("subjectAltName", alt))
                x = _make_cert(lib, cn=cn, key=k,
                               issuer_cert=ca, issuer_key=ca_key, days=days, exts=exts)
                certs.append(x)
                files.append((cert_path, _cert_pem(lib, x), False))
                files.append((key_path, k.pem(), True))

        issue(out.server, hosts[0], "serverAuth", san)
        for c in clients:
            issue(out.clients[c], c, "clientAuth", None)
        for path, data, secret in files:
            _write(path, data, secret)
        return out
    finally:
        for x in certs:
            lib.X509_free(x)
        for k in keys:
            k.free()
