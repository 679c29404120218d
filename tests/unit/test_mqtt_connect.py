"""The CONNECT codec: specification examples, real-client captures, errors, rewrite, fuzzing.

Captured vectors live in tests/unit/captures/ (see capture.py there for how they were made).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tlsgate.mqtt.connack import connack_for_error, decode_connack
from tlsgate.mqtt.connect import (
    KEEP,
    MAX_REMAINING_LENGTH,
    Connect,
    Property,
    decode_properties,
    encode_connect,
    encode_properties,
    encode_varint,
    parse_connect,
    rewrite_connect,
)
from tlsgate.mqtt.errors import ProtocolError, Refusal

sys.path.insert(0, str(Path(__file__).parent / "captures"))
from capture import load_vector

BIG = 1 << 20


def parse(data: bytes, max_size: int = BIG) -> Connect:
    got = parse_connect(data, max_size)
    assert got is not None, "expected a whole CONNECT"
    connect, consumed = got
    assert consumed == len(data)
    assert connect.raw == data
    return connect


def error(data: bytes, max_size: int = BIG) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        parse_connect(data, max_size)
    return info.value


def fixed(body: bytes) -> bytes:
    return b"\x10" + encode_varint(len(body)) + body


def s(data: bytes) -> bytes:
    """An MQTT string / binary field: 2-byte length, then the bytes."""
    return len(data).to_bytes(2, "big") + data


# ---------------------------------------------------------------------------------------------
# Byte strings written from the specifications' field layouts
# ---------------------------------------------------------------------------------------------
# MQTT 3.1.1 §3.1.2.10, Figure 3.6 (variable header example), with a payload per §3.1.3.
SPEC_311 = bytes([
    0x10, 0x2A,                               # CONNECT, Remaining Length 42
    0x00, 0x04, 0x4D, 0x51, 0x54, 0x54,       # Protocol Name "MQTT"
    0x04,                                     # Protocol Level 4
    0xCE,                                     # user name, password, will QoS 1, will, clean
    0x00, 0x0A,                               # Keep Alive 10
    0x00, 0x08, *b"spec-311",                 # Client Identifier
    0x00, 0x03, *b"t/w",                      # Will Topic
    0x00, 0x03, *b"bye",                      # Will Message
    0x00, 0x04, *b"user",                     # User Name
    0x00, 0x04, *b"pass",                     # Password
])

# MQTT 5.0 §3.1.2.11, Figure 3-6 (variable header example, Session Expiry Interval 10), with a
# payload per §3.1.3 including Will Properties (§3.1.3.2).
SPEC_5 = bytes([
    0x10, 0x36,                               # CONNECT, Remaining Length 54
    0x00, 0x04, 0x4D, 0x51, 0x54, 0x54,       # Protocol Name "MQTT"
    0x05,                                     # Protocol Version 5
    0xCE,                                     # user name, password, will QoS 1, will, clean
    0x00, 0x0A,                               # Keep Alive 10
    0x05,                                     # Properties Length 5
    0x11, 0x00, 0x00, 0x00, 0x0A,             # Session Expiry Interval 10
    0x00, 0x06, *b"spec-5",                   # Client Identifier
    0x07,                                     # Will Properties Length 7
    0x01, 0x01,                               # Payload Format Indicator 1 (UTF-8)
    0x02, 0x00, 0x00, 0x00, 0x3C,             # Message Expiry Interval 60
    0x00, 0x03, *b"t/w",                      # Will Topic
    0x00, 0x03, *b"bye",                      # Will Payload
    0x00, 0x04, *b"user",                     # User Name
    0x00, 0x04, *b"pass",                     # Password
])

# MQTT 3.1 (IBM "MQIsdp" specification §3.1): protocol name "MQIsdp", version 3.
SPEC_31 = bytes([
    0x10, 0x14,
    0x00, 0x06, *b"MQIsdp",
    0x03,                                     # version 3
    0x02,                                     # clean session
    0x00, 0x3C,                               # keep alive 60
    0x00, 0x06, *b"spec31",
])


def test_spec_311_example() -> None:
    c = parse(SPEC_311)
    assert (c.protocol_name, c.protocol_level, c.version) == ("MQTT", 4, "3.1.1")
    assert c.flags == 0xCE and c.keepalive == 10 and c.clean_start
    assert c.client_id == b"spec-311"
    assert (c.will, c.will_topic, c.will_payload, c.will_qos, c.will_retain) == \
        (True, b"t/w", b"bye", 1, False)
    assert (c.username, c.password) == (b"user", b"pass")
    assert c.properties == b"" and c.will_properties == b"" and not c.bridge


def test_spec_5_example() -> None:
    c = parse(SPEC_5)
    assert (c.protocol_level, c.version, c.keepalive, c.flags) == (5, "5.0", 10, 0xCE)
    assert c.properties == bytes([0x05, 0x11, 0, 0, 0, 0x0A])
    assert c.property_list() == ((0x11, 10),)
    assert c.will_properties == bytes([0x07, 0x01, 0x01, 0x02, 0, 0, 0, 0x3C])
    assert c.will_property_list() == ((0x01, 1), (0x02, 60))
    assert (c.client_id, c.will_topic, c.will_payload) == (b"spec-5", b"t/w", b"bye")
    assert (c.username, c.password, c.will_qos) == (b"user", b"pass", 1)


def test_spec_31_example() -> None:
    c = parse(SPEC_31)
    assert (c.protocol_name, c.protocol_level, c.version) == ("MQIsdp", 3, "3.1")
    assert c.client_id == b"spec31" and c.username is None and c.password is None


@pytest.mark.parametrize(("value", "encoded"), [
    # MQTT 3.1.1 §2.2.3 Table 2.4 / MQTT 5.0 §1.5.5 Table 1-1: the range boundaries.
    (0, b"\x00"), (127, b"\x7f"), (128, b"\x80\x01"), (16_383, b"\xff\x7f"),
    (16_384, b"\x80\x80\x01"), (2_097_151, b"\xff\xff\x7f"), (2_097_152, b"\x80\x80\x80\x01"),
    (268_435_455, b"\xff\xff\xff\x7f"),
])
def test_varint_spec_table(value: int, encoded: bytes) -> None:
    assert encode_varint(value) == encoded


def test_varint_out_of_range() -> None:
    with pytest.raises(ValueError, match="Variable Byte Integer"):
        encode_varint(MAX_REMAINING_LENGTH + 1)


# ---------------------------------------------------------------------------------------------
# Real clients (captured bytes)
# ---------------------------------------------------------------------------------------------
CAPTURES = {
    # name: expected (level, name, client id, keepalive, clean, user, password,
    #                 will topic, will payload, will qos, will retain)
    "mosquitto_pub_v31_will_auth": (3, "MQIsdp", b"cap-v31", 30, True, b"alice", b"pw-v31",
                                    b"will/v31", b"bye v31", 1, True),
    "mosquitto_pub_v311_will_auth": (4, "MQTT", b"cap-v311", 45, False, b"alice", b"pw-v311",
                                     b"will/v311", b"bye v311", 2, False),
    "mosquitto_pub_v311_minimal": (4, "MQTT", b"cap-min", 60, True, None, None, None, None, 0,
                                   False),
    "mosquitto_pub_v5_will_props": (5, "MQTT", b"cap-v5", 20, True, b"alice", b"pw-v5",
                                    b"will/v5", b"bye v5", 1, False),
    "paho_v311_will_auth": (4, "MQTT", b"paho-311", 50, True, b"bob", b"pw-paho311",
                            b"will/paho311", b"gone 311", 1, True),
    "paho_v31": (3, "MQIsdp", b"paho-31", 15, True, b"bob", None, None, None, 0, False),
    "paho_v5_will_props": (5, "MQTT", b"paho-5", 25, True, b"bob", b"pw-paho5", b"will/paho5",
                           b'{"state":"gone"}', 2, False),
}


@pytest.mark.parametrize("name", sorted(CAPTURES))
def test_capture_fields(name: str) -> None:
    c = parse(load_vector(name))
    got = (c.protocol_level, c.protocol_name, c.client_id, c.keepalive, c.clean_start,
           c.username, c.password, c.will_topic, c.will_payload, c.will_qos, c.will_retain)
    assert got == CAPTURES[name]


def test_capture_mosquitto_v5_properties() -> None:
    c = parse(load_vector("mosquitto_pub_v5_will_props"))
    # -D connect user-property a b, session-expiry-interval 60, receive-maximum 10
    assert c.property_list() == ((0x26, ("a", "b")), (0x11, 60), (0x21, 10))
    # -D will will-delay-interval 30, content-type text/plain, user-property wk wv
    assert c.will_property_list() == ((0x18, 30), (0x03, "text/plain"), (0x26, ("wk", "wv")))


def test_capture_paho_v5_properties() -> None:
    c = parse(load_vector("paho_v5_will_props"))
    assert dict((pid, v) for pid, v in c.property_list() if pid != 0x26) == {
        0x11: 3600, 0x21: 20, 0x27: 65536, 0x22: 5}
    assert [v for pid, v in c.property_list() if pid == 0x26] == [("k1", "v1"), ("k2", "v2")]
    assert c.maximum_packet_size == 65536
    assert set(c.will_property_list()) == {(0x18, 10), (0x02, 300), (0x03, "application/json"),
                                           (0x26, ("wk", "wv"))}
    # 137-byte body: the Remaining Length takes two bytes.
    assert c.raw[1:3] == b"\x89\x01"


@pytest.mark.parametrize("name", sorted(CAPTURES))
def test_capture_incremental(name: str) -> None:
    """Every strict prefix is "need more"; the next packet's bytes are left alone."""
    data = load_vector(name)
    for i in range(len(data)):
        assert parse_connect(data[:i], BIG) is None, i
    pingreq = b"\xc0\x00"
    got = parse_connect(data + pingreq, BIG)
    assert got is not None and got[1] == len(data)


