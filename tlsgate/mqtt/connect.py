"""Sans-IO codec for the MQTT CONNECT packet (MQTT 3.1 "MQIsdp", 3.1.1 and 5.0).

tlsgate reads exactly one MQTT packet per connection: the client's first. This module turns the
bytes received so far into either "need more" (``None``), a :class:`Connect`, or a
:class:`~tlsgate.mqtt.errors.ProtocolError` that says which CONNACK to answer with. It does no
I/O and keeps no state between calls, so the gateway can call :func:`parse_connect` again with
the grown buffer after every read (the cost is linear in the packet size, and a CONNECT is
parsed once per connection).

Layout (MQTT 3.1.1 §3.1, MQTT 5.0 §3.1)::

    fixed header   0x10, Remaining Length (Variable Byte Integer, 1-4 bytes)
    variable hdr   Protocol Name (UTF-8 string: "MQTT", or "MQIsdp" for 3.1)
                   Protocol Level (3 = 3.1, 4 = 3.1.1, 5 = 5.0; bit 7 = mosquitto bridge)
                   Connect Flags  (user name, password, will retain, will QoS x2, will,
                                   clean session/start, reserved)
                   Keep Alive (u16)
                   5.0 only: Properties (Variable Byte Integer length + properties)
    payload        Client Identifier (UTF-8 string)
                   if will: 5.0 only: Will Properties; Will Topic (UTF-8); Will Payload (binary)
                   if user name flag: User Name
                   if password flag: Password (binary)

Decisions (the "why"):

* Every field is kept as the exact bytes the client sent (``client_id``, ``username``, the MQTT 5
  property blocks *including* their length prefix). :func:`rewrite_connect` re-encodes from these
  fields, so every byte it does not replace is reproduced exactly; only the Remaining Length is
  re-encoded (minimally).
* Validation covers what makes the packet unparseable or what the specifications mark MUST
  (reserved flag, will flags, password without user name in 3.x, UTF-8 well-formedness and no
  U+0000 in UTF-8 strings, MQTT 5 property identifiers, types, duplicates and ranges). Policy
  (client id length, topic wildcards, enhanced authentication) is the broker's business: tlsgate
  forwards the packet and the broker answers in its own words.
* The user name is *not* checked for UTF-8: ``peer_cert_as_username = "crt"`` puts raw DER bytes
  there (as EMQX does), and the packet tlsgate produces must parse back with this same parser.
* The Remaining Length may be non-minimally encoded in 3.x (3.1.1 does not forbid it; mosquitto
  accepts it); MQTT 5 forbids it [MQTT-1.5.5-1], so it is malformed there.
* A mosquitto bridge with ``try_private true`` (its default) sets bit 7 of the protocol level
  (0x83/0x84). That is accepted and kept (``Connect.bridge``) so bridges work through tlsgate.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, TypeAlias

from .errors import ProtocolError, Refusal

__all__ = [
    "KEEP",
    "MAX_REMAINING_LENGTH",
    "Connect",
    "Property",
    "PropertyValue",
    "decode_properties",
    "encode_connect",
    "encode_properties",
    "encode_varint",
    "parse_connect",
    "rewrite_connect",
]

MAX_REMAINING_LENGTH: Final = 268_435_455  # four 7-bit groups
MAX_STRING: Final = 65_535

PACKET_TYPE_NAMES: Final[dict[int, str]] = {
    0: "reserved packet type 0", 1: "CONNECT", 2: "CONNACK", 3: "PUBLISH", 4: "PUBACK",
    5: "PUBREC", 6: "PUBREL", 7: "PUBCOMP", 8: "SUBSCRIBE", 9: "SUBACK", 10: "UNSUBSCRIBE",
    11: "UNSUBACK", 12: "PINGREQ", 13: "PINGRESP", 14: "DISCONNECT", 15: "AUTH",
}

# Connect Flags bits.
FLAG_USERNAME: Final = 0x80
FLAG_PASSWORD: Final = 0x40
FLAG_WILL_RETAIN: Final = 0x20
FLAG_WILL_QOS: Final = 0x18
FLAG_WILL: Final = 0x04
FLAG_CLEAN: Final = 0x02
FLAG_RESERVED: Final = 0x01

_VERSION_NAMES: Final = {3: "3.1", 4: "3.1.1", 5: "5.0"}

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")


# --------------------------------------------------------------------------------------------
# Variable Byte Integers
# --------------------------------------------------------------------------------------------
def encode_varint(value: int) -> bytes:
    """Encode a Variable Byte Integer (MQTT 5 §1.5.5, 3.1.1 §2.2.3), minimally."""
    if not 0 <= value <= MAX_REMAINING_LENGTH:
        raise ValueError(f"{value} does not fit a Variable Byte Integer "
                         f"(0..{MAX_REMAINING_LENGTH})")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(mv: memoryview, pos: int, end: int) -> tuple[int, int, bool] | None:
    """Decode a Variable Byte Integer at ``mv[pos:end]``.

    Returns (value, position after it, minimal?) or None if it continues past ``end``.
    Raises ValueError if it continues past four bytes.
    """
    value = 0
    shift = 0
    for i in range(4):
        if pos + i >= end:
            return None
        byte = mv[pos + i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            minimal = i == 0 or byte != 0
            return value, pos + i + 1, minimal
        shift += 7
    raise ValueError("a Variable Byte Integer continues past four bytes")


# --------------------------------------------------------------------------------------------
# MQTT 5 properties
# --------------------------------------------------------------------------------------------
PropertyValue: TypeAlias = int | str | bytes | tuple[str, str]
Property: TypeAlias = tuple[int, PropertyValue]


class _Kind(enum.Enum):
    BYTE = "byte"
    U16 = "two byte integer"
    U32 = "four byte integer"
    VARINT = "variable byte integer"
    STR = "UTF-8 string"
    BIN = "binary data"
    PAIR = "UTF-8 string pair"


# MQTT 5.0 §2.2.2.2: every property identifier, its name and its data type.
PROPERTIES: Final[dict[int, tuple[str, _Kind]]] = {
    0x01: ("Payload Format Indicator", _Kind.BYTE),
    0x02: ("Message Expiry Interval", _Kind.U32),
    0x03: ("Content Type", _Kind.STR),
    0x08: ("Response Topic", _Kind.STR),
    0x09: ("Correlation Data", _Kind.BIN),
    0x0B: ("Subscription Identifier", _Kind.VARINT),
    0x11: ("Session Expiry Interval", _Kind.U32),
    0x12: ("Assigned Client Identifier", _Kind.STR),
    0x13: ("Server Keep Alive", _Kind.U16),
    0x15: ("Authentication Method", _Kind.STR),
    0x16: ("Authentication Data", _Kind.BIN),
    0x17: ("Request Problem Information", _Kind.BYTE),
    0x18: ("Will Delay Interval", _Kind.U32),
    0x19: ("Request Response Information", _Kind.BYTE),
    0x1A: ("Response Information", _Kind.STR),
    0x1C: ("Server Reference", _Kind.STR),
    0x1F: ("Reason String", _Kind.STR),
    0x21: ("Receive Maximum", _Kind.U16),
    0x22: ("Topic Alias Maximum", _Kind.U16),
    0x23: ("Topic Alias", _Kind.U16),
    0x24: ("Maximum QoS", _Kind.BYTE),
    0x25: ("Retain Available", _Kind.BYTE),
    0x26: ("User Property", _Kind.PAIR),
    0x27: ("Maximum Packet Size", _Kind.U32),
    0x28: ("Wildcard Subscription Available", _Kind.BYTE),
    0x29: ("Subscription Identifier Available", _Kind.BYTE),
    0x2A: ("Shared Subscription Available", _Kind.BYTE),
}
PROP_SESSION_EXPIRY: Final = 0x11
PROP_RECEIVE_MAXIMUM: Final = 0x21
PROP_MAXIMUM_PACKET_SIZE: Final = 0x27
PROP_TOPIC_ALIAS_MAXIMUM: Final = 0x22
PROP_REQUEST_RESPONSE_INFORMATION: Final = 0x19
PROP_REQUEST_PROBLEM_INFORMATION: Final = 0x17
PROP_USER_PROPERTY: Final = 0x26
PROP_AUTHENTICATION_METHOD: Final = 0x15
PROP_AUTHENTICATION_DATA: Final = 0x16
PROP_REASON_STRING: Final = 0x1F

CONNECT_PROPERTIES: Final = frozenset({0x11, 0x21, 0x27, 0x22, 0x19, 0x17, 0x26, 0x15, 0x16})
WILL_PROPERTIES: Final = frozenset({0x18, 0x01, 0x02, 0x03, 0x08, 0x09, 0x26})
CONNACK_PROPERTIES: Final = frozenset({0x11, 0x21, 0x24, 0x25, 0x27, 0x12, 0x22, 0x1F, 0x26,
                                       0x28, 0x29, 0x2A, 0x13, 0x1A, 0x1C, 0x15, 0x16})
_REPEATABLE: Final = frozenset({0x26, 0x0B})
_BOOLEAN_BYTES: Final = frozenset({0x01, 0x17, 0x19, 0x24, 0x25, 0x28, 0x29, 0x2A})
_NON_ZERO: Final = frozenset({0x21, 0x27})  # Receive Maximum, Maximum Packet Size


def encode_properties(props: Iterable[Property]) -> bytes:
    """Encode MQTT 5 properties as a property block *with* its length prefix."""
    body = bytearray()
    for pid, value in props:
        try:
            _name, kind = PROPERTIES[pid]
        except KeyError:
            raise ValueError(f"unknown MQTT 5 property identifier 0x{pid:02X}") from None
        body += encode_varint(pid)
        if kind is _Kind.PAIR:
            if not (isinstance(value, tuple) and len(value) == 2):
                raise ValueError(f"property 0x{pid:02X} needs a (name, value) pair")
            body += _encode_string(value[0].encode()) + _encode_string(value[1].encode())
        elif kind is _Kind.STR:
            if not isinstance(value, str):
                raise ValueError(f"property 0x{pid:02X} needs a str")
            body += _encode_string(value.encode())
        elif kind is _Kind.BIN:
            if not isinstance(value, bytes):
                raise ValueError(f"property 0x{pid:02X} needs bytes")
            body += _encode_string(value)
        else:
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"property 0x{pid:02X} needs an int")
            if kind is _Kind.BYTE:
                body += bytes((value,))
            elif kind is _Kind.U16:
                body += _U16.pack(value)
            elif kind is _Kind.U32:
                body += _U32.pack(value)
            else:
                body += encode_varint(value)
    return encode_varint(len(body)) + bytes(body)


def decode_properties(block: bytes, *, allowed: frozenset[int] | None = None,
                      what: str = "properties") -> tuple[Property, ...]:
    """Decode a property block (with its length prefix, as kept in ``Connect.properties``).

    ``allowed`` restricts the identifiers (e.g. :data:`CONNECT_PROPERTIES`); None allows all.
    Raises ProtocolError (protocol level 5) on any encoding error or trailing bytes.
    """
    with memoryview(block) as mv:
        r = _Reader(mv, 0, len(mv), 5)
        props = r.properties(what, allowed if allowed is not None else frozenset(PROPERTIES))[1]
        r.expect_end(what)
        return props


def _encode_string(data: bytes) -> bytes:
    if len(data) > MAX_STRING:
        raise ValueError(f"{len(data)} bytes do not fit an MQTT string or binary field "
                         f"(at most {MAX_STRING})")
    return _U16.pack(len(data)) + data


# --------------------------------------------------------------------------------------------
# The reader: a cursor over one packet, every error names the field and the packet offset
# --------------------------------------------------------------------------------------------
def _utf8_problem(data: bytes) -> str | None:
    """Why ``data`` is not an MQTT UTF-8 string (well-formed UTF-8, no U+0000), or None."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"is not valid UTF-8 ({exc.reason} at byte {exc.start})"
    nul = data.find(b"\x00")
    if nul >= 0:
        return f"contains U+0000 at byte {nul}, which MQTT forbids in UTF-8 strings"
    return None


