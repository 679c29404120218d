"""Fuzz targets: every parser in tlsgate that reads bytes a remote peer controls.

Each target takes one input (``bytes``) and raises only on a *bug*: the parser's own remote
error type (ProtocolError, ProxyProtocolError) is the expected answer to bad input and is caught
here; anything else escaping (IndexError, struct.error, RecursionError, a broken invariant
``AssertionError``...) is a crash the fuzzer reports. Beyond "does not crash", each target checks
the contract the gateway relies on:

* ``mqtt_connect``  -- :func:`tlsgate.mqtt.parse_connect`, as the gateway calls it after every
  read: a parsed CONNECT is exactly ``buf[:used]``; every shorter prefix of it is "need more"
  (never an error, never a different packet); re-encoding with a new user name / client id
  (what ``peer_cert_as_*`` does) parses back with every other field unchanged; a refusal can
  always be turned into the CONNACK the gateway sends.
* ``mqtt_connack`` -- :func:`tlsgate.mqtt.decode_connack` (the broker's answer).
* ``proxy_header`` -- :func:`tlsgate.mqtt.parse_proxy_header` (bytes from a load balancer):
  prefixes are "need more", a parsed header re-encodes and parses back to the same addresses.
* ``control_frames`` -- :class:`tlsgate.server.control.ControlPeer` reading a byte stream: it
  must end (EOF or refusal of garbage) without an exception escaping, and every frame it writes
  back is a well-formed reply.
* ``cluster_frames`` -- :class:`tlsgate.cluster.protocol.Decoder` (bytes from another node,
  inside mutual TLS): only ProtocolError; the same messages whether the bytes come in one piece
  or two; every decoded message re-encodes and decodes to itself. (Registered only when
  ``tlsgate.cluster.protocol`` imports, so the other targets run on a tree without it.)

``seeds()`` builds the starting corpus (``python -m fuzz.run --seed`` writes it to fuzz/corpus/).
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tlsgate.mqtt import (
    ProtocolError,
    ProxyProtocolError,
    TlsInfo,
    connack_for,
    decode_connack,
    encode_connack,
    encode_connect,
    encode_v1,
    encode_v2,
    encode_v2_local,
    parse_connect,
    parse_proxy_header,
    rewrite_connect,
)
from tlsgate.mqtt.errors import Refusal
from tlsgate.server.control import ControlPeer

Target = Callable[[bytes], None]

DEFAULT_MAX_CONNECT = 262_144  # mqtt.max_connect_size's default


# ---------------------------------------------------------------------------- MQTT CONNECT
def _refusal_packet(exc: ProtocolError) -> None:
    """What ClientGate.refuse() does with a parser error: must never raise."""
    level = exc.protocol_level
    packet = connack_for(level, exc.refusal,
                         reason_string=exc.message if level == 5 else None)
    assert packet is None or packet[:1] == b"\x20", packet
    assert isinstance(exc.message, str) and exc.message


def check_connect_fast_path(data: bytes) -> None:
    """The parser's straight-line path for the usual CONNECT (``_parse_311``) either declines
    or gives exactly what the full reader gives for the same bytes."""
    from tlsgate.mqtt import connect as codec

    if len(data) < 2 or data[0] != 0x10:
        return
    try:
        got = codec._read_varint(memoryview(data), 1, len(data))
    except ValueError:
        return
    if got is None:
        return
    remaining, start, minimal = got
    total = start + remaining
    if total > len(data) or start > 3 or not minimal:
        return
    fast = codec._parse_311(memoryview(data), start, total)
    if fast is None:
        return
    full = codec._parse_body(memoryview(data), start, total, minimal)  # must not raise
    assert fast == full, (fast, full)


def fuzz_mqtt_connect(data: bytes) -> None:
    check_connect_fast_path(data)
    for max_size in (DEFAULT_MAX_CONNECT, 64):
        try:
            res = parse_connect(data, max_size)
        except ProtocolError as exc:
            _refusal_packet(exc)
            continue
        if res is None:
            continue
        c, used = res
        assert 0 < used <= len(data), (used, len(data))
        assert used <= max_size
        assert c.raw == data[:used]
        assert rewrite_connect(c) is c.raw
        # every prefix of a complete packet is "need more"
        for k in {0, 1, 2, used // 2, used - 1}:
            if 0 <= k < used:
                assert parse_connect(data[:k], max_size) is None, k
        # a rewritten CONNECT (peer_cert_as_username / clientid) parses back
        new_user, new_id = b"fuzz-user", b"fuzz-client-id"
        try:
            again = rewrite_connect(c, username=new_user, client_id=new_id)
        except ValueError:
            continue
        back = parse_connect(again, len(again))
        assert back is not None and back[1] == len(again)
        d = back[0]
        assert (d.username, d.client_id) == (new_user, new_id)
        assert (d.protocol_level, d.bridge, d.keepalive, d.properties, d.will_properties,
                d.will_topic, d.will_payload, d.password, d.protocol_name) == \
               (c.protocol_level, c.bridge, c.keepalive, c.properties, c.will_properties,
                c.will_topic, c.will_payload, c.password, c.protocol_name)
        assert d.flags & 0x3F == c.flags & 0x3F
        assert rewrite_connect(d, username=c.username, client_id=c.client_id) is not None
        c.property_list()
        c.will_property_list()
        if c.password is not None:  # repr() shows the password's length, never its bytes
            assert f"password=<{len(c.password)} bytes>" in repr(c)


def fuzz_mqtt_connack(data: bytes) -> None:
    try:
        res = decode_connack(data)
    except ProtocolError:
        return
    if res is None:
        return
    ack, used = res
    assert 0 < used <= len(data)
    assert ack.protocol_level in (4, 5)
    _ = ack.reason_string


# ---------------------------------------------------------------------------- PROXY v1/v2
def fuzz_proxy_header(data: bytes) -> None:
    for limit in (4096, 16):
        try:
            res = parse_proxy_header(data, max_v2_length=limit)
        except ProxyProtocolError as exc:
            assert str(exc)
            continue
        if res is None:
            continue
        hdr, used = res
        assert 0 < used <= len(data)
        assert hdr.version in (1, 2)
        for k in {0, 1, used // 2, used - 1}:
            if 0 <= k < used:
                assert parse_proxy_header(data[:k], max_v2_length=limit) is None, k
        _ = hdr.authority
        if hdr.src is None or hdr.dst is None:
            continue
        # what tlsgate sends to a broker from these addresses parses back to them (tlsgate
        # never forwards a load balancer's TLS TLVs: it sends its own TlsInfo, whose fields
        # come from OpenSSL, so the TLS part is not re-encoded here)
        encoded = encode_v1(hdr.src, hdr.dst) if hdr.version == 1 else \
            encode_v2(hdr.src, hdr.dst)
        back = parse_proxy_header(encoded)
        assert back is not None and back[1] == len(encoded)
        assert (back[0].src, back[0].dst) == (hdr.src, hdr.dst), (back[0], hdr)


# ---------------------------------------------------------------------------- control channel
class _Writer:
    """Stands in for the StreamWriter: collects what the peer writes back."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.out += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


