"""The cluster wire protocol: frames and messages, with no I/O (sans-IO, like h11).

Everything nodes say to each other travels inside a mutual-TLS connection (``channel.py``) as a
stream of frames::

    frame   = header payload
    header  = magic "TG" (2 bytes) | frame version (1 byte, = 1) | reserved (1 byte, = 0)
              | payload length (4 bytes, big-endian, at most MAX_FRAME)
    payload = one UTF-8 JSON object: {"t": <message type>, ...fields of that type}

Why these choices:

* The **length prefix is checked before the payload is read**: a peer announcing a frame larger
  than ``MAX_FRAME`` is cut off after 8 bytes, so nothing a peer sends makes a node buffer more
  than one maximum frame. CRLs are the largest thing that travels (base64, in a ``res``).
* The **magic** catches a peer that is not speaking this protocol (an HTTP client, a port
  scanner that got through TLS) at the first frame, with a clear error instead of a parse of
  random bytes; the **frame version** lets a future framing change be refused cleanly.
* **JSON** payloads: nodes are the same program, the volume is small (heartbeats, state deltas,
  a few RPCs a second), and a human can read a capture. Binary values (PSK secrets, OCSP
  responses, CRLs) are hex or base64 inside it; secrets only ever travel inside the TLS channel.
* The **message set is versioned too**: ``hello`` carries the range of message-set versions a
  node speaks (``proto``: [min, max]); the link uses the highest common one and a node with no
  common version is refused. Version 1 is the set below. Within a version the set is closed: an
  unknown type or a malformed field is a :class:`ProtocolError`.

Garbage from a peer never raises anything but :class:`ProtocolError` (the fuzz tests in
``tests/unit/test_cluster_protocol.py`` hold the decoder to that); the channel then drops that
one connection, logs why, and the node carries on. A byte stream cannot be re-synchronised after
garbage, so there is no attempt to skip a bad frame.

Message set version 1 (``t`` and fields; all strings bounded, all numbers finite):

==========  ===================================================================================
``hello``   first message each side sends on a new link: ``cluster`` (name), ``node`` (name),
            ``boot`` (random id of this process run), ``proto`` [min, max], ``version``
            (software), ``listen_host``/``listen_port`` (where the sender accepts links; an
            unspecified host means "the address you see me from").
``refuse``  ``reason``: the sender refuses the link (cluster name differs, duplicate link...)
            and closes it.
``bye``     ``reason``: the sender is stopping (peers report it down at once).
``hb``      heartbeat: ``seq``, ``sent_at`` (sender's wall clock), ``stats`` (connections,
            workers, uptime, version...), ``members`` ([[name, address], ...] the sender knows
            of: how nodes learn each other from any seed), ``hashes`` ({namespace: digest hash}
            of the replicated state, for anti-entropy).
``digest``  ``ns``, ``versions`` {key: [ts, node]} (one chunk), ``last`` (the final chunk):
            the sender's versions of a namespace, so the receiver can send what is newer.
``entries`` ``ns``, ``entries`` [[key, value, ts, node], ...]: replicated state, either a delta
            (one local change) or a batch answering a digest. ``value`` null = removed.
``req``     ``id``, ``op``, ``args``: a request (fetch an OCSP response, query connections...).
``res``     ``id``, ``ok``, ``result`` or ``error``: the answer to a ``req``.
==========  ===================================================================================
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any, Final

MAGIC: Final = b"TG"
FRAME_VERSION: Final = 1
HEADER: Final = struct.Struct(">2sBBI")
HEADER_SIZE: Final = HEADER.size  # 8
#: Largest payload accepted or sent (a CRL in base64 must fit in a ``res``).
MAX_FRAME: Final = 8 * 1024 * 1024
#: Message-set versions this implementation speaks.
PROTO_MIN: Final = 1
PROTO_MAX: Final = 1

MAX_NAME = 255            # node and cluster names
MAX_TEXT = 4096           # reasons, error messages
MAX_KEY = 65536 * 2 + 64  # replication keys (a ban key holds an MQTT string of up to 64 KiB)
MAX_HOST = 255


class ProtocolError(Exception):
    """The peer sent something this protocol does not allow; the link must be closed."""


# ------------------------------------------------------------------------------------------
# field checks (every error names the message type and the field)
# ------------------------------------------------------------------------------------------
def _str(doc: dict[str, Any], t: str, name: str, limit: int, *, empty: bool = True) -> str:
    v = doc.get(name)
    if not isinstance(v, str):
        raise ProtocolError(f"{t}.{name} must be a string")
    if len(v) > limit:
        raise ProtocolError(f"{t}.{name} is longer than {limit} characters")
    if not empty and not v:
        raise ProtocolError(f"{t}.{name} must not be empty")
    return v


def _int(doc: dict[str, Any], t: str, name: str, lo: int, hi: int) -> int:
    v = doc.get(name)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise ProtocolError(f"{t}.{name} must be an integer from {lo} to {hi}")
    return v


def _num(v: Any, where: str) -> float:
    if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v):
        raise ProtocolError(f"{where} must be a finite number")
    return float(v)


def _bool(doc: dict[str, Any], t: str, name: str) -> bool:
    v = doc.get(name)
    if not isinstance(v, bool):
        raise ProtocolError(f"{t}.{name} must be true or false")
    return v


def _obj(doc: dict[str, Any], t: str, name: str) -> dict[str, Any]:
    v = doc.get(name)
    if not isinstance(v, dict):
        raise ProtocolError(f"{t}.{name} must be an object")
    return v


def _list(doc: dict[str, Any], t: str, name: str) -> list[Any]:
    v = doc.get(name)
    if not isinstance(v, list):
        raise ProtocolError(f"{t}.{name} must be a list")
    return v


def _version(v: Any, where: str) -> tuple[float, str]:
    if not isinstance(v, list) or len(v) != 2 or not isinstance(v[1], str) \
            or len(v[1]) > MAX_NAME:
        raise ProtocolError(f"{where} must be [timestamp, node name]")
    return _num(v[0], where), v[1]


# ------------------------------------------------------------------------------------------
# messages
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Hello:
    cluster: str
    node: str
    boot: str
    listen_host: str
    listen_port: int
    version: str = ""
    proto: tuple[int, int] = (PROTO_MIN, PROTO_MAX)
    T = "hello"

    def body(self) -> dict[str, Any]:
        return {"cluster": self.cluster, "node": self.node, "boot": self.boot,
                "proto": list(self.proto), "version": self.version,
                "listen_host": self.listen_host, "listen_port": self.listen_port}

    @classmethod
    def parse(cls, d: dict[str, Any]) -> Hello:
        t = cls.T
        proto = d.get("proto")
        if not (isinstance(proto, list) and len(proto) == 2
                and all(isinstance(p, int) and not isinstance(p, bool) and 0 < p < 65536
                        for p in proto) and proto[0] <= proto[1]):
            raise ProtocolError("hello.proto must be [min, max] message-set versions")
        return cls(cluster=_str(d, t, "cluster", MAX_NAME, empty=False),
                   node=_str(d, t, "node", MAX_NAME, empty=False),
                   boot=_str(d, t, "boot", 64, empty=False),
                   listen_host=_str(d, t, "listen_host", MAX_HOST),
                   listen_port=_int(d, t, "listen_port", 0, 65535),
                   version=_str(d, t, "version", 64), proto=(proto[0], proto[1]))


@dataclass(frozen=True)
class Refuse:
    reason: str
    T = "refuse"

    def body(self) -> dict[str, Any]:
        return {"reason": self.reason}

    @classmethod
    def parse(cls, d: dict[str, Any]) -> Refuse:
        return cls(_str(d, cls.T, "reason", MAX_TEXT))


@dataclass(frozen=True)
class Bye:
    reason: str
    T = "bye"

    def body(self) -> dict[str, Any]:
        return {"reason": self.reason}

    @classmethod
    def parse(cls, d: dict[str, Any]) -> Bye:
        return cls(_str(d, cls.T, "reason", MAX_TEXT))


@dataclass(frozen=True)
class Heartbeat:
    seq: int
    sent_at: float
    stats: dict[str, Any] = field(default_factory=dict)
    members: tuple[tuple[str, str], ...] = ()
    hashes: dict[str, str] = field(default_factory=dict)
    T = "hb"

    def body(self) -> dict[str, Any]:
        return {"seq": self.seq, "sent_at": self.sent_at, "stats": self.stats,
                "members": [list(m) for m in self.members], "hashes": self.hashes}

    @classmethod
    def parse(cls, d: dict[str, Any]) -> Heartbeat:
        t = cls.T
        members = []
        for m in _list(d, t, "members"):
            if not (isinstance(m, list) and len(m) == 2 and isinstance(m[0], str)
                    and isinstance(m[1], str) and 0 < len(m[0]) <= MAX_NAME
                    and len(m[1]) <= MAX_HOST + 8):
                raise ProtocolError("hb.members must be [[name, \"host:port\"], ...]")
            members.append((m[0], m[1]))
        hashes = _obj(d, t, "hashes")
        if not all(isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 128
                   for k, v in hashes.items()):
            raise ProtocolError("hb.hashes must map namespace names to hash strings")
        return cls(seq=_int(d, t, "seq", 0, 2 ** 62), sent_at=_num(d.get("sent_at"),
                                                                   "hb.sent_at"),
                   stats=_obj(d, t, "stats"), members=tuple(members), hashes=dict(hashes))


@dataclass(frozen=True)
class Digest:
    ns: str
    versions: dict[str, tuple[float, str]]
    last: bool = True
    T = "digest"

    def body(self) -> dict[str, Any]:
        return {"ns": self.ns, "versions": {k: list(v) for k, v in self.versions.items()},
                "last": self.last}

    @classmethod
    def parse(cls, d: dict[str, Any]) -> Digest:
        t = cls.T
        versions = {}
        for k, v in _obj(d, t, "versions").items():
            if len(k) > MAX_KEY:
                raise ProtocolError("digest key too long")
            versions[k] = _version(v, f"digest.versions[{k[:40]!r}]")
        return cls(ns=_str(d, t, "ns", 64, empty=False), versions=versions,
                   last=_bool(d, t, "last"))


@dataclass(frozen=True)
class Entry:
    """One replicated item: ``value`` None means removed (a tombstone)."""

    key: str
    value: Any
    ts: float
    node: str

    @property
    def version(self) -> tuple[float, str]:
        return self.ts, self.node


@dataclass(frozen=True)
class Entries:
    ns: str
    entries: tuple[Entry, ...]
    T = "entries"

    def body(self) -> dict[str, Any]:
        return {"ns": self.ns, "entries": [[e.key, e.value, e.ts, e.node] for e in self.entries]}

    @classmethod
    def parse(cls, d: dict[str, Any]) -> Entries:
        t = cls.T
        out = []
        for e in _list(d, t, "entries"):
            if not (isinstance(e, list) and len(e) == 4 and isinstance(e[0], str)
                    and isinstance(e[3], str) and len(e[0]) <= MAX_KEY
                    and len(e[3]) <= MAX_NAME):
                raise ProtocolError("entries.entries must be [[key, value, ts, node], ...]")
            out.append(Entry(e[0], e[1], _num(e[2], "entries ts"), e[3]))
        return cls(ns=_str(d, t, "ns", 64, empty=False), entries=tuple(out))


@dataclass(frozen=True)
class Request:
    id: int
    op: str
    args: dict[str, Any] = field(default_factory=dict)
    T = "req"

    def body(self) -> dict[str, Any]:
        return {"id": self.id, "op": self.op, "args": self.args}

    @classmethod
    def parse(cls, d: dict[str, Any]) -> Request:
        t = cls.T
        return cls(id=_int(d, t, "id", 0, 2 ** 62), op=_str(d, t, "op", 64, empty=False),
                   args=_obj(d, t, "args"))


@dataclass(frozen=True)
class Response:
    id: int
    ok: bool
    result: Any = None
    error: str = ""
    T = "res"

    def body(self) -> dict[str, Any]:
        if self.ok:
            return {"id": self.id, "ok": True, "result": self.result}
        return {"id": self.id, "ok": False, "error": self.error}

    @classmethod
    def parse(cls, d: dict[str, Any]) -> Response:
        t = cls.T
        ok = _bool(d, t, "ok")
        if ok:
            return cls(id=_int(d, t, "id", 0, 2 ** 62), ok=True, result=d.get("result"))
        return cls(id=_int(d, t, "id", 0, 2 ** 62), ok=False,
                   error=_str(d, t, "error", MAX_TEXT))


Message = Hello | Refuse | Bye | Heartbeat | Digest | Entries | Request | Response
MESSAGE_TYPES: Final[dict[str, Any]] = {
    c.T: c for c in (Hello, Refuse, Bye, Heartbeat, Digest, Entries, Request, Response)}


# ------------------------------------------------------------------------------------------
# encoding and decoding
# ------------------------------------------------------------------------------------------
def encode(msg: Message, max_frame: int = MAX_FRAME) -> bytes:
    """One frame. ``ValueError`` if the message is larger than ``max_frame`` (the sender must
    split it: state transfers are chunked, see ``replication.chunk_entries``)."""
    body = {"t": msg.T, **msg.body()}
    payload = json.dumps(body, separators=(",", ":"), ensure_ascii=False,
                         allow_nan=False).encode("utf-8")
    if len(payload) > max_frame:
        raise ValueError(f"a {msg.T} message of {len(payload)} bytes exceeds the "
                         f"{max_frame}-byte frame limit")
    return HEADER.pack(MAGIC, FRAME_VERSION, 0, len(payload)) + payload


def parse_payload(payload: bytes) -> Message:
    try:
        doc = json.loads(payload.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"a frame is not valid UTF-8 JSON ({type(exc).__name__})") from None
    if not isinstance(doc, dict):
        raise ProtocolError("a frame must hold a JSON object")
    t = doc.get("t")
    cls = MESSAGE_TYPES.get(t) if isinstance(t, str) else None
    if cls is None:
        shown = repr(t)[:40]
        raise ProtocolError(f"unknown message type {shown}")
    msg: Message = cls.parse(doc)
    return msg


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


class Decoder:
    """Feed bytes as they arrive, take whole messages out::

        dec.feed(data)
        while (msg := dec.next()) is not None:
            ...

    Raises :class:`ProtocolError` (and only that) on anything the protocol does not allow. The
    buffer holds at most one frame plus what was fed after it: callers feed socket reads of
    bounded size and drain :meth:`next` in between.
    """

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()
        self._need: int | None = None  # payload length of the frame being read
        self.failed: ProtocolError | None = None

    def feed(self, data: bytes) -> None:
        if self.failed is not None:
            raise self.failed
        self._buf += data

    def next(self) -> Message | None:
        if self.failed is not None:
            raise self.failed
        try:
            return self._next()
        except ProtocolError as exc:
            self.failed = exc
            self._buf.clear()
            raise

    def _next(self) -> Message | None:
        if self._need is None:
            if len(self._buf) < HEADER_SIZE:
                if self._buf and not MAGIC.startswith(bytes(self._buf[:2])):
                    raise ProtocolError("not a tlsgate cluster frame (bad magic)")
                return None
            magic, version, reserved, size = HEADER.unpack_from(self._buf)
            if magic != MAGIC:
                raise ProtocolError("not a tlsgate cluster frame (bad magic)")
            if version != FRAME_VERSION:
                raise ProtocolError(f"frame version {version} is not supported (this node "
                                    f"speaks {FRAME_VERSION})")
            if reserved != 0:
                raise ProtocolError("reserved header byte is not 0")
            if size > self.max_frame:
                raise ProtocolError(f"frame of {size} bytes exceeds the {self.max_frame}-byte "
                                    "limit")
            self._need = size
            del self._buf[:HEADER_SIZE]
        if len(self._buf) < self._need:
            return None
        payload = bytes(self._buf[:self._need])
        del self._buf[:self._need]
        self._need = None
        return parse_payload(payload)

    @property
    def buffered(self) -> int:
        return len(self._buf)


def negotiate(ours: tuple[int, int], theirs: tuple[int, int]) -> int | None:
    """The highest message-set version both speak, or None."""
    hi = min(ours[1], theirs[1])
    return hi if hi >= max(ours[0], theirs[0]) else None