def _label(what: str, name: str, part: str) -> str:
    """A field's name for an error message, built only when there is an error."""
    return f"{what}: {name}{part}" if name else what


class _Reader:
    """A cursor over one packet. Positions are packet offsets, so every error can say where.

    Field names are passed as pieces (``what``, ``name``, ``part``) and joined only on error:
    the property loop runs for every MQTT 5 CONNECT, and formatting labels nobody reads was
    most of its cost.
    """

    __slots__ = ("end", "level", "mv", "pos")

    def __init__(self, mv: memoryview, pos: int, end: int, level: int | None) -> None:
        self.mv = mv
        self.pos = pos
        self.end = end
        self.level = level

    def fail(self, message: str, refusal: Refusal = Refusal.MALFORMED) -> ProtocolError:
        return ProtocolError(refusal, message, self.level)

    def need(self, n: int, what: str, name: str = "", part: str = "") -> int:
        start = self.pos
        if start + n > self.end:
            raise self.fail(f"{_label(what, name, part)} at offset {start} needs {n} byte(s) "
                            f"but only {self.end - start} remain")
        self.pos = start + n
        return start

    def u8(self, what: str, name: str = "") -> int:
        return self.mv[self.need(1, what, name)]

    def u16(self, what: str, name: str = "") -> int:
        return int(_U16.unpack_from(self.mv, self.need(2, what, name))[0])

    def u32(self, what: str, name: str = "") -> int:
        return int(_U32.unpack_from(self.mv, self.need(4, what, name))[0])

    def varint(self, what: str, name: str = "", part: str = "") -> int:
        try:
            got = _read_varint(self.mv, self.pos, self.end)
        except ValueError:
            raise self.fail(f"{_label(what, name, part)} at offset {self.pos} is a Variable "
                            f"Byte Integer longer than four bytes") from None
        if got is None:
            raise self.fail(f"{_label(what, name, part)} at offset {self.pos} runs past the "
                            f"end of the packet")
        value, pos, minimal = got
        if not minimal and self.level == 5:
            raise self.fail(f"{_label(what, name, part)} at offset {self.pos} is not minimally "
                            f"encoded [MQTT-1.5.5-1]")
        self.pos = pos
        return value

    def binary(self, what: str, name: str = "", part: str = "") -> bytes:
        start = self.pos
        mv = self.mv
        if start + 2 > self.end:
            raise self.fail(f"{_label(what, name, part)}: its 2-byte length at offset {start} "
                            f"runs past the end of the packet")
        n = (mv[start] << 8) | mv[start + 1]
        stop = start + 2 + n
        if stop > self.end:
            raise self.fail(f"{_label(what, name, part)}: length {n} at offset {start} runs "
                            f"past the end of the packet ({self.end - start - 2} byte(s) left)")
        self.pos = stop
        return bytes(mv[start + 2:stop])

    def utf8(self, what: str, name: str = "", part: str = "") -> bytes:
        start = self.pos
        data = self.binary(what, name, part)
        problem = _utf8_problem(data)
        if problem is not None:
            raise self.fail(f"{_label(what, name, part)} at offset {start} {problem}")
        return data

    def text(self, what: str, name: str = "", part: str = "") -> str:
        """A UTF-8 string field, decoded (one decode, for property values)."""
        start = self.pos
        data = self.binary(what, name, part)
        try:
            value = data.decode("utf-8")
        except UnicodeDecodeError:
            value = "\x00"  # let _utf8_problem describe it
        if "\x00" in value:
            raise self.fail(f"{_label(what, name, part)} at offset {start} "
                            f"{_utf8_problem(data)}")
        return value

    def expect_end(self, what: str) -> None:
        if self.pos != self.end:
            raise self.fail(f"{self.end - self.pos} unexpected byte(s) at offset {self.pos} "
                            f"after the last field of the {what}")

    def properties(self, what: str, allowed: frozenset[int]) -> tuple[bytes, tuple[Property, ...]]:
        """Read a property block; return (its raw bytes incl. length prefix, the properties)."""
        start = self.pos
        length = self.varint(what, "length")
        block_start = self.pos
        if block_start + length > self.end:
            raise self.fail(f"{what}: length {length} at offset {start} runs past the end of "
                            f"the packet ({self.end - block_start} byte(s) left)")
        outer_end, self.end = self.end, block_start + length
        props: list[Property] = []
        seen = 0  # bit set of the identifiers met so far (all defined ones are < 64)
        mv = self.mv
        try:
            while self.pos < self.end:
                at = self.pos
                # Identifiers are Variable Byte Integers, but every defined one is < 0x80, so a
                # first byte >= 0x80 is either undefined or not minimally encoded: malformed.
                pid = mv[at]
                spec = PROPERTIES.get(pid) if pid in allowed else None
                if spec is None:
                    known = PROPERTIES.get(pid)
                    name = f" ({known[0]})" if known else ""
                    raise self.fail(f"{what}: property identifier 0x{pid:02X}{name} at offset "
                                    f"{at} is not valid here")
                self.pos = at + 1
                name, kind = spec
                bit = 1 << pid
                if seen & bit and pid not in _REPEATABLE:
                    raise self.fail(f"{what}: {name} appears more than once (offset {at})",
                                    Refusal.PROTOCOL_ERROR)
                seen |= bit
                value: PropertyValue
                if kind is _Kind.U32:
                    value = self.u32(what, name)
                elif kind is _Kind.BYTE:
                    value = self.u8(what, name)
                    if value > 1 and pid in _BOOLEAN_BYTES:
                        raise self.fail(f"{what}: {name} is {value}, must be 0 or 1",
                                        Refusal.PROTOCOL_ERROR)
                elif kind is _Kind.U16:
                    value = self.u16(what, name)
                elif kind is _Kind.STR:
                    value = self.text(what, name)
                elif kind is _Kind.PAIR:
                    value = (self.text(what, name, " name"), self.text(what, name, " value"))
                elif kind is _Kind.BIN:
                    value = self.binary(what, name)
                else:
                    value = self.varint(what, name)
                if value == 0 and pid in _NON_ZERO:
                    raise self.fail(f"{what}: {name} is 0, which MQTT 5 forbids",
                                    Refusal.PROTOCOL_ERROR)
                props.append((pid, value))
        finally:
            self.end = outer_end
        if seen & (1 << PROP_AUTHENTICATION_DATA) and not seen & (1 << PROP_AUTHENTICATION_METHOD):
            raise self.fail(f"{what}: Authentication Data without an Authentication Method",
                            Refusal.PROTOCOL_ERROR)
        return bytes(mv[start:self.pos]), tuple(props)