@pytest.mark.parametrize("name", sorted(CAPTURES))
def test_capture_reencodes_exactly(name: str) -> None:
    c = parse(load_vector(name))
    assert reencode(c) == c.raw


def test_repr_hides_secrets() -> None:
    c = parse(encode_connect(protocol_level=5, client_id=b"dev", username=b"u",
                             password=b"hunter2-secret",
                             properties=[(0x15, "SCRAM"), (0x16, b"auth-secret")]))
    text = repr(c)
    assert "hunter2" not in text and "auth-secret" not in text and "dev" in text
    assert "password=<14 bytes>" in text


# ---------------------------------------------------------------------------------------------
# Errors: each names the problem and carries the refusal / version to answer with
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("data", "kind"), [
    (b"\x30\x05\x00\x01tx", "PUBLISH"),
    (b"\xc0\x00", "PINGREQ"),
    (b"\xe0\x00", "DISCONNECT"),
    (b"\x82", "SUBSCRIBE"),
    (b"\x00", "reserved packet type 0"),
])
def test_first_packet_not_connect(data: bytes, kind: str) -> None:
    err = error(data)
    assert err.refusal is Refusal.PROTOCOL_ERROR and err.protocol_level is None
    assert kind in err.message and "CONNECT first" in err.message


@pytest.mark.parametrize(("data", "hint"), [
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", "TLS"),
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "PROXY protocol"),
])
def test_first_packet_hints(data: bytes, hint: str) -> None:
    assert hint in error(data).message


