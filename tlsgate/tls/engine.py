"""The TLS engine: OpenSSL over memory BIOs, with a fast path for the relay.

Why it looks like this (measured, see DESIGN.md): pyOpenSSL's ``Connection.recv`` costs about
three times what the same work costs through the cffi bindings it sits on — it raises an
exception to end every read loop, allocates a fresh buffer per call and copies per record. So:

* A session is created through pyOpenSSL (``SSL.Connection(ctx, None)`` makes the SSL object
  and its two memory BIOs, and keeps pyOpenSSL's callbacks — SNI, ALPN, OCSP, verify — working)
  when its context has such callbacks (:func:`needs_connection`); on a context without any (the
  plain one-way TLS listener) the same three objects are made directly (one call into the
  accelerator, ``tg_new_session``): pyOpenSSL's Connection costs a Python object, a weak
  reference in its reverse mapping and ~300 bytecodes per connection that nothing would use.
  Either way the raw ``SSL*``/``BIO*`` pointers are then driven directly through
  ``OpenSSL._util.lib``, checking return codes instead of raising.
* Every socket read of the process lands in one shared buffer (:data:`INBUF`, handed to
  asyncio's ``BufferedProtocol.get_buffer``); ciphertext is fed from there with one
  ``BIO_write``, and every record it completes is decrypted into one shared output buffer with
  ``SSL_read`` calls, then forwarded with one ``write``. The event loop is single-threaded and
  each callback finishes before the next read, so one pair of buffers serves all connections:
  no per-connection buffers (memory per idle connection matters as much as CPU).
* Output the record layer produces on its own (a TLS 1.3 KeyUpdate answer, session tickets,
  alerts) is drained from the write BIO after each read batch and sent back at once.

* The loops of one relay read (``BIO_write``, ``SSL_read`` per record, the KeyUpdate check,
  the write to the other socket; ``SSL_write`` + ``BIO_read`` + write) run in C when the
  optional accelerator ``tlsgate.tls._relayc`` is built (``relay_accel.c``): one call from
  Python per socket read instead of one per record (:meth:`ServerSession.decrypt_send` /
  :meth:`~ServerSession.encrypt_send`), which halves the CPU of a read that brings ten small
  messages. It calls the same OpenSSL functions (their addresses come from the cffi bindings),
  so behaviour is identical; without it (no C compiler at install, or
  ``TLSGATE_PURE_PYTHON_RELAY=1``) the relay uses :meth:`~ServerSession.decrypt_out` /
  :meth:`~ServerSession.encrypt_out`. :data:`ACCEL` says which one runs. The reads before the
  relay (handshake, CONNECT) are once per connection and always use the Python methods.

The pyOpenSSL internals used here (``Connection._ssl``, ``_into_ssl``, ``_from_ssl``) are
private API; :func:`self_check` verifies them at start-up so a pyOpenSSL change fails loudly
instead of misbehaving.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Any

from cryptography import x509
from OpenSSL import SSL
from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _lib

from . import unbound

BUF_SIZE = 256 * 1024
#: The shared receive buffer (every BufferedProtocol of the process reads into it).
INBUF = bytearray(BUF_SIZE)
IN_VIEW = memoryview(INBUF)
_IN = _ffi.from_buffer(INBUF)

# Plaintext from one read can't exceed the ciphertext fed (≤ BUF_SIZE) plus one partial record
# left in the BIO from the previous read (< 17 KiB), so this never fills up; the same holds for
# ciphertext produced from ≤ BUF_SIZE plaintext (≤ 16 records of overhead).
_OUTCAP = BUF_SIZE + 64 * 1024
_OUTBUF = bytearray(_OUTCAP)
_OUT = _ffi.from_buffer(_OUTBUF)
_OUT_MV = memoryview(_OUTBUF)

#: Scratch for what the record layer sends on its own while plaintext sits in the output
#: buffer (KeyUpdate answers, alerts) and for moving BIO contents.
_AUXCAP = 64 * 1024
_AUXBUF = bytearray(_AUXCAP)
_AUX = _ffi.from_buffer(_AUXBUF)
_AUX_MV = memoryview(_AUXBUF)
#: The shared output buffer as a memoryview: ``decrypt_out``/``encrypt_out`` leave their
#: result in ``OUT_VIEW[:n]`` for the caller to write without copying.
OUT_VIEW = _OUT_MV

_SSL_read = _lib.SSL_read
_SSL_write = _lib.SSL_write
_SSL_get_error = _lib.SSL_get_error
_BIO_write = _lib.BIO_write
_BIO_read = _lib.BIO_read
_WANT_READ = _lib.SSL_ERROR_WANT_READ
_WANT_WRITE = _lib.SSL_ERROR_WANT_WRITE
_ZERO_RETURN = _lib.SSL_ERROR_ZERO_RETURN
_WANT_LOOKUP = _lib.SSL_ERROR_WANT_X509_LOOKUP
_X509_V_OK = 0
_BIO_s_mem = _lib.BIO_s_mem()
#: Chunks larger than this make the connection's memory BIOs due for a swap (:func:`sweep_bios`).
_RECYCLE_AT = 16384
_TLS1_3 = _lib.TLS1_3_VERSION
_SSL_free = _lib.SSL_free
_MODE_AUTO_RETRY = _lib.SSL_MODE_AUTO_RETRY
_TLSEXT_NAMETYPE_host_name = _lib.TLSEXT_NAMETYPE_host_name
_VERSION_NAMES = {_lib.TLS1_3_VERSION: "TLSv1.3", _lib.TLS1_2_VERSION: "TLSv1.2",
                  _lib.TLS1_1_VERSION: "TLSv1.1", _lib.TLS1_VERSION: "TLSv1"}
#: Suite names by their SSL_CIPHER pointer (static data in OpenSSL).
_CIPHER_NAMES: dict[Any, str] = {}


class TlsError(Exception):
    """A fatal TLS error on a connection; ``reason`` is meant for the access log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class HandshakeError(TlsError):
    pass