# --------------------------------------------------------------------------------------------
# The CONNECT event
# --------------------------------------------------------------------------------------------
@dataclass(slots=True, repr=False)
class Connect:
    """One parsed CONNECT; every field holds the client's exact bytes. Not to be modified
    (:func:`rewrite_connect` makes a new packet); not frozen only because a frozen
    dataclass's ``__init__`` costs a ``object.__setattr__`` call per field, per connection.

    ``properties`` / ``will_properties``: the MQTT 5 property blocks including their length
    prefix (``b""`` for 3.x, and ``will_properties`` is ``b""`` when there is no will).
    ``will_topic`` / ``will_payload`` are None when the will flag is clear.
    ``raw`` is the whole packet as received. ``repr()`` never shows the password, the
    authentication data or the raw packet.
    """

    protocol_name: str
    protocol_level: int
    flags: int
    keepalive: int
    client_id: bytes
    username: bytes | None
    password: bytes | None
    will_topic: bytes | None
    will_payload: bytes | None
    properties: bytes
    will_properties: bytes
    bridge: bool
    raw: bytes

    @property
    def version(self) -> str:
        """"3.1", "3.1.1" or "5.0"."""
        return _VERSION_NAMES[self.protocol_level]

    @property
    def clean_start(self) -> bool:
        return bool(self.flags & FLAG_CLEAN)

    @property
    def will(self) -> bool:
        return bool(self.flags & FLAG_WILL)

    @property
    def will_qos(self) -> int:
        return (self.flags & FLAG_WILL_QOS) >> 3

    @property
    def will_retain(self) -> bool:
        return bool(self.flags & FLAG_WILL_RETAIN)

    def property_list(self) -> tuple[Property, ...]:
        """The decoded CONNECT properties (MQTT 5; empty for 3.x)."""
        if not self.properties:
            return ()
        return decode_properties(self.properties, allowed=CONNECT_PROPERTIES)

    def will_property_list(self) -> tuple[Property, ...]:
        if not self.will_properties:
            return ()
        return decode_properties(self.will_properties, allowed=WILL_PROPERTIES)

    @property
    def maximum_packet_size(self) -> int | None:
        """The client's Maximum Packet Size (MQTT 5), which limits the CONNACK tlsgate sends."""
        for pid, value in self.property_list():
            if pid == PROP_MAXIMUM_PACKET_SIZE and isinstance(value, int):
                return value
        return None

    def __repr__(self) -> str:
        will = (f", will_topic={self.will_topic!r}, will_qos={self.will_qos}, "
                f"will_retain={self.will_retain}, will_payload=<{len(self.will_payload or b'')} "
                f"bytes>") if self.will else ""
        password = "None" if self.password is None else f"<{len(self.password)} bytes>"
        props = (f", properties=<{len(self.properties)} bytes>" if self.properties else "")
        return (f"Connect(MQTT {self.version}{' bridge' if self.bridge else ''}, "
                f"client_id={self.client_id!r}, username={self.username!r}, "
                f"password={password}, clean_start={self.clean_start}, "
                f"keepalive={self.keepalive}{will}{props}, size={len(self.raw)})")


