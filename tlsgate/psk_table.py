"""The TLS-PSK identity table and the PSK file parser (``[psk_authentication]``, SPEC §5).

Pure code, no TLS and no I/O beyond reading the file: :mod:`tlsgate.tls.psk` asks the table for
a key during handshakes, the admin API lists and edits it, a reload replaces its contents, and
the cluster replicates it by observing :class:`PskChange` events.

File formats
------------
One ``identity<separator>secret`` per line; blank lines and lines whose first non-blank
character is ``#`` are skipped (so an identity cannot start with ``#``). A UTF-8 byte order mark
at the start of the file is ignored. The line is split at the *first* separator, so the secret
may contain the separator but the identity cannot.

``format = "emqx"`` — what EMQX's ``emqx_psk`` does when it imports ``init_file`` (read from its
source): ``binary:split(Line, Separator)`` at the first separator, then only a trailing ``\\n``
or ``\\r\\n`` is cut from the secret; nothing else is trimmed, and the secret's bytes are the key
as they stand (``mydevice1:c2VjcmV0`` means the 8-byte key ``c2VjcmV0``, not its base64
decoding). So ``dev1 : abc`` is identity ``"dev1 "`` with key ``" abc"`` in EMQX, and here too;
such lines are reported through the optional ``warnings`` list because they are nearly always
a mistake. Where EMQX is weak, tlsgate is stricter and says so: EMQX rejects blank lines and
imports ``#`` lines as identities, silently lets the last of two duplicate identities win, and
accepts empty identities; here those are comments, errors naming both lines, and errors.

``format = "hex"`` — mosquitto's ``psk_file``: ``identity:hexkey``. Blanks (spaces, tabs)
around the identity and the key are trimmed as mosquitto does; the key must be an even number
of hex digits (mosquitto's clients read an odd count as if a leading ``0`` were there; that
ambiguity is an error here rather than a guess).

Limits (checked for every entry, from the file, the API or the cluster): identity 1–128 bytes of
UTF-8 without NUL or line breaks, key 1–256 bytes. 128/256 are OpenSSL 1.1.1's
``PSK_MAX_IDENTITY_LEN``/``PSK_MAX_PSK_LEN``; OpenSSL 3 raised them to 256/512, but a device
linking 1.1.1 cannot use anything longer, and :mod:`tlsgate.tls.psk` relies on identities being
at most 128 bytes to tell them apart from TLS 1.3 session tickets.

No error message, log line or ``repr`` produced here contains a secret.
"""

from __future__ import annotations

import binascii
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

log = logging.getLogger("tlsgate.psk")

PskFormat = Literal["emqx", "hex"]

#: Longest identity accepted (bytes), see the module docstring.
MAX_IDENTITY_LEN = 128
#: Longest key accepted (bytes).
MAX_SECRET_LEN = 256

_BOM = b"\xef\xbb\xbf"
_HEX_DIGITS = b"0123456789abcdefABCDEF"


class PskError(ValueError):
    """An identity or secret that cannot be used (message never contains the secret)."""


class PskFileError(PskError):
    """A PSK file that cannot be loaded; ``path`` and ``line`` (1-based, 0 = whole file) say
    where. The message never contains a secret."""

    def __init__(self, path: str, line: int, reason: str) -> None:
        self.path = path
        self.line = line
        self.reason = reason
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {reason}")


def check_identity(identity: bytes) -> None:
    """Raise :class:`PskError` if ``identity`` cannot be a PSK identity."""
    if not identity:
        raise PskError("empty identity")
    if len(identity) > MAX_IDENTITY_LEN:
        raise PskError(f"identity is {len(identity)} bytes, at most {MAX_IDENTITY_LEN} "
                       "are allowed")
    if b"\x00" in identity or b"\n" in identity or b"\r" in identity:
        raise PskError("identity contains a NUL or line-break byte")
    try:
        identity.decode("utf-8")
    except UnicodeDecodeError:
        raise PskError("identity is not valid UTF-8") from None