def _err_reasons() -> list[str]:
    """Drain OpenSSL's error queue into short reason strings."""
    out = []
    while True:
        code = _lib.ERR_get_error()
        if not code:
            break
        r = _lib.ERR_reason_error_string(code)
        out.append(_ffi.string(r).decode("ascii", "replace") if r != _ffi.NULL else hex(code))
    return out


# OpenSSL reason -> what the operator reads. Keys are OpenSSL's reason strings.
HUMAN_REASONS = {
    "http request": "client sent plain HTTP, not TLS",
    "wrong version number": "client did not speak TLS (garbage or plain MQTT on the TLS port)",
    "packet length too long": "client did not speak TLS (garbage or plain MQTT on the TLS port)",
    "unsupported protocol": "client offered only TLS versions this listener does not allow",
    # an SSLv3 (or otherwise too old) ClientHello: OpenSSL 4 says this instead
    "version too low": "client offered only TLS versions this listener does not allow",
    "no shared cipher": "no cipher suite in common with the client",
    "peer did not return a certificate": "client sent no certificate (fail_if_no_peer_cert)",
    "certificate verify failed": "client certificate verify failed",
    "tlsv1 alert unknown ca": "client rejected our certificate: unknown CA",
    "sslv3 alert bad certificate": "client rejected our certificate: bad certificate",
    "sslv3 alert certificate expired": "client rejected our certificate: expired",
    "no renegotiation": "client attempted renegotiation (disabled)",
    "unexpected eof while reading": "client closed the connection mid-handshake",
    "decryption failed or bad record mac": "bad record MAC (corrupted or tampered data)",
    "bad record mac": "bad record MAC (corrupted or tampered data)",
}


#: pyOpenSSL Context attributes that hold a callback finding its Connection (through
#: ``Connection._reverse_mapping``) while a handshake runs.
_WRAPPED_CALLBACKS = ("_verify_helper", "_tlsext_servername_callback", "_alpn_select_helper",
                      "_ocsp_helper", "_info_callback", "_keylog_callback",
                      "_cookie_generate_helper", "_cookie_verify_helper")


