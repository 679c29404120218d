"""OpenSSL functions that cryptography's cffi bindings leave out, found in the bundled library.

tlsgate runs on the OpenSSL that the ``cryptography`` wheel links into its extension module
(``cryptography.hazmat.bindings._rust``). The cffi bindings pyOpenSSL uses expose a fixed subset
of it; these calls tlsgate needs are not in that subset:

* ``SSL_CTX_set_num_tickets`` -- how many TLS 1.3 session tickets a full handshake sends
  (``ssl_options.reuse_sessions = false`` means none; without this call OpenSSL still sends two
  that can never resume);
* ``SSL_CTX_ctrl(SSL_CTRL_SET_TLSEXT_TICKET_KEYS)`` -- the session-ticket keys, so that every
  worker of a node (and every context a reload builds) encrypts and accepts the same tickets:
  a client resumes on whichever worker SO_REUSEPORT hands it to (SPEC section 8);
* ``SSL_CTX_set_tlsext_ticket_key_evp_cb`` and what its callback needs (``EVP_EncryptInit_ex``,
  ``EVP_DecryptInit_ex``, ``EVP_aes_256_cbc``, ``EVP_MAC_CTX_set_params``, ``RAND_bytes``,
  ``SSL_get_SSL_CTX``, ``SSL_version``, ``SSL_CTX_get/set_ex_data``,
  ``CRYPTO_get_ex_new_index``, ``OPENSSL_cleanse``) -- the same keys, plus the previous
  period's key accepted for a grace period after each rotation, and the next period's
  accepted ahead of it (a worker or node whose timer or clock is a little behind still takes
  the tickets of one that has rotated). OpenSSL's key slot above
  holds one key; the callback is C code in tlsgate's accelerator module
  (tlsgate/tls/relay_accel.c, ``tg_ticket_cb``), so the grace period needs that module as
  well: without it, rotation works as with the key slot alone;
* ``SSL_new_session_ticket`` -- send a TLS 1.3 client a fresh session ticket on a connection
  that is already up (tlsgate.gateway.tickets: long-lived MQTT connections get one before the
  last expires, and after a ticket-key rotation where that is needed);
* ``SSL_CTX_ctrl(SSL_CTRL_BUILD_CERT_CHAIN)`` -- complete the server's certificate chain from
  the verify store once, when the context is built. Without it, a certfile that holds only the
  leaf makes OpenSSL build that chain again in every handshake (an X509_STORE_CTX and a full
  X509_verify_cert of our own certificate: ~70 µs per connection with its issuer in the store,
  ~1 µs with an empty store, measured).

The functions are compiled into the module (it is one ELF object, and OpenSSL's symbols are
local to it, not exported), but the wheel keeps its ELF symbol table. This module reads that
table once (``mmap``, ~30 ms, at the first context build), and trusts what it finds only if
the load address it implies is the same for three functions whose run-time address cffi does
give (its ``_cffi_d_*`` wrappers): if the table were stale, stripped or for another file, the
three would disagree and the functions are reported missing -- never called at a guessed
address. Missing (another platform, a stripped wheel) means: tlsgate works as before, each
worker with its own OpenSSL-generated ticket keys; :func:`missing` says why, for the start-up
log.

No I/O beyond reading that one file; no secrets kept here (the caller passes the key bytes).
"""

from __future__ import annotations

import mmap
import struct
from typing import Any

from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _lib

__all__ = ["TICKET_KEY_LEN", "build_cert_chain", "grace_missing", "missing",
           "new_session_ticket", "set_num_tickets", "set_ticket_keys"]