def _packet_hint(mv: memoryview) -> str:
    """A human guess at what a non-MQTT first packet is, from whatever bytes are at hand."""
    head = bytes(mv[:8])
    if head[:1] == b"\x16" and head[1:2] in (b"", b"\x03"):
        return ("; 0x16 starts a TLS handshake record: the client seems to speak TLS inside "
                "TLS (or TLS to a plain listener)")
    if head.startswith(b"PROXY") or head.startswith(b"\r\n\r\n\x00\r\nQ"):
        return "; this is a PROXY protocol header: is a load balancer sending PROXY headers?"
    for verb in (b"GET ", b"POST ", b"PUT ", b"HEAD ", b"OPTIONS ", b"CONNECT "):
        if head.startswith(verb):
            return "; this looks like HTTP (WebSocket clients need a WebSocket listener)"
    return ""


def _peek_level(mv: memoryview, pos: int) -> int | None:
    """The protocol level of a CONNECT whose variable header starts at ``pos``, if already
    in the buffer and valid; used to answer a too-large CONNECT in the client's version."""
    if len(mv) < pos + 2:
        return None
    n: int = _U16.unpack_from(mv, pos)[0]
    if len(mv) < pos + 3 + n:
        return None
    name = bytes(mv[pos + 2:pos + 2 + n])
    level = mv[pos + 2 + n] & 0x7F
    if (name == b"MQTT" and level in (4, 5)) or (name == b"MQIsdp" and level == 3):
        return level
    return None