def check_secret(secret: bytes) -> None:
    """Raise :class:`PskError` if ``secret`` cannot be a PSK (the message omits the secret)."""
    if not secret:
        raise PskError("empty secret")
    if len(secret) > MAX_SECRET_LEN:
        raise PskError(f"secret is {len(secret)} bytes, at most {MAX_SECRET_LEN} are allowed")


def decode_secret(text: bytes | str, fmt: PskFormat) -> bytes:
    """A secret as written in a file or an API request -> the key bytes.

    ``emqx``: the bytes themselves (a ``str`` is UTF-8 encoded); ``hex``: hex digits (blanks
    around them ignored). Raises :class:`PskError` without echoing the secret."""
    raw = text.encode("utf-8") if isinstance(text, str) else text
    if fmt == "emqx":
        secret = raw
    elif fmt == "hex":
        digits = raw.strip(b" \t")
        if digits.strip(_HEX_DIGITS):
            raise PskError("hex secret contains a character that is not a hex digit")
        if len(digits) % 2:
            raise PskError(f"hex secret has an odd number of digits ({len(digits)})")
        secret = binascii.unhexlify(digits)
    else:  # pragma: no cover - the config schema only allows the two
        raise PskError(f"unknown PSK format {fmt!r} (expected \"emqx\" or \"hex\")")
    check_secret(secret)
    return secret


def _identity_bytes(identity: str | bytes) -> bytes:
    return identity.encode("utf-8") if isinstance(identity, str) else identity


def printable_identity(identity: bytes, limit: int = 160) -> str:
    """An identity as it can safely go into a log line: UTF-8 where valid, ``\\xNN`` escapes
    for anything else and for control characters, cut to ``limit`` characters. Use it for
    identities that come off the wire (an unknown identity is attacker-chosen bytes)."""
    text = identity.decode("utf-8", "backslashreplace")
    out = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                  for c in text)
    return out if len(out) <= limit else out[:limit] + "..."


def parse_psk_text(data: bytes, *, path: str = "<psk>", separator: str = ":",
                   fmt: PskFormat = "emqx",
                   warnings: list[str] | None = None) -> dict[bytes, bytes]:
    """Parse the contents of a PSK file; see the module docstring for the rules.

    Returns ``{identity: key}``. Raises :class:`PskFileError` naming ``path`` and the line.
    Suspicious but valid lines (blanks around an ``emqx`` identity or secret) are described in
    ``warnings`` if a list is given."""
    if not separator:
        raise PskFileError(path, 0, "the separator is empty")
    sep = separator.encode("utf-8")
    if sep in (b"\n", b"\r"):
        raise PskFileError(path, 0, "the separator cannot be a line break")
    if data.startswith(_BOM):
        data = data[len(_BOM):]
    entries: dict[bytes, bytes] = {}
    first_line: dict[bytes, int] = {}
    for lineno, line in enumerate(data.split(b"\n"), start=1):
        # EMQX's trim_crlf: drop the line's "\r" (the "\n" went with split()).
        if line.endswith(b"\r"):
            line = line[:-1]
        stripped = line.strip(b" \t")
        if not stripped or stripped.startswith(b"#"):
            continue
        identity, found, rest = line.partition(sep)
        if not found:
            raise PskFileError(path, lineno, f"no {separator!r} separator; expected "
                                             f"identity{separator}secret")
        if fmt == "hex":
            identity = identity.strip(b" \t")
        elif warnings is not None:
            if identity != identity.strip(b" \t"):
                warnings.append(f"{path}:{lineno}: identity "
                                f"{printable_identity(identity)!r} has leading or trailing "
                                "blanks, which are part of the identity (format = \"emqx\")")
            if rest != rest.strip(b" \t"):
                warnings.append(f"{path}:{lineno}: the secret has leading or trailing blanks, "
                                "which are part of the key (format = \"emqx\")")
        try:
            check_identity(identity)
            secret = decode_secret(rest, fmt)
        except PskError as exc:
            raise PskFileError(path, lineno, str(exc)) from None
        if identity in entries:
            raise PskFileError(path, lineno, f"identity {printable_identity(identity)!r} is "
                                             f"already defined on line {first_line[identity]}")
        entries[identity] = secret
        first_line[identity] = lineno
    return entries