def test_reserved_fixed_header_flags() -> None:
    err = error(b"\x12" + SPEC_311[1:])
    assert err.refusal is Refusal.MALFORMED and "0010" in err.message


def test_remaining_length_five_bytes() -> None:
    err = error(b"\x10\xff\xff\xff\xff")  # decided without waiting for a fifth length byte
    assert err.refusal is Refusal.MALFORMED and "four bytes" in err.message


def test_too_large_refused_from_the_header_alone() -> None:
    # Only the fixed header is in: the version is unknown, so the gateway just closes.
    err = error(b"\x10\x80\x08", max_size=1000)  # Remaining Length 1024
    assert err.refusal is Refusal.PACKET_TOO_LARGE and err.protocol_level is None
    assert "1027 bytes" in err.message and "1000" in err.message
    # With protocol name and version at hand, an MQTT 5 client gets 0x95.
    err = error(b"\x10\x80\x08\x00\x04MQTT\x05", max_size=1000)
    assert err.protocol_level == 5
    out = connack_for_error(err)
    assert out is not None
    connack = decode_connack(out)
    assert connack is not None and connack[0].code == 0x95
    # MQTT 3.1.1 has no code for it: close without CONNACK.
    err = error(b"\x10\x80\x08\x00\x04MQTT\x04", max_size=1000)
    assert err.protocol_level == 4 and connack_for_error(err) is None


def test_max_size_is_inclusive() -> None:
    assert parse_connect(SPEC_311, len(SPEC_311)) is not None
    assert error(SPEC_311, len(SPEC_311) - 1).refusal is Refusal.PACKET_TOO_LARGE


def test_bad_protocol_name() -> None:
    err = error(fixed(s(b"MQTX") + b"\x04\x02\x00\x3c" + s(b"id")))
    assert err.refusal is Refusal.PROTOCOL_ERROR and err.protocol_level is None
    assert "MQTX" in err.message


@pytest.mark.parametrize(("name", "level"), [(b"MQTT", 6), (b"MQTT", 3), (b"MQIsdp", 4),
                                             (b"MQTT", 0)])