def parse_connect(buf: bytes | bytearray | memoryview,
                  max_size: int) -> tuple[Connect, int] | None:
    """Parse the client's first packet, which must be a CONNECT.

    Returns None when ``buf`` does not yet hold the whole packet, else ``(connect, consumed)``;
    bytes after ``consumed`` are the client's next packets and belong to the relay.
    ``max_size`` bounds the whole packet (fixed header included); a larger one is refused as
    soon as its Remaining Length is known, without waiting for its bytes.
    Raises :class:`ProtocolError` on anything else. ``buf`` is not kept or modified, and no view
    of it outlives the call (a bytearray can be extended afterwards).
    """
    with memoryview(buf) as mv:
        return _parse(mv, max_size)


def _parse(mv: memoryview, max_size: int) -> tuple[Connect, int] | None:
    n = len(mv)
    if n == 0:
        return None
    first = mv[0]
    if first != 0x10:
        ptype = first >> 4
        if ptype != 1:
            raise ProtocolError(
                Refusal.PROTOCOL_ERROR,
                f"first packet is {PACKET_TYPE_NAMES[ptype]} (first byte 0x{first:02X}), "
                f"but MQTT requires CONNECT first{_packet_hint(mv)}")
        raise ProtocolError(
            Refusal.MALFORMED,
            f"CONNECT fixed header has reserved flags 0b{first & 0x0F:04b} set (first byte "
            f"0x{first:02X}), they must be 0000 [MQTT-2.2.2-2]{_packet_hint(mv)}")
    if n >= 2 and mv[1] < 0x80:  # a one-byte Remaining Length (a CONNECT under 130 bytes)
        total = 2 + mv[1]
        if total <= max_size:
            if n < total:
                return None
            fast = _parse_311(mv, 2, total)
            return (fast or _parse_body(mv, 2, total, True)), total
    try:
        got = _read_varint(mv, 1, n)
    except ValueError:
        raise ProtocolError(Refusal.MALFORMED, "CONNECT Remaining Length is longer than "
                            "four bytes (first five bytes all have the continuation bit)",
                            None) from None
    if got is None:
        return None
    remaining, header_len, rl_minimal = got
    total = header_len + remaining
    if total > max_size:
        raise ProtocolError(
            Refusal.PACKET_TOO_LARGE,
            f"CONNECT is {total} bytes (Remaining Length {remaining}), larger than the "
            f"{max_size} bytes allowed (mqtt.max_connect_size)",
            _peek_level(mv, header_len))
    if n < total:
        return None
    if header_len <= 3 and rl_minimal:
        fast = _parse_311(mv, header_len, total)
        if fast is not None:
            return fast, total
    return _parse_body(mv, header_len, total, rl_minimal), total