def needs_connection(ctx: SSL.Context, required: bool = False) -> bool:
    """Whether sessions on ``ctx`` need pyOpenSSL's ``Connection``: its callbacks (SNI, ALPN,
    OCSP, a verify callback) and tlsgate's raw ones (TLS-PSK, the revocation guard) find the
    connection through it. Code that installs a raw callback of that kind calls this with
    ``required=True``; otherwise the answer comes from the context's pyOpenSSL callbacks and
    is kept on the context (decided at its first session: a context is complete by then)."""
    if required:
        ctx._tlsgate_wrap = True  # type: ignore[attr-defined]
        return True
    wrap = ctx.__dict__.get("_tlsgate_wrap")
    if wrap is None:
        wrap = any(getattr(ctx, a, None) is not None for a in _WRAPPED_CALLBACKS)
        ctx._tlsgate_wrap = wrap  # type: ignore[attr-defined]
    return bool(wrap)


class ServerSession:
    """One client's TLS state. Handshake-phase methods are plain; the relay uses
    :meth:`decrypt` / :meth:`encrypt` (one call per socket read)."""

    __slots__ = ("_rbio", "_ssl", "_wbio", "conn", "peer_closed", "send")

    def __init__(self, ctx: SSL.Context, send: Callable[[bytes], Any]) -> None:
        wrap = ctx.__dict__.get("_tlsgate_wrap")
        if wrap is None:
            wrap = needs_connection(ctx)
        if wrap:
            conn = SSL.Connection(ctx, None)
            conn.set_accept_state()
            self.conn: SSL.Connection | None = conn
            self._ssl = conn._ssl
            self._rbio = conn._into_ssl
            self._wbio = conn._from_ssl
        elif _tg_new_session is not None:
            # What SSL.Connection(ctx, None) + set_accept_state() do, minus the wrapper
            # (needs_connection says nothing would ask it anything), in one C call.
            self.conn = None
            pair = _PAIR
            raw = _tg_new_session(ctx._context, _MODE_AUTO_RETRY, pair)
            if not raw:
                raise TlsError("out of memory (SSL_new)")
            self._ssl = _ffi.gc(raw, _SSL_free)
            self._rbio = pair[0]
            self._wbio = pair[1]
        else:  # the same without the accelerator
            self.conn = None
            raw = _lib.SSL_new(ctx._context)
            if raw == _ffi.NULL:
                raise TlsError("out of memory (SSL_new)")
            self._ssl = ssl = _ffi.gc(raw, _SSL_free)
            _lib.SSL_set_mode(ssl, _MODE_AUTO_RETRY)
            _lib.SSL_set_accept_state(ssl)
            self._rbio = rbio = _lib.BIO_new(_BIO_s_mem)
            self._wbio = wbio = _lib.BIO_new(_BIO_s_mem)
            if rbio == _ffi.NULL or wbio == _ffi.NULL:
                raise TlsError("out of memory (BIO_new)")
            _lib.SSL_set_bio(ssl, rbio, wbio)
        #: Sends ciphertext to the client (the client transport's ``write``).
        self.send = send
        #: The client sent close_notify.
        self.peer_closed = False

    # -- handshake phase ---------------------------------------------------------------------
    def feed_in(self, n: int) -> None:
        """Feed the first ``n`` bytes of :data:`INBUF` (ciphertext from the client)."""
        _BIO_write(self._rbio, _IN, n)

    def feed(self, data: bytes) -> None:
        _BIO_write(self._rbio, data, len(data))

    def handshake(self) -> bool:
        """Advance the handshake; True once done. Output (incl. alerts) is sent through
        ``send``. Raises :class:`HandshakeError` with the reason on failure."""
        ssl = self._ssl
        r = _lib.SSL_do_handshake(ssl)
        if r == 1:
            # TLS 1.3: what the last step produced is only NewSessionTicket messages (our
            # Finished went out with the first flight). They stay queued and leave with the
            # first bytes we send anyway (the CONNACK): one write per connection less.
            # TLS 1.2: our ChangeCipherSpec + Finished, which the client waits for: send now.
            if _lib.SSL_version(ssl) != _TLS1_3:
                self.flush()
            self.recycle_bios()  # drop the handshake's buffer capacity (idle memory)
            return True
        err = _SSL_get_error(ssl, r)
        if err in (_WANT_READ, _WANT_WRITE, _WANT_LOOKUP):
            self.flush()
            return False
        reason = self._describe(err)
        self.flush()  # the alert OpenSSL queued
        raise HandshakeError(reason)

    def handshake_step(self) -> bool:
        """Like :meth:`handshake` but leaves the output queued (:meth:`take_output`), for a
        caller that may have to hold it back (deferred revocation verdicts). On failure the
        queued output is OpenSSL's alert."""
        ssl = self._ssl
        r = _lib.SSL_do_handshake(ssl)
        if r == 1:
            self.recycle_bios()  # queued output is kept
            return True
        err = _SSL_get_error(ssl, r)
        if err in (_WANT_READ, _WANT_WRITE, _WANT_LOOKUP):
            return False
        raise HandshakeError(self._describe(err))

    def take_output(self) -> bytes:
        """Everything the record layer has queued for the client (b"" if nothing)."""
        return self._drain(self._wbio)

    def _describe(self, err: int) -> str:
        reasons = _err_reasons()
        verify = _lib.SSL_get_verify_result(self._ssl)
        if verify != _X509_V_OK and any("certificate verify failed" in r for r in reasons):
            msg = _ffi.string(_lib.X509_verify_cert_error_string(verify)).decode()
            return f"client certificate verify failed: {msg}"
        if reasons:
            first = reasons[0]
            return HUMAN_REASONS.get(first, first)
        if err == _lib.SSL_ERROR_SYSCALL:
            return "client closed the connection mid-handshake"
        return f"TLS error {err}"

    def flush(self) -> None:
        """Send whatever the record layer has queued (through the scratch buffer: the output
        buffer may hold a result its caller has not written yet)."""
        data = self._drain(self._wbio)
        if data:
            self.send(data)

    def decrypt_out(self, n: int, reply: bool = True) -> int:
        """The relay's read: feed ``INBUF[:n]``, decrypt every record it completes into the
        shared output buffer and return the plaintext length: the plaintext is
        ``OUT_VIEW[:result]``, valid until the next engine call of any connection (the caller
        writes it out at once, without copying).

        Sets :attr:`peer_closed` on close_notify; raises :class:`TlsError` on a fatal error
        (after sending the alert). With ``reply`` (the relay), what the record layer wants to
        send back (a TLS 1.3 KeyUpdate answer) is sent now; without it (before the relay) it
        waits for our next write, like the session tickets.
        """
        ssl = self._ssl
        if n:
            _BIO_write(self._rbio, _IN, n)
        r = _SSL_read(ssl, _OUT, _OUTCAP)
        total = 0
        while r > 0:
            total += r
            r = _SSL_read(ssl, _OUT + total, _OUTCAP - total)
        err = _SSL_get_error(ssl, r)
        # what the record layer queued meanwhile (usually nothing: one call to find out)
        o = (_BIO_read(self._wbio, _AUX, _AUXCAP)
             if reply and err in (_WANT_READ, _ZERO_RETURN) else 0)
        if err != _WANT_READ or o > 0 or n > _RECYCLE_AT:
            self._after_read(err, o, n)
        return total

    def _after_read(self, err: int, reply_len: int, n: int) -> None:
        """The rare outcomes of a relay read (Python and C paths): close_notify, a
        fatal error (alert sent, :class:`TlsError` raised), an answer the record layer queued
        (``_AUX[:reply_len]``), a chunk large enough to make the BIOs due for a swap."""
        if err != _WANT_READ:
            if err == _ZERO_RETURN:
                self.peer_closed = True
            else:
                reason = self._describe(err)
                self.flush()
                raise TlsError(reason)
        if reply_len > 0:
            self.send(_AUX_MV[:reply_len].tobytes())
            self.flush()  # more than the scratch buffer held
        if n > _RECYCLE_AT:
            _BIG[self] = _sweep_gen

    def decrypt(self, n: int) -> bytes:
        """:meth:`decrypt_out` returning a copy of the plaintext (b"" if none)."""
        total = self.decrypt_out(n)
        return _OUT_MV[:total].tobytes() if total else b""

    def read_plain(self, n: int = 0) -> bytes:
        """Before the relay (CONNECT phase): :meth:`decrypt` that leaves what the record
        layer queued (session tickets) to go out with our next write."""
        total = self.decrypt_out(n, reply=False)
        return _OUT_MV[:total].tobytes() if total else b""

    def encrypt_out(self, n: int) -> int:
        """:meth:`encrypt_in` without the copy: the ciphertext is ``OUT_VIEW[:result]``."""
        if _SSL_write(self._ssl, _IN, n) != n:  # whole or nothing: partial writes are off
            raise TlsError("TLS write failed: " + ", ".join(_err_reasons() or ["short write"]))
        o = _BIO_read(self._wbio, _OUT, _OUTCAP)
        if n > _RECYCLE_AT:
            _BIG[self] = _sweep_gen
        return o if o > 0 else 0

    def decrypt_send(self, n: int, fd: int) -> int:
        """The relay's read in one C call (accelerator only): :meth:`decrypt_out`, then the
        plaintext is written to socket ``fd`` (``-1``: not written). Returns the plaintext
        length; how much of it the socket took is ``SENT[2]`` (the rest, ``OUT_VIEW[SENT[2]:
        result]``, is the caller's to queue)."""
        res = _RES
        total: int = _tg_decrypt_send(self._ssl, self._rbio, self._wbio, _IN, n, _OUT, _OUTCAP,
                                      _AUX, _AUXCAP, fd, res, _NEWRBIO)
        if res[0] != _WANT_READ or res[1] > 0 or n > _RECYCLE_AT:
            if res[3]:  # the C code read it in place and gave the SSL a new read BIO
                self._new_rbio()
                n = 0  # nothing grew: no BIO swap due
            self._after_read(res[0], res[1], n)
        return total

    def _new_rbio(self) -> None:
        rbio = _NEWRBIO[0]
        if not rbio:
            raise TlsError("out of memory (new read BIO)")
        self._rbio = rbio = _ffi.cast("BIO *", rbio)
        conn = self.conn
        if conn is not None:
            conn._into_ssl = rbio

    def encrypt_send(self, n: int, fd: int) -> int:
        """:meth:`encrypt_out`, then the records are written to socket ``fd`` (accelerator
        only; see :meth:`decrypt_send`)."""
        o: int = _tg_encrypt_send(self._ssl, self._wbio, _IN, n, _OUT, _OUTCAP, fd, _RES)
        if o < 0:
            raise TlsError("TLS write failed: " + ", ".join(_err_reasons() or ["short write"]))
        if n > _RECYCLE_AT:
            _BIG[self] = _sweep_gen
        return o

    def encrypt_in(self, n: int) -> bytes:
        """:meth:`encrypt_out` returning a copy of the ciphertext."""
        o = self.encrypt_out(n)
        return _OUT_MV[:o].tobytes() if o else b""

    def recycle_bios(self) -> None:
        """Give this connection new, empty memory BIOs (keeping any bytes still in them).

        A memory BIO never shrinks: it keeps the capacity of the largest chunk it ever held
        (measured: 68 KiB per BIO after one 64 KiB message). Without this, every connection
        that once carried a large message or a long certificate chain would hold that much
        for the rest of its life. Called after the handshake, and by :func:`sweep_bios` once a
        connection that carried chunks larger than ``_RECYCLE_AT`` has been quiet for a sweep
        interval: not after every large chunk, because a fresh BIO must grow again (realloc +
        copy) and OpenSSL wipes a BIO's whole buffer when it frees it -- measured, swapping
        after every 64 KiB message cost 9 % of the relay's CPU per byte."""
        ssl = self._ssl
        if _tg_recycle_bios is not None:
            pair = _PAIR
            if _tg_recycle_bios(ssl, self._rbio, self._wbio, pair) == 0:
                self._rbio = pair[0]
                self._wbio = pair[1]
                conn = self.conn
                if conn is not None:
                    conn._into_ssl = self._rbio
                    conn._from_ssl = self._wbio
            return  # out of memory: keep the old pair (it works, only larger)
        rest_in = self._drain(self._rbio)
        rest_out = self._drain(self._wbio)
        rbio = _lib.BIO_new(_BIO_s_mem)
        wbio = _lib.BIO_new(_BIO_s_mem)
        if rest_in:
            _BIO_write(rbio, rest_in, len(rest_in))
        if rest_out:
            _BIO_write(wbio, rest_out, len(rest_out))
        _lib.SSL_set_bio(ssl, rbio, wbio)  # frees the old pair
        self._rbio = rbio
        self._wbio = wbio
        conn = self.conn
        if conn is not None:  # keep pyOpenSSL's view consistent while it is still around
            conn._into_ssl = rbio
            conn._from_ssl = wbio

    def release_wrapper(self) -> None:
        """Let go of the pyOpenSSL Connection once nothing will ask it anything (the relay):
        ~1 KiB less per idle connection. The SSL object lives on: this session holds the
        same owning reference to it, and no pyOpenSSL callback runs after the handshake
        (renegotiation is off; KeyUpdate calls none)."""
        self.conn = None

    @staticmethod
    def _drain(bio: Any) -> bytes:
        """All bytes in ``bio``, read through the scratch buffer."""
        n = _BIO_read(bio, _AUX, _AUXCAP)
        if n <= 0:
            return b""
        if n < _AUXCAP:  # a memory BIO gives all it has: it is empty now (the usual case)
            return _AUX_MV[:n].tobytes()
        chunks = [_AUX_MV[:n].tobytes()]
        n = _BIO_read(bio, _AUX, _AUXCAP)
        while n > 0:
            chunks.append(_AUX_MV[:n].tobytes())
            n = _BIO_read(bio, _AUX, _AUXCAP)
        return b"".join(chunks)

    def encrypt(self, data: bytes) -> bytes:
        """Encrypt arbitrary plaintext (CONNACK refusals, buffered data)."""
        if not data:
            return b""
        if _SSL_write(self._ssl, data, len(data)) != len(data):
            raise TlsError("TLS write failed: " + ", ".join(_err_reasons() or ["partial write"]))
        return self._drain(self._wbio)

    def close_notify(self) -> None:
        """Queue and send our close_notify (idempotent; errors ignored: we're closing)."""
        if not (_lib.SSL_get_shutdown(self._ssl) & _lib.SSL_SENT_SHUTDOWN):
            _lib.SSL_shutdown(self._ssl)
            _lib.ERR_clear_error()
            self.flush()

    def new_ticket(self) -> bool:
        """Send the client a fresh TLS 1.3 session ticket now (a post-handshake
        NewSessionTicket, RFC 8446 §4.6.1; tlsgate.gateway.tickets decides when). False when
        there is nothing to do: TLS 1.2, a connection closing, the OpenSSL call unavailable,
        or OpenSSL refused (then nothing was sent)."""
        ssl = self._ssl
        if _lib.SSL_version(ssl) != _TLS1_3 or _lib.SSL_get_shutdown(ssl) \
                or not unbound.new_session_ticket(ssl):
            return False
        # The ticket is made and queued by the state machine; a memory BIO never blocks, so
        # one call finishes it.
        if _lib.SSL_do_handshake(ssl) != 1:
            _lib.ERR_clear_error()
            self.flush()  # whatever was queued (an alert) must still go out in order
            return False
        self.flush()
        return True

    # -- what the handshake established --------------------------------------------------------
    def established(self) -> tuple[str, str | None, str | None, str | None, bool]:
        """(version, cipher, group, server name, resumed) in one call: what the gate records
        of every finished handshake (the properties below, one at a time)."""
        ssl = self._ssl
        version = _VERSION_NAMES.get(_lib.SSL_version(ssl)) or self.version
        c = _lib.SSL_get_current_cipher(ssl)
        cipher = _CIPHER_NAMES.get(c) if c != _ffi.NULL else None
        if cipher is None and c != _ffi.NULL:
            cipher = self.cipher
        g = _lib.SSL_get0_group_name(ssl)
        n = _lib.SSL_get_servername(ssl, _TLSEXT_NAMETYPE_host_name)
        return (version, cipher,
                _ffi.string(g).decode("ascii", "replace") if g != _ffi.NULL else None,
                _ffi.string(n).decode("ascii", "replace") if n != _ffi.NULL else None,
                bool(_lib.SSL_session_reused(ssl)))

    @property
    def version(self) -> str:
        v = _lib.SSL_version(self._ssl)
        name = _VERSION_NAMES.get(v)
        if name is not None or self.conn is None:
            return name or f"0x{v:04x}"
        return str(self.conn.get_protocol_version_name())

    @property
    def cipher(self) -> str | None:
        # Suite names are cached by the SSL_CIPHER pointer (static data in OpenSSL): one cffi
        # call per connection instead of pyOpenSSL's three plus a string conversion.
        c = _lib.SSL_get_current_cipher(self._ssl)
        if c == _ffi.NULL:
            return None
        name = _CIPHER_NAMES.get(c)  # cffi pointers hash and compare by address
        if name is None:
            name = _CIPHER_NAMES[c] = _ffi.string(_lib.SSL_CIPHER_get_name(c)).decode()
        return name

    @property
    def group(self) -> str | None:
        """The key exchange group the handshake used (``X25519MLKEM768``, ``x25519``,
        ``secp256r1``...), None without one (plain PSK)."""
        g = _lib.SSL_get0_group_name(self._ssl)
        return _ffi.string(g).decode("ascii", "replace") if g != _ffi.NULL else None

    @property
    def server_name(self) -> str | None:
        n = _lib.SSL_get_servername(self._ssl, _TLSEXT_NAMETYPE_host_name)
        return _ffi.string(n).decode("ascii", "replace") if n != _ffi.NULL else None

    @property
    def alpn(self) -> bytes | None:
        if self.conn is None:
            return None
        a = self.conn.get_alpn_proto_negotiated()
        return bytes(a) if a else None

    @property
    def session_reused(self) -> bool:
        return bool(_lib.SSL_session_reused(self._ssl))

    @property
    def peer_cert_der(self) -> bytes | None:
        """The client certificate as DER (None: none sent), straight from OpenSSL: the gate
        parses the subject itself (tlsgate.tls.identity), so no certificate object is built
        per connection (benchmarks/mtls.sh: 808 -> 747 µs per mutual-TLS connection)."""
        x = _lib.SSL_get_peer_certificate(self._ssl)  # a new reference
        if x == _ffi.NULL:
            return None
        bio = _lib.BIO_new(_BIO_s_mem)
        try:
            if bio == _ffi.NULL or _lib.i2d_X509_bio(bio, x) != 1:
                _lib.ERR_clear_error()
                return None
            return self._drain(bio)
        finally:
            if bio != _ffi.NULL:
                _lib.BIO_free(bio)
            _lib.X509_free(x)

    def peer_chain(self) -> list[x509.Certificate]:
        """The verified chain (leaf first) when the client sent a certificate."""
        if self.conn is None:
            return []
        chain = self.conn.get_verified_chain(as_cryptography=True)
        return list(chain) if chain else []