#: SSL_CTRL_SET_TLSEXT_TICKET_KEYS / ..._GET_...: 16-byte key name, 32-byte HMAC key, 32-byte
#: AES key (OpenSSL 1.1.0 and later).
TICKET_KEY_LEN = 80
_CTRL_GET_TICKET_KEYS = 58
_CTRL_SET_TICKET_KEYS = 59
_CTRL_BUILD_CERT_CHAIN = 105
_CTRL_GET_CHAIN_CERTS = 115
#: SSL_BUILD_CHAIN_FLAG_IGNORE_ERROR | SSL_BUILD_CHAIN_FLAG_CLEAR_ERROR: keep whatever chain the
#: store yields (as the per-handshake automatic chain does), leave no error queued.
_BUILD_FLAGS = 0x8 | 0x10

_WANTED = ("SSL_CTX_set_num_tickets", "SSL_CTX_ctrl", "SSL_new_session_ticket")
#: For the ticket-key callback (relay_accel.c, tg_tickets_init's order); optional: without them
#: the key slot is used and a rotation retires the previous key at once.
_GRACE_WANTED = ("RAND_bytes", "EVP_EncryptInit_ex", "EVP_DecryptInit_ex", "EVP_aes_256_cbc",
                 "EVP_MAC_CTX_set_params", "SSL_get_SSL_CTX", "SSL_CTX_get_ex_data",
                 "SSL_CTX_set_ex_data", "SSL_CTX_set_tlsext_ticket_key_evp_cb",
                 "OPENSSL_cleanse", "CRYPTO_get_ex_new_index", "SSL_version")
#: Bound functions whose cffi wrapper addresses pin the load address down.
_ANCHORS = ("SSL_CTX_new", "SSL_new", "SSL_CTX_free")

_fns: dict[str, Any] | None = None
_why = ""