_HEADER_311 = b"\x00\x04MQTT\x04"


def _parse_311(mv: memoryview, start: int, total: int) -> Connect | None:
    """The usual CONNECT -- MQTT 3.1.1, no will, an ASCII client identifier -- in straight-line
    code (a quarter of the full reader's bytecodes); None for anything else, which the full
    reader then parses and words the errors of. tests/unit/test_mqtt_connect.py holds its
    result to the full reader's on the fuzz corpus and on generated packets."""
    pos = start + 12  # after name, level, flags, keep alive and the client id's length
    if pos > total or mv[start:start + 7] != _HEADER_311:
        return None
    flags = mv[start + 7]
    # no reserved bit, will, will QoS or will retain; a password only with a user name
    if flags & 0x3D or (flags & 0x40 and not flags & 0x80):
        return None
    stop = pos + ((mv[pos - 2] << 8) | mv[pos - 1])
    if stop > total:
        return None
    client_id = bytes(mv[pos:stop])
    if not client_id.isascii() or b"\x00" in client_id:
        return None
    # user name, then password: the same four steps twice, written out (a loop or a helper
    # would cost more than the rest of this function's per-field work)
    username = password = None
    if flags & 0x80:
        pos = stop + 2
        if pos > total:
            return None
        stop = pos + ((mv[pos - 2] << 8) | mv[pos - 1])
        if stop > total:
            return None
        username = bytes(mv[pos:stop])
    if flags & 0x40:
        pos = stop + 2
        if pos > total:
            return None
        stop = pos + ((mv[pos - 2] << 8) | mv[pos - 1])
        if stop > total:
            return None
        password = bytes(mv[pos:stop])
    if stop != total:
        return None
    return Connect("MQTT", 4, flags, (mv[start + 8] << 8) | mv[start + 9], client_id, username,
                   password, None, None, b"", b"", False, bytes(mv[:total]))


