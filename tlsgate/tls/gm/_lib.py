"""Load the Tongsuo (BabaSSL) library that the ``tongsuopy`` wheel bundles, and declare the C
functions tlsgate calls through ctypes.

Which library, and what that implies
------------------------------------
``tongsuopy`` 1.0.1 (PyPI) ships one shared object, ``tongsuopy/backends/_tongsuo.abi3.so``: a
cffi extension with **BabaSSL 8.3.2** (Tongsuo's name before 2023, released 2022-12-12)
statically linked in, libssl and libcrypto together. Its version string is
``OpenSSL 1.1.1h  22 Sep 2020`` / ``BabaSSL 8.3.2``. What follows from that:

* It is an OpenSSL **1.1.1** code base: no providers, no OpenSSL 3 APIs
  (``SSL_get1_peer_certificate``, ``EVP_PKEY_Q_keygen``... do not exist; 1.1.1 names are used
  here), 1.1.1 error codes and strings.
* Security fixes: BabaSSL back-ported a selection (its CHANGES and commit log name
  CVE-2020-1967, -1971, CVE-2021-23840/23841, -3449, -3711 (SM2 decryption overflow), -3712,
  -4160, CVE-2022-0778), but upstream 1.1.1 went on to 1.1.1w and is end of life since
  2023-09. Fixes published after 2022 are **not** in 8.3.2, e.g. CVE-2023-0286 (X.400
  GENERAL_NAME type confusion, reachable through CRL checking; confirmed unpatched in the
  8.3.2 source), CVE-2022-4304 (RSA timing;
  tlsgate's GM listener has no RSA), CVE-2023-0464 (policy-constraint DoS; tlsgate does not
  enable policy checks), CVE-2023-3446/3817 (DH checks; not used), CVE-2024-5535
  (SSL_select_next_proto; tlsgate does not use NPN/ALPN on GM listeners). BabaSSL 8.3.3 (2023-08)
  fixed some of these but no newer tongsuopy wheel bundles it. So: keep the GM listener's
  attack surface small (no CRL/policy processing in this library, no renegotiation), prefer a
  dedicated port, and watch for a newer wheel. ``TLSGATE_TONGSUO_LIBRARY`` may point at
  another build of the same API (a BabaSSL 8.3.x ``libssl.so`` the operator built); only the
  wheel is tested.
* Its TLCP auto-detection on a ``TLS_method`` context (``SSL_CTX_enable_ntls``) peeks at the
  socket with ``recv(MSG_PEEK)`` and fails on memory BIOs ("NTLS only support socket
  communication"); tlsgate therefore looks at the first record header itself and picks an
  ``NTLS_server_method`` or a TLS 1.3 context (see ``engine.py``).

Symbol interposition: can it share a process with ``ssl``, ``cryptography``, pyOpenSSL?
-------------------------------------------------------------------------------------
The object exports all ~5,900 libssl/libcrypto symbols *unversioned* and was linked without
``-Bsymbolic``: its 3,576 internal calls (``SSL_new``, ``EVP_MD_CTX_new``, ``BIO_new``...) go
through the PLT and are bound by the dynamic linker, global scope first. Two ways that breaks:

1. Something put an OpenSSL ``libcrypto``/``libssl`` into the *global* scope (``RTLD_GLOBAL``,
   ``LD_PRELOAD``, or a Python linked against libcrypto): Tongsuo's own internal calls would
   then land in OpenSSL 3 functions with 1.1.1 structures -> memory corruption.
2. Tongsuo itself loaded ``RTLD_GLOBAL``: a libssl.so.3 loaded later would bind its
   (versioned) references to Tongsuo's unversioned definitions (glibc accepts that).

The loader here prevents both: it dlopens the object ``RTLD_LOCAL | RTLD_DEEPBIND``
(the object's own definitions win for its own references, and it never enters the global
scope). Python's ``_ssl``/``_hashlib`` load the system libssl.so.3 ``RTLD_LOCAL``, and
cryptography's Rust extension (OpenSSL 4, which pyOpenSSL uses) exports no OpenSSL symbols at
all, so with this loader the three live in one process.

Measured (``tests/unit/test_gm_engine.py::test_coexistence_with_ssl_cryptography_pyopenssl``):
one process interleaving 40 x (TLCP handshake + data, pyOpenSSL TLS 1.3 server vs stdlib
``ssl`` client + data, cryptography ECDSA, hashlib, TLS 1.3-SM handshake + data), with
``ssl``/pyOpenSSL imported before or after the GM engine, with ``tongsuopy`` imported first,
and with the system libcrypto.so.3/libssl.so.3 forced into the global scope first: every
result correct, no crash. The same global-scope case loaded *without* ``RTLD_DEEPBIND``
segfaults (exit status 139), which is the interposition described above.

**Verdict: in-process is safe with this loader**; the GM listener does not need a dedicated
worker process, and the gateway may import pyOpenSSL and this module in the same process, in
any order. The one unsafe combination, ``tongsuopy``'s own modules imported *before* this
loader ran (Python's import maps the same file without ``RTLD_DEEPBIND`` and the handle is
shared) *and* an OpenSSL in the global scope, is detected at load time and refused with
:class:`GmUnavailableError` (tested), never left to crash.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import sys
from collections.abc import Callable
from ctypes import (
    POINTER,
    c_char_p,
    c_int,
    c_long,
    c_size_t,
    c_uint,
    c_uint64,
    c_ulong,
    c_void_p,
)
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENV_LIBRARY = "TLSGATE_TONGSUO_LIBRARY"

# Constants from Tongsuo 8.3 headers (ssl.h, tls1.h, ntls.h, bio.h).
SSL_ERROR_NONE = 0
SSL_ERROR_SSL = 1
SSL_ERROR_WANT_READ = 2
SSL_ERROR_WANT_WRITE = 3
SSL_ERROR_SYSCALL = 5
SSL_ERROR_ZERO_RETURN = 6
SSL_VERIFY_NONE = 0x00
SSL_VERIFY_PEER = 0x01
SSL_VERIFY_FAIL_IF_NO_PEER_CERT = 0x02
SSL_OP_NO_TICKET = 0x00004000
SSL_OP_CIPHER_SERVER_PREFERENCE = 0x00400000
SSL_OP_NO_RENEGOTIATION = 0x40000000
SSL_MODE_RELEASE_BUFFERS = 0x00000010
SSL_CTRL_EXTRA_CHAIN_CERT = 14
SSL_CTRL_MODE = 33
#: SSL_CTX_build_cert_chain (a macro over SSL_CTX_ctrl) and its IGNORE_ERROR | CLEAR_ERROR flags
SSL_CTRL_BUILD_CERT_CHAIN = 105
SSL_BUILD_CHAIN_KEEP_WHAT_IS_FOUND = 0x8 | 0x10
SSL_CTRL_SET_TLSEXT_HOSTNAME = 55
SSL_CTRL_SET_GROUPS_LIST = 92
SSL_CTRL_SET_SIGALGS_LIST = 98
SSL_CTRL_SET_MIN_PROTO_VERSION = 123
SSL_CTRL_SET_MAX_PROTO_VERSION = 124
SSL_RECEIVED_SHUTDOWN = 2
SSL_FILETYPE_PEM = 1
TLSEXT_NAMETYPE_host_name = 0
TLS1_2_VERSION = 0x0303
TLS1_3_VERSION = 0x0304
NTLS1_1_VERSION = 0x0101
BIO_CTRL_PENDING = 10
X509_V_OK = 0

# name -> (restype, argtypes). Opaque pointers are c_void_p (Python int or None).
_P = c_void_p
_SIGNATURES: dict[str, tuple[Any, list[Any]]] = {
    # version / init / errors
    "OpenSSL_version": (c_char_p, [c_int]),
    "OpenSSL_version_num": (c_ulong, []),
    "OPENSSL_init_ssl": (c_int, [c_uint64, _P]),
    "ERR_get_error": (c_ulong, []),
    "ERR_peek_error": (c_ulong, []),
    "ERR_clear_error": (None, []),
    "ERR_error_string_n": (None, [c_ulong, c_char_p, c_size_t]),
    "ERR_reason_error_string": (c_char_p, [c_ulong]),
    # methods and contexts
    "TLS_server_method": (_P, []),
    "TLS_client_method": (_P, []),
    "NTLS_server_method": (_P, []),
    "NTLS_client_method": (_P, []),
    "SSL_CTX_new": (_P, [_P]),
    "SSL_CTX_free": (None, [_P]),
    "SSL_CTX_ctrl": (c_long, [_P, c_int, c_long, _P]),
    "SSL_CTX_set_options": (c_ulong, [_P, c_ulong]),
    "SSL_CTX_set_cipher_list": (c_int, [_P, c_char_p]),
    "SSL_CTX_set_ciphersuites": (c_int, [_P, c_char_p]),
    "SSL_CTX_enable_ntls": (None, [_P]),
    "SSL_CTX_enable_sm_tls13_strict": (None, [_P]),
    "SSL_CTX_set_default_passwd_cb_userdata": (None, [_P, _P]),
    "SSL_CTX_use_certificate_chain_file": (c_int, [_P, c_char_p]),
    "SSL_CTX_use_PrivateKey_file": (c_int, [_P, c_char_p, c_int]),
    "SSL_CTX_check_private_key": (c_int, [_P]),
    "SSL_CTX_use_sign_certificate_file": (c_int, [_P, c_char_p, c_int]),
    "SSL_CTX_use_sign_PrivateKey_file": (c_int, [_P, c_char_p, c_int]),
    "SSL_CTX_use_enc_certificate_file": (c_int, [_P, c_char_p, c_int]),
    "SSL_CTX_use_enc_PrivateKey_file": (c_int, [_P, c_char_p, c_int]),
    "SSL_CTX_load_verify_locations": (c_int, [_P, c_char_p, c_char_p]),
    "SSL_CTX_set_verify": (None, [_P, c_int, _P]),
    "SSL_CTX_set_verify_depth": (None, [_P, c_int]),
    "SSL_load_client_CA_file": (_P, [c_char_p]),
    "SSL_CTX_set_client_CA_list": (None, [_P, _P]),
    "SSL_CTX_set_session_id_context": (c_int, [_P, c_char_p, c_uint]),
    # connections
    "SSL_new": (_P, [_P]),
    "SSL_free": (None, [_P]),
    "SSL_ctrl": (c_long, [_P, c_int, c_long, _P]),
    "SSL_set_bio": (None, [_P, _P, _P]),
    "SSL_set_accept_state": (None, [_P]),
    "SSL_set_connect_state": (None, [_P]),
    "SSL_do_handshake": (c_int, [_P]),
    "SSL_get_error": (c_int, [_P, c_int]),
    "SSL_read_ex": (c_int, [_P, _P, c_size_t, POINTER(c_size_t)]),
    "SSL_write_ex": (c_int, [_P, _P, c_size_t, POINTER(c_size_t)]),  # bytes or an address
    "SSL_shutdown": (c_int, [_P]),
    "SSL_get_shutdown": (c_int, [_P]),
    "SSL_get_version": (c_char_p, [_P]),
    "SSL_get_current_cipher": (_P, [_P]),
    "SSL_CIPHER_get_name": (c_char_p, [_P]),
    "SSL_get_servername": (c_char_p, [_P, c_int]),
    "SSL_get0_alpn_selected": (None, [_P, POINTER(c_void_p), POINTER(c_uint)]),
    "SSL_get_peer_certificate": (_P, [_P]),
    "SSL_get_verify_result": (c_long, [_P]),
    "SSL_is_init_finished": (c_int, [_P]),
    "SSL_set_verify": (None, [_P, c_int, _P]),
    "SSL_use_sign_certificate_file": (c_int, [_P, c_char_p, c_int]),
    "SSL_set_alpn_protos": (c_int, [_P, c_char_p, c_uint]),
    "SSL_CTX_set_alpn_protos": (c_int, [_P, c_char_p, c_uint]),
    "X509_verify_cert_error_string": (c_char_p, [c_long]),
    # BIO
    "BIO_s_mem": (_P, []),
    "BIO_new": (_P, [_P]),
    "BIO_free": (c_int, [_P]),
    "BIO_write": (c_int, [_P, _P, c_int]),  # bytes or an address
    "BIO_read": (c_int, [_P, _P, c_int]),
    "BIO_ctrl": (c_long, [_P, c_int, c_long, _P]),
    "BIO_new_mem_buf": (_P, [c_char_p, c_int]),
    # X.509 and keys (also used by gm_certs)
    "X509_free": (None, [_P]),
    "X509_up_ref": (c_int, [_P]),
    "CRYPTO_free": (None, [_P, c_char_p, c_int]),
    "i2d_X509": (c_int, [_P, POINTER(c_void_p)]),
    "d2i_X509": (_P, [_P, POINTER(c_void_p), c_long]),
    "OBJ_sn2nid": (c_int, [c_char_p]),
    "OBJ_txt2nid": (c_int, [c_char_p]),
    "EVP_sm3": (_P, []),
    "EC_KEY_new_by_curve_name": (_P, [c_int]),
    "EC_KEY_generate_key": (c_int, [_P]),
    "EC_KEY_free": (None, [_P]),
    "EVP_PKEY_new": (_P, []),
    "EVP_PKEY_free": (None, [_P]),
    "EVP_PKEY_assign": (c_int, [_P, c_int, _P]),
    "EVP_PKEY_set_alias_type": (c_int, [_P, c_int]),
    "EVP_PKEY_id": (c_int, [_P]),
    "PEM_write_bio_PrivateKey": (c_int, [_P, _P, _P, _P, c_int, _P, _P]),
    "PEM_write_bio_X509": (c_int, [_P, _P]),
    "PEM_read_bio_X509": (_P, [_P, _P, _P, _P]),
    "PEM_read_bio_PrivateKey": (_P, [_P, _P, _P, _P]),
    "X509_new": (_P, []),
    "X509_set_version": (c_int, [_P, c_long]),
    "X509_get_serialNumber": (_P, [_P]),
    "ASN1_INTEGER_set_uint64": (c_int, [_P, c_uint64]),
    "X509_getm_notBefore": (_P, [_P]),
    "X509_getm_notAfter": (_P, [_P]),
    "X509_time_adj_ex": (_P, [_P, c_int, c_long, _P]),
    "X509_set_pubkey": (c_int, [_P, _P]),
    "X509_get_subject_name": (_P, [_P]),
    "X509_set_issuer_name": (c_int, [_P, _P]),
    "X509_NAME_add_entry_by_txt": (c_int, [_P, c_char_p, c_int, c_char_p, c_int, c_int, c_int]),
    "X509V3_set_ctx": (None, [_P, _P, _P, _P, _P, c_int]),
    "X509V3_EXT_nconf": (_P, [_P, _P, c_char_p, c_char_p]),
    "X509_add_ext": (c_int, [_P, _P, c_int]),
    "X509_EXTENSION_free": (None, [_P]),
    "X509_sign": (c_int, [_P, _P, _P]),
    "X509_verify": (c_int, [_P, _P]),
    "X509_get_pubkey": (_P, [_P]),
    "X509_get_signature_nid": (c_int, [_P]),
    "X509_check_private_key": (c_int, [_P, _P]),
    "X509_get0_pubkey": (_P, [_P]),
    "EVP_PKEY_is_sm2": (c_int, [_P]),
    "EVP_PKEY_get0_EC_KEY": (_P, [_P]),
    "EC_KEY_get0_group": (_P, [_P]),
    "EC_GROUP_get_curve_name": (c_int, [_P]),
    "SSL_CTX_use_certificate": (c_int, [_P, _P]),
    "SSL_CTX_use_PrivateKey": (c_int, [_P, _P]),
    "SSL_CTX_use_sign_certificate": (c_int, [_P, _P]),
    "SSL_CTX_use_sign_PrivateKey": (c_int, [_P, _P]),
    "SSL_CTX_use_enc_certificate": (c_int, [_P, _P]),
    "SSL_CTX_use_enc_PrivateKey": (c_int, [_P, _P]),
    "SSL_version": (c_int, [_P]),
    "SSL_get_peer_cert_chain": (_P, [_P]),
    "SSL_get0_verified_chain": (_P, [_P]),
    "SSL_session_reused": (c_int, [_P]),
    "OPENSSL_sk_num": (c_int, [_P]),
    "OPENSSL_sk_value": (_P, [_P, c_int]),
}


class GmUnavailableError(RuntimeError):
    """The Tongsuo library cannot be used (not installed, wrong build, unsafe to load)."""


@dataclass(frozen=True)
class LibraryInfo:
    path: str
    version: str          # "BabaSSL 8.3.2" / "Tongsuo 8.4.0"
    openssl_base: str     # "OpenSSL 1.1.1h  22 Sep 2020"
    deepbind: bool        # loaded with RTLD_DEEPBIND by this process


class Tongsuo:
    """The loaded library: every declared C function as an attribute, plus helpers."""

    def __init__(self, dll: ctypes.CDLL, info: LibraryInfo) -> None:
        self._dll = dll
        self.info = info
        missing = []
        for name, (restype, argtypes) in _SIGNATURES.items():
            try:
                fn = getattr(dll, name)
            except AttributeError:
                missing.append(name)
                continue
            fn.restype = restype
            fn.argtypes = argtypes
            setattr(self, name, fn)
        if missing:
            raise GmUnavailableError(
                f"{info.path} ({info.version}) lacks {', '.join(missing[:5])}"
                f"{'...' if len(missing) > 5 else ''}: it is not a Tongsuo/BabaSSL build with "
                "NTLS and SM2/SM3/SM4 (tlsgate needs one with enable-ntls)")

    def __getattr__(self, name: str) -> Callable[..., Any]:
        # Only reached for names not set in __init__ (typing aid + clear error).
        raise AttributeError(f"Tongsuo function {name} is not declared in _lib._SIGNATURES")

    # ---------------------------------------------------------------- errors
    def error_stack(self) -> list[str]:
        """Drain this thread's Tongsuo error queue into readable strings (oldest first)."""
        out: list[str] = []
        buf = ctypes.create_string_buffer(256)
        while True:
            code = int(self.ERR_get_error())
            if code == 0:
                return out
            self.ERR_error_string_n(code, buf, len(buf))
            out.append(buf.value.decode("ascii", "replace"))

    def error_reasons(self) -> list[str]:
        """Drain the error queue into OpenSSL reason strings ("no shared cipher"...)."""
        out: list[str] = []
        while True:
            code = int(self.ERR_get_error())
            if code == 0:
                return out
            r = self.ERR_reason_error_string(code)
            out.append(r.decode("ascii", "replace") if r else hex(code))

    def last_reason(self, default: str) -> str:
        """The most telling reason from the error queue ("unsupported protocol"...), drained."""
        errs = self.error_stack()
        if not errs:
            return default
        # "error:1408F10B:SSL routines:ssl3_get_record:wrong version number" -> last field
        reasons = [e.rsplit(":", 1)[-1] for e in errs]
        return "; ".join(dict.fromkeys(reasons))

    def nid(self, short_name: str) -> int:
        n = int(self.OBJ_sn2nid(short_name.encode()))
        if n == 0:
            raise GmUnavailableError(f"Tongsuo does not know the object {short_name!r}")
        return n


