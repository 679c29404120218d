"""Outgoing TLS: a stdlib :class:`ssl.SSLContext` built from a :class:`ClientSslOptions` block.

One function, :func:`build_client_tls`, turns EMQX's client ``ssl { ... }`` keys into a ready
context for everything tlsgate connects *to*: the HTTP authentication server (through aiohttp),
the broker (``[upstreams.<name>.ssl]``, through ``loop.create_connection``), OCSP responders and
CRL distribution points. The stdlib ``ssl`` module is used (not pyOpenSSL) because aiohttp and
asyncio only speak ``ssl.SSLContext``.

Every problem raises :class:`ClientTlsError` carrying the config key at fault
(``authentication.ssl.keyfile: ...``), checked up front with ``cryptography`` so the message says
what is wrong with the file rather than OpenSSL's ``[SSL] PEM lib``.

Key by key:

- ``cacertfile``: PEM CA bundle the server's chain must end in; empty = the system trust store.
- ``certfile`` / ``keyfile`` / ``password``: client certificate for mutual TLS. ``password`` may
  be ``file://path``. The key must match the certificate.
- ``verify``: ``verify_peer`` checks the chain *and* the host name; ``verify_none`` checks
  neither (the handshake still encrypts).
- ``server_name_indication``: ``""`` = the host of the URL/address is sent as SNI and checked
  in the certificate; ``"disable"`` = no SNI and no host name check (the chain is still checked
  with ``verify_peer``); any other value = that name is sent as SNI and checked.
- ``versions``: ``tlsv1.2`` / ``tlsv1.3`` -> minimum and maximum protocol version.
- ``ciphers``: OpenSSL names; TLS 1.2 names (``ECDHE-...``) restrict TLS 1.2, ``TLS_*`` names
  restrict TLS 1.3. Either half left empty keeps that version's defaults.
- ``depth``: maximum number of intermediate certificates between the server's certificate and
  the trust anchor (OpenSSL's verify depth).

The stdlib has no API for TLS 1.3 cipher suites nor for the verify depth, so those two go through
``ctypes`` to the very ``libssl`` the ``ssl`` module is linked with (matched by version number,
and the ``SSL_CTX`` pointer is cross-checked before anything is written to it). Where that is not
possible an explicitly configured value is an error, never silently dropped.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import platform
import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

if TYPE_CHECKING:
    from ..config.schema import ClientSslOptions

__all__ = ["TLS13_SUITES", "ClientTls", "ClientTlsError", "build_client_tls"]

# The TLS 1.3 suites OpenSSL knows; SSL_CTX_set_ciphersuites silently skips unknown names, so
# names are checked against this list first.
TLS13_SUITES = frozenset({
    "TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256",
    "TLS_AES_128_CCM_SHA256", "TLS_AES_128_CCM_8_SHA256",
})

_VERSIONS = {"tlsv1.2": ssl.TLSVersion.TLSv1_2, "tlsv1.3": ssl.TLSVersion.TLSv1_3}


class ClientTlsError(ValueError):
    """A client TLS option cannot be used. ``key`` is the full config key at fault."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}")


class _NoSniContext(ssl.SSLContext):
    """A client context that never sends SNI (``server_name_indication = "disable"``).

    aiohttp and asyncio always pass a ``server_hostname`` (the URL's host when none is given);
    dropping it here is the one place that covers both. Host name checking is off on this
    context, so OpenSSL has nothing to compare the missing name with.
    """

    def wrap_bio(self, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO,
                 server_side: bool = False, server_hostname: str | bytes | None = None,
                 session: ssl.SSLSession | None = None) -> ssl.SSLObject:
        return super().wrap_bio(incoming, outgoing, server_side=server_side,
                                server_hostname=None, session=session)

    def wrap_socket(self, sock: Any, server_side: bool = False,
                    do_handshake_on_connect: bool = True, suppress_ragged_eofs: bool = True,
                    server_hostname: str | bytes | None = None,
                    session: ssl.SSLSession | None = None) -> ssl.SSLSocket:
        return super().wrap_socket(sock, server_side=server_side,
                                   do_handshake_on_connect=do_handshake_on_connect,
                                   suppress_ragged_eofs=suppress_ragged_eofs,
                                   server_hostname=None, session=session)


