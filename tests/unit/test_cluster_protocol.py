"""The cluster wire protocol (sans-IO): round trips, chunked delivery, bounds, and garbage --
hypothesis holds the decoder to "only ProtocolError, never anything else"."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tlsgate.cluster.protocol import (
    FRAME_VERSION,
    HEADER_SIZE,
    MAGIC,
    MAX_FRAME,
    Bye,
    Decoder,
    Digest,
    Entries,
    Entry,
    Heartbeat,
    Hello,
    Message,
    ProtocolError,
    Refuse,
    Request,
    Response,
    encode,
    negotiate,
    parse_payload,
)

names = st.text(min_size=1, max_size=40)
finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
json_scalars = st.none() | st.booleans() | st.integers(-2**53, 2**53) | finite | \
    st.text(max_size=30)
json_values = st.recursive(json_scalars, lambda c: st.lists(c, max_size=4)
                           | st.dictionaries(st.text(max_size=10), c, max_size=4), max_leaves=12)

messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(Hello, cluster=names, node=names, boot=st.text(min_size=1, max_size=16),
              listen_host=st.text(max_size=40), listen_port=st.integers(0, 65535),
              version=st.text(max_size=10),
              proto=st.tuples(st.integers(1, 5), st.integers(5, 9))),
    st.builds(Refuse, reason=st.text(max_size=100)),
    st.builds(Bye, reason=st.text(max_size=100)),
    st.builds(Heartbeat, seq=st.integers(0, 2**40), sent_at=finite,
              stats=st.dictionaries(st.text(max_size=10), json_values, max_size=5),
              members=st.lists(st.tuples(names, st.text(max_size=30)), max_size=5).map(tuple),
              hashes=st.dictionaries(st.text(max_size=10), st.text(max_size=32), max_size=3)),
    st.builds(Digest, ns=names, versions=st.dictionaries(st.text(max_size=30),
                                                         st.tuples(finite, names), max_size=5),
              last=st.booleans()),
    st.builds(Entries, ns=names, entries=st.lists(st.builds(
        Entry, key=st.text(max_size=30), value=json_values, ts=finite, node=names),
        max_size=5).map(tuple)),
    st.builds(Request, id=st.integers(0, 2**40), op=names,
              args=st.dictionaries(st.text(max_size=10), json_values, max_size=4)),
    st.builds(Response, id=st.integers(0, 2**40), ok=st.just(True), result=json_values),
    st.builds(Response, id=st.integers(0, 2**40), ok=st.just(False),
              error=st.text(max_size=100)),
)


def drain(dec: Decoder) -> list[Message]:
    out = []
    while (m := dec.next()) is not None:
        out.append(m)
    return out


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(messages, min_size=1, max_size=5), st.data())
def test_round_trip_whatever_the_chunking(msgs: list[Message], data: st.DataObject) -> None:
    wire = b"".join(encode(m) for m in msgs)
    dec = Decoder()
    got: list[Message] = []
    i = 0
    while i < len(wire):
        n = data.draw(st.integers(1, max(1, len(wire) - i)))
        dec.feed(wire[i:i + n])
        got += drain(dec)
        i += n
    assert got == msgs
    assert dec.buffered == 0


@settings(max_examples=500)
@given(st.binary(max_size=600))
def test_garbage_raises_only_protocol_errors(data: bytes) -> None:
    dec = Decoder(max_frame=4096)
    try:
        dec.feed(data)
        drain(dec)
    except ProtocolError:
        with pytest.raises(ProtocolError):  # once broken, stays broken
            dec.next()


@settings(max_examples=500)
@given(st.binary(max_size=400))
def test_well_framed_garbage_payloads_raise_only_protocol_errors(payload: bytes) -> None:
    frame = MAGIC + bytes([FRAME_VERSION, 0]) + struct.pack(">I", len(payload)) + payload
    dec = Decoder()
    dec.feed(frame)
    with pytest.raises(ProtocolError):
        dec.next()


@settings(max_examples=300)
@given(st.dictionaries(st.sampled_from(["t", "cluster", "node", "boot", "proto", "listen_host",
                                        "listen_port", "seq", "sent_at", "stats", "members",
                                        "hashes", "ns", "versions", "last", "entries", "id",
                                        "op", "args", "ok", "result", "error", "reason"]),
                       json_values, max_size=8),
       st.sampled_from(["hello", "refuse", "bye", "hb", "digest", "entries", "req", "res"]))
def test_json_objects_with_wrong_fields_raise_only_protocol_errors(doc: dict[str, object],
                                                                   t: str) -> None:
    doc["t"] = t
    try:
        msg = parse_payload(json.dumps(doc).encode())
    except ProtocolError:
        return
    assert t == msg.T  # whatever parsed is a well-typed message of that type
    assert parse_payload(encode(msg)[HEADER_SIZE:]) == msg


def test_oversized_frame_is_refused_from_its_header() -> None:
    dec = Decoder(max_frame=1024)
    dec.feed(MAGIC + bytes([FRAME_VERSION, 0]) + struct.pack(">I", 1025))
    with pytest.raises(ProtocolError, match="frame of 1025 bytes exceeds the 1024-byte limit"):
        dec.next()
    assert dec.buffered == 0


def test_encode_refuses_a_message_over_the_limit() -> None:
    with pytest.raises(ValueError, match="exceeds the 100-byte frame limit"):
        encode(Refuse("x" * 200), max_frame=100)
    assert len(encode(Refuse("x"))) < MAX_FRAME


@pytest.mark.parametrize("wire,needle", [
    (b"GET / HTTP/1.1\r\n", "bad magic"),
    (b"T", None),                                        # incomplete: wait for more
    (b"TX", "bad magic"),
    (MAGIC + bytes([2, 0]) + struct.pack(">I", 2) + b"{}", "frame version 2 is not supported"),
    (MAGIC + bytes([1, 7]) + struct.pack(">I", 2) + b"{}", "reserved header byte"),
    (MAGIC + bytes([1, 0]) + struct.pack(">I", 2) + b"[]", "must hold a JSON object"),
    (MAGIC + bytes([1, 0]) + struct.pack(">I", 3) + b"\xff{}", "not valid UTF-8 JSON"),
    (MAGIC + bytes([1, 0]) + struct.pack(">I", 12) + b'{"t":"nope"}', "unknown message type"),
    (MAGIC + bytes([1, 0]) + struct.pack(">I", 24) + b'{"t":"bye","reason":NaN}',
     "not valid UTF-8 JSON"),
])
def test_specific_errors(wire: bytes, needle: str | None) -> None:
    dec = Decoder()
    dec.feed(wire)
    if needle is None:
        assert dec.next() is None
        return
    with pytest.raises(ProtocolError, match=needle):
        dec.next()


@pytest.mark.parametrize("doc,needle", [
    ({"t": "hello", "cluster": "c", "node": "n", "boot": "b", "proto": [2, 1],
      "listen_host": "", "listen_port": 1, "version": ""}, "hello.proto"),
    ({"t": "hello", "cluster": "", "node": "n", "boot": "b", "proto": [1, 1],
      "listen_host": "", "listen_port": 1, "version": ""}, "hello.cluster must not be empty"),
    ({"t": "hello", "cluster": "c", "node": "n", "boot": "b", "proto": [1, 1],
      "listen_host": "", "listen_port": 70000, "version": ""}, "hello.listen_port"),
    ({"t": "hb", "seq": 1, "sent_at": 1.0, "stats": {}, "members": [["a"]], "hashes": {}},
     "hb.members"),
    ({"t": "digest", "ns": "psk", "versions": {"k": [1.0]}, "last": True}, "timestamp, node"),
    ({"t": "entries", "ns": "psk", "entries": [["k", None, "soon", "n"]]}, "entries ts"),
    ({"t": "req", "id": -1, "op": "x", "args": {}}, "req.id"),
    ({"t": "res", "id": 1, "ok": "yes"}, "res.ok must be true or false"),
    ({"t": "refuse", "reason": "x" * 5000}, "longer than 4096"),
])
def test_field_errors_name_the_field(doc: dict[str, object], needle: str) -> None:
    with pytest.raises(ProtocolError, match=needle):
        parse_payload(json.dumps(doc).encode())


def test_deep_nesting_is_a_protocol_error_not_a_crash() -> None:
    payload = b'{"t":"req","id":1,"op":"x","args":{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}}"
    with pytest.raises(ProtocolError):
        parse_payload(payload)


def test_negotiate_picks_the_highest_common_version() -> None:
    assert negotiate((1, 1), (1, 3)) == 1
    assert negotiate((1, 4), (2, 3)) == 3
    assert negotiate((1, 1), (2, 2)) is None