def _find_library() -> Path:
    override = os.environ.get(ENV_LIBRARY)
    if override:
        p = Path(override)
        if not p.is_file():
            raise GmUnavailableError(f"{ENV_LIBRARY}={override}: no such file")
        return p
    spec = importlib.util.find_spec("tongsuopy")
    if spec is None or not spec.submodule_search_locations:
        raise GmUnavailableError(
            "GM (国密) listeners need the Tongsuo library from the `tongsuopy` package, which "
            "is not installed (it is a dependency of tlsgate): `pip install tongsuopy`, or set "
            f"{ENV_LIBRARY} to a Tongsuo libssl.so")
    for loc in spec.submodule_search_locations:
        for cand in sorted((Path(loc) / "backends").glob("_tongsuo*.so")):
            return cand
    raise GmUnavailableError(
        f"tongsuopy is installed ({list(spec.submodule_search_locations)}) but has no "
        "backends/_tongsuo*.so: reinstall it (`pip install --force-reinstall tongsuopy`)")


def _already_mapped(path: Path) -> bool:
    try:
        real = str(path.resolve())
        with open("/proc/self/maps") as f:
            return any(line.rstrip().endswith(real) for line in f)
    except OSError:  # not Linux: cannot tell, assume the worst only if tongsuopy was imported
        return "tongsuopy.backends._tongsuo" in sys.modules