@dataclass(frozen=True)
class ClientTls:
    """A built client context plus how to name the server.

    ``sni`` is the configured override name (``None`` = use the host being dialled);
    ``sni_disabled`` is ``server_name_indication = "disable"``.
    """

    context: ssl.SSLContext
    sni: str | None = None
    sni_disabled: bool = False

    def server_hostname(self, host: str) -> str:
        """The ``server_hostname`` to give ``loop.create_connection`` for ``host``.

        ``""`` means no SNI and no host check (asyncio's convention); the context drops the name
        anyway when SNI is disabled, so aiohttp (which ignores ``""``) behaves the same.
        """
        if self.sni_disabled:
            return ""
        return self.sni or host


def build_client_tls(opts: ClientSslOptions, key: str = "ssl") -> ClientTls:
    """Build the client context for ``opts``; ``key`` prefixes error keys (``upstreams.b.ssl``).

    ``opts.enable`` is not looked at: the caller decides whether TLS is used at all.
    """
    sni_opt = opts.server_name_indication.strip()
    sni_disabled = sni_opt == "disable"
    if sni_opt and not sni_disabled:
        _check_server_name(f"{key}.server_name_indication", sni_opt)

    ctx: ssl.SSLContext = (_NoSniContext if sni_disabled else ssl.SSLContext)(
        ssl.PROTOCOL_TLS_CLIENT)

    # versions
    wanted = sorted({_VERSIONS[v] for v in opts.versions})
    try:
        ctx.minimum_version = wanted[0]
        ctx.maximum_version = wanted[-1]
    except (ValueError, ssl.SSLError) as exc:
        raise ClientTlsError(f"{key}.versions", f"not supported by this OpenSSL: {exc}") from None

    # verify
    if opts.verify == "verify_peer":
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.check_hostname = not sni_disabled
        if opts.cacertfile:
            _load_cas(ctx, f"{key}.cacertfile", opts.cacertfile)
        else:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        if opts.cacertfile:  # still checked: a typo should not wait until verify is turned on
            _load_cas(ctx, f"{key}.cacertfile", opts.cacertfile)

    # client certificate
    if opts.certfile or opts.keyfile:
        password = _reveal(f"{key}.password", opts.password)
        if _load_identity(ctx, key, opts.certfile, opts.keyfile, password) == 1:
            complete_chain(ctx)
        ctx.post_handshake_auth = True

    # ciphers
    tls12 = [c for c in opts.ciphers if not c.startswith("TLS_")]
    tls13 = [c for c in opts.ciphers if c.startswith("TLS_")]
    if tls12:
        _set_tls12_ciphers(ctx, f"{key}.ciphers", tls12)
    if tls13:
        unknown = [c for c in tls13 if c not in TLS13_SUITES]
        if unknown:
            raise ClientTlsError(f"{key}.ciphers", f"unknown TLS 1.3 suite(s) {', '.join(unknown)}"
                                 f" (known: {', '.join(sorted(TLS13_SUITES))})")
        lib, ptr = _native_or_error(f"{key}.ciphers", "TLS 1.3 suites", ctx)
        _set_ciphersuites(f"{key}.ciphers", lib, ptr, tls13)
    if tls13 and not tls12 and wanted == [ssl.TLSVersion.TLSv1_2]:
        raise ClientTlsError(f"{key}.ciphers", "only TLS 1.3 suites are listed but versions "
                                               "allows only tlsv1.2")
    if tls12 and not tls13 and wanted == [ssl.TLSVersion.TLSv1_3]:
        raise ClientTlsError(f"{key}.ciphers", "only TLS 1.2 ciphers are listed but versions "
                                               "allows only tlsv1.3 (use TLS_* names)")

    # depth: OpenSSL's default is 100; ours (the schema's) is 10.
    # Explicitly configured: must be applied. Default: applied where possible.
    if "depth" in opts.model_fields_set:
        lib, ptr = _native_or_error(f"{key}.depth", "the verify depth", ctx)
        _set_verify_depth(f"{key}.depth", lib, ptr, opts.depth)
    else:
        native = _native()
        default_ptr = _ctx_pointer(native, ctx) if native is not None else None
        if native is not None and default_ptr is not None:
            _set_verify_depth(f"{key}.depth", native, default_ptr, opts.depth)

    return ClientTls(context=ctx, sni=sni_opt if sni_opt and not sni_disabled else None,
                     sni_disabled=sni_disabled)