# -- deferred BIO recycling ------------------------------------------------------------------------
#: Sessions that handled a chunk larger than ``_RECYCLE_AT``, with the sweep generation of the
#: latest one (a dict store per large chunk; nothing per small one).
_BIG: dict[ServerSession, int] = {}
_sweep_gen = 0


def sweep_bios() -> int:
    """Swap the memory BIOs of sessions that carried large chunks but none since the previous
    sweep (so a transfer in progress keeps its buffers, an idle connection gives them back).
    The event-loop side calls this periodically (every second); returns how many were swapped.
    A session closed meanwhile is only released here (its SSL object lives until then)."""
    global _sweep_gen
    gen = _sweep_gen
    swapped = 0
    if _BIG:
        for sess, last in list(_BIG.items()):
            if last < gen:
                del _BIG[sess]
                sess.recycle_bios()
                swapped += 1
    _sweep_gen = gen + 1
    return swapped


# -- the optional C accelerator -----------------------------------------------------------------
_tg_decrypt_send: Any = None
_tg_encrypt_send: Any = None
_RES: Any = None
_NEWRBIO: Any = None  # void *[1]: the read BIO after an in-place read (relay_accel.c)
_tg_new_session: Any = None
_tg_recycle_bios: Any = None
_PAIR: Any = None  # void *[2]: the BIOs of a new session or a swap (relay_accel.c)
#: The accelerator's result slots (``int[4]``; ``SENT[2]``: bytes the last ``*_send`` call
#: wrote to its socket), None without the accelerator.
SENT: Any = None
#: "c" when the relay uses :meth:`ServerSession.decrypt_send` / :meth:`~ServerSession.encrypt_send`
#: (the C accelerator), "python" when it uses the pure-Python methods.
ACCEL = "python"
#: Why the accelerator is not in use (for the start-up log), or "".
ACCEL_MISSING = ""