def _elf_functions(path: str, names: set[bytes]) -> dict[bytes, int]:
    """Values of the STT_FUNC symbols ``names`` in the ELF64 little-endian file's .symtab."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        if m[:6] != b"\x7fELF\x02\x01":
            raise ValueError("not a 64-bit little-endian ELF file")
        shoff, = struct.unpack_from("<Q", m, 0x28)
        shentsize, shnum = struct.unpack_from("<HH", m, 0x3A)
        sections = [struct.unpack_from("<IIQQQQIIQQ", m, shoff + i * shentsize)
                    for i in range(shnum)]
        found: dict[bytes, int] = {}
        for _name, typ, _fl, _addr, off, size, link, _info, _al, entsize in sections:
            if typ != 2 or entsize != 24:  # SHT_SYMTAB of Elf64_Sym
                continue
            strtab, strsize = sections[link][4], sections[link][5]
            # string-table offsets at which each wanted name (NUL-terminated) starts; the
            # linker shares suffixes, so look for every occurrence, not just "\0name\0"
            at: dict[int, bytes] = {}
            for name in names:
                i = m.find(name + b"\0", strtab, strtab + strsize)
                while i >= 0:
                    at[i - strtab] = name
                    i = m.find(name + b"\0", i + 1, strtab + strsize)
            for st_name, st_info, _other, _shndx, value, _size in struct.iter_unpack(
                    "<IBBHQQ", m[off:off + size]):
                if st_name in at and st_info & 0xF == 2 and value:  # STT_FUNC, defined
                    found[at[st_name]] = value
        return found


def _load() -> dict[str, Any]:
    global _fns, _why, _grace_why
    if _fns is not None:
        return _fns
    _fns = {}
    try:
        import cryptography.hazmat.bindings._rust as rust_module

        path = rust_module.__file__
        raw = getattr(_lib, "_original_lib", _lib)
        names = {n.encode() for n in (*_WANTED, *_GRACE_WANTED)}
        names |= {f"_cffi_d_{n}".encode() for n in _ANCHORS}
        names |= {n.encode() for n in _ANCHORS}
        syms = _elf_functions(str(path), names)
        bases = set()
        for n in _ANCHORS:
            runtime = int(_ffi.cast("uintptr_t", _ffi.addressof(raw, n)))
            # cffi's out-of-line API mode hands out its wrapper; an ABI-mode build, the function
            link = syms.get(f"_cffi_d_{n}".encode()) or syms.get(n.encode())
            if link is None:
                raise LookupError(f"{n} is not in the symbol table")
            bases.add(runtime - link)
        if len(bases) != 1:
            raise LookupError("the symbol table does not match the loaded library")
        base = bases.pop()
        absent = [n for n in _WANTED if n.encode() not in syms]
        if absent:
            raise LookupError(", ".join(absent) + " not in the symbol table")
        _fns = {
            "SSL_CTX_set_num_tickets": _ffi.cast(
                "int (*)(SSL_CTX *, size_t)", base + syms[b"SSL_CTX_set_num_tickets"]),
            "SSL_CTX_ctrl": _ffi.cast(
                "long (*)(SSL_CTX *, int, long, void *)", base + syms[b"SSL_CTX_ctrl"]),
            "SSL_new_session_ticket": _ffi.cast(
                "int (*)(SSL *)", base + syms[b"SSL_new_session_ticket"]),
        }
        found = (base, syms)
    except (ImportError, AttributeError, OSError, ValueError, LookupError, struct.error,
            TypeError, _ffi.error) as exc:
        _why = f"OpenSSL's {', '.join(_WANTED)} not found in cryptography's library: {exc}"
        _fns = {}
        return _fns
    try:
        _init_grace(*found)
    except Exception as exc:  # the grace period is optional; the key slot still works
        _grace_why = f"ticket-key callback unavailable: {exc}"
    return _fns


_grace: Any = None  # tlsgate.tls._relayc's lib once tg_tickets_init succeeded
_grace_why = "not looked for yet"


def _init_grace(base: int, syms: dict[bytes, int]) -> None:
    global _grace, _grace_why
    absent = [n for n in _GRACE_WANTED if n.encode() not in syms]
    if absent:
        _grace_why = ", ".join(absent) + " not in the symbol table"
        return
    try:
        import importlib

        mod = importlib.import_module("tlsgate.tls._relayc")
        init = mod.lib.tg_tickets_init
    except (ImportError, AttributeError):
        _grace_why = "tlsgate.tls._relayc was not built at install (no C compiler or headers)"
        return
    if init(*(mod.ffi.cast("void *", base + syms[n.encode()]) for n in _GRACE_WANTED)) != 1:
        _grace_why = "OpenSSL gave no SSL_CTX ex_data index"
        return
    _grace, _grace_why = mod, ""


def grace_missing() -> str:
    """"" when a rotation keeps accepting the previous period's tickets, else why not."""
    _load()
    return _grace_why if _fns else (_why or _grace_why)


def missing() -> str:
    """"" when the functions were found, else why not (for the start-up log)."""
    _load()
    return _why


def set_num_tickets(ctx: Any, n: int) -> bool:
    """``SSL_CTX_set_num_tickets`` on a pyOpenSSL ``SSL.Context``; False when unavailable."""
    fn = _load().get("SSL_CTX_set_num_tickets")
    return fn is not None and fn(ctx._context, n) == 1


def set_ticket_keys(ctx: Any, key: bytes, previous: bytes | None = None,
                    upcoming: bytes | None = None) -> bool:
    """Install ``key`` (:data:`TICKET_KEY_LEN` bytes) as the context's session-ticket key, and
    ``previous`` and ``upcoming`` as keys whose tickets are accepted too (a fresh ticket
    replaces them); False when unavailable. Without the callback (:func:`grace_missing`) both
    are ignored: only ``key``'s tickets resume. Call it again to replace all three."""
    if any(k is not None and len(k) != TICKET_KEY_LEN for k in (key, previous, upcoming)):
        raise ValueError(f"a ticket key is {TICKET_KEY_LEN} bytes")
    fn = _load().get("SSL_CTX_ctrl")
    if fn is None:
        return False
    if _grace is not None:
        # the callback from now on (also with no previous key: once installed, it is what
        # OpenSSL asks, so the key slot must not be the one updated)
        null = _grace.ffi.NULL
        return int(_grace.lib.tg_tickets_set(
            ctx._context, key, previous if previous is not None else null,
            upcoming if upcoming is not None else null)) == 1
    buf = _ffi.new("unsigned char[]", key)
    try:
        return int(fn(ctx._context, _CTRL_SET_TICKET_KEYS, TICKET_KEY_LEN, buf)) == 1
    finally:
        _ffi.memmove(buf, b"\0" * TICKET_KEY_LEN, TICKET_KEY_LEN)


