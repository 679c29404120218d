"""The 国密 TLS engine: TLCP (GB/T 38636-2020, "NTLS" in Tongsuo) and TLS 1.3 with the RFC 8998
suites, over memory BIOs, with the interface of :mod:`tlsgate.tls.engine` so the gateway drives
either the same way: :func:`build_gm_context` (twin of ``build_server_context``) once per
listener configuration, ``ctx.new_session(transport.write)`` per connection (twin of
``ServerSession(ctx.ctx, transport.write)``), then ``feed_in``/``handshake``/``decrypt``/
``encrypt_in``/``close_notify``, the same errors (``tlsgate.tls.engine.HandshakeError`` and
``TlsError``) and the same facts (``version``, ``cipher``, ``server_name``, ``alpn``,
``session_reused``, ``peer_certificate()``, ``peer_chain()``).

No sockets, no asyncio. One context may be used from several threads (the library is
thread-safe); one session belongs to one thread at a time. The Tongsuo library and its
coexistence with pyOpenSSL in one process are described in ``_lib.py``.

How one port serves both protocols: Tongsuo 8.3's own switch (``SSL_CTX_enable_ntls`` on a
``TLS_method`` context) peeks at the socket and refuses memory BIOs. A TLCP ClientHello is the
only one whose record header says version 1.1 (``16 01 01``), so the session waits for the first
three bytes, then creates its ``SSL`` from the NTLS context or the TLS 1.3 context. Anything else
(a TLS 1.2 client, plain MQTT, HTTP) goes to the TLS 1.3 context (or, on a TLCP-only listener, to
the NTLS one) and is refused there (with an alert when it looked like TLS).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import stat
import threading
from collections.abc import Callable, Sequence
from ctypes import byref, c_size_t, c_uint, c_void_p
from typing import TYPE_CHECKING, Any

from cryptography import x509

from ...config.load import Problem
from ..context import ContextError
from ..engine import BUF_SIZE, HUMAN_REASONS, INBUF, OUT_VIEW, HandshakeError, TlsError
from . import _lib
from ._lib import GmUnavailableError, Tongsuo, load

if TYPE_CHECKING:
    from tlsgate.config.schema import GmSslOptions

__all__ = ["TLCP_CIPHERS", "TLS13_CIPHERS", "GmConfigError", "GmError", "GmServerContext",
           "GmSession", "HandshakeError", "TlsError", "build_gm_context"]

TLCP_CIPHERS = ("ECDHE-SM2-SM4-GCM-SM3", "ECC-SM2-SM4-GCM-SM3",
                "ECDHE-SM2-SM4-CBC-SM3", "ECC-SM2-SM4-CBC-SM3")
TLS13_CIPHERS = ("TLS_SM4_GCM_SM3", "TLS_SM4_CCM_SM3")

# What ``version`` reports (access log, metrics labels). Tongsuo calls TLCP "NTLSv1.1".
VERSION_NAMES = {"NTLSv1.1": "TLCP", "TLSv1.3": "TLSv1.3"}

# The gateway's shared receive buffer (tlsgate.tls.engine.INBUF), seen from ctypes: feed_in(n)
# and encrypt_in(n) pass its address, no copy. (It is never resized.)
_IN_ARRAY = (ctypes.c_char * len(INBUF)).from_buffer(INBUF)
_IN_ADDR = ctypes.addressof(_IN_ARRAY)
# Plaintext from one read fits: <= BUF_SIZE fed + one partial record left from before.
_OUTCAP = BUF_SIZE + 64 * 1024
_SSL_SENT_SHUTDOWN = 1


class GmError(Exception):
    """Base of the GM engine's own errors (TLS errors are tlsgate.tls.engine's)."""


class GmConfigError(GmError, ValueError):
    """A listener's GM settings cannot be used; ``key`` names the setting (under ssl_options)."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        self.message = message
        super().__init__(f"ssl_options.{key}: {message}")


class _Buffers(threading.local):
    """Per-thread output buffer: the gateway has one thread per worker; tests use several."""

    def __init__(self) -> None:
        self.out = ctypes.create_string_buffer(_OUTCAP)
        self.addr = ctypes.addressof(self.out)
        self.n = c_size_t(0)


_tls = _Buffers()


def _human(reason: str) -> str:
    return HUMAN_REASONS.get(reason, reason)