# --------------------------------------------------------------------------------------------
# Checks with readable messages
# --------------------------------------------------------------------------------------------
_LABEL = r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})"
_HOSTNAME_RE = re.compile(rf"^{_LABEL}(\.{_LABEL})*\.?$")


def _check_server_name(key: str, name: str) -> None:
    if len(name) > 253 or not _HOSTNAME_RE.match(name):
        raise ClientTlsError(key, f"{name!r} is not a host name; write a DNS name, \"\" (use the "
                                  "host of the URL/address) or \"disable\"")


def _read(key: str, path: str, what: str) -> bytes:
    p = Path(path)
    try:
        return p.read_bytes()
    except FileNotFoundError:
        raise ClientTlsError(key, f"{what} {path!r} does not exist") from None
    except IsADirectoryError:
        raise ClientTlsError(key, f"{path!r} is a directory; give the {what} file") from None
    except PermissionError:
        raise ClientTlsError(key, f"{what} {path!r} is not readable (permission denied)") \
            from None
    except OSError as exc:
        raise ClientTlsError(key, f"cannot read {what} {path!r}: {exc.strerror}") from None


def _pem_certs(key: str, path: str, data: bytes, what: str) -> list[x509.Certificate]:
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise ClientTlsError(key, f"{path!r} holds no PEM certificate (expected a {what} in PEM, "
                                  "\"-----BEGIN CERTIFICATE-----\")")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise ClientTlsError(key, f"{path!r}: a certificate in it cannot be parsed ({exc})") \
            from None


def _load_cas(ctx: ssl.SSLContext, key: str, path: str) -> None:
    data = _read(key, path, "CA file")
    _pem_certs(key, path, data, "CA certificate")
    try:
        ctx.load_verify_locations(cadata=data.decode("ascii", "replace"))
    except (ssl.SSLError, ValueError) as exc:
        raise ClientTlsError(key, f"{path!r}: OpenSSL refused the CA certificates "
                                  f"({_ssl_reason(exc)})") from None


def _reveal(key: str, password: Any) -> str | None:
    if password is None:
        return None
    try:
        value = password.reveal() if hasattr(password, "reveal") else str(password)
    except (OSError, IndexError) as exc:
        # IndexError: an empty password file. Never echo the value, only where it comes from.
        detail = exc.strerror if isinstance(exc, OSError) else "the file is empty"
        raise ClientTlsError(key, f"cannot read the password file: {detail}") from None
    return str(value)