def _global_scope_has_openssl(dll: ctypes.CDLL) -> bool:
    """Does the process's global symbol scope define OpenSSL functions other than Tongsuo's?"""
    glob = ctypes.CDLL(None)
    for name in ("SSL_CTX_new", "EVP_MD_CTX_new", "BIO_new", "CRYPTO_malloc"):
        try:
            g = ctypes.cast(getattr(glob, name), c_void_p).value
        except AttributeError:
            continue
        mine = ctypes.cast(getattr(dll, name), c_void_p).value
        if g != mine:
            return True
    return False


_loaded: Tongsuo | None = None


def load() -> Tongsuo:
    """Load (once per process) and return the Tongsuo library; raise GmUnavailableError."""
    global _loaded
    if _loaded is not None:
        return _loaded
    path = _find_library()
    preloaded = _already_mapped(path)
    mode = os.RTLD_NOW | os.RTLD_LOCAL | getattr(os, "RTLD_DEEPBIND", 0)
    try:
        dll = ctypes.CDLL(str(path), mode=mode)
    except OSError as exc:
        raise GmUnavailableError(f"cannot load the Tongsuo library {path}: {exc}") from None
    deepbind = bool(getattr(os, "RTLD_DEEPBIND", 0)) and not preloaded
    if not deepbind and _global_scope_has_openssl(dll):
        why = ("it was loaded before tlsgate's GM engine, without RTLD_DEEPBIND (was "
               "`tongsuopy` imported first?)" if preloaded else
               "this platform has no RTLD_DEEPBIND")
        raise GmUnavailableError(
            f"cannot use {path} safely: {why}, and another OpenSSL is in the process's global "
            "symbol scope, so Tongsuo's internal calls could land in that library and crash. "
            "Import tlsgate.tls.gm before tongsuopy, do not load libcrypto RTLD_GLOBAL or "
            "LD_PRELOAD it, or run the GM listener in a process of its own")
    try:
        version_fn = dll.OpenSSL_version
        version_fn.restype = c_char_p
        version_fn.argtypes = [c_int]
        base = (version_fn(0) or b"?").decode()
    except AttributeError:
        raise GmUnavailableError(f"{path} is not an OpenSSL/Tongsuo library") from None
    flavour = "?"
    # BabaSSL 8.3: OpenSSL_version(BABASSL_VERSION = 6); Tongsuo 8.4+: TONGSUO_VERSION = 10.
    for sym, vtype in (("BabaSSL_version_num", 6), ("Tongsuo_version_num", 10)):
        if hasattr(dll, sym):
            flavour = (version_fn(vtype) or b"?").decode()
            break
    info = LibraryInfo(str(path), flavour, base, deepbind)
    lib = Tongsuo(dll, info)
    if int(lib.OPENSSL_init_ssl(0, None)) != 1:
        raise GmUnavailableError(f"{path}: OPENSSL_init_ssl failed: {lib.error_stack()}")
    _loaded = lib
    return lib