# ------------------------------------------------------------------------------------------
# Loading certificates and keys (each error names its key)
# ------------------------------------------------------------------------------------------
def _read_file(key: str, path: str) -> bytes:
    if not path:
        raise GmConfigError(key, "is required")
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise GmConfigError(key, f"{path}: no such file") from None
    except OSError as exc:
        raise GmConfigError(key, f"{path}: cannot read ({exc.strerror})") from None


def _pem_certs(lib: Tongsuo, key: str, path: str) -> list[int]:
    """All certificates in a PEM file, as X509* (caller frees)."""
    data = _read_file(key, path)
    bio = lib.BIO_new_mem_buf(data, len(data))
    certs: list[int] = []
    try:
        while True:
            x = lib.PEM_read_bio_X509(bio, None, None, None)
            if not x:
                break
            certs.append(x)
        lib.ERR_clear_error()  # the read that ended the loop leaves "no start line"
    finally:
        lib.BIO_free(bio)
    if not certs:
        raise GmConfigError(key, f"{path}: no PEM certificate in it")
    return certs


def _pem_key(lib: Tongsuo, key: str, path: str, password: bytes | None) -> int:
    data = _read_file(key, path)
    bio = lib.BIO_new_mem_buf(data, len(data))
    pw = ctypes.create_string_buffer(password or b"", len(password or b"") + 1)
    try:
        lib.ERR_clear_error()
        # With no callback, PEM_def_callback uses the user-data pointer as the password; an
        # empty one makes an encrypted key fail instead of prompting on the terminal.
        pkey = lib.PEM_read_bio_PrivateKey(bio, None, None, pw)
    finally:
        ctypes.memset(pw, 0, len(pw))
        lib.BIO_free(bio)
    if not pkey:
        reason = lib.last_reason("not a PEM private key")
        if "bad decrypt" in reason or "bad password" in reason:
            raise GmConfigError(key, f"{path}: cannot decrypt the key (wrong or missing "
                                     "ssl_options.password)")
        raise GmConfigError(key, f"{path}: cannot load the private key ({reason})")
    return int(pkey)


def _x509_der(lib: Tongsuo, x: int) -> bytes:
    out = c_void_p()
    n = int(lib.i2d_X509(x, byref(out)))
    if n <= 0 or not out.value:
        lib.ERR_clear_error()
        return b""
    try:
        return ctypes.string_at(out.value, n)
    finally:
        lib.CRYPTO_free(out.value, b"gm", 0)


def _parse_ders(ders: list[bytes]) -> list[x509.Certificate]:
    """cryptography parses SM2 certificates (names, dates, extensions), not their keys."""
    out = []
    for d in ders:
        with contextlib.suppress(ValueError):
            out.append(x509.load_der_x509_certificate(d))
    return out


def _is_sm2(lib: Tongsuo, pkey: int) -> bool:
    ec = lib.EVP_PKEY_get0_EC_KEY(pkey)
    if not ec:
        lib.ERR_clear_error()
        return False
    grp = lib.EC_KEY_get0_group(ec)
    return bool(grp) and int(lib.EC_GROUP_get_curve_name(grp)) == lib.nid("SM2")


def _key_mode_warning(key: str, path: str) -> str | None:
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if mode & (stat.S_IROTH | stat.S_IWOTH):
        return f"ssl_options.{key}: {path} is readable by every user; chmod 600 it"
    return None


class _Pair:
    """An SM2 certificate (plus chain) and its key, checked to belong together."""

    def __init__(self, lib: Tongsuo, cert_key: str, cert_path: str, key_key: str,
                 key_path: str, password: bytes | None) -> None:
        self.lib = lib
        self.certs = _pem_certs(lib, cert_key, cert_path)
        self.pkey = 0
        try:
            self.pkey = _pem_key(lib, key_key, key_path, password)
            if not _is_sm2(lib, self.pkey):
                raise GmConfigError(key_key, f"{key_path}: not an SM2 key (GM listeners need "
                                             "SM2 keys: `tlsgate certs init --sm2`)")
            pub = lib.X509_get0_pubkey(self.certs[0])
            if not pub or not _is_sm2(lib, pub):
                raise GmConfigError(cert_key, f"{cert_path}: the certificate's key is not SM2")
            if int(lib.X509_check_private_key(self.certs[0], self.pkey)) != 1:
                lib.ERR_clear_error()
                raise GmConfigError(key_key, f"{key_path} does not belong to the certificate "
                                             f"in {cert_key} ({cert_path})")
            self.ders = [_x509_der(lib, x) for x in self.certs]
        except BaseException:
            self.free()
            raise

    def free(self) -> None:
        for x in self.certs:
            self.lib.X509_free(x)
        self.certs = []
        if self.pkey:
            self.lib.EVP_PKEY_free(self.pkey)
            self.pkey = 0