async def _echo(args: dict[str, Any]) -> Any:
    return args


async def _boom(args: dict[str, Any]) -> Any:
    raise RuntimeError("handler failed")


_LOOP: asyncio.AbstractEventLoop | None = None


async def _control_once(data: bytes) -> _Writer:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    writer = _Writer()
    peer = ControlPeer(reader, writer, {"echo": _echo, "boom": _boom}, "fuzz")  # type: ignore[arg-type]
    await peer.run()
    if peer._tasks:
        await asyncio.gather(*list(peer._tasks))
    assert peer.closed.is_set()
    return writer


def fuzz_control_frames(data: bytes) -> None:
    global _LOOP
    if _LOOP is None:
        _LOOP = asyncio.new_event_loop()
    writer = _LOOP.run_until_complete(_control_once(data))
    out = bytes(writer.out)
    while out:  # every reply is a whole, well-formed frame
        assert len(out) >= 4
        (n,) = struct.unpack(">I", out[:4])
        doc = json.loads(out[4:4 + n])
        assert isinstance(doc, dict) and "id" in doc and "ok" in doc, doc
        out = out[4 + n:]


# ---------------------------------------------------------------------------- cluster frames
try:
    from tlsgate.cluster import protocol as cluster_protocol
except ImportError:  # not on this branch yet
    cluster_protocol = None  # type: ignore[assignment,unused-ignore]


def _cluster_messages(chunks: list[bytes]) -> tuple[list[Any], str | None]:
    assert cluster_protocol is not None
    dec = cluster_protocol.Decoder()
    out: list[Any] = []
    try:
        for chunk in chunks:
            dec.feed(chunk)
            while (msg := dec.next()) is not None:
                out.append(msg)
    except cluster_protocol.ProtocolError as exc:
        return out, str(exc) or type(exc).__name__
    return out, None