def _load_accel() -> str:
    """Import and initialise ``tlsgate.tls._relayc``; returns "" or why it is not used."""
    global _tg_decrypt_send, _tg_encrypt_send, _RES, SENT, _NEWRBIO, _tg_new_session, \
        _tg_recycle_bios, _PAIR
    if os.environ.get("TLSGATE_PURE_PYTHON_RELAY"):
        return "TLSGATE_PURE_PYTHON_RELAY is set"
    try:
        mod = importlib.import_module("tlsgate.tls._relayc")
    except ImportError:
        return "tlsgate.tls._relayc was not built at install (no C compiler or Python headers)"
    raw = getattr(_lib, "_original_lib", _lib)  # cryptography wraps the cffi Lib in a module
    try:
        fns = [_ffi.addressof(raw, name)
               for name in ("BIO_write", "BIO_read", "SSL_read", "SSL_write", "SSL_get_error")]
    except (AttributeError, TypeError, _ffi.error) as exc:
        return f"cannot take OpenSSL function addresses from the cffi bindings: {exc}"
    mod.lib.tg_init(*fns, _WANT_READ, _ZERO_RETURN)
    try:
        direct = [_ffi.addressof(raw, name) for name in (
            "BIO_new_mem_buf", "BIO_set_mem_eof_return", "SSL_set_bio", "BIO_new",
            "BIO_get_mem_data")]
    except (AttributeError, TypeError, _ffi.error) as exc:
        return f"cannot take OpenSSL function addresses from the cffi bindings: {exc}"
    # chunks above _RECYCLE_AT are read in place (see tg_decrypt in relay_accel.c)
    mod.lib.tg_init_direct(*direct, _BIO_s_mem, _RECYCLE_AT + 1)
    _tg_decrypt_send, _tg_encrypt_send = mod.lib.tg_decrypt_send, mod.lib.tg_encrypt_send
    _RES = SENT = mod.ffi.new("int[4]")
    _NEWRBIO = mod.ffi.new("void *[1]")
    try:
        session = [_ffi.addressof(raw, name) for name in (
            "SSL_new", "SSL_free", "SSL_set_accept_state", "SSL_set_mode", "BIO_free")]
    except (AttributeError, TypeError, _ffi.error):
        return ""  # the relay loops still run in C; sessions are made from Python
    mod.lib.tg_init_session(*session)
    _tg_new_session, _tg_recycle_bios = mod.lib.tg_new_session, mod.lib.tg_recycle_bios
    _PAIR = mod.ffi.new("void *[2]")
    return ""


def use_accel(on: bool) -> bool:
    """Whether relays created from now on use the C accelerator (if it is available); returns
    whether they do (tests run both)."""
    global ACCEL
    ACCEL = "c" if on and _tg_decrypt_send is not None else "python"
    return ACCEL == "c"


ACCEL_MISSING = _load_accel()
use_accel(True)


def self_check() -> None:
    """Fail loudly at start-up if the pyOpenSSL internals the fast path uses are gone."""
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    conn = SSL.Connection(ctx, None)
    for attr in ("_ssl", "_into_ssl", "_from_ssl"):
        if not hasattr(conn, attr):
            raise RuntimeError(f"pyOpenSSL has no Connection.{attr}: this pyOpenSSL version is "
                               "not supported by tlsgate's TLS engine (tlsgate/tls/engine.py)")
    for fn in ("SSL_read", "SSL_write", "BIO_read", "BIO_write", "SSL_do_handshake",
               "SSL_get_error", "SSL_shutdown", "SSL_get_shutdown"):
        if not hasattr(_lib, fn):
            raise RuntimeError(f"OpenSSL binding {fn} missing from pyOpenSSL's cffi module")
