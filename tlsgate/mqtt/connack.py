"""CONNACK: the refusal tlsgate answers a client with, in the client's MQTT version.

MQTT 3.1 and 3.1.1 CONNACK: four bytes ``0x20 0x02 <ack flags> <return code>``, return codes
0..5. MQTT 5.0 CONNACK: ``0x20 <Remaining Length> <ack flags> <reason code> <properties>``; tlsgate
puts at most a Reason String (0x1F) in the properties, and only if the packet stays within the
client's Maximum Packet Size [MQTT-3.2.2-19].

The mapping from :class:`~tlsgate.mqtt.errors.Refusal` to codes is documented on the enum; for
MALFORMED, PROTOCOL_ERROR and PACKET_TOO_LARGE MQTT 3.x has no code and the connection is closed
without a CONNACK (``connack_code`` returns None).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from .connect import (
    CONNACK_PROPERTIES,
    PROP_REASON_STRING,
    Property,
    _read_varint,
    _Reader,
    encode_properties,
    encode_varint,
)
from .errors import ProtocolError, Refusal

__all__ = ["Connack", "connack_code", "connack_for", "connack_for_error", "decode_connack",
           "encode_connack"]

# Refusal -> (MQTT 3.x return code or None = close without CONNACK, MQTT 5.0 reason code)
_CODES: Final[dict[Refusal, tuple[int | None, int]]] = {
    Refusal.SERVER_UNAVAILABLE: (0x03, 0x88),
    Refusal.SERVER_BUSY: (0x03, 0x89),
    Refusal.BAD_CREDENTIALS: (0x04, 0x86),
    Refusal.NOT_AUTHORIZED: (0x05, 0x87),
    Refusal.QUOTA_EXCEEDED: (0x03, 0x97),
    Refusal.RATE_EXCEEDED: (0x03, 0x9F),
    Refusal.BANNED: (0x05, 0x8A),
    Refusal.UNSUPPORTED_VERSION: (0x01, 0x84),
    Refusal.CLIENTID_INVALID: (0x02, 0x85),
    Refusal.MALFORMED: (None, 0x81),
    Refusal.PROTOCOL_ERROR: (None, 0x82),
    Refusal.PACKET_TOO_LARGE: (None, 0x95),
}

# MQTT 5.0 §3.2.2.2: the reason codes a CONNACK may carry.
V5_CONNACK_CODES: Final = frozenset({
    0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90, 0x95,
    0x97, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
})


def connack_code(protocol_level: int, refusal: Refusal) -> int | None:
    """The CONNACK code for ``refusal`` in MQTT ``protocol_level`` (3, 4 or 5).

    None means MQTT 3.x has no code for it: close the connection without a CONNACK.
    """
    v3, v5 = _CODES[refusal]
    return v5 if protocol_level == 5 else v3


def encode_connack(protocol_level: int, refusal: Refusal | int, *,
                   session_present: bool = False, reason_string: str | None = None,
                   max_packet_size: int | None = None) -> bytes:
    """Encode a CONNACK for a client speaking ``protocol_level`` (3 = 3.1, 4 = 3.1.1, 5 = 5.0).

    ``refusal`` is a :class:`Refusal` or a raw return/reason code (0 = accepted).
    ``reason_string`` is sent only in MQTT 5 and dropped if the packet would exceed
    ``max_packet_size`` (the client's Maximum Packet Size property). ValueError if the code does
    not exist in that version (e.g. Refusal.MALFORMED in 3.x: use :func:`connack_for`, which
    says "no CONNACK" instead).
    """
    if isinstance(refusal, Refusal):
        code = connack_code(protocol_level, refusal)
        if code is None:
            raise ValueError(f"MQTT 3.x has no CONNACK code for {refusal.name}: close the "
                             f"connection without a CONNACK")
    else:
        code = refusal
    if session_present and code != 0:
        raise ValueError("session present must be 0 in a refusing CONNACK [MQTT-3.2.2-4]")
    if protocol_level in (3, 4):
        if not 0 <= code <= 5:
            raise ValueError(f"0x{code:02X} is not an MQTT 3.x CONNACK return code (0..5)")
        if session_present and protocol_level == 3:
            raise ValueError("MQTT 3.1 CONNACK has no session present flag")
        return bytes((0x20, 0x02, 0x01 if session_present else 0x00, code))
    if protocol_level != 5:
        raise ValueError(f"unknown MQTT protocol level {protocol_level}")
    if code not in V5_CONNACK_CODES:
        raise ValueError(f"0x{code:02X} is not an MQTT 5 CONNACK reason code")
    flags = 0x01 if session_present else 0x00
    if reason_string is not None:
        props = encode_properties([(PROP_REASON_STRING, reason_string)])
        body = bytes((flags, code)) + props
        packet = b"\x20" + encode_varint(len(body)) + body
        if max_packet_size is None or len(packet) <= max_packet_size:
            return packet
    return bytes((0x20, 0x03, flags, code, 0x00))


def connack_for(protocol_level: int | None, refusal: Refusal, *,
                reason_string: str | None = None,
                max_packet_size: int | None = None) -> bytes | None:
    """The CONNACK to send before closing, or None to close without one.

    None when the client's version is unknown (``protocol_level`` None) or MQTT 3.x has no code
    for ``refusal``.
    """
    if protocol_level is None:
        return None
    code = connack_code(protocol_level, refusal)
    if code is None:
        return None
    return encode_connack(protocol_level, code, reason_string=reason_string,
                          max_packet_size=max_packet_size)


def connack_for_error(err: ProtocolError, *, with_reason: bool = True,
                      max_packet_size: int | None = None) -> bytes | None:
    """The CONNACK answering a client whose CONNECT raised ``err`` (None: just close).

    MQTT 5 clients get ``err.message`` as the Reason String when ``with_reason`` (it names the
    offending field and offset, never a secret), so a device developer sees why.
    """
    return connack_for(err.protocol_level, err.refusal,
                       reason_string=err.message if with_reason else None,
                       max_packet_size=max_packet_size)


@dataclass(frozen=True, slots=True)
class Connack:
    """A decoded CONNACK. ``protocol_level`` is 4 for the 3.x form, 5 for the 5.0 form."""

    protocol_level: int
    session_present: bool
    code: int
    properties: tuple[Property, ...] = ()

    @property
    def reason_string(self) -> str | None:
        for pid, value in self.properties:
            if pid == PROP_REASON_STRING and isinstance(value, str):
                return value
        return None


def decode_connack(buf: bytes | bytearray | memoryview) -> tuple[Connack, int] | None:
    """Decode a CONNACK at the start of ``buf``: None = need more, else (connack, consumed).

    The version is told from the length: the 3.x form has a Remaining Length of exactly 2, the
    5.0 form always carries a property length and so has at least 3. Raises ProtocolError.
    """
    with memoryview(buf) as mv:
        if len(mv) == 0:
            return None
        if mv[0] != 0x20:
            raise ProtocolError(Refusal.PROTOCOL_ERROR,
                                f"expected a CONNACK (0x20), got first byte 0x{mv[0]:02X}")
        try:
            got = _read_varint(mv, 1, len(mv))
        except ValueError:
            raise ProtocolError(Refusal.MALFORMED, "CONNACK Remaining Length is longer than "
                                "four bytes") from None
        if got is None:
            return None
        remaining, start, _ = got
        total = start + remaining
        if len(mv) < total:
            return None
        if remaining < 2:
            raise ProtocolError(Refusal.MALFORMED, f"CONNACK Remaining Length {remaining} < 2")
        flags, code = mv[start], mv[start + 1]
        if flags & 0xFE:
            raise ProtocolError(Refusal.MALFORMED,
                                f"CONNACK acknowledge flags 0x{flags:02X} have reserved bits")
        if remaining == 2:
            return Connack(4, bool(flags & 1), code), total
        r = _Reader(mv, start + 2, total, 5)
        props = r.properties("CONNACK properties", CONNACK_PROPERTIES)[1]
        r.expect_end("CONNACK")
        return Connack(5, bool(flags & 1), code, props), total