def test_unsupported_level(name: bytes, level: int) -> None:
    err = error(fixed(s(name) + bytes([level, 2, 0, 60]) + s(b"id")))
    assert err.refusal is Refusal.UNSUPPORTED_VERSION
    # Answered with the 3.1.1-format CONNACK 0x01 that any client can read.
    assert connack_for_error(err) == b"\x20\x02\x00\x01"


def test_bridge_bit_accepted_and_kept() -> None:
    data = encode_connect(protocol_level=4, client_id=b"bridge", bridge=True)
    assert data[8] == 0x84
    c = parse(data)
    assert c.bridge and c.protocol_level == 4
    out = rewrite_connect(c, username=b"u")
    assert out[8] == 0x84 and parse(out).bridge


def base_body(level: int, flags: int, rest: bytes, props: bytes = b"\x00") -> bytes:
    return s(b"MQTT") + bytes([level, flags, 0, 60]) + (props if level == 5 else b"") + rest


@pytest.mark.parametrize(("level", "flags", "rest", "needle"), [
    (4, 0x03, s(b"id"), "reserved bit"),
    (5, 0x03, s(b"id"), "reserved bit"),
    (4, 0x1E, s(b"id") + s(b"t") + s(b"m"), "will QoS 3"),
    (4, 0x0A, s(b"id"), "without the will flag"),           # will QoS 1, no will flag
    (4, 0x22, s(b"id"), "without the will flag"),           # will retain, no will flag
    (4, 0x42, s(b"id") + s(b"pw"), "password without a user name"),
    (4, 0x02, s(b"id") + b"x", "unexpected byte"),           # trailing garbage in the packet
    (4, 0x02, b"\x00\x09id", "client identifier"),           # string runs past the packet
    (4, 0x02, b"\x00", "client identifier"),                 # length itself cut
    (4, 0x06, s(b"id") + s(b"t"), "will payload"),           # will flag, payload missing
    (4, 0x82, s(b"id"), "user name"),                        # user name flag, no user name
    (4, 0x02, s(b"\xff\xfe"), "not valid UTF-8"),
    (4, 0x02, s(b"a\x00b"), "U+0000"),
    (4, 0x06, s(b"id") + s(b"\xed\xa0\x80") + s(b""), "will topic"),  # UTF-16 surrogate
    (4, 0x06, s(b"id") + s(b"a\xc0\xafb") + s(b""), "not valid UTF-8"),  # overlong '/'
])
def test_malformed(level: int, flags: int, rest: bytes, needle: str) -> None:
    err = error(fixed(base_body(level, flags, rest)))
    assert err.refusal is Refusal.MALFORMED
    assert err.protocol_level == level
    assert needle in err.message


def test_password_without_username_is_fine_in_5() -> None:
    c = parse(fixed(base_body(5, 0x42, s(b"id") + s(b"pw"))))
    assert c.username is None and c.password == b"pw"


def test_username_is_not_utf8_checked() -> None:
    der = bytes(range(256))[:80]
    c = parse(fixed(base_body(4, 0x82, s(b"id") + s(der))))
    assert c.username == der


def test_empty_remaining_length() -> None:
    err = error(b"\x10\x00")
    assert err.refusal is Refusal.MALFORMED and "protocol name" in err.message


@pytest.mark.parametrize(("props", "refusal", "needle"), [
    (b"\x02\x7f\x00", Refusal.MALFORMED, "0x7F"),                            # unknown id
    (b"\x03\x1f\x00\x00", Refusal.MALFORMED, "Reason String"),              # CONNACK-only
    (b"\x0a\x11\x00\x00\x00\x01\x11\x00\x00\x00\x02", Refusal.PROTOCOL_ERROR, "more than once"),
    (b"\x03\x21\x00\x00", Refusal.PROTOCOL_ERROR, "Receive Maximum is 0"),
    (b"\x05\x27\x00\x00\x00\x00", Refusal.PROTOCOL_ERROR, "Maximum Packet Size is 0"),
    (b"\x02\x17\x02", Refusal.PROTOCOL_ERROR, "Request Problem Information is 2"),
    (b"\x02\x19\x05", Refusal.PROTOCOL_ERROR, "Request Response Information is 5"),
    (b"\x04\x16\x00\x01x", Refusal.PROTOCOL_ERROR, "without an Authentication Method"),
    (b"\x09\x11\x00", Refusal.MALFORMED, "runs past"),                       # block > packet
    (b"\x03\x11\x00\x00", Refusal.MALFORMED, "Session Expiry Interval"),     # value cut
    (b"\x80\x00", Refusal.MALFORMED, "minimally"),                           # length 0 in 2 B
    (b"\x05\x26\x00\x01k\x00", Refusal.MALFORMED, "User Property value"),    # pair cut
    (b"\x06\x26\x00\x01k\x00\x00\x00", Refusal.MALFORMED, "unexpected byte"),  # stray byte
])
def test_bad_connect_properties(props: bytes, refusal: Refusal, needle: str) -> None:
    err = error(fixed(base_body(5, 0x02, s(b"id"), props)))
    assert err.refusal is refusal, err
    assert err.protocol_level == 5
    assert needle in err.message, err.message