def _split_ciphers(ciphers: Sequence[str], protocols: Sequence[str], verify: bool,
                   all_clients_have_certs: bool) -> tuple[str, str]:
    """(TLCP cipher list, TLS 1.3 ciphersuites) for Tongsuo.

    TLCP's ECDHE-SM2 needs the client's encryption certificate (GB/T 38636: ECDHE is mutual
    only), and Tongsuo 8.3 then verifies the client's chain whatever the verify mode: on a
    ``verify_none`` listener (no CA) every ECDHE handshake fails, and a server that prefers ECDHE
    fails clients that hold no certificate. So: no ECDHE without ``verify_peer``; ECC-SM2
    (static SM2 key transport) first unless every client must present certificates.
    """
    ecdhe = [c for c in TLCP_CIPHERS if c.startswith("ECDHE")]
    ecc = [c for c in TLCP_CIPHERS if c.startswith("ECC")]
    if not ciphers:
        order = ecc if not verify else ecdhe + ecc if all_clients_have_certs else ecc + ecdhe
        return ":".join(order), ":".join(TLS13_CIPHERS)
    tlcp, tls13 = [], []
    for c in ciphers:
        if c in TLCP_CIPHERS:
            tlcp.append(c)
        elif c in TLS13_CIPHERS:
            tls13.append(c)
        else:
            raise GmConfigError("ciphers", f"{c!r} is not a GM suite; use "
                                           f"{', '.join(TLCP_CIPHERS + TLS13_CIPHERS)}")
    if not verify and any(c in ecdhe for c in tlcp):
        raise GmConfigError("ciphers", "ECDHE-SM2 suites need client certificates (TLCP "
                                       "ECDHE is mutual): set verify = \"verify_peer\" and "
                                       "cacertfile, or use the ECC-SM2 suites")
    if "tlcp" in protocols and not tlcp:
        raise GmConfigError("ciphers", "protocols has \"tlcp\" but ciphers lists no TLCP suite "
                                       f"({', '.join(TLCP_CIPHERS)})")
    if "tlsv1.3" in protocols and not tls13:
        raise GmConfigError("ciphers", "protocols has \"tlsv1.3\" but ciphers lists no RFC 8998 "
                                       f"suite ({', '.join(TLS13_CIPHERS)})")
    return ":".join(tlcp), ":".join(tls13)