def _parse_body(mv: memoryview, start: int, total: int, rl_minimal: bool) -> Connect:
    r = _Reader(mv, start, total, None)
    name = r.binary("protocol name")
    if name == b"MQTT":
        levels: tuple[int, ...] = (4, 5)
    elif name == b"MQIsdp":
        levels = (3,)
    else:
        shown = name[:32]
        raise ProtocolError(Refusal.PROTOCOL_ERROR,
                            f"protocol name is {shown!r}, expected 'MQTT' (MQTT 3.1.1 and 5.0) "
                            f"or 'MQIsdp' (MQTT 3.1)")
    level_byte = r.u8("protocol level")
    level = level_byte & 0x7F
    if level not in levels:
        raise ProtocolError(
            Refusal.UNSUPPORTED_VERSION,
            f"protocol level {level} with protocol name {name.decode()!r} is not supported "
            f"(supported: 'MQIsdp' level 3 = MQTT 3.1, 'MQTT' level 4 = 3.1.1, 'MQTT' level 5 "
            f"= 5.0)", 4)
    r.level = level
    if level == 5 and not rl_minimal:
        raise r.fail("CONNECT Remaining Length is not minimally encoded [MQTT-1.5.5-1]")
    flags = r.u8("connect flags")
    if flags & FLAG_RESERVED:
        raise r.fail(f"connect flags 0x{flags:02X} have the reserved bit 0 set [MQTT-3.1.2-3]")
    will = bool(flags & FLAG_WILL)
    will_qos = (flags & FLAG_WILL_QOS) >> 3
    if will_qos == 3:
        raise r.fail(f"connect flags 0x{flags:02X} ask for will QoS 3 [MQTT-3.1.2-14]")
    if not will and (will_qos or flags & FLAG_WILL_RETAIN):
        raise r.fail(f"connect flags 0x{flags:02X} set will QoS/retain without the will flag "
                     f"[MQTT-3.1.2-11, MQTT-3.1.2-13]")
    if level < 5 and flags & FLAG_PASSWORD and not flags & FLAG_USERNAME:
        raise r.fail(f"connect flags 0x{flags:02X} announce a password without a user name, "
                     f"which MQTT {_VERSION_NAMES[level]} forbids [MQTT-3.1.2-22]")
    keepalive = r.u16("keep alive")
    properties = b""
    if level == 5:
        properties = r.properties("CONNECT properties", CONNECT_PROPERTIES)[0]
    client_id = r.utf8("client identifier")
    will_properties = b""
    will_topic: bytes | None = None
    will_payload: bytes | None = None
    if will:
        if level == 5:
            will_properties = r.properties("will properties", WILL_PROPERTIES)[0]
        will_topic = r.utf8("will topic")
        will_payload = r.binary("will payload")
    username = r.binary("user name") if flags & FLAG_USERNAME else None
    password = r.binary("password") if flags & FLAG_PASSWORD else None
    r.expect_end("CONNECT")
    return Connect(
        protocol_name=name.decode(), protocol_level=level, flags=flags, keepalive=keepalive,
        client_id=client_id, username=username, password=password, will_topic=will_topic,
        will_payload=will_payload, properties=properties, will_properties=will_properties,
        bridge=bool(level_byte & 0x80), raw=bytes(mv[:total]))


# --------------------------------------------------------------------------------------------
# Encoding and rewriting
# --------------------------------------------------------------------------------------------
class _Keep(enum.Enum):
    KEEP = "KEEP"

    def __repr__(self) -> str:
        return "KEEP"


KEEP: Final = _Keep.KEEP
"""Sentinel for :func:`rewrite_connect`: leave this field as the client sent it."""


def _encode(*, name: bytes, level_byte: int, flags: int, keepalive: int, properties: bytes,
            client_id: bytes, will_properties: bytes, will_topic: bytes | None,
            will_payload: bytes | None, username: bytes | None,
            password: bytes | None) -> bytes:
    parts = [_encode_string(name), bytes((level_byte, flags)), _U16.pack(keepalive), properties,
             _encode_string(client_id)]
    if will_topic is not None:
        parts += [will_properties, _encode_string(will_topic), _encode_string(will_payload or b"")]
    if username is not None:
        parts.append(_encode_string(username))
    if password is not None:
        parts.append(_encode_string(password))
    body = b"".join(parts)
    if len(body) > MAX_REMAINING_LENGTH:
        raise ValueError(f"CONNECT body of {len(body)} bytes exceeds MQTT's maximum Remaining "
                         f"Length {MAX_REMAINING_LENGTH}")
    return b"\x10" + encode_varint(len(body)) + body