def test_will_property_must_be_a_will_property() -> None:
    # Session Expiry Interval is a CONNECT property, not a will property.
    body = base_body(5, 0x06, s(b"id") + b"\x05\x11\x00\x00\x00\x01" + s(b"t") + s(b"m"))
    err = error(fixed(body))
    assert err.refusal is Refusal.MALFORMED and "will properties" in err.message


def test_non_minimal_remaining_length() -> None:
    body311 = base_body(4, 0x02, s(b"id"))
    data = b"\x10" + bytes([len(body311) | 0x80, 0x00]) + body311   # 2-byte encoding of < 128
    c = parse(data)  # tolerated in 3.1.1
    out = rewrite_connect(c, client_id=b"new")
    assert out[1] == len(out) - 2  # re-encoded minimally
    body5 = base_body(5, 0x02, s(b"id"))
    err = error(b"\x10" + bytes([len(body5) | 0x80, 0x00]) + body5)
    assert err.refusal is Refusal.MALFORMED and "minimally" in err.message


def test_errors_never_contain_the_password() -> None:
    secret = b"top-secret-password"
    body = base_body(4, 0xC2, s(b"id") + s(b"user") + s(secret) + b"!!")  # trailing bytes
    err = error(fixed(body))
    assert "top-secret" not in err.message and "top-secret" not in repr(err)
    body = base_body(4, 0xC2, s(b"id") + s(b"user") + b"\x00\x40" + secret)  # length past end
    err = error(fixed(body))
    assert "password" in err.message and "top-secret" not in err.message


def test_bytearray_can_grow_after_parse() -> None:
    buf = bytearray(SPEC_311[:5])
    assert parse_connect(buf, BIG) is None
    buf += SPEC_311[5:]             # would raise BufferError if a view were still alive
    assert parse_connect(buf, BIG) is not None
    buf += b"\xc0\x00"
    bad = bytearray(b"\x30\x00")
    with pytest.raises(ProtocolError):
        parse_connect(bad, BIG)
    bad += b"more"
    assert parse_connect(memoryview(bytes(buf)), BIG) is not None


# ---------------------------------------------------------------------------------------------
# Rewrite: every byte not replaced survives
# ---------------------------------------------------------------------------------------------
def segments(c: Connect) -> dict[str, bytes]:
    """Split ``c.raw`` into its fields by walking the layout (independently of the parser)."""
    raw = c.raw
    i = 1
    while raw[i] & 0x80:
        i += 1
    body = raw[i + 1:]
    name_len = int.from_bytes(body[:2], "big")
    vh_len = 2 + name_len + 4 + len(c.properties)
    out = {"variable_header": body[:vh_len]}
    pos = vh_len
    cid_len = int.from_bytes(body[pos:pos + 2], "big")
    out["client_id"] = body[pos:pos + 2 + cid_len]
    pos += 2 + cid_len
    will_len = 0
    if c.will:
        will_len = len(c.will_properties) + 4 + len(c.will_topic or b"") + \
            len(c.will_payload or b"")
    out["will"] = body[pos:pos + will_len]
    pos += will_len
    user_len = 0 if c.username is None else 2 + len(c.username)
    out["username"] = body[pos:pos + user_len]
    out["password"] = body[pos + user_len:]
    return out


@pytest.mark.parametrize("name", sorted(CAPTURES))
def test_rewrite_keeps_every_other_byte(name: str) -> None:
    c = parse(load_vector(name))
    new_user = b"CN=device-0042,O=Acme"
    out = rewrite_connect(c, username=new_user)
    n = parse(out)
    old, new = segments(c), segments(n)
    # Only the flags byte may differ in the variable header, and only in the user name bit.
    flags_at = 2 + len(c.protocol_name) + 1
    assert old["variable_header"][:flags_at] == new["variable_header"][:flags_at]
    assert old["variable_header"][flags_at + 1:] == new["variable_header"][flags_at + 1:]
    assert (old["variable_header"][flags_at] | 0x80) == new["variable_header"][flags_at]
    assert old["client_id"] == new["client_id"]
    assert old["will"] == new["will"]           # will properties, topic and payload
    assert old["password"] == new["password"]
    assert new["username"] == s(new_user)
    assert n.properties == c.properties and n.will_properties == c.will_properties