def _load_identity(ctx: ssl.SSLContext, key: str, certfile: str, keyfile: str,
                   password: str | None) -> int:
    """Load the client certificate and key; returns how many certificates the file holds."""
    if not certfile:
        raise ClientTlsError(f"{key}.certfile", "keyfile is set but certfile is empty; they go "
                                                "together")
    if not keyfile:
        raise ClientTlsError(f"{key}.keyfile", "certfile is set but keyfile is empty; they go "
                                               "together")
    cert_data = _read(f"{key}.certfile", certfile, "certificate file")
    certs = _pem_certs(f"{key}.certfile", certfile, cert_data, "client certificate")
    key_data = _read(f"{key}.keyfile", keyfile, "key file")
    if b"PRIVATE KEY-----" not in key_data:
        raise ClientTlsError(f"{key}.keyfile", f"{keyfile!r} holds no PEM private key "
                                               "(expected \"-----BEGIN ... PRIVATE KEY-----\")")
    pw = password.encode() if password else None
    try:
        private_key = serialization.load_pem_private_key(key_data, password=pw)
    except TypeError:
        if pw is None:
            raise ClientTlsError(f"{key}.password", f"{keyfile!r} is encrypted; set "
                                                    f"{key}.password") from None
        raise ClientTlsError(f"{key}.password", f"is set but {keyfile!r} is not encrypted; "
                                                "remove it") from None
    except ValueError:
        if pw is not None or b"ENCRYPTED" in key_data:
            raise ClientTlsError(f"{key}.password", f"wrong password for {keyfile!r} (or the key "
                                                    "is corrupt)") from None
        raise ClientTlsError(f"{key}.keyfile", f"{keyfile!r}: the private key cannot be "
                                               "parsed") from None
    except Exception as exc:  # unsupported key types and the like
        raise ClientTlsError(f"{key}.keyfile", f"{keyfile!r}: unusable private key "
                                               f"({type(exc).__name__})") from None
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if private_key.public_key().public_bytes(*spki) != certs[0].public_key().public_bytes(*spki):
        raise ClientTlsError(f"{key}.keyfile", f"{keyfile!r} does not match the first "
                                               f"certificate in {key}.certfile {certfile!r}")
    try:
        ctx.load_cert_chain(certfile, keyfile, password=password)
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise ClientTlsError(f"{key}.certfile", f"OpenSSL refused {certfile!r} with "
                                                f"{keyfile!r}: {_ssl_reason(exc)}") from None
    return len(certs)


#: SSL_CTRL_BUILD_CERT_CHAIN, SSL_BUILD_CHAIN_FLAG_IGNORE_ERROR | ..._CLEAR_ERROR
_BUILD_CERT_CHAIN, _BUILD_FLAGS = 105, 0x8 | 0x10


def complete_chain(ctx: ssl.SSLContext) -> bool:
    """A client certificate file with the leaf alone: let OpenSSL complete its chain from the
    context's CA store once, now, instead of in every handshake (its automatic chain: an
    X509_verify_cert of our own certificate per connection to the broker or auth server).
    The server receives the same certificates. Call it after the CAs and the certificate are
    loaded. False (nothing changed) when the native library cannot be reached for sure."""
    native = _native()
    ptr = _ctx_pointer(native, ctx) if native is not None else None
    if native is None or ptr is None:
        return False
    if native.SSL_CTX_ctrl(ptr, _BUILD_CERT_CHAIN, _BUILD_FLAGS, None) > 0:
        return True
    native.ERR_clear_error()
    return False


def _set_tls12_ciphers(ctx: ssl.SSLContext, key: str, names: list[str]) -> None:
    # set_ciphers() ignores unknown names as long as one is known: check them one by one.
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    bad = []
    for name in names:
        if name.startswith(("!", "-", "+", "@")):
            continue  # an operator (exclusion, reordering): cannot select anything on its own
        try:
            probe.set_ciphers(name)
        except ssl.SSLError:
            bad.append(name)
    if bad:
        raise ClientTlsError(key, f"unknown or unavailable cipher(s) {', '.join(bad)} "
                                  "(OpenSSL names such as ECDHE-RSA-AES128-GCM-SHA256)")
    try:
        ctx.set_ciphers(":".join(names))
    except ssl.SSLError as exc:
        raise ClientTlsError(key, f"no cipher can be selected ({_ssl_reason(exc)})") from None


def _ssl_reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    if isinstance(reason, str) and reason:
        return reason
    return str(exc) or type(exc).__name__