def encode_connect(*, protocol_level: int = 4, client_id: bytes = b"", keepalive: int = 60,
                   clean_start: bool = True, username: bytes | None = None,
                   password: bytes | None = None, will_topic: bytes | None = None,
                   will_payload: bytes = b"", will_qos: int = 0, will_retain: bool = False,
                   properties: bytes | Sequence[Property] | None = None,
                   will_properties: bytes | Sequence[Property] | None = None,
                   protocol_name: str | None = None, bridge: bool = False) -> bytes:
    """Build a CONNECT (for tests, fuzzing and tools). A will is present iff ``will_topic``.

    ``properties`` / ``will_properties`` (MQTT 5 only): a raw block with its length prefix, a
    sequence of ``(identifier, value)`` pairs, or None for an empty block. The builder encodes
    what it is given without checking MQTT's rules (so tests can build invalid packets); it raises
    ValueError only for what cannot be encoded at all.
    """
    if protocol_name is None:
        protocol_name = "MQIsdp" if protocol_level == 3 else "MQTT"
    if not 0 <= protocol_level <= 0x7F:
        raise ValueError(f"protocol level {protocol_level} does not fit 7 bits")
    if not 0 <= keepalive <= 0xFFFF:
        raise ValueError(f"keep alive {keepalive} does not fit 16 bits")
    if not 0 <= will_qos <= 3:
        raise ValueError(f"will QoS {will_qos} does not fit 2 bits")

    def block(value: bytes | Sequence[Property] | None, what: str) -> bytes:
        if protocol_level != 5:
            if value:
                raise ValueError(f"{what} exist only in MQTT 5")
            return b""
        if value is None:
            return b"\x00"
        if isinstance(value, bytes):
            return value
        return encode_properties(value)

    flags = (FLAG_USERNAME if username is not None else 0) | \
        (FLAG_PASSWORD if password is not None else 0) | (FLAG_CLEAN if clean_start else 0)
    if will_topic is not None:
        flags |= FLAG_WILL | (will_qos << 3) | (FLAG_WILL_RETAIN if will_retain else 0)
    return _encode(
        name=protocol_name.encode(), level_byte=protocol_level | (0x80 if bridge else 0),
        flags=flags, keepalive=keepalive, properties=block(properties, "properties"),
        client_id=client_id,
        will_properties=block(will_properties, "will properties") if will_topic is not None
        else b"",
        will_topic=will_topic, will_payload=will_payload if will_topic is not None else None,
        username=username, password=password)


def rewrite_connect(c: Connect, *, username: bytes | _Keep | None = KEEP,
                    client_id: bytes | _Keep = KEEP,
                    password: bytes | _Keep | None = KEEP) -> bytes:
    """Re-encode ``c`` with a new user name and/or client id (None removes a field).

    Every other byte is kept exactly: protocol name and level, flags (only the user name and
    password bits follow the fields), keep alive, properties, will properties, will topic and
    payload, password. The Remaining Length is re-encoded. If nothing changes, ``c.raw`` is
    returned unchanged. The new values are not checked for UTF-8: ``crt`` puts raw DER bytes in
    the user name or client id, as EMQX does (see the module notes). Brokers that check UTF-8
    strictly (mosquitto does, for both fields) refuse such a CONNECT; ``pem`` and ``md5`` are
    always valid. ValueError if a value exceeds 65535 bytes or if the result would be a 3.x
    CONNECT with a password but no user name.
    """
    new_username = c.username if isinstance(username, _Keep) else username
    new_client_id = c.client_id if isinstance(client_id, _Keep) else client_id
    new_password = c.password if isinstance(password, _Keep) else password
    if (new_username == c.username and new_client_id == c.client_id
            and new_password == c.password):
        return c.raw
    if c.protocol_level < 5 and new_password is not None and new_username is None:
        raise ValueError(f"MQTT {c.version} forbids a password without a user name; remove "
                         f"the password as well or set a user name")
    flags = c.flags & ~(FLAG_USERNAME | FLAG_PASSWORD)
    flags |= (FLAG_USERNAME if new_username is not None else 0) | \
        (FLAG_PASSWORD if new_password is not None else 0)
    return _encode(
        name=c.protocol_name.encode(), level_byte=c.protocol_level | (0x80 if c.bridge else 0),
        flags=flags, keepalive=c.keepalive, properties=c.properties, client_id=new_client_id,
        will_properties=c.will_properties, will_topic=c.will_topic, will_payload=c.will_payload,
        username=new_username, password=new_password)