@pytest.mark.parametrize("name", sorted(CAPTURES))
def test_rewrite_client_id_keeps_every_other_byte(name: str) -> None:
    c = parse(load_vector(name))
    out = rewrite_connect(c, client_id=b"3f2a9c")
    n = parse(out)
    old, new = segments(c), segments(n)
    assert old["variable_header"] == new["variable_header"]
    assert new["client_id"] == s(b"3f2a9c")
    for key in ("will", "username", "password"):
        assert old[key] == new[key]


def test_rewrite_nothing_returns_raw() -> None:
    c = parse(SPEC_5)
    assert rewrite_connect(c) is c.raw
    assert rewrite_connect(c, username=b"user", client_id=b"spec-5") is c.raw


def test_rewrite_adds_and_removes_username() -> None:
    c = parse(load_vector("mosquitto_pub_v311_minimal"))
    added = parse(rewrite_connect(c, username=b"cn"))
    assert added.username == b"cn" and added.flags == c.flags | 0x80
    removed = parse(rewrite_connect(added, username=None))
    assert removed.raw == c.raw
    # 3.1.1 forbids a password without a user name: removing only the user name is refused.
    with_pw = parse(SPEC_311)
    with pytest.raises(ValueError, match="password without a user name"):
        rewrite_connect(with_pw, username=None)
    bare = parse(rewrite_connect(with_pw, username=None, password=None))
    assert bare.flags == 0x0E and bare.username is None and bare.password is None
    # MQTT 5 allows it.
    v5 = parse(rewrite_connect(parse(SPEC_5), username=None))
    assert v5.username is None and v5.password == b"pass" and v5.flags == 0x4E


def test_rewrite_with_der_username_parses_back() -> None:
    der = bytes(range(256)) * 4  # not UTF-8, like peer_cert_as_username = "crt"
    c = parse(rewrite_connect(parse(SPEC_5), username=der))
    assert c.username == der


def test_rewrite_does_not_police_the_client_id() -> None:
    """A client id from ``peer_cert_as_clientid = "crt"`` is raw DER: rewrite forwards it as
    given (the broker decides); tlsgate's own parser, like the spec, wants UTF-8 there."""
    out = rewrite_connect(parse(SPEC_311), client_id=b"\x30\x82\xff")
    assert s(b"\x30\x82\xff") in out
    assert "client identifier" in error(out).message


def test_rewrite_too_long_username() -> None:
    with pytest.raises(ValueError, match="65535"):
        rewrite_connect(parse(SPEC_311), username=b"x" * 65_536)


@pytest.mark.parametrize("target", [126, 127, 128, 129, 16_382, 16_383, 16_384, 16_385])
def test_rewrite_remaining_length_boundaries(target: int) -> None:
    """A new user name moves the Remaining Length across the 1/2/3-byte varint boundaries."""
    c = parse(SPEC_5)
    body_len = len(c.raw) - 2
    user_len = target - (body_len - len(c.username or b""))
    out = rewrite_connect(c, username=b"u" * user_len)
    assert out[1:1 + len(encode_varint(target))] == encode_varint(target)
    assert len(out) == 1 + len(encode_varint(target)) + target
    n = parse(out)
    assert n.username == b"u" * user_len
    assert (n.client_id, n.will_topic, n.will_payload, n.password, n.properties,
            n.will_properties) == (c.client_id, c.will_topic, c.will_payload, c.password,
                                   c.properties, c.will_properties)


def test_rewrite_shrinks_two_byte_length_to_one() -> None:
    c = parse(load_vector("paho_v5_will_props"))  # Remaining Length 137 (two bytes)
    out = rewrite_connect(c, username=None, password=None, client_id=b"")
    assert out[1] < 128 and len(out) == 2 + out[1]
    n = parse(out)
    assert n.will_properties == c.will_properties and n.properties == c.properties


# ---------------------------------------------------------------------------------------------
# Hypothesis
# ---------------------------------------------------------------------------------------------
FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

mqtt_text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"),
                    max_size=12)
u32 = st.integers(0, 2**32 - 1)
u16 = st.integers(0, 2**16 - 1)