# --------------------------------------------------------------------------------------------
# The two settings the stdlib does not expose: through ctypes, carefully.
# --------------------------------------------------------------------------------------------
def _native_or_error(key: str, what: str, ctx: ssl.SSLContext) -> tuple[ctypes.CDLL, int]:
    native = _native()
    ptr = _ctx_pointer(native, ctx) if native is not None else None
    if native is None or ptr is None:
        raise ClientTlsError(key, f"{what} cannot be set with this Python's ssl module "
                                  f"({ssl.OPENSSL_VERSION}); remove the key")
    return native, ptr


@functools.cache
def _native() -> ctypes.CDLL | None:
    """The libssl the ``ssl`` module runs on, or ``None`` if it cannot be found for sure."""
    if platform.python_implementation() != "CPython":
        return None
    candidates: list[str] = []
    try:
        for line in Path("/proc/self/maps").read_text().splitlines():
            path = line.split(maxsplit=5)[-1] if line.count(" ") >= 5 else ""
            if "/libssl" in path and path not in candidates:
                candidates.append(path)
    except OSError:
        pass
    found = ctypes.util.find_library("ssl")
    if found:
        candidates.append(found)
    for cand in candidates:
        try:
            lib = ctypes.CDLL(cand)
            lib.OpenSSL_version_num.restype = ctypes.c_ulong
            if lib.OpenSSL_version_num() != ssl.OPENSSL_VERSION_NUMBER:
                continue
            lib.SSL_CTX_get_options.restype = ctypes.c_uint64
            lib.SSL_CTX_get_options.argtypes = [ctypes.c_void_p]
            lib.SSL_CTX_get_verify_mode.restype = ctypes.c_int
            lib.SSL_CTX_get_verify_mode.argtypes = [ctypes.c_void_p]
            lib.SSL_CTX_set_verify_depth.restype = None
            lib.SSL_CTX_set_verify_depth.argtypes = [ctypes.c_void_p, ctypes.c_int]
            lib.SSL_CTX_get_verify_depth.restype = ctypes.c_int
            lib.SSL_CTX_get_verify_depth.argtypes = [ctypes.c_void_p]
            lib.SSL_CTX_set_ciphersuites.restype = ctypes.c_int
            lib.SSL_CTX_set_ciphersuites.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
            lib.SSL_CTX_ctrl.restype = ctypes.c_long
            lib.SSL_CTX_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long,
                                         ctypes.c_void_p]
            return lib
        except (OSError, AttributeError):
            continue
    return None


def _ctx_pointer(lib: ctypes.CDLL, ctx: ssl.SSLContext) -> int | None:
    """The ``SSL_CTX *`` inside ``ctx``: CPython's ``PySSLContext`` starts with it, right after
    the object header. Cross-checked against the options and verify mode Python reports."""
    try:
        ptr = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
    except (ValueError, OSError):
        return None
    if not ptr:
        return None
    if lib.SSL_CTX_get_options(ptr) != int(ctx.options):
        return None
    mode = {ssl.CERT_NONE: 0, ssl.CERT_OPTIONAL: 1, ssl.CERT_REQUIRED: 3}[ctx.verify_mode]
    if lib.SSL_CTX_get_verify_mode(ptr) & 0x3 != mode:
        return None
    return int(ptr)


def _set_verify_depth(key: str, lib: ctypes.CDLL, ptr: int, depth: int) -> None:
    lib.SSL_CTX_set_verify_depth(ptr, depth)
    if lib.SSL_CTX_get_verify_depth(ptr) != depth:  # pragma: no cover - would be an ABI surprise
        raise ClientTlsError(key, "OpenSSL did not take the verify depth")


def _set_ciphersuites(key: str, lib: ctypes.CDLL, ptr: int, suites: list[str]) -> None:
    if lib.SSL_CTX_set_ciphersuites(ptr, ":".join(suites).encode()) != 1:  # pragma: no cover
        raise ClientTlsError(key, f"OpenSSL refused the TLS 1.3 suites {', '.join(suites)}")