# ------------------------------------------------------------------------------------------
# Context
# ------------------------------------------------------------------------------------------
class GmServerContext:
    """Everything a GM listener's handshakes need, built once, immutable, swapped on reload.

    Holds up to two Tongsuo ``SSL_CTX``: one ``NTLS_server_method`` (TLCP: sign + enc pair) and
    one TLS 1.3-only context with the RFC 8998 suites in strict mode (sign pair only).
    """

    def __init__(self, lib: Tongsuo, ntls_ctx: int | None, tls13_ctx: int | None,
                 opts: GmSslOptions, warnings: tuple[str, ...], chain: list[x509.Certificate],
                 enc_chain: list[x509.Certificate]) -> None:
        self._lib = lib
        self._ntls = ntls_ctx
        self._tls13 = tls13_ctx
        #: The listener's settings (the gateway reads ``verify`` and ``handshake_timeout``).
        self.opts = opts
        self.verify_peer = opts.verify == "verify_peer"
        self.protocols = tuple(dict.fromkeys(opts.protocols))
        #: Problems that do not stop the listener (world-readable keys), for the log.
        self.warnings = warnings
        #: The signing certificate and its chain / the encryption certificate (cryptography
        #: objects: names, dates and extensions readable; SM2 keys are not).
        self.chain = chain
        self.enc_chain = enc_chain
        self.certfile = opts.sign_certfile

    @classmethod
    def build(cls, opts: GmSslOptions) -> GmServerContext:
        """Build from a listener's ``ssl_options``; :class:`GmConfigError` names a bad key,
        :class:`~tlsgate.tls.gm.GmUnavailableError` says the Tongsuo library is missing."""
        lib = load()
        lib.ERR_clear_error()
        protocols = tuple(dict.fromkeys(opts.protocols))
        verify = opts.verify == "verify_peer"
        tlcp_ciphers, tls13_ciphers = _split_ciphers(opts.ciphers, protocols, verify,
                                                     verify and opts.fail_if_no_peer_cert)
        password = opts.password.reveal().encode() if opts.password is not None else None
        warnings = tuple(w for w in (_key_mode_warning("sign_keyfile", opts.sign_keyfile),
                                     _key_mode_warning("enc_keyfile", opts.enc_keyfile))
                         if w)
        if verify:
            _read_file("cacertfile", opts.cacertfile)  # clear error before the library's
        sign = _Pair(lib, "sign_certfile", opts.sign_certfile, "sign_keyfile",
                     opts.sign_keyfile, password)
        chain = _parse_ders(sign.ders)
        enc_chain: list[x509.Certificate] = []
        enc: _Pair | None = None
        ntls = tls13 = None
        try:
            if "tlcp" in protocols:
                enc = _Pair(lib, "enc_certfile", opts.enc_certfile, "enc_keyfile",
                            opts.enc_keyfile, password)
                enc_chain = _parse_ders(enc.ders[:1])
                ntls = _new_ctx(lib, lib.NTLS_server_method(), opts, tlcp_ciphers, None)
                # Needed even on an NTLS_method context: without it Tongsuo runs the TLS state
                # machine ("state_machine:internal error"). With the method fixed to NTLS 1.1
                # it never reaches the socket peek that memory BIOs cannot serve.
                lib.SSL_CTX_enable_ntls(ntls)
                _use(lib, "sign_certfile", lib.SSL_CTX_use_sign_certificate(ntls, sign.certs[0]))
                _use(lib, "sign_keyfile", lib.SSL_CTX_use_sign_PrivateKey(ntls, sign.pkey))
                if len(sign.certs) == 1:  # now, while the sign certificate is the current one
                    _complete_chain(lib, ntls)
                _use(lib, "enc_certfile", lib.SSL_CTX_use_enc_certificate(ntls, enc.certs[0]))
                _use(lib, "enc_keyfile", lib.SSL_CTX_use_enc_PrivateKey(ntls, enc.pkey))
                for x in sign.certs[1:]:  # intermediates: sent after the sign and enc certs
                    lib.X509_up_ref(x)
                    if int(lib.SSL_CTX_ctrl(ntls, _lib.SSL_CTRL_EXTRA_CHAIN_CERT, 0, x)) != 1:
                        lib.X509_free(x)
                        raise GmConfigError("sign_certfile", "cannot add the chain: "
                                            f"{lib.last_reason('?')}")
            if "tlsv1.3" in protocols:
                tls13 = _new_ctx(lib, lib.TLS_server_method(), opts, None, tls13_ciphers)
                _use(lib, "sign_certfile", lib.SSL_CTX_use_certificate(tls13, sign.certs[0]))
                _use(lib, "sign_keyfile", lib.SSL_CTX_use_PrivateKey(tls13, sign.pkey))
                if len(sign.certs) == 1:
                    _complete_chain(lib, tls13)
                for x in sign.certs[1:]:
                    lib.X509_up_ref(x)
                    if int(lib.SSL_CTX_ctrl(tls13, _lib.SSL_CTRL_EXTRA_CHAIN_CERT, 0, x)) != 1:
                        lib.X509_free(x)
                        raise GmConfigError("sign_certfile", "cannot add the chain: "
                                            f"{lib.last_reason('?')}")
        except BaseException:
            for c in (ntls, tls13):
                if c:
                    lib.SSL_CTX_free(c)
            raise
        finally:
            sign.free()
            if enc is not None:
                enc.free()
        return cls(lib, ntls, tls13, opts, warnings, chain, enc_chain)

    def new_session(self, send: Callable[[bytes], Any]) -> GmSession:
        """A session for one client; ``send`` gets the ciphertext for it (transport.write)."""
        return GmSession(self, send)

    def all_chains(self) -> dict[str, list[x509.Certificate]]:
        """Like ServerContext.all_chains: the certificates this listener serves."""
        out = {"": self.chain}
        if self.enc_chain:
            out["enc"] = self.enc_chain
        return out

    def close(self) -> None:
        """Release the contexts now (sessions still open keep their own reference)."""
        for name in ("_ntls", "_tls13"):
            c = getattr(self, name, None)
            if c:
                self._lib.SSL_CTX_free(c)
                setattr(self, name, None)

    def __del__(self) -> None:
        self.close()