@st.composite
def property_lists(draw: st.DrawFn, singles: dict[int, st.SearchStrategy[Any]]) -> list[Property]:
    chosen = draw(st.fixed_dictionaries({}, optional=singles))
    if 0x16 in chosen and 0x15 not in chosen:
        del chosen[0x16]
    props: list[Property] = list(chosen.items())
    props += [(0x26, pair) for pair in draw(st.lists(st.tuples(mqtt_text, mqtt_text),
                                                     max_size=3))]
    return list(draw(st.permutations(props)))


connect_properties = property_lists({
    0x11: u32, 0x21: st.integers(1, 65535), 0x27: st.integers(1, 2**32 - 1), 0x22: u16,
    0x19: st.integers(0, 1), 0x17: st.integers(0, 1), 0x15: mqtt_text,
    0x16: st.binary(max_size=20)})
will_properties = property_lists({
    0x18: u32, 0x01: st.integers(0, 1), 0x02: u32, 0x03: mqtt_text, 0x08: mqtt_text,
    0x09: st.binary(max_size=20)})


@st.composite
def connect_kwargs(draw: st.DrawFn) -> dict[str, Any]:
    level = draw(st.sampled_from([3, 4, 5]))
    kw: dict[str, Any] = {
        "protocol_level": level,
        "client_id": draw(mqtt_text).encode(),
        "keepalive": draw(u16),
        "clean_start": draw(st.booleans()),
        "bridge": draw(st.booleans()),
        "username": draw(st.none() | st.binary(max_size=40)),
        "password": draw(st.none() | st.binary(max_size=40)),
    }
    if level < 5 and kw["password"] is not None and kw["username"] is None:
        kw["username"] = b""
    if draw(st.booleans()):
        kw["will_topic"] = draw(mqtt_text).encode()
        kw["will_payload"] = draw(st.binary(max_size=300))
        kw["will_qos"] = draw(st.integers(0, 2))
        kw["will_retain"] = draw(st.booleans())
        if level == 5:
            kw["will_properties"] = draw(will_properties)
    if level == 5:
        kw["properties"] = draw(connect_properties)
    return kw


def reencode(c: Connect) -> bytes:
    """Encode a CONNECT from a parsed one's fields (with a minimal Remaining Length)."""
    return encode_connect(
        protocol_level=c.protocol_level, protocol_name=c.protocol_name, bridge=c.bridge,
        client_id=c.client_id, keepalive=c.keepalive, clean_start=c.clean_start,
        username=c.username, password=c.password, will_topic=c.will_topic,
        will_payload=c.will_payload or b"", will_qos=c.will_qos, will_retain=c.will_retain,
        properties=c.properties or None, will_properties=c.will_properties or None)


def check_fields(c: Connect, kw: dict[str, Any]) -> None:
    assert c.protocol_level == kw["protocol_level"]
    assert c.protocol_name == ("MQIsdp" if kw["protocol_level"] == 3 else "MQTT")
    assert c.client_id == kw["client_id"] and c.keepalive == kw["keepalive"]
    assert c.clean_start == kw["clean_start"] and c.bridge == kw["bridge"]
    assert c.username == kw["username"] and c.password == kw["password"]
    assert c.will_topic == kw.get("will_topic")
    if c.will:
        assert c.will_payload == kw["will_payload"]
        assert (c.will_qos, c.will_retain) == (kw["will_qos"], kw["will_retain"])
    else:
        assert c.will_payload is None and c.will_qos == 0 and not c.will_retain
    assert c.property_list() == tuple(kw.get("properties", ()))
    assert c.will_property_list() == tuple(kw.get("will_properties", ()))


@FUZZ
@given(connect_kwargs(), st.data())
def test_fuzz_fast_path_agrees_with_the_full_reader(kw: dict[str, Any],
                                                    data: st.DataObject) -> None:
    """The straight-line path for the usual 3.1.1 CONNECT gives what the full reader gives,
    on valid packets and on mutated ones (fuzz/targets.py's check, also run over the corpus
    by test_fuzz_corpus.py)."""
    from fuzz.targets import check_connect_fast_path
    from tlsgate.mqtt import connect as codec

    kw["bridge"] = data.draw(st.sampled_from([False, False, False, True]))
    packet = encode_connect(**kw)
    check_connect_fast_path(packet)
    if kw["protocol_level"] == 4 and not kw["bridge"] and "will_topic" not in kw \
            and kw["client_id"].isascii() and len(packet) < 16384:
        # ...and it is the path such a packet takes
        start = 2 if len(packet) - 2 < 128 else 3
        assert codec._parse_311(memoryview(packet), start, len(packet)) is not None
    i = data.draw(st.integers(0, len(packet) - 1))
    mutated = bytearray(packet)
    mutated[i] = data.draw(st.integers(0, 255))
    check_connect_fast_path(bytes(mutated))