def parse_psk_file(path: str | Path, separator: str = ":", fmt: PskFormat = "emqx",
                   warnings: list[str] | None = None) -> dict[bytes, bytes]:
    """Read and parse a PSK file (``psk_authentication.init_file``).

    Raises :class:`PskFileError` for an unreadable file or a malformed line."""
    name = str(path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise PskFileError(name, 0, "file not found") from None
    except IsADirectoryError:
        raise PskFileError(name, 0, "is a directory, not a file") from None
    except OSError as exc:
        raise PskFileError(name, 0, f"cannot read: {exc.strerror or exc}") from None
    return parse_psk_text(data, path=name, separator=separator, fmt=fmt, warnings=warnings)


@dataclass(frozen=True)
class PskChange:
    """One change of a :class:`PskTable`, as its listeners see it. Identities only: a
    replicator reads the keys it needs with :meth:`PskTable.lookup`."""

    version: int
    added: frozenset[str]
    removed: frozenset[str]
    updated: frozenset[str]
    #: What caused it: "replace", "add", "remove", or "reload:<path>".
    reason: str

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.updated)


PskListener = Callable[[PskChange], None]
#: identity (bytes, or str = its UTF-8) -> key
PskEntries = Mapping[bytes, bytes] | Mapping[str, bytes] | Mapping[bytes | str, bytes]


@dataclass(frozen=True)
class PskSource:
    path: str
    separator: str = ":"
    fmt: PskFormat = "emqx"