def build_gm_context(opts: GmSslOptions, key: str) -> GmServerContext:
    """Build a GM listener's context; ``key`` is its config path (``listeners.gm.<name>``).

    The GM twin of :func:`tlsgate.tls.context.build_server_context`: raises
    :class:`~tlsgate.tls.context.ContextError` with the full key of the bad setting, or with
    ``key`` itself when the Tongsuo library is unavailable.
    """
    try:
        return GmServerContext.build(opts)
    except GmConfigError as exc:
        raise ContextError([Problem(f"{key}.ssl_options.{exc.key}", exc.message)]) from None
    except GmUnavailableError as exc:
        raise ContextError([Problem(key, str(exc))]) from None


def _use(lib: Tongsuo, key: str, rc: int) -> None:
    if int(rc) != 1:
        raise GmConfigError(key, f"the library refused it: {lib.last_reason('unknown error')}")


def _complete_chain(lib: Tongsuo, ctx: int) -> None:
    """A sign certificate file with the leaf alone: build its chain from the verify store
    (cacertfile) once, now, instead of the library doing it -- with an SM2 verification of our
    own certificate -- in every handshake (its automatic chain; measured with
    benchmarks/gm_handshakes.py, mutual: TLS 1.3 ~2090 -> ~1730 µs, TLCP ~2550 -> ~2300 µs per
    handshake). Clients receive the same certificates (TLCP: sign, enc, then this chain). Call it
    after the verify store is loaded and while the sign certificate is the context's current
    one. If the library refuses, nothing changes (it keeps building per handshake)."""
    if int(lib.SSL_CTX_ctrl(ctx, _lib.SSL_CTRL_BUILD_CERT_CHAIN,
                            _lib.SSL_BUILD_CHAIN_KEEP_WHAT_IS_FOUND, None)) <= 0:
        lib.ERR_clear_error()


def _new_ctx(lib: Tongsuo, method: int, opts: GmSslOptions, cipher_list: str | None,
             ciphersuites: str | None) -> int:
    ctx = lib.SSL_CTX_new(method)
    if not ctx:
        raise GmConfigError("protocols", f"SSL_CTX_new failed: {lib.last_reason('?')}")
    try:
        lib.SSL_CTX_set_options(ctx, _lib.SSL_OP_NO_RENEGOTIATION
                                | _lib.SSL_OP_CIPHER_SERVER_PREFERENCE)
        lib.SSL_CTX_ctrl(ctx, _lib.SSL_CTRL_MODE, _lib.SSL_MODE_RELEASE_BUFFERS, None)
        sid = b"tlsgate-gm"
        lib.SSL_CTX_set_session_id_context(ctx, sid, len(sid))
        if (cipher_list is not None
                and int(lib.SSL_CTX_set_cipher_list(ctx, cipher_list.encode())) != 1):
            raise GmConfigError("ciphers", f"Tongsuo rejects {cipher_list!r}: "
                                           f"{lib.last_reason('?')}")
        if ciphersuites is not None:
            for ctl, value in ((_lib.SSL_CTRL_SET_MIN_PROTO_VERSION, _lib.TLS1_3_VERSION),
                               (_lib.SSL_CTRL_SET_MAX_PROTO_VERSION, _lib.TLS1_3_VERSION)):
                if int(lib.SSL_CTX_ctrl(ctx, ctl, value, None)) != 1:
                    raise GmConfigError("protocols", "cannot restrict to TLS 1.3")
            if int(lib.SSL_CTX_set_ciphersuites(ctx, ciphersuites.encode())) != 1:
                raise GmConfigError("ciphers", f"Tongsuo rejects {ciphersuites!r}: "
                                               f"{lib.last_reason('?')}")
            # RFC 8998 strict: SM4 suites only with an SM2 certificate, sm2sig_sm3, curveSM2.
            lib.SSL_CTX_enable_sm_tls13_strict(ctx)
            if int(lib.SSL_CTX_ctrl(ctx, _lib.SSL_CTRL_SET_GROUPS_LIST, 0, b"SM2")) != 1:
                raise GmConfigError("protocols", "this Tongsuo has no curveSM2 group")
        if opts.verify == "verify_peer":
            ca = opts.cacertfile.encode()
            if int(lib.SSL_CTX_load_verify_locations(ctx, ca, None)) != 1:
                raise GmConfigError("cacertfile", f"{opts.cacertfile}: no usable CA "
                                                  f"certificate ({lib.last_reason('?')})")
            names = lib.SSL_load_client_CA_file(ca)
            if names:
                lib.SSL_CTX_set_client_CA_list(ctx, names)
            lib.ERR_clear_error()
            mode = _lib.SSL_VERIFY_PEER
            if opts.fail_if_no_peer_cert:
                mode |= _lib.SSL_VERIFY_FAIL_IF_NO_PEER_CERT
            lib.SSL_CTX_set_verify(ctx, mode, None)
            lib.SSL_CTX_set_verify_depth(ctx, opts.depth)
        return int(ctx)
    except BaseException:
        lib.SSL_CTX_free(ctx)
        raise


