"""CONNACK encoding: the right code for every refusal in every MQTT version, exact bytes.

tests/e2e/test_mqtt_captures.py checks that real clients (mosquitto_pub, paho-mqtt) read these
bytes as the refusal they are meant to be.
"""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tlsgate.mqtt.connack import (
    V5_CONNACK_CODES,
    Connack,
    connack_code,
    connack_for,
    connack_for_error,
    decode_connack,
    encode_connack,
)
from tlsgate.mqtt.connect import encode_connect, parse_connect
from tlsgate.mqtt.errors import ProtocolError, Refusal

# Written from MQTT 3.1.1 §3.2.2.3 Table 3.1 and MQTT 5.0 §3.2.2.2 (independently of the table
# in connack.py): None = 3.x has no code, close without CONNACK [MQTT-3.2.2-6].
EXPECTED = {
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


def test_every_refusal_is_mapped() -> None:
    assert set(EXPECTED) == set(Refusal)


@pytest.mark.parametrize("refusal", list(Refusal))
def test_codes(refusal: Refusal) -> None:
    v3, v5 = EXPECTED[refusal]
    assert connack_code(3, refusal) == v3
    assert connack_code(4, refusal) == v3
    assert connack_code(5, refusal) == v5


@pytest.mark.parametrize("refusal", [r for r in Refusal if EXPECTED[r][0] is not None])
@pytest.mark.parametrize("level", [3, 4])
def test_encode_3x_exact_bytes(level: int, refusal: Refusal) -> None:
    # MQTT 3.1.1 §3.2: 0x20, Remaining Length 2, acknowledge flags 0, return code.
    assert encode_connack(level, refusal) == bytes([0x20, 0x02, 0x00, EXPECTED[refusal][0] or 0])
    # A reason string cannot be carried by 3.x and is silently not sent.
    assert encode_connack(level, refusal, reason_string="why") == \
        bytes([0x20, 0x02, 0x00, EXPECTED[refusal][0] or 0])


@pytest.mark.parametrize("refusal", list(Refusal))
def test_encode_5_exact_bytes(refusal: Refusal) -> None:
    # MQTT 5.0 §3.2: 0x20, Remaining Length 3, flags 0, reason code, property length 0.
    assert encode_connack(5, refusal) == bytes([0x20, 0x03, 0x00, EXPECTED[refusal][1], 0x00])


def test_encode_5_reason_string() -> None:
    out = encode_connack(5, Refusal.NOT_AUTHORIZED, reason_string="nope")
    # Properties: length 7 = Reason String identifier 0x1F + 2-byte length + "nope".
    assert out == bytes([0x20, 0x0A, 0x00, 0x87, 0x07, 0x1F, 0x00, 0x04, *b"nope"])
    got = decode_connack(out)
    assert got == (Connack(5, False, 0x87, ((0x1F, "nope"),)), len(out))
    assert got[0].reason_string == "nope"


def test_reason_string_respects_maximum_packet_size() -> None:
    full = encode_connack(5, Refusal.BANNED, reason_string="x" * 50)
    assert len(full) == 58
    assert encode_connack(5, Refusal.BANNED, reason_string="x" * 50, max_packet_size=58) == full
    assert encode_connack(5, Refusal.BANNED, reason_string="x" * 50,
                          max_packet_size=57) == b"\x20\x03\x00\x8a\x00"


def test_session_present_and_accept() -> None:
    assert encode_connack(4, 0, session_present=True) == b"\x20\x02\x01\x00"
    assert encode_connack(5, 0, session_present=True) == b"\x20\x03\x01\x00\x00"
    with pytest.raises(ValueError, match="session present"):
        encode_connack(4, Refusal.BANNED, session_present=True)
    with pytest.raises(ValueError, match=r"3\.1 CONNACK has no session present"):
        encode_connack(3, 0, session_present=True)


def test_invalid_codes() -> None:
    with pytest.raises(ValueError, match="no CONNACK code for MALFORMED"):
        encode_connack(4, Refusal.MALFORMED)
    with pytest.raises(ValueError, match=r"not an MQTT 3\.x"):
        encode_connack(4, 0x87)
    with pytest.raises(ValueError, match="not an MQTT 5"):
        encode_connack(5, 0x05)
    with pytest.raises(ValueError, match="unknown MQTT protocol level"):
        encode_connack(6, 0)


def test_connack_for() -> None:
    assert connack_for(None, Refusal.NOT_AUTHORIZED) is None
    assert connack_for(4, Refusal.MALFORMED) is None
    assert connack_for(4, Refusal.QUOTA_EXCEEDED) == b"\x20\x02\x00\x03"
    assert connack_for(5, Refusal.QUOTA_EXCEEDED) == b"\x20\x03\x00\x97\x00"
    assert connack_for(5, Refusal.RATE_EXCEEDED) == b"\x20\x03\x00\x9f\x00"


def test_connack_for_a_parse_error() -> None:
    data = bytearray(encode_connect(protocol_level=5, client_id=b"c",
                                    properties=[(0x11, 1), (0x11, 2)]))
    with pytest.raises(ProtocolError) as info:
        parse_connect(data, 1000)
    out = connack_for_error(info.value)
    assert out is not None
    got = decode_connack(out)
    assert got is not None
    connack = got[0]
    assert connack.code == 0x82 and connack.reason_string is not None
    assert "Session Expiry Interval appears more than once" in connack.reason_string
    assert connack_for_error(info.value, with_reason=False) == b"\x20\x03\x00\x82\x00"


def test_decode_incremental_and_errors() -> None:
    out = encode_connack(5, Refusal.SERVER_BUSY, reason_string="busy")
    for i in range(len(out)):
        assert decode_connack(out[:i]) is None
    got = decode_connack(out + b"\xd0\x00")
    assert got is not None and got[1] == len(out)
    with pytest.raises(ProtocolError, match="expected a CONNACK"):
        decode_connack(b"\x30\x00")
    with pytest.raises(ProtocolError, match="reserved bits"):
        decode_connack(b"\x20\x02\x02\x00")
    with pytest.raises(ProtocolError):
        decode_connack(b"\x20\x04\x00\x00\x05\x00")  # property length past the end


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([4, 5]), st.data())
def test_fuzz_round_trip(level: int, data: st.DataObject) -> None:
    if level == 4:
        code = data.draw(st.integers(0, 5))
        reason = None
    else:
        code = data.draw(st.sampled_from(sorted(V5_CONNACK_CODES)))
        reason = data.draw(st.none() | st.text(
            st.characters(codec="utf-8", exclude_characters="\x00"), max_size=40))
    present = code == 0 and data.draw(st.booleans())
    out = encode_connack(level, code, session_present=present, reason_string=reason)
    got = decode_connack(out)
    assert got is not None
    connack, consumed = got
    assert consumed == len(out)
    assert (connack.protocol_level, connack.code, connack.session_present) == \
        (level, code, present)
    assert connack.reason_string == reason


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=40))
def test_fuzz_decode_random(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        decode_connack(b"\x20" + data)
