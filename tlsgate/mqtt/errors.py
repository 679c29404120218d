"""Errors of the MQTT and PROXY protocol codecs, and the reasons tlsgate refuses a client.

Every error raised by the codecs in this package is a *remote* error: the peer sent bytes that
are not what the protocol allows. Local mistakes (a caller asking to encode a 70000-byte user
name) are ``ValueError``. This split follows h11: the gateway catches :class:`RemoteError`
subclasses and answers/closes; anything else is a bug in tlsgate.

A :class:`ProtocolError` carries the :class:`Refusal` it should be answered with and the client's
protocol level when it was already known, so ``tlsgate.mqtt.connack.connack_for_error`` can pick
the right CONNACK encoding (3.x: four bytes; 5.0: with a reason code and properties) or decide
that the spec wants the connection closed without any CONNACK.
"""

from __future__ import annotations

import enum


class Refusal(enum.Enum):
    """Why tlsgate refuses a client; ``tlsgate.mqtt.connack`` maps each to a CONNACK code.

    The values are stable lower-case names, usable as metric labels and in log lines.

    =====================  =========================  ==============================
    Refusal                MQTT 3.1 / 3.1.1            MQTT 5.0
    =====================  =========================  ==============================
    SERVER_UNAVAILABLE     0x03 Server unavailable    0x88 Server unavailable
    SERVER_BUSY            0x03                       0x89 Server busy
    BAD_CREDENTIALS        0x04 Bad user name/passw.  0x86 Bad User Name or Password
    NOT_AUTHORIZED         0x05 Not authorized        0x87 Not authorized
    QUOTA_EXCEEDED         0x03                       0x97 Quota exceeded
    RATE_EXCEEDED          0x03                       0x9F Connection rate exceeded
    BANNED                 0x05                       0x8A Banned
    UNSUPPORTED_VERSION    0x01 Unacceptable version  0x84 Unsupported Protocol Version
    CLIENTID_INVALID       0x02 Identifier rejected   0x85 Client Identifier not valid
    MALFORMED              no CONNACK, close          0x81 Malformed Packet
    PROTOCOL_ERROR         no CONNACK, close          0x82 Protocol Error
    PACKET_TOO_LARGE       no CONNACK, close          0x95 Packet too large
    =====================  =========================  ==============================

    Why "no CONNACK" for the last three in 3.x: MQTT 3.1.1 has no return code for them, and says
    the server "MUST close the Network Connection without sending a CONNACK" when the CONNECT does
    not conform [MQTT-3.1.4-1] and when none of the return codes applies [MQTT-3.2.2-6]. Sending
    0x02 or 0x03 instead would tell a device something false ("identifier rejected", "try again
    later") and make it retry the same broken packet forever.
    """

    SERVER_UNAVAILABLE = "server_unavailable"
    SERVER_BUSY = "server_busy"
    BAD_CREDENTIALS = "bad_credentials"
    NOT_AUTHORIZED = "not_authorized"
    QUOTA_EXCEEDED = "quota_exceeded"
    RATE_EXCEEDED = "rate_exceeded"
    BANNED = "banned"
    UNSUPPORTED_VERSION = "unsupported_version"
    CLIENTID_INVALID = "clientid_invalid"
    MALFORMED = "malformed"
    PROTOCOL_ERROR = "protocol_error"
    PACKET_TOO_LARGE = "packet_too_large"


class RemoteError(Exception):
    """The peer sent bytes its protocol does not allow (base of every codec error here).

    ``message`` says what was wrong and where; it never contains a password or other secret.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ProtocolError(RemoteError):
    """An MQTT client sent a first packet tlsgate will not forward.

    ``refusal``: how to answer (see :class:`Refusal`).
    ``protocol_level``: the MQTT version whose CONNACK format to answer in (3, 4 or 5), or None
    when the client's version is not known yet (then the connection is just closed). For an
    unsupported protocol level it is 4: both the 3.1.1 and the 5.0 specification answer an
    unknown level with the 3.1.1-format CONNACK 0x01, the one reply every client version can read.
    """

    def __init__(self, refusal: Refusal, message: str, protocol_level: int | None = None) -> None:
        super().__init__(message)
        self.refusal = refusal
        self.protocol_level = protocol_level

    def __repr__(self) -> str:
        return (f"ProtocolError({self.refusal.name}, {self.message!r}, "
                f"protocol_level={self.protocol_level!r})")


class ProxyProtocolError(RemoteError):
    """A PROXY protocol v1/v2 header is missing or invalid (haproxy's proxy-protocol.txt)."""

    def __repr__(self) -> str:
        return f"ProxyProtocolError({self.message!r})"