@FUZZ
@given(connect_kwargs())
def test_fuzz_round_trip(kw: dict[str, Any]) -> None:
    data = encode_connect(**kw)
    c = parse(data)
    check_fields(c, kw)
    assert reencode(c) == data
    if c.protocol_level == 5:
        assert encode_properties(c.property_list()) == c.properties


@FUZZ
@given(connect_kwargs(), st.none() | st.binary(max_size=300), mqtt_text.map(str.encode),
       st.booleans(), st.booleans())
def test_fuzz_rewrite(kw: dict[str, Any], username: bytes | None, client_id: bytes,
                      change_user: bool, change_id: bool) -> None:
    c = parse(encode_connect(**kw))
    if c.protocol_level < 5 and username is None and c.password is not None:
        username = b""
    out = rewrite_connect(c, username=username if change_user else KEEP,
                          client_id=client_id if change_id else KEEP)
    n = parse(out)
    expected = dict(kw)
    if change_user:
        expected["username"] = username
    if change_id:
        expected["client_id"] = client_id
    if not change_user and not change_id:
        assert out is c.raw
    assert n.username == expected["username"] and n.client_id == expected["client_id"]
    same = ("protocol_name", "protocol_level", "keepalive", "password", "will_topic",
            "will_payload", "properties", "will_properties", "bridge")
    assert all(getattr(n, f) == getattr(c, f) for f in same)
    assert n.flags & 0x7F == c.flags & 0x7F


def check_parse_result(data: bytes) -> None:
    """parse_connect(data) is None, a ProtocolError, or a Connect that is exactly the bytes."""
    try:
        got = parse_connect(data, 4096)
    except ProtocolError as exc:
        assert isinstance(exc.refusal, Refusal) and exc.message
        assert exc.protocol_level in (None, 3, 4, 5)
        return
    if got is None:
        return
    c, consumed = got
    assert 0 < consumed <= len(data) and c.raw == data[:consumed]
    # The fields describe the packet completely (only a non-minimal length may differ).
    assert body_of(reencode(c)) == body_of(c.raw)
    if c.protocol_level == 5:
        decode_properties(c.properties)


def body_of(packet: bytes) -> bytes:
    i = 1
    while packet[i] & 0x80:
        i += 1
    return packet[i + 1:]


@FUZZ
@given(st.binary(max_size=200))
def test_fuzz_random_bytes(data: bytes) -> None:
    check_parse_result(data)
    check_parse_result(b"\x10" + data)
    check_parse_result(b"\x10" + encode_varint(len(data)) + data)


@FUZZ
@given(st.binary(max_size=120))
def test_fuzz_random_bodies_behind_a_valid_header(tail: bytes) -> None:
    for head in (s(b"MQTT") + b"\x05", s(b"MQTT") + b"\x04", s(b"MQIsdp") + b"\x03"):
        body = head + tail
        check_parse_result(b"\x10" + encode_varint(len(body)) + body)


def mutate(data: st.DataObject, original: bytes) -> bytes:
    mutated = bytearray(original)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "insert", "delete", "append"]))
        pos = data.draw(st.integers(0, max(len(mutated) - 1, 0)))
        if op == "flip" and mutated:
            mutated[pos] ^= data.draw(st.integers(1, 255))
        elif op == "insert":
            mutated.insert(pos, data.draw(st.integers(0, 255)))
        elif op == "append":
            mutated += data.draw(st.binary(min_size=1, max_size=3))
        elif mutated:
            del mutated[pos]
    return bytes(mutated)


@FUZZ
@given(connect_kwargs(), st.data())
def test_fuzz_truncations_and_mutations(kw: dict[str, Any], data: st.DataObject) -> None:
    packet = encode_connect(**kw)
    cut = data.draw(st.integers(0, len(packet) - 1))
    assert parse_connect(packet[:cut], BIG) is None   # a prefix of a valid packet: need more
    # Mutate the whole packet, and (more useful) mutate the body and frame it with a correct
    # Remaining Length, so the parser has to look at every field.
    mutated = mutate(data, packet)
    assume(mutated != packet)
    check_parse_result(mutated)
    for i in range(0, len(mutated), 7):
        check_parse_result(mutated[:i])
    body = mutate(data, body_of(packet))
    check_parse_result(b"\x10" + encode_varint(len(body)) + body)