# ------------------------------------------------------------------------------------------
# Session
# ------------------------------------------------------------------------------------------
class GmSession:
    """One client connection over memory BIOs, with the interface of
    :class:`tlsgate.tls.engine.ServerSession` so the gateway drives either the same way.

    Ciphertext for the client goes out through ``send`` (handshake messages, alerts, TLS 1.3
    KeyUpdate answers, close_notify); ``encrypt``/``encrypt_in`` return theirs. Errors are the
    engine's :class:`~tlsgate.tls.engine.HandshakeError` / :class:`~tlsgate.tls.engine.TlsError`,
    raised after the alert has been sent.
    """

    __slots__ = ("_ctx", "_done", "_lib", "_pending", "_rbio", "_ssl", "_wbio", "peer_closed",
                 "send")

    def __init__(self, ctx: GmServerContext, send: Callable[[bytes], Any]) -> None:
        self._ctx = ctx
        self._lib = ctx._lib
        self._ssl: int = 0
        self._rbio: int = 0
        self._wbio: int = 0
        self._pending = bytearray()
        self._done = False
        #: Sends ciphertext to the client (the client transport's ``write``).
        self.send = send
        #: The client sent close_notify.
        self.peer_closed = False

    # -------------------------------------------------------------- set-up
    def _start(self) -> bool:
        """Pick the context from the first record header; False while fewer than 3 bytes."""
        if len(self._pending) < 3:
            return False
        p = self._pending
        is_tlcp = p[0] == 0x16 and p[1] == 0x01 and p[2] == 0x01
        ctx = self._ctx
        sslctx = ctx._ntls if (is_tlcp and ctx._ntls) or not ctx._tls13 else ctx._tls13
        lib = self._lib
        ssl = lib.SSL_new(sslctx)
        if not ssl:
            raise HandshakeError(f"SSL_new failed: {lib.last_reason('out of memory')}")
        rbio = lib.BIO_new(lib.BIO_s_mem())
        wbio = lib.BIO_new(lib.BIO_s_mem())
        if not rbio or not wbio:
            for b in (rbio, wbio):
                if b:
                    lib.BIO_free(b)
            lib.SSL_free(ssl)
            raise HandshakeError("BIO_new failed")
        lib.SSL_set_bio(ssl, rbio, wbio)  # the SSL owns both BIOs now
        lib.SSL_set_accept_state(ssl)
        self._ssl, self._rbio, self._wbio = ssl, rbio, wbio
        data = bytes(p)
        self._pending = bytearray()
        lib.BIO_write(rbio, data, len(data))
        return True

    # -------------------------------------------------------------- input
    def feed_in(self, n: int) -> None:
        """Feed the first ``n`` bytes of :data:`tlsgate.tls.engine.INBUF` (from the client)."""
        if not n:
            return
        if self._ssl:
            self._lib.BIO_write(self._rbio, _IN_ADDR, n)
        else:
            self._pre_feed(INBUF[:n])

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Feed ciphertext from the client."""
        if not data:
            return
        if self._ssl:
            b = data if isinstance(data, bytes) else bytes(data)
            self._lib.BIO_write(self._rbio, b, len(b))
        else:
            self._pre_feed(data)

    def _pre_feed(self, data: bytes | bytearray | memoryview) -> None:
        self._pending += data
        if len(self._pending) > 1 << 20:
            raise HandshakeError("more than 1 MiB before a ClientHello header")

    # -------------------------------------------------------------- handshake
    def handshake(self) -> bool:
        """Advance the handshake; True when done. Output (incl. alerts) is sent through
        ``send``. Raises :class:`HandshakeError` with the reason on failure."""
        if self._done:
            return True
        if not self._ssl and not self._start():
            return False
        lib = self._lib
        lib.ERR_clear_error()
        rc = int(lib.SSL_do_handshake(self._ssl))
        if rc == 1:
            self._done = True
            self.flush()
            return True
        err = int(lib.SSL_get_error(self._ssl, rc))
        if err in (_lib.SSL_ERROR_WANT_READ, _lib.SSL_ERROR_WANT_WRITE):
            self.flush()
            return False
        reason = self._describe(err)
        self.flush()  # the alert Tongsuo queued
        raise HandshakeError(reason)

    def _describe(self, err: int) -> str:
        lib = self._lib
        reasons = lib.error_reasons()
        vr = int(lib.SSL_get_verify_result(self._ssl)) if self._ssl else _lib.X509_V_OK
        if vr != _lib.X509_V_OK and any("certificate verify failed" in r for r in reasons):
            why = (lib.X509_verify_cert_error_string(vr) or b"?").decode()
            return f"client certificate verify failed: {why}"
        if reasons:
            return _human(reasons[0])
        if err == _lib.SSL_ERROR_SYSCALL:
            return "client closed the connection mid-handshake"
        return f"TLS error {err}"

    def flush(self) -> None:
        """Send whatever the record layer has queued."""
        if not self._wbio:
            return
        lib, t = self._lib, _tls
        n = int(lib.BIO_read(self._wbio, t.addr, _OUTCAP))
        while n > 0:
            self.send(ctypes.string_at(t.addr, n))
            n = int(lib.BIO_read(self._wbio, t.addr, _OUTCAP))

    # -------------------------------------------------------------- after the handshake
    def read_plain(self, n: int = 0) -> bytes:
        """Feed ``INBUF[:n]`` (if any) and decrypt whatever is buffered; the pre-relay twin
        of :meth:`decrypt` (same interface as the pyOpenSSL engine's)."""
        return self.decrypt(n)

    def decrypt(self, n: int) -> bytes:
        """Feed ``INBUF[:n]`` and return all plaintext it completes (b"" if none).

        Sets :attr:`peer_closed` on close_notify; raises :class:`TlsError` on a fatal error
        (after sending the alert). Anything the record layer wants to send back is sent.
        """
        if not self._done:
            raise TlsError("TLS data before the handshake finished")
        lib, ssl, t = self._lib, self._ssl, _tls
        if n:
            lib.BIO_write(self._rbio, _IN_ADDR, n)
        total = 0
        chunks: list[bytes] = []
        lib.ERR_clear_error()
        while True:
            if int(lib.SSL_read_ex(ssl, t.addr + total, _OUTCAP - total, byref(t.n))) == 1:
                total += t.n.value
                if total == _OUTCAP:  # only after feed() of more than a socket read
                    chunks.append(ctypes.string_at(t.addr, total))
                    total = 0
                continue
            err = int(lib.SSL_get_error(ssl, 0))
            break
        if total:
            chunks.append(ctypes.string_at(t.addr, total))
        if err != _lib.SSL_ERROR_WANT_READ:
            if err == _lib.SSL_ERROR_ZERO_RETURN:
                self.peer_closed = True
            else:
                reason = self._describe(err)
                self.flush()
                raise TlsError(reason)
        self.flush()
        if not chunks:
            return b""
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def decrypt_out(self, n: int) -> int:
        """The relay's interface (see tlsgate.tls.engine): the plaintext is left in
        ``OUT_VIEW[:result]``. Tongsuo reads into its own buffers, so this is one copy more
        than the pyOpenSSL engine's; GM listeners are not the bulk path."""
        data = self.decrypt(n)
        OUT_VIEW[:len(data)] = data
        return len(data)

    def encrypt_out(self, n: int) -> int:
        """Ciphertext of ``INBUF[:n]`` left in ``OUT_VIEW[:result]``."""
        data = self.encrypt_in(n)
        OUT_VIEW[:len(data)] = data
        return len(data)

    def encrypt_in(self, n: int) -> bytes:
        """Encrypt ``INBUF[:n]`` (plaintext from the broker); returns the ciphertext."""
        return self._encrypt(_IN_ADDR, n)

    def encrypt(self, data: bytes | bytearray | memoryview) -> bytes:
        """Encrypt arbitrary plaintext (CONNACK refusals, buffered data)."""
        if not data:
            return b""
        b = data if isinstance(data, bytes) else bytes(data)
        return self._encrypt(b, len(b))

    def _encrypt(self, src: int | bytes, n: int) -> bytes:
        if not self._done:
            raise TlsError("TLS data before the handshake finished")
        lib, t = self._lib, _tls
        lib.ERR_clear_error()
        if int(lib.SSL_write_ex(self._ssl, src, n, byref(t.n))) != 1:
            raise TlsError("TLS write failed: " + ", ".join(lib.error_reasons() or ["closed"]))
        chunks = []
        o = int(lib.BIO_read(self._wbio, t.addr, _OUTCAP))
        while o > 0:
            chunks.append(ctypes.string_at(t.addr, o))
            o = int(lib.BIO_read(self._wbio, t.addr, _OUTCAP))
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def close_notify(self) -> None:
        """Queue and send our close_notify (idempotent; errors ignored: we're closing)."""
        if not self._ssl or not self._done:
            return
        lib = self._lib
        if not int(lib.SSL_get_shutdown(self._ssl)) & _SSL_SENT_SHUTDOWN:
            lib.SSL_shutdown(self._ssl)
            lib.ERR_clear_error()
            self.flush()

    def free(self) -> None:
        """Release the connection's memory now (also done when the session is collected)."""
        if self._ssl:
            self._lib.SSL_free(self._ssl)  # frees both BIOs
            self._ssl = self._rbio = self._wbio = 0

    def __del__(self) -> None:
        self.free()

    # -------------------------------------------------------------- what was established
    @property
    def handshake_done(self) -> bool:
        return self._done

    @property
    def version(self) -> str:
        """``"TLCP"`` or ``"TLSv1.3"`` (empty before the protocol is known)."""
        if not self._ssl:
            return ""
        v = (self._lib.SSL_get_version(self._ssl) or b"").decode()
        return VERSION_NAMES.get(v, v)

    @property
    def group(self) -> str | None:
        """Not reported for GM sessions: Tongsuo (OpenSSL 3.0 based) has no
        SSL_get0_group_name; the suite already says SM2 key exchange."""
        return None

    @property
    def cipher(self) -> str | None:
        if not self._ssl:
            return None
        c = self._lib.SSL_get_current_cipher(self._ssl)
        name = self._lib.SSL_CIPHER_get_name(c) if c else None
        return name.decode() if name else None

    @property
    def server_name(self) -> str | None:
        if not self._ssl:
            return None
        n = self._lib.SSL_get_servername(self._ssl, _lib.TLSEXT_NAMETYPE_host_name)
        return n.decode("ascii", "replace") if n else None

    @property
    def alpn(self) -> bytes | None:
        """Always None in practice: GM listeners have no ALPN setting and select none."""
        if not self._ssl:
            return None
        data = c_void_p()
        n = c_uint()
        self._lib.SSL_get0_alpn_selected(self._ssl, byref(data), byref(n))
        return ctypes.string_at(data.value, n.value) if data.value and n.value else None

    @property
    def session_reused(self) -> bool:
        return bool(self._ssl) and bool(self._lib.SSL_session_reused(self._ssl))

    def established(self) -> tuple[str, str | None, str | None, str | None, bool]:
        """(version, cipher, group, server name, resumed), as ServerSession.established."""
        return self.version, self.cipher, self.group, self.server_name, self.session_reused

    @property
    def peer_cert_der(self) -> bytes | None:
        """The client's verified certificate (for TLCP: its signing certificate), DER.

        None without one, and always None on a ``verify_none`` listener: an unverified
        certificate must never become an identity (peer_cert_as_username...).
        """
        if not self._ssl or not self._ctx.verify_peer or not self._done:
            return None
        lib = self._lib
        x = lib.SSL_get_peer_certificate(self._ssl)
        if not x:
            return None
        try:
            return _x509_der(lib, x) or None
        finally:
            lib.X509_free(x)

    def peer_certificate(self) -> x509.Certificate | None:
        """:attr:`peer_cert_der` as a cryptography certificate (names/extensions readable)."""
        der = self.peer_cert_der
        if der is None:
            return None
        certs = _parse_ders([der])
        return certs[0] if certs else None

    def peer_chain(self) -> list[x509.Certificate]:
        """The verified chain (leaf first) when the client sent a certificate."""
        if not self._ssl or not self._ctx.verify_peer or not self._done:
            return []
        lib = self._lib
        sk = lib.SSL_get0_verified_chain(self._ssl)
        if not sk:
            return []
        ders = [_x509_der(lib, lib.OPENSSL_sk_value(sk, i))
                for i in range(int(lib.OPENSSL_sk_num(sk)))]
        return _parse_ders([d for d in ders if d])