def fuzz_cluster_frames(data: bytes) -> None:
    assert cluster_protocol is not None
    whole, err = _cluster_messages([data])
    cut = len(data) // 2
    split, err2 = _cluster_messages([data[:cut], data[cut:]])
    assert whole == split and (err is None) == (err2 is None), (whole, split, err, err2)
    for msg in whole:
        again, e = _cluster_messages([cluster_protocol.encode(msg)])
        assert e is None and again == [msg], (msg, again, e)


TARGETS: dict[str, Target] = {
    "mqtt_connect": fuzz_mqtt_connect,
    "mqtt_connack": fuzz_mqtt_connack,
    "proxy_header": fuzz_proxy_header,
    "control_frames": fuzz_control_frames,
}
if cluster_protocol is not None:
    TARGETS["cluster_frames"] = fuzz_cluster_frames


# ---------------------------------------------------------------------------- seeds
def _frame(doc: Any) -> bytes:
    body = json.dumps(doc, separators=(",", ":")).encode()
    return struct.pack(">I", len(body)) + body


def _captures() -> list[bytes]:
    here = Path(__file__).resolve().parent.parent / "tests" / "unit" / "captures"
    out = []
    for f in sorted(here.glob("*.hex")):
        text = "".join(ln for ln in f.read_text().splitlines() if not ln.startswith("#"))
        out.append(bytes.fromhex(text.strip()))
    return out


def seeds() -> dict[str, list[bytes]]:
    caps = _captures()
    connects = [c for c in caps if c[:1] == b"\x10"] + [
        encode_connect(client_id=b"dev-1"),
        encode_connect(protocol_level=3, client_id=b"old", username=b"u", password=b"p"),
        encode_connect(protocol_level=5, client_id=b"v5", properties=[(0x11, 60)],
                       will_topic=b"w/t", will_payload=b"gone", will_qos=1,
                       will_properties=[(0x18, 5)], username=b"user", password=b"secret"),
        encode_connect(protocol_level=4, client_id=b"bridge", bridge=True),
        b"\x10\xff\xff\xff\x7f\x00\x04MQTT\x05",
    ]
    src, dst = ("203.0.113.7", 40000), ("10.0.0.1", 8883)
    tls = TlsInfo(version="TLSv1.3", cipher="TLS_AES_128_GCM_SHA256", sni="broker.example",
                  alpn=b"mqtt", cn="device-1", client_cert_present=True,
                  client_cert_verified=True, session_reused=False)
    proxies = [p for p in caps if p[:1] == b"\r"] + [
        encode_v1(src, dst), encode_v1(("2001:db8::1", 1), ("2001:db8::2", 2)),
        b"PROXY UNKNOWN\r\n", encode_v2(src, dst), encode_v2(src, dst, tls),
        encode_v2(("2001:db8::1", 1), ("2001:db8::2", 2), tls), encode_v2_local(),
    ]
    connacks = [encode_connack(4, 0), encode_connack(5, Refusal.QUOTA_EXCEEDED,
                                                     reason_string="max_connections reached"),
                encode_connack(4, Refusal.BAD_CREDENTIALS)]
    control = [
        _frame({"id": 1, "op": "echo", "args": {"x": [1, 2, 3]}}),
        _frame({"op": "echo", "args": {}}),
        _frame({"id": 2, "op": "boom", "args": {}}) + _frame({"id": 3, "op": "nope"}),
        _frame({"id": 1, "ok": True, "result": None}),
        _frame({"id": 1, "ok": False, "error": "x"}),
    ]
    out = {"mqtt_connect": connects, "mqtt_connack": connacks, "proxy_header": proxies,
           "control_frames": control}
    if cluster_protocol is not None:
        cp = cluster_protocol
        msgs: list[Any] = [
            cp.Hello(cluster="c1", node="n1", boot="b00t", listen_host="127.0.0.1",
                     listen_port=4370, version="0.1.0"),
            cp.Refuse(reason="cluster name differs"), cp.Bye(reason="stopping"),
        ]
        frames = [cp.encode(m) for m in msgs]
        out["cluster_frames"] = [*frames, b"".join(frames),
                                 b"TG\x01\x00\x00\x00\x00\x07{\"t\":1}"]
    return out


__all__ = ["TARGETS", "seeds"]