class PskTable:
    """identity -> key, looked up in every PSK handshake.

    * :meth:`lookup` is a single dict lookup (O(1), no lock): it runs inside OpenSSL
      callbacks. Writers replace the dict wholesale (:meth:`replace_all`) or set/delete one
      item (:meth:`add`, :meth:`remove`); each of those is atomic for a concurrent reader.
    * Every change that alters the table bumps :attr:`version` and is announced to the
      listeners registered with :meth:`subscribe` (the cluster replicator, the admin API,
      metrics). A listener that raises is logged and does not stop the others.
    * Nothing here reveals a secret: :meth:`identities` lists names only, ``repr`` shows a
      count.
    """

    def __init__(self, entries: PskEntries | None = None, *,
                 source: PskSource | None = None) -> None:
        self._lock = threading.Lock()
        self._entries: dict[bytes, bytes] = {}
        self._listeners: list[PskListener] = []
        self._version = 0
        self.source = source
        if entries:
            self._entries = self._validated(entries)
            self._version = 1

    @classmethod
    def from_file(cls, path: str | Path, separator: str = ":", fmt: PskFormat = "emqx",
                  warnings: list[str] | None = None) -> PskTable:
        """Load ``path``; raises :class:`PskFileError`. The table remembers the file, so
        :meth:`reload_from_file` needs no arguments."""
        source = PskSource(str(path), separator, fmt)
        return cls(parse_psk_file(path, separator, fmt, warnings), source=source)

    # -- reads (hot path first) ----------------------------------------------------------
    def lookup(self, identity: bytes) -> bytes | None:
        """The key for ``identity`` or None."""
        return self._entries.get(identity)

    def identities(self) -> list[str]:
        """All identities, sorted; no secrets."""
        return sorted(i.decode("utf-8") for i in self._entries)

    def __contains__(self, identity: object) -> bool:
        if isinstance(identity, str):
            identity = identity.encode("utf-8")
        return identity in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def version(self) -> int:
        """Bumped by every change that alters the table (0 = never filled)."""
        return self._version

    def snapshot(self) -> dict[bytes, bytes]:
        """A copy of the whole table, secrets included — for a replicator's full sync only."""
        return dict(self._entries)

    def __repr__(self) -> str:
        src = f" from {self.source.path}" if self.source else ""
        return f"<PskTable {len(self._entries)} identities{src} version={self._version}>"

    # -- writes --------------------------------------------------------------------------
    def subscribe(self, listener: PskListener) -> Callable[[], None]:
        """Call ``listener(change)`` after every change; returns a function that unsubscribes."""
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return unsubscribe

    def replace_all(self, entries: PskEntries, *,
                    reason: str = "replace") -> PskChange:
        """Make the table exactly ``entries`` (identities not in it are removed). All entries
        are checked first; on a bad one :class:`PskError` is raised and nothing changes."""
        new = self._validated(entries)
        with self._lock:
            old = self._entries
            added = new.keys() - old.keys()
            removed = old.keys() - new.keys()
            updated = {i for i in new.keys() & old.keys() if new[i] != old[i]}
            if not (added or removed or updated):
                return PskChange(self._version, frozenset(), frozenset(), frozenset(), reason)
            self._entries = new
            change = self._bump(added, removed, updated, reason)
        self._announce(change)
        return change

    def add(self, identity: str | bytes, secret: bytes) -> PskChange:
        """Add ``identity`` or change its key. Raises :class:`PskError` for a bad entry."""
        ident = _identity_bytes(identity)
        check_identity(ident)
        check_secret(secret)
        with self._lock:
            old = self._entries.get(ident)
            if old == secret:
                return PskChange(self._version, frozenset(), frozenset(), frozenset(), "add")
            self._entries[ident] = bytes(secret)
            change = self._bump(set() if old is not None else {ident}, set(),
                                {ident} if old is not None else set(), "add")
        self._announce(change)
        return change

    def remove(self, identity: str | bytes) -> bool:
        """Remove ``identity``; False if it was not there. The next handshake with it fails;
        connections already up are not touched here (the gateway decides)."""
        ident = _identity_bytes(identity)
        with self._lock:
            if self._entries.pop(ident, None) is None:
                return False
            change = self._bump(set(), {ident}, set(), "remove")
        self._announce(change)
        return True

    def reload_from_file(self, path: str | Path | None = None, separator: str | None = None,
                         fmt: PskFormat | None = None,
                         warnings: list[str] | None = None) -> PskChange:
        """Re-read the file (by default the one the table was loaded from) and make the table
        exactly its contents: identities added to the file are added, identities gone from
        it are removed. A bad file raises :class:`PskFileError` and the table is unchanged."""
        src = self.source
        if path is None:
            if src is None:
                raise PskFileError("<psk>", 0, "this table was not loaded from a file; "
                                               "give the path to reload")
            path = src.path
        sep = separator if separator is not None else (src.separator if src else ":")
        form: PskFormat = fmt if fmt is not None else (src.fmt if src else "emqx")
        entries = parse_psk_file(path, sep, form, warnings)
        change = self.replace_all(entries, reason=f"reload:{path}")
        self.source = PskSource(str(path), sep, form)
        return change

    # -- internals -----------------------------------------------------------------------
    @staticmethod
    def _validated(entries: PskEntries) -> dict[bytes, bytes]:
        out: dict[bytes, bytes] = {}
        items: Iterable[tuple[bytes | str, bytes]] = entries.items()
        for identity, secret in items:
            ident = _identity_bytes(identity)
            try:
                check_identity(ident)
                check_secret(secret)
            except PskError as exc:
                raise PskError(f"identity {printable_identity(ident)!r}: {exc}") from None
            if ident in out:
                raise PskError(f"identity {printable_identity(ident)!r} appears twice")
            out[ident] = bytes(secret)
        return out

    def _bump(self, added: Iterable[bytes], removed: Iterable[bytes], updated: Iterable[bytes],
              reason: str) -> PskChange:
        self._version += 1

        def names(ids: Iterable[bytes]) -> frozenset[str]:
            return frozenset(i.decode("utf-8") for i in ids)

        return PskChange(self._version, names(added), names(removed), names(updated), reason)

    def _announce(self, change: PskChange) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(change)
            except Exception:
                log.exception("PSK table listener %r failed on change %d", listener,
                              change.version)