def new_session_ticket(ssl: Any) -> bool:
    """``SSL_new_session_ticket`` on a raw ``SSL *`` (TLS 1.3 server, handshake done): a
    ticket goes out with the next SSL_do_handshake/SSL_write. False when unavailable or
    refused (the error queue is cleared)."""
    fn = _load().get("SSL_new_session_ticket")
    if fn is None:
        return False
    if int(fn(ssl)) == 1:
        return True
    _lib.ERR_clear_error()
    return False


def build_cert_chain(ctx: Any) -> bool:
    """Complete the context's certificate chain from its verify store now, once: the chain
    OpenSSL would otherwise build in every handshake when the certfile holds only the leaf
    (its "auto chain"), so clients receive the same certificates. Call it only for a leaf
    without chain certificates (a chain from the file must stay as it is) and after the
    verify store is final. Returns False when unavailable or when OpenSSL refused (then
    nothing changed and OpenSSL keeps building the chain per handshake)."""
    fn = _load().get("SSL_CTX_ctrl")
    if fn is None:
        return False
    ok = int(fn(ctx._context, _CTRL_BUILD_CERT_CHAIN, _BUILD_FLAGS, _ffi.NULL)) > 0
    if not ok:
        _lib.ERR_clear_error()
    return ok


def chain_certs_of(ctx: Any) -> list[bytes] | None:
    """DER of the chain certificates set on the context's current certificate (beside the
    leaf), or None when it has no such chain (OpenSSL then uses the extra chain certs or
    builds one per handshake). For tests."""
    fn = _load().get("SSL_CTX_ctrl")
    if fn is None:
        return None
    out = _ffi.new("Cryptography_STACK_OF_X509 **")
    fn(ctx._context, _CTRL_GET_CHAIN_CERTS, 0, out)
    if out[0] == _ffi.NULL:
        return None
    from cryptography.hazmat.primitives.serialization import Encoding
    from OpenSSL import crypto

    certs = []
    for i in range(_lib.sk_X509_num(out[0])):
        x = _lib.sk_X509_value(out[0], i)
        _lib.X509_up_ref(x)  # the wrapper frees its own reference
        certs.append(crypto.X509._from_raw_x509_ptr(x).to_cryptography().public_bytes(
            Encoding.DER))
    return certs


def ticket_keys_of(ctx: Any, previous: bool = False, upcoming: bool = False) -> bytes | None:
    """The context's current ticket key (tests compare contexts with it), or with
    ``previous`` / ``upcoming`` one of those accepted beside it; None when there is none."""
    fn = _load().get("SSL_CTX_ctrl")
    if fn is None:
        return None
    if _grace is not None:
        out = _grace.ffi.new("char[]", 3 * TICKET_KEY_LEN)
        have = int(_grace.lib.tg_tickets_get(ctx._context, out))
        if have:
            slot = 2 if upcoming else 1 if previous else 0
            if not have & (1 << slot):
                return None
            return bytes(_grace.ffi.buffer(out, 3 * TICKET_KEY_LEN))[
                slot * TICKET_KEY_LEN:(slot + 1) * TICKET_KEY_LEN]
    if previous or upcoming:
        return None
    buf = _ffi.new("unsigned char[]", TICKET_KEY_LEN)
    if int(fn(ctx._context, _CTRL_GET_TICKET_KEYS, TICKET_KEY_LEN, buf)) != 1:
        return None
    return bytes(_ffi.buffer(buf, TICKET_KEY_LEN))
